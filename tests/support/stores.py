"""The cloud's `store:` config section for a store URL, for the processes that the benchmark,
the demo and tests start."""

from __future__ import annotations

from cloud_service.store import StoreError, parse_store_url


class StoreUrlError(ValueError):
    """Not a store URL the cloud service can open."""


def store_section(url: str) -> dict[str, str]:
    """`{"url": url}`, once the URL is known to be one the service accepts."""
    try:
        parse_store_url(url)
    except StoreError as exc:
        raise StoreUrlError(str(exc)) from None
    return {"url": url}

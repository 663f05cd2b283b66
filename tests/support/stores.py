"""The cloud's `store:` config section for a store URL, for the processes that the benchmark,
the demo and tests start."""

from __future__ import annotations


class StoreUrlError(ValueError):
    """This cloud_service cannot open a store of that kind."""


def store_section(url: str) -> dict[str, str]:
    """`{"url": url}`; a cloud_service from before the store package (no `store.url` setting)
    gets the SQLite path instead, and refuses any other store."""
    from cloud_service.config import StoreConfig

    if "url" in StoreConfig.model_fields:
        return {"url": url}
    if url.startswith("sqlite:///"):
        return {"path": url.removeprefix("sqlite:///")}
    raise StoreUrlError(f"this cloud_service has no `store.url` setting, so no store at "
                        f"{url.split('://', 1)[0]}://...")

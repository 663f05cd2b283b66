"""Who the browser is: the token an operator pasted on the sign-in page, kept in a cookie.

The cookie holds the token itself (the service has no user database to map a session to), so
it is HttpOnly (no script can read it), SameSite=Strict (no other site's page, link or form
sends it) and Secure when the service is reached over HTTPS. Reads accept it like the bearer
header. A write authorised by the cookie must also carry `X-CSRF-Token`, an HMAC of the token
that only pages of this service (rendered with it) know: a forged cross-site request has
neither the cookie nor the header, and a custom header forces a CORS preflight that this
service never grants.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets

from pydantic import SecretStr

from cloud_service.config import CloudConfig

SESSION_COOKIE = "pdm_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600  # one shift; the operator pastes the token again after that


class Access(enum.IntEnum):
    """What a request may do; ordered, so `access >= Access.READ` reads naturally."""

    NONE = 0
    READ = 1
    WRITE = 2


def token_matches(given: str, token: SecretStr | None) -> bool:
    """Constant time in the token's content, whatever the guess."""
    if token is None:
        return False
    return secrets.compare_digest(given.encode(), token.get_secret_value().encode())


def access_of(cfg: CloudConfig, token: str | None) -> Access:
    """The api_token writes; the read token (or no read token configured) reads."""
    if token is not None:
        # Both compared, always: which one matched must not show in the time taken.
        write = token_matches(token, cfg.api_token)
        read = token_matches(token, cfg.api.read_token)
        if write:
            return Access.WRITE
        if read:
            return Access.READ
    return Access.READ if cfg.api.read_token is None else Access.NONE


def is_signed_in(cfg: CloudConfig, token: str | None) -> bool:
    """The cookie holds one of the service's tokens (not a stale one that open reads ignore)."""
    if token is None:
        return False
    write = token_matches(token, cfg.api_token)
    read = token_matches(token, cfg.api.read_token)
    return write or read


def csrf_token(token: str) -> str:
    """The value a page sends in X-CSRF-Token with a write; derived from the cookie's token, so
    nothing is stored server-side and replicas agree."""
    return hmac.new(token.encode(), b"pdm-ui-csrf-v1", hashlib.sha256).hexdigest()


def csrf_matches(token: str, header: str | None) -> bool:
    return header is not None and secrets.compare_digest(header.encode(),
                                                         csrf_token(token).encode())


def same_origin(origin: str | None, host: str | None) -> bool:
    """A browser names the page's origin on every POST; a write from another site's page
    shows here even before the CSRF value is checked. No Origin (curl, old browsers): the
    CSRF value alone decides."""
    if origin is None:
        return True
    if host is None:
        return False
    return origin.split("://", 1)[-1].rstrip("/") == host


def session_write_refusal(cfg: CloudConfig, token: str, csrf_header: str | None,
                          origin: str | None, host: str | None) -> tuple[int, str] | None:
    """Why a write authorised by the session cookie is refused (HTTP status, detail), or None
    when it may go ahead: the cookie holds the api_token and the request came from a page of
    this service (same origin, X-CSRF-Token matching the cookie)."""
    if access_of(cfg, token) is not Access.WRITE:
        return 401, ("the signed-in token is not the service's api_token; sign in with the "
                     "api_token to change anything")
    if not same_origin(origin, host):
        return 403, f"a write from a page of another site ({origin}) is refused"
    if not csrf_matches(token, csrf_header):
        return 403, (f"a write with the session cookie needs the {CSRF_HEADER} header the "
                     "service's pages send; scripts use 'Authorization: Bearer <api_token>'")
    return None

"""Who is calling: API keys (`Authorization: Bearer <key>` or `X-API-Key`), scopes, per-key rate limits, and the
lockout of client addresses that keep presenting bad keys.

Order of checks: a locked-out address gets 429 (before any key is looked at); a missing, malformed, unknown or
revoked key gets the same 401 (a presented bad key counts as a failure of the address, a missing one does not, and
a success does not wipe the count, so a valid key cannot launder guesses);
an exhausted token bucket gets 429 with Retry-After; a key without the route's scope gets 403 naming the scope.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from blocks.errors import AuthFailed, KeyExpired
from deployments.api.errors import ApiError
from deployments.api.state import ApiState, api_state
from tasks.tenancy import Principal, authenticate

__all__ = ["Admin", "Operator", "Reader", "Writer", "client_ip", "require", "retry_after"]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer devmesh_...`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: devmesh_...`")
UNAUTHORIZED = "missing, invalid or revoked API key"


def client_ip(request: Request) -> str:
    """The peer address (uvicorn does not trust forwarding headers unless told to)."""
    return request.client.host if request.client else "unknown"


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else header.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key is not None else None


def require(scope: str):
    """A dependency returning the caller's Principal when its key is valid, within its rate and has `scope`."""

    def dependency(request: Request, api: ApiState = Depends(api_state), _bearer_doc=Security(_bearer),
                   _header_doc=Security(_header)) -> Principal:
        ip = client_ip(request)
        locked = api.lockout.locked_for(ip)
        if locked:
            raise ApiError(429, "locked_out", "too many failed authentications from this address; retry later",
                           headers=retry_after(locked))
        key = _presented_key(request)
        if not key:
            raise ApiError(401, "unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
        try:
            principal = authenticate(api.pool(), key)
        except KeyExpired as exc:  # its holder learns why: rotate it, rather than hunt for a typo
            api.lockout.failed(ip)
            raise ApiError(401, "key_expired", str(exc).removeprefix("devmesh authenticate: "),
                           headers={"WWW-Authenticate": "Bearer"}) from None
        except AuthFailed:
            api.lockout.failed(ip)
            raise ApiError(401, "unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"}) from None
        wait = api.limiter.take(f"key:{principal.key_id}", principal.rate_per_minute, principal.burst)
        if wait:
            raise ApiError(429, "rate_limited", "rate limit of this API key exceeded", headers=retry_after(wait))
        if not principal.allows(scope):
            raise ApiError(403, "missing_scope", f"this API key lacks the '{scope}' scope", item=scope)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
Operator = Annotated[Principal, Depends(require("operate"))]
Admin = Annotated[Principal, Depends(require("admin"))]

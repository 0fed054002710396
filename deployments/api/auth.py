"""Who is calling, for the REST API: the admission gate (deployments/admission.py, shared with MCP) as a FastAPI
dependency per scope. Its refusals (401 no or bad key, 401 `key_expired`, 429 locked out or rate limited, 403 missing
scope) become the API's error body.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from deployments.admission import Refusal
from deployments.api.errors import ApiError
from deployments.api.state import ApiState, api_state
from tasks.tenancy import Principal

__all__ = ["Admin", "Operator", "Reader", "Writer", "peer", "refused", "require"]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer devmesh_...`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: devmesh_...`")


def peer(request: Request) -> str | None:
    """The connection's peer address (the gate decides whether a forwarded header may name the client instead)."""
    return request.client.host if request.client else None


def refused(refusal: Refusal) -> ApiError:
    return ApiError(refusal.status, refusal.code, refusal.message, item=refusal.item, headers=refusal.headers)


def require(scope: str):
    """A dependency returning the caller's Principal when the gate admits its key for `scope`."""

    def dependency(request: Request, api: ApiState = Depends(api_state), _bearer_doc=Security(_bearer),
                   _header_doc=Security(_header)) -> Principal:
        try:
            principal = api.gate.admit(peer(request), request.headers, scope)
        except Refusal as refusal:
            raise refused(refusal) from None
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
Operator = Annotated[Principal, Depends(require("operate"))]
Admin = Annotated[Principal, Depends(require("admin"))]

"""The operator's route: `devmesh op run`'s dry run, run in the gateway (deployments/operator_channel.py says why and
who may use it). Not an agent's route: no API key opens it, only the operator token (an HMAC keyed by the stack's
Prefect API credential) on a loopback connection; it is left out of the OpenAPI document.

What it runs is what the CLI runs in its own process: the operation's input checked, then the guard
(flows.operate.run_operation) as a dry run, with the tenant's grant (its policy first, its credentials), audited with
the CLI's actor ({"via": "cli", "user": ...}); a dry run holds no shared slot of the tool cap.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from pydantic import ConfigDict, Field

from blocks.errors import ApprovalRejected, InputError, OperationDenied
from blocks.storable import StorableModel
from deployments.api.errors import ApiError
from deployments.api.state import ApiState, api_state
from deployments.operator_channel import operator_token
from flows.operate import OperateRequest, run_operation
from tasks.ops.base import cli_arguments, get_operation, parse_input

__all__ = ["router"]

router = APIRouter(tags=["operator"], include_in_schema=False)


class DryRunBody(StorableModel):
    model_config = ConfigDict(extra="forbid")
    operation: str = Field(..., min_length=1, max_length=100)
    arguments: dict[str, Any] = Field(default_factory=dict)
    tenant: str = Field(..., min_length=1, max_length=128)
    user: str = Field("unknown", min_length=1, max_length=256)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def operator(request: Request, token: Annotated[str | None, Header(alias="X-Devmesh-Operator")] = None) -> None:
    """The caller holds the stack's Prefect API credential and is on this machine; else 401 / 403."""
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    if not auth:  # a gateway without the stack's credential has no operator: the CLI runs the dry run itself
        raise ApiError(404, "not_found", "no operator channel on this gateway")
    if not token or not hmac.compare_digest(token.encode(), operator_token(auth).encode()):
        raise ApiError(401, "unauthorized", "this route takes the operator token of the stack", item=None)
    if not _loopback(request.client.host if request.client else None):
        raise ApiError(403, "operator_only", "the operator route answers on loopback only")


@router.post("/operator/dry-run", dependencies=[Depends(operator)])
def dry_run(body: DryRunBody, api: ApiState = Depends(api_state)) -> dict[str, Any]:
    """`devmesh op run` (a dry run) for the tenant the operator names."""
    try:
        op = get_operation(body.operation)
        arguments = cli_arguments(op, body.arguments)
        parse_input(op, arguments)
    except InputError as exc:
        raise ApiError(422, "invalid_arguments", str(exc), item=body.operation) from None
    request = OperateRequest(operation=op.name, arguments=arguments, tenant=body.tenant, dry_run=True,
                             idempotency_key=body.idempotency_key, actor={"via": "cli", "user": body.user})
    try:
        return run_operation(request, api.runtime)
    except OperationDenied as exc:
        raise ApiError(403, "policy_denied", str(exc), item=op.name) from None
    except ApprovalRejected as exc:
        raise ApiError(409, "approval_rejected", str(exc), item=op.name) from None

"""Operations and the audit trail: read an operation, approve or reject one awaiting approval (an admin key of the
operation's tenant, never the key that requested it), and page through the tenant's audit records (admin). Another
tenant's operation id is a 404."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Query

from blocks.errors import AppError, InputError
from deployments.api.auth import Admin, Reader
from deployments.api.errors import ApiError
from deployments.api.schemas import AuditPage, DecisionBody, DecisionResult, OperationInfo
from deployments.api.state import ApiState, api_state
from flows.operate import decide_as
from tasks.approvals import Approver, SelfApproval
from tasks.audit import read_audit
from tasks.operation_log import get_operation_row

__all__ = ["router"]

router = APIRouter(tags=["operations"])


def _row(api: ApiState, tenant: str, operation_id: str) -> dict[str, Any]:
    try:
        oid = uuid.UUID(operation_id)
    except ValueError:
        oid = None
    row = get_operation_row(api.pool(), oid, tenant) if oid else None
    if row is None:
        raise ApiError(404, "not_found", "no such operation", item=operation_id[:64])
    return row


@router.get("/operations/{operation_id}", response_model=OperationInfo)
def operation(operation_id: str, principal: Reader, api: ApiState = Depends(api_state)):
    """Status, plan, result or error of an operation."""
    row = _row(api, principal.tenant, operation_id)
    return {**row, "id": str(row["id"]), "flow_run_id": str(row["flow_run_id"]) if row["flow_run_id"] else None}


def _decide(api: ApiState, principal, operation_id: str, decision: str, body: DecisionBody | None):
    row = _row(api, principal.tenant, operation_id)
    try:
        return decide_as(Approver("api_key", principal.key_id, principal.key_name), str(row["id"]), decision,
                         tenant=principal.tenant, comment=body.comment if body else None, runtime=api.runtime)
    except SelfApproval as exc:
        raise ApiError(403, "self_approval", exc.message, item=str(row["id"])) from None
    except InputError as exc:  # not awaiting approval, already decided, window closed
        raise ApiError(409, "conflict", str(exc), item=str(row["id"])) from None
    except AppError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded, but the Prefect API did not resume the run
        raise ApiError(503, "orchestrator_unavailable", "the decision was recorded but resuming the flow run "
                       f"failed ({type(exc).__name__}); the run re-checks it when resumed", item=str(row["id"])) from None


@router.post("/operations/{operation_id}/approve", response_model=DecisionResult)
def approve(operation_id: str, principal: Admin, body: DecisionBody | None = None,
            api: ApiState = Depends(api_state)):
    """Approve an operation awaiting approval; its paused flow run resumes and re-checks the plan."""
    return _decide(api, principal, operation_id, "approved", body)


@router.post("/operations/{operation_id}/reject", response_model=DecisionResult)
def reject(operation_id: str, principal: Admin, body: DecisionBody | None = None,
           api: ApiState = Depends(api_state)):
    """Reject an operation awaiting approval; nothing runs."""
    return _decide(api, principal, operation_id, "rejected", body)


@router.get("/audit", response_model=AuditPage, tags=["audit"])
def audit(principal: Admin, api: ApiState = Depends(api_state), limit: int = Query(100, ge=1, le=1000),
          after_seq: int = Query(0, ge=0, le=2**62), operation_id: str | None = Query(None, max_length=64)):
    """The tenant's audit records in order (hash-chained across tenants: seq has gaps here)."""
    if operation_id is not None:
        operation_id = str(_row(api, principal.tenant, operation_id)["id"])
    items = read_audit(api.pool(), tenant=principal.tenant, operation_id=operation_id, limit=limit,
                       after_seq=after_seq)
    return {"items": items, "next_after_seq": items[-1]["seq"] if len(items) == limit else None}

"""Tools: the shared catalog (tasks.tools) and their execution.

Operations run through the guard (`run_operation`, sync, so in the threadpool) as the calling key
(actor = principal.actor(), tenant = principal.tenant), with the credentials and policy the operator granted that
tenant (tasks.grants; none granted: denied). `dry_run` (the default) plans and judges only. To act, the
route first plans (a dry run under the same idempotency key, so both land on one operation row); when the policy
asks for an approval, the operation is handed to the `operate/operate` deployment, whose flow run can pause for
it (202 with the flow run id), or refused with 409 `approval_required` and the plan when no such deployment
exists. Memory tools (`memory.search`) run in-process within the tenant, and the body's user/context.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from blocks.errors import InputError
from deployments.api.auth import Reader
from deployments.api.errors import ApiError
from deployments.api.schemas import ExecuteBody, ExecuteResult, ToolList
from deployments.api.state import ApiState, api_state
from flows.operate import OperateRequest, run_operation
from tasks.operation_log import in_flight
from tasks.ops.base import get_operation, parse_input
from tasks.tenancy import Principal
from tasks.tools import MemoryScope, is_memory_tool, list_tools, run_memory_tool

__all__ = ["router"]

router = APIRouter(tags=["tools"])
OPERATE_DEPLOYMENT = "operate/operate"


@router.get("/tools", response_model=ToolList)
def tools(principal: Reader):
    """Every tool: name, description, JSON schema of its input, whether it only reads / may destroy."""
    return {"items": [t.model_dump() for t in list_tools()]}


@router.post("/tools/{name}/execute", response_model=ExecuteResult,
             responses={202: {"model": ExecuteResult, "description": "Submitted; awaiting approval."}})
def execute(name: str, body: ExecuteBody, principal: Reader, api: ApiState = Depends(api_state)):
    """Run a tool. Operations need the operate scope and are dry runs unless dry_run is false."""
    if is_memory_tool(name):
        return _memory_tool(api, principal, name, body)
    try:
        op = get_operation(name)
    except InputError:
        raise ApiError(404, "unknown_tool", "no tool of this name (GET /api/v1/tools lists them)",
                       item=name[:100]) from None
    if not principal.allows("operate"):
        raise ApiError(403, "missing_scope", "this API key lacks the 'operate' scope", item="operate")
    try:
        parse_input(op, body.arguments)
    except InputError as exc:
        raise ApiError(422, "invalid_arguments", str(exc), item=op.name) from None
    if body.idempotency_key:
        _refuse_in_flight(api, principal.tenant, body.idempotency_key)
    key = body.idempotency_key or f"api-{uuid.uuid4().hex}"
    request = OperateRequest(operation=op.name, arguments=body.arguments, tenant=principal.tenant,
                             actor=principal.actor(), dry_run=True, idempotency_key=key)
    policy = api.ops_policy(principal.tenant)
    connections = api.ops_connections(op.provider, principal.tenant)

    def run(req: OperateRequest) -> dict[str, Any]:  # the tenant's grant, unless the app overrides it for the tenant
        return run_operation(req, api.runtime, connections=connections, policy=policy)

    if body.dry_run:
        return run(request)
    if op.mutating:
        planned = run(request)
        if planned["status"] != "planned":  # a replay of a key that already succeeded
            return planned
        if ((planned.get("result") or {}).get("decision") or {}).get("needs_approval"):
            return _submit_for_approval(request.model_copy(update={"dry_run": False}), planned)
    return run(request.model_copy(update={"dry_run": False}))


def _refuse_in_flight(api: ApiState, tenant: str, key: str) -> None:
    """A key whose operation awaits approval or is running must not be re-planned under it (that would reset it)."""
    if (row := in_flight(api.pool(), tenant, key)) is not None:
        operation_id, status = row
        raise ApiError(409, "in_progress", f"the operation with this idempotency key is {status}; see "
                       f"GET /api/v1/operations/{operation_id}", item=key, operation_id=operation_id)


def _submit_for_approval(request: OperateRequest, planned: dict[str, Any]):
    """Hand the operation to the operate deployment, whose flow run pauses for the approval."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run = run_deployment(OPERATE_DEPLOYMENT, parameters={"request": request.model_dump(mode="json")},
                                  timeout=0, idempotency_key=f"devmesh-api:{request.tenant}:{request.idempotency_key}")
    except ObjectNotFound:
        raise ApiError(409, "approval_required", "the policy requires an approval, which needs the "
                       f"'{OPERATE_DEPLOYMENT}' deployment (prefect deploy); nothing was done",
                       item=request.operation, operation_id=planned["operation_id"], plan=planned["plan"]) from None
    except Exception as exc:  # noqa: BLE001 - the Prefect API is unreachable or refused
        raise ApiError(503, "orchestrator_unavailable", f"could not submit the operation to Prefect: "
                       f"{type(exc).__name__}", item=request.operation, operation_id=planned["operation_id"]) from None
    return JSONResponse(status_code=202, content={
        "operation_id": planned["operation_id"], "status": "awaiting_approval", "plan": planned["plan"],
        "result": planned.get("result"), "flow_run_id": str(flow_run.id)})


def _memory_tool(api: ApiState, principal: Principal, name: str, body: ExecuteBody) -> dict[str, Any]:
    memory = api.memory(principal.tenant)
    if body.context_id is not None:
        memory.get(body.context_id, limit=0)  # 404 unless it is this tenant's
    scope = MemoryScope(pool=memory.pool, tenant=principal.tenant, user_id=body.user_id, context_id=body.context_id,
                        embedder=memory.embedder, search=api.settings.search)
    try:
        result = run_memory_tool(name, body.arguments, scope)
    except InputError as exc:
        raise ApiError(422, "invalid_arguments", str(exc), item=name) from None
    return {"operation_id": None, "status": "done", "plan": None, "result": result}

"""The guarded operation flow: plan → policy → approval → execute → verify → audit, for every DevOps operation.

Approvals pause the flow run (`pause_flow_run(wait_for_input=...)`) with the plan shown as an artifact. The OSS
Prefect server has no users, so the resume itself proves nothing: a decision counts only when it was recorded by
`decide()` (the `devmesh approve` command / the API), which authenticates the approver, binds the decision to the
plan hash and target, and then resumes the run. After resuming, the run re-plans and refuses to execute when the
plan or the decision does not match.

Credentials and policy are the operation's tenant's (tasks.grants): a tenant without a grant, or whose grant holds
no credentials block for the provider, is denied before anything is loaded or sent. The policy's static rules are
judged on what the typed input fixes (`Operation.facts`, `OperationPolicy.precheck`) before planning, so a denied
target never sees a request made with a credential; the plan is judged again (`evaluate`) with its live facts.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, NotPausedError
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.states import Completed, State
from pydantic import BaseModel, ConfigDict, Field

from blocks import tracing
from blocks.errors import ApprovalExpired, ApprovalRejected, GuardError, InputError, OperationDenied
from blocks.metrics import TOOL_EXECUTIONS
from blocks.policy import OperationPolicy
from blocks.settings import Settings
from blocks.storable import StorableModel
from tasks.approvals import Approver, authenticate_approver, read_decision, record_decision
from tasks.audit import append_audit, audit_key
from tasks.grants import load_policy, resolve_grant
from tasks.guard import execute_step, guarded, idempotency_key, load_connections, plan_step, scrub_error, verify_step
from tasks.operation_log import arguments_hash, claim_operation, get_operation_row, recent_counts, update_operation
from tasks.ops.base import Connections, Operation, Plan, get_operation, parse_input
from tasks.runtime import Runtime, call, in_flow_run
from tasks.tool_slots import tool_slot

__all__ = ["ApprovalInput", "OperateRequest", "approval_form", "decide", "decide_as", "operate", "run_operation",
           "submit_operation"]


class OperateRequest(StorableModel):
    """One operation to run through the guard. `dry_run` (the default) plans and judges but changes nothing."""

    model_config = ConfigDict(extra="forbid")
    operation: str = Field(..., min_length=1, max_length=100, description="e.g. 'github.create_issue'.")
    arguments: dict[str, Any] = Field(default_factory=dict, description="The operation's input (its JSON schema).")
    tenant: str = Field("default", min_length=1, max_length=128)
    actor: dict[str, Any] = Field(default_factory=dict, description="Who asks: api_key_id, agent, user ...")
    dry_run: bool = Field(True, description="Plan and check the policy only.")
    idempotency_key: str | None = Field(None, min_length=1, max_length=200,
                                        description="Same key, same action: a retry never acts twice.")


class ApprovalInput(RunInput):
    """What the paused run waits for. It is not trusted: the decision is read from devmesh's own table."""

    operation_id: str = Field(description="The operation this run waits for (filled in; leave it as it is).")
    note: str = Field("", description="Optional note. Pressing Resume does not approve: record the decision with "
                                      "`devmesh approve <operation id>` (or the API) first, which resumes the run.")


def approval_form(plan: Plan, operation_id: str, timeout_s: int) -> type[ApprovalInput]:
    """The Resume form of a paused operation: what is being approved, and how to approve it."""
    detail = (f"```diff\n{plan.diff.rstrip()}\n```" if plan.diff else
              f"```json\n{json.dumps(plan.request, indent=2, sort_keys=True, default=str)[:6000]}\n```")
    description = (
        f"## Approve `{plan.operation}` on `{plan.target}`?\n\n{plan.summary}\n\n{detail}\n\n"
        f"**This form does not approve.** An approver records the decision, which resumes this run:\n\n"
        f"```bash\ndevmesh approve {operation_id}\ndevmesh reject {operation_id}\n```\n\n"
        f"(or `POST /api/v1/operations/{operation_id}/approve` with an admin API key of the organization, not the "
        f"key that asked). Resuming here without a "
        f"recorded decision rejects the operation; so does no decision within {timeout_s} s. "
        f"Plan hash `{plan.digest()[:16]}`.")
    return ApprovalInput.with_initial_data(description=description, operation_id=operation_id)


def _flow_run_id() -> str | None:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


class _Guard:
    """The state of one guarded run: its row, plan, secrets to scrub, and the audit writer."""

    def __init__(self, pool, request: OperateRequest, settings: Settings):
        audit_key(settings.audit.key_block)  # before anything runs: a run that could not be audited does not start
        self.pool, self.request, self.settings = pool, request, settings
        self.started = time.monotonic()
        self.secrets: list[str] = []
        self.row: dict[str, Any] = {}
        self.plan: Plan | None = None
        self.target: str | None = None  # known from the input before there is a plan
        self.approval: dict[str, Any] | None = None

    @property
    def where(self) -> str | None:
        return self.plan.target if self.plan else self.target

    def audit(self, status: str, *, result: dict | None = None, error: str | None = None) -> dict[str, Any]:
        record = append_audit(
            self.pool, tenant=self.request.tenant, actor=self.request.actor, operation=self.request.operation,
            status=status, target=self.where,
            plan_hash=self.plan.digest() if self.plan else None, approval=self.approval, result=result,
            error=error, flow_run_id=_flow_run_id(), operation_id=str(self.row.get("id")) if self.row else None,
            duration_ms=int((time.monotonic() - self.started) * 1000))
        if in_flow_run():
            create_markdown_artifact(
                key="devmesh-audit", description=f"audit record {record['seq']}",
                markdown=(f"**{status}** `{self.request.operation}` on `{record['target']}` — audit #{record['seq']}"
                          f"\n\nactor: `{_json(record['actor'])}`  \nplan hash: `{record['plan_hash']}`  \n"
                          f"approval: `{_json(record['approval'])}`  \nerror: {error or '-'}  \n"
                          f"hash: `{record['hash']}`"))
        return record

    def finish(self, status: str, *, result: dict | None = None, error: str | None = None) -> dict[str, Any]:
        update_operation(self.pool, self.row["id"], status=status, result=result, error=error)
        TOOL_EXECUTIONS.labels(self.request.operation, status).inc()
        tracing.set_attributes(operation=self.request.operation, outcome=status,  # the operate flow run's span
                               target=self.where)
        record = self.audit(status, result=result, error=error)
        return {"operation_id": str(self.row["id"]), "status": status, "operation": self.request.operation,
                "target": self.where,
                "plan": self.plan.model_dump(mode="json") if self.plan else None,
                "plan_hash": self.plan.digest() if self.plan else None, "approval": self.approval,
                "result": result, "error": error, "audit_seq": record["seq"], "flow_run_id": _flow_run_id()}

    def deny(self, rule_text: str, exc_type: type[GuardError], status: str) -> None:
        error = exc_type(rule_text)
        error.summary = self.finish(status, error=rule_text)  # what the operate flow returns for a refusal
        raise error


def run_operation(request: OperateRequest, runtime: Runtime | Settings | None = None, *,
                  connections: Connections | None = None, policy: OperationPolicy | None = None,
                  defer_approval: bool = False) -> dict[str, Any]:
    """Run one operation through the guard; returns its summary. Raises OperationDenied / ApprovalRejected /
    the provider's error (scrubbed). `connections` and `policy` default to the blocks of the tenant's grant
    (tasks.grants); a caller passing them speaks for that tenant (tests, embedding: a surface serving several
    tenants picks them with tasks.grants.override_for). `defer_approval`: when approval is needed, return status
    "approval_required" instead of pausing. `runtime`: the caller's Runtime (settings: one over them; None: the
    environment's)."""
    runtime = Runtime.of(runtime)
    settings, pool = runtime.settings, runtime.pool()
    op = get_operation(request.operation)
    inp = parse_input(op, request.arguments)
    args = inp.model_dump(mode="json")
    key = idempotency_key(request.idempotency_key, _flow_run_id(), op.name, arguments_hash(op.name, args))
    g = _Guard(pool, request, settings)
    g.row, _ = claim_operation(pool, tenant=request.tenant, key=key, operation=op.name, arguments=args,
                               actor=request.actor, flow_run_id=_flow_run_id())
    if g.row["status"] == "succeeded":  # the same key again: report the first result, act not again
        return {"operation_id": str(g.row["id"]), "status": "succeeded", "replayed": True,
                "operation": op.name, "target": g.row["target"], "plan_hash": g.row["plan_hash"],
                "result": g.row["result"]}
    retries = settings.ops.max_retries
    try:
        policy, conns = _granted(g, op, policy, connections)
        g.secrets = conns.secrets()
        facts = op.facts(conns, inp) if op.facts else {}
        g.target = facts.get("target")
        first = policy.precheck(op.name, op.mutating, facts, recent=recent_counts(pool, request.tenant))
        if not first.allowed:  # judged on the input alone: nothing was planned, nothing was sent
            g.deny(f"denied by policy rule {first.rule}: {first.reason}", OperationDenied, "denied")
        # the cap on tool executions (tasks.tool_slots); a dry run changes nothing and holds no shared slot
        with _slot(settings, request, shared=not (request.dry_run and op.mutating)):
            g.plan = call(plan_step, op.name, conns, inp, retries)
        update_operation(pool, g.row["id"], plan=g.plan.model_dump(mode="json"), plan_hash=g.plan.digest(),
                         target=g.plan.target, flow_run_id=_flow_run_id())
        if in_flow_run():
            create_markdown_artifact(key="devmesh-plan", markdown=g.plan.markdown(),
                                     description=f"plan {g.plan.digest()[:12]} of {op.name}")
        decision = policy.evaluate(g.plan, recent=recent_counts(pool, request.tenant))
        if not decision.allowed:
            g.deny(f"denied by policy rule {decision.rule}: {decision.reason}", OperationDenied, "denied")
        if request.dry_run and op.mutating:
            return g.finish("planned", result={"decision": decision.as_dict()})
        if decision.needs_approval and defer_approval:
            update_operation(pool, g.row["id"], status="planned")
            g.audit("approval_required")
            return {"operation_id": str(g.row["id"]), "status": "approval_required", "operation": op.name,
                    "target": g.plan.target, "plan": g.plan.model_dump(mode="json"), "plan_hash": g.plan.digest(),
                    "result": {"decision": decision.as_dict()}, "idempotency_key": key}
        if decision.needs_approval:
            _await_approval(g, policy, inp, conns, retries)
        update_operation(pool, g.row["id"], status="running")
        with _slot(settings, request), guarded(key):  # the only place they may run
            result = call(execute_step, op.name, conns, inp, key, retries)
            verified = call(verify_step, op.name, conns, inp, result, retries)
        if verified:
            result = {**result, "verified": verified}
        return g.finish("succeeded", result=result)
    except GuardError:
        raise
    except Exception as exc:
        g.finish("failed", error=scrub_error(exc, g.secrets))
        raise


def _slot(settings: Settings, request: OperateRequest, shared: bool = True):
    """A slot of the tool cap and of the request's tenant's share (tasks.tool_slots)."""
    ops = settings.ops
    return tool_slot(ops.max_concurrent_tools, tenant=request.tenant, per_tenant=ops.max_concurrent_tools_per_tenant,
                     shared=shared, api_timeout_s=ops.slot_api_timeout_s)


def _granted(g: _Guard, op: Operation, policy: OperationPolicy | None,
             connections: Connections | None) -> tuple[OperationPolicy, Connections]:
    """The policy and the credentials the operation runs with: the caller's, else the tenant's grant. A tenant
    without a grant, or whose grant holds no block for the provider, is denied naming what is missing."""
    if connections is not None and getattr(connections, op.provider, None) is None:
        connections = None
    if policy is not None and connections is not None:
        return policy, connections
    tenant = g.request.tenant
    grant = resolve_grant(g.pool, tenant, g.settings)
    if grant is None:
        g.deny(f"denied: tenant {tenant!r} has no operations grant; an operator grants credentials and a policy "
               f"with `devmesh tenants grant {tenant} --policy NAME --{op.provider}-block NAME`",
               OperationDenied, "denied")
    if connections is None:
        name = grant.block(op.provider)
        if name is None:
            g.deny(f"denied: the operations grant of tenant {tenant!r} holds no {op.provider} credentials block "
                   f"(`devmesh tenants grant {tenant} --{op.provider}-block NAME`)", OperationDenied, "denied")
        connections = load_connections(op.provider, name)
    return policy or load_policy(grant), connections


def _await_approval(g: _Guard, policy: OperationPolicy, inp, conns: Connections, retries: int) -> None:
    """Pause for a decision made through decide(); then re-plan and re-check before anything executes."""
    assert g.plan is not None
    if not in_flow_run():
        g.deny("approval needed: run the operate flow (a flow run can pause), not run_operation directly",
               ApprovalRejected, "rejected")
    expires = datetime.now(timezone.utc) + timedelta(seconds=policy.approval_timeout_s)
    update_operation(g.pool, g.row["id"], status="awaiting_approval", expires_at=expires)
    g.row = get_operation_row(g.pool, g.row["id"])
    g.audit("awaiting_approval")
    get_run_logger().info("operation %s awaits approval: devmesh approve %s", g.row["id"], g.row["id"])
    try:
        pause_flow_run(wait_for_input=approval_form(g.plan, str(g.row["id"]), policy.approval_timeout_s),
                       timeout=policy.approval_timeout_s, poll_interval=g.settings.ops.approval_poll_s,
                       key=f"approval-{g.row['id']}")
    except FlowPauseTimeout:
        g.deny(f"approval expired after {policy.approval_timeout_s} s without a decision", ApprovalExpired,
               "rejected")
    decision = read_decision(g.pool, g.row["id"])
    if decision is None:
        g.deny("resumed without a decision recorded through devmesh approve; refused", ApprovalRejected, "rejected")
    g.approval = {"approver": decision["approver"], "approver_id": decision["approver_id"],
                  "approver_kind": decision["approver_kind"], "decision": decision["decision"],
                  "decided_at": decision["decided_at"].isoformat(), "plan_hash": decision["plan_hash"]}
    if decision["decision"] != "approved":
        g.deny(f"rejected by {decision['approver_kind'] or 'approver'} {decision['approver']!r}", ApprovalRejected,
               "rejected")
    approved_hash = g.plan.digest()
    with _slot(g.settings, g.request):
        g.plan = call(plan_step, g.request.operation, conns, inp, retries)
    if decision["plan_hash"] != approved_hash or g.plan.digest() != decision["plan_hash"] \
            or g.plan.target != decision["target"]:
        g.deny("the plan changed since it was approved (target or live state differs); re-run to re-approve",
               ApprovalRejected, "rejected")
    again = policy.evaluate(g.plan, recent=recent_counts(g.pool, g.request.tenant))
    if not again.allowed:
        g.deny(f"denied by policy rule {again.rule} after approval: {again.reason}", OperationDenied, "denied")


def decide(operation_id: str, token: str, decision: str, *, tenant: str = "default", comment: str | None = None,
           runtime: Runtime | Settings | None = None) -> dict[str, Any]:
    """Approve or reject a paused operation as an approver authenticated by their token (`devmesh approve`)."""
    runtime = Runtime.of(runtime)
    approver = authenticate_approver(runtime.pool(), tenant, token)
    return decide_as(approver, operation_id, decision, tenant=tenant, comment=comment, runtime=runtime)


def decide_as(approver: Approver, operation_id: str, decision: str, *, tenant: str, comment: str | None = None,
              runtime: Runtime | Settings | None = None) -> dict[str, Any]:
    """Record a decision by an approver of `tenant` the caller already authenticated (the CLI by approver token,
    the REST API by an admin API key), audit it naming the approver by kind, id and name, then resume the paused
    run, which re-checks everything. Only an operation of `tenant` can be decided."""
    pool = Runtime.of(runtime).pool()
    row = get_operation_row(pool, operation_id, tenant)
    if row is None:
        raise InputError("no such operation in this tenant", item=operation_id)
    recorded = record_decision(pool, row, approver, decision, comment)
    append_audit(pool, tenant=tenant, actor=approver.actor(tenant), operation=row["operation"],
                 status=f"approval_{decision}", target=row["target"], plan_hash=row["plan_hash"],
                 approval={**approver.as_dict(), "decision": decision, "comment": comment},
                 flow_run_id=str(row["flow_run_id"]) if row["flow_run_id"] else None, operation_id=str(row["id"]))
    if row["flow_run_id"]:
        _resume(row["flow_run_id"], {"operation_id": str(row["id"]), "note": comment or ""})
    return {"operation_id": str(row["id"]), "decision": recorded["decision"], "approver": approver.name,
            "approver_id": approver.id, "approver_kind": approver.kind,
            "flow_run_id": str(row["flow_run_id"]) if row["flow_run_id"] else None}


def _resume(flow_run_id, run_input: dict[str, Any], wait_s: float = 15.0) -> None:
    """Resume the paused run; the run marks itself awaiting approval a moment before it pauses, so wait for it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            resume_flow_run(flow_run_id, run_input=run_input)
            return
        except NotPausedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def submit_operation(request: OperateRequest, runtime: Runtime | Settings | None = None, *,
                     connections: Connections | None = None, policy: OperationPolicy | None = None,
                     deployment: str = "operate/operate") -> dict[str, Any]:
    """For callers that must not block (REST, MCP, the assistant): run the operation now when the policy allows it
    without approval; when it needs one, plan it here and start the `operate` deployment, whose run pauses for the
    decision. Returns the summary, or {status: "awaiting_approval", operation_id, flow_run_id, plan, ...}."""
    key = request.idempotency_key or f"submit-{uuid.uuid4().hex}"
    request = request.model_copy(update={"idempotency_key": key})
    planned = run_operation(request, runtime, connections=connections, policy=policy, defer_approval=True)
    if planned["status"] != "approval_required":
        return planned
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # no server: nothing could hold the paused run (and no ephemeral one, please)
        raise ApprovalRejected(f"{request.operation} needs approval, and no Prefect server is configured to run the "
                               f"{deployment!r} deployment that waits for it (PREFECT_API_URL)")
    try:
        flow_run = run_deployment(deployment, parameters={"request": request.model_dump(mode="json")}, timeout=0,
                                  idempotency_key=f"devmesh-submit:{request.tenant}:{key}")
    except ObjectNotFound:
        raise ApprovalRejected(f"{request.operation} needs approval, and no {deployment!r} deployment is served to "
                               "wait for it (run `devmesh up`, or `prefect deploy` and a worker)") from None
    return {**planned, "status": "awaiting_approval", "flow_run_id": str(flow_run.id), "idempotency_key": key,
            "approve_with": f"devmesh approve {planned['operation_id']}"}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@flow(name="operate")
def operate(request: OperateRequest) -> dict[str, Any] | State:
    """Run one DevOps operation through the guard: plan, policy, approval, execute, verify, audit."""
    try:
        return run_operation(request)
    except ApprovalExpired:
        raise  # the server fails a pause that outlived its timeout, whatever state the run proposes next
    except GuardError as exc:
        # An expected refusal is not a failure: the run ends in a state named for it (Denied, Rejected), with one
        # readable line and the summary (status "denied" / "rejected") as its result. Of type Completed: Prefect's
        # engine logs a traceback for a deployment run that returns any other final state (Cancelled included).
        name = "Denied" if isinstance(exc, OperationDenied) else "Rejected"
        get_run_logger().warning("%s: %s", name.lower(), exc)
        return Completed(name=name, message=str(exc), data=getattr(exc, "summary", None)
                         or {"status": name.lower(), "operation": request.operation, "error": str(exc)})

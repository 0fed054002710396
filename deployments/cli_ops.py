"""`devmesh op|approve|reject|approvers|audit`: guarded DevOps operations from the command line.

Exit codes: 0 done, 1 the operation failed, 2 bad input, 3 denied by policy, 4 approval rejected or expired,
5 the audit trail does not verify.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from blocks.errors import AppError, ApprovalRejected, AuthFailed, ConfigError, InputError, OperationDenied
from blocks.settings import Settings

REFUSED = {"denied": 3, "rejected": 4}  # exit codes of a refused operation
op_app = typer.Typer(help="Run guarded DevOps operations (dry run by default).", no_args_is_help=True)
approvers_app = typer.Typer(help="Manage who may approve operations.", no_args_is_help=True)
audit_app = typer.Typer(help="Read and verify the audit trail.", no_args_is_help=True)
console = Console(stderr=True)


def fail(message: str, code: int) -> None:
    """Print `error: <message>` (the label red, the message as is: no markup, no traceback) and exit `code`."""
    console.print(Text.assemble(("error:", "bold red"), " ", str(message)), highlight=False)
    raise typer.Exit(code)


_fail = fail


def _runtime():
    """The command's Runtime (tasks.runtime): a command is its process's entry point and passes it down."""
    from tasks.runtime import Runtime

    return Runtime()


@op_app.command("list")
def op_list(schema: Optional[str] = typer.Option(None, help="Print one operation's JSON input schema."),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Every operation: name, whether it changes anything, what it does."""
    from tasks.ops.base import get_operation, operations

    if schema:
        try:
            print(json.dumps(get_operation(schema).schema(), indent=2))
        except InputError as exc:
            _fail(str(exc), 2)
        return
    ops = operations()
    if as_json:
        print(json.dumps([{"name": o.name, "mutating": o.mutating, "description": o.description} for o in ops],
                         indent=2))
        return
    table = Table("operation", "changes", "description")
    for o in ops:
        table.add_row(o.name, "yes" if o.mutating else "no", o.description)
    Console().print(table)


@op_app.command("run")
def op_run(
    operation: str = typer.Argument(..., help="e.g. github.create_issue (see `devmesh op list`)."),
    args: Optional[str] = typer.Option(None, "--args", help="Arguments as a JSON object."),
    args_file: Optional[Path] = typer.Option(None, help="Arguments from a JSON or YAML file."),
    execute: bool = typer.Option(False, "--execute", help="Do it (default: dry run, plan and policy only)."),
    key: Optional[str] = typer.Option(None, help="Idempotency key: the same key never acts twice."),
    tenant: Optional[str] = typer.Option(None, help="Tenant id."),
    as_flow: Optional[bool] = typer.Option(
        None, "--flow/--direct", help="Run as a Prefect flow run (needed for approvals) or in this process. Default: "
        "a dry run by the running stack's gateway when `devmesh up` is up, else in this process (it answers in a few "
        "seconds: it never waits for an approval); --execute as a flow run."),
) -> None:
    """Plan → policy → (approval) → execute → verify → audit; prints the summary as JSON."""
    settings = Settings()
    tenant = tenant or settings.tenant
    user = os.environ.get("USER", "unknown")
    if as_flow is None and not execute:
        try:
            raw = _arguments(args, args_file)
        except (json.JSONDecodeError, InputError) as exc:
            _fail(str(exc), 2)
        summary = _dry_run_by_stack(settings, operation, raw, tenant, user, key)
        if summary is not None:
            print(json.dumps(summary, indent=2, default=str))
            return
    from flows.operate import OperateRequest, operate, run_operation
    from tasks.ops.base import get_operation, parse_input

    from tasks.runtime import Runtime

    runtime = Runtime(settings)
    try:
        op = get_operation(operation)
        arguments = _arguments(args, args_file, wraps_manifest="manifest" in op.input_model.model_fields)
        parse_input(op, arguments)  # bad input is refused here, before any flow run starts
        request = OperateRequest(operation=operation, arguments=arguments, tenant=tenant,
                                 dry_run=not execute, idempotency_key=key, actor={"via": "cli", "user": user})
        if as_flow is None:
            as_flow = execute
        summary = operate(request) if as_flow else run_operation(request, runtime)
        if summary.get("status") in REFUSED:  # the flow run ended Denied / Rejected: a refusal, not a failure
            _fail(summary["error"], REFUSED[summary["status"]])
    except (ValidationError, json.JSONDecodeError, InputError) as exc:
        _fail(str(exc), 2)
    except OperationDenied as exc:
        _fail(str(exc), 3)
    except ApprovalRejected as exc:
        _fail(str(exc), 4)
    except AppError as exc:
        _fail(str(exc), 1)
    print(json.dumps(summary, indent=2, default=str))


# exit codes of the gateway's refusals of a dry run (deployments/api/operator.py); any other: 1
_STACK_EXIT = {"invalid_arguments": 2, "invalid_input": 2, "validation_error": 2, "policy_denied": 3,
               "approval_rejected": 4}


def _dry_run_by_stack(settings: Settings, operation: str, arguments: dict, tenant: str, user: str,
                      key: str | None) -> dict | None:
    """The dry run by the running stack's gateway (deployments/operator_channel.py): its summary, or exit with the
    refusal's code; None when the stack cannot be asked (the caller runs it in this process)."""
    import httpx

    from deployments.operator_channel import stack_dry_run

    try:
        answer = stack_dry_run(Path(settings.home), operation=operation, arguments=arguments, tenant=tenant,
                               user=user, idempotency_key=key)
    except httpx.HTTPError as exc:  # sent, but no answer: not run again here (it may have been audited)
        _fail(f"the stack's gateway did not answer the dry run ({type(exc).__name__}); `devmesh status`, or run it "
              "in this process with --direct", 1)
    if answer is None:
        return None
    if answer.summary is not None:
        return answer.summary
    _fail(answer.message, _STACK_EXIT.get(answer.code or "", 2 if answer.status == 422 else 1))


def _arguments(args: str | None, args_file: Path | None, *, wraps_manifest: bool = False) -> dict:
    """The operation's arguments; for an operation taking a `manifest`, a file holding a plain Kubernetes object
    (apiVersion, kind ...) is that manifest: {"manifest": <the file>}."""
    if args and args_file:
        raise InputError("give --args or --args-file, not both")
    if args_file:
        import yaml

        try:
            data = yaml.safe_load(args_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InputError(f"cannot read it: {str(exc).splitlines()[0][:200]}", item=str(args_file)) from None
    else:
        data = json.loads(args) if args else {}
    if not isinstance(data, dict):
        raise InputError("arguments must be a JSON object", item="--args")
    if wraps_manifest and "manifest" not in data and {"apiVersion", "kind"} <= set(data):
        data = {"manifest": data}
    return data


def _decide(operation_id: str, token: str | None, decision: str, tenant: str | None, comment: str | None) -> None:
    from flows.operate import decide

    runtime = _runtime()
    settings = runtime.settings
    token = token or os.environ.get("DEVMESH_APPROVER_TOKEN")
    if not token:
        _fail("no approver token: pass --token or set DEVMESH_APPROVER_TOKEN", 2)
    try:
        out = decide(operation_id, token, decision, tenant=tenant or settings.tenant, comment=comment,
                     runtime=runtime)
    except AuthFailed as exc:
        _fail(str(exc), 2)
    except AppError as exc:
        _fail(str(exc), 2)
    print(json.dumps(out, indent=2))


def approve(operation_id: str = typer.Argument(...), token: Optional[str] = typer.Option(None),
            tenant: Optional[str] = typer.Option(None), comment: Optional[str] = typer.Option(None)) -> None:
    """Approve a paused operation as an authenticated approver; the run resumes and re-checks the plan."""
    _decide(operation_id, token, "approved", tenant, comment)


def reject(operation_id: str = typer.Argument(...), token: Optional[str] = typer.Option(None),
           tenant: Optional[str] = typer.Option(None), comment: Optional[str] = typer.Option(None)) -> None:
    """Reject a paused operation; nothing is executed."""
    _decide(operation_id, token, "rejected", tenant, comment)


@approvers_app.command("add")
def approvers_add(name: str, tenant: Optional[str] = typer.Option(None)) -> None:
    """Create an approver and print their token (shown once; only its hash is stored)."""
    from tasks.approvals import add_approver

    runtime = _runtime()
    settings = runtime.settings
    try:
        print(add_approver(runtime.pool(), tenant or settings.tenant, name))
    except InputError as exc:
        _fail(str(exc), 2)


@approvers_app.command("revoke")
def approvers_revoke(name: str, tenant: Optional[str] = typer.Option(None)) -> None:
    from tasks.approvals import revoke_approver

    runtime = _runtime()
    settings = runtime.settings
    if not revoke_approver(runtime.pool(), tenant or settings.tenant, name):
        _fail(f"no active approver {name!r}", 2)


@audit_app.command("verify")
def audit_verify(
    checkpoint: Optional[str] = typer.Option(
        None, help="Compare the head with this checkpoint (its JSON: a line of the checkpoint file, the verify-audit "
        "run's artifact or event) instead of the newest one of the checkpoint file."),
    public_key: Optional[str] = typer.Option(
        None, "--public-key", help="Verify with this Ed25519 public key (`devmesh audit key`) instead of loading "
        "the key block: an auditor's check, which writes no checkpoint."),
    record: bool = typer.Option(True, "--record/--no-record",
                                help="Append a signed checkpoint of the verified head to the checkpoint file."),
) -> None:
    """Hashes, links and signatures of every record, and the head against the last checkpoint; exit 5 naming what
    happened (an edited, deleted, forged or re-signed record, a truncated tail, removed signatures)."""
    from blocks.audit_key import AuditKey
    from tasks.audit import audit_key
    from tasks.audit_checkpoint import checkpoint_path, parse_checkpoint, verify_against_checkpoint

    runtime = _runtime()
    settings = runtime.settings
    try:
        key = AuditKey.from_public_b64(public_key) if public_key else audit_key(settings.audit.key_block)
        given = parse_checkpoint(checkpoint) if checkpoint else None
    except (ConfigError, InputError) as exc:
        _fail(str(exc), 2)
    report, written = verify_against_checkpoint(runtime.pool(), settings, key, given=given, source="cli",
                                                record=record)
    summary = report.summary()
    if not report.ok:
        print(json.dumps(summary, indent=2))
        where = f" at record {report.bad_seq}" if report.bad_seq is not None else ""
        _fail(f"audit trail broken{where}: {report.problem}", 5)
    if written:
        summary["checkpoint_written"] = str(checkpoint_path(settings))
    print(json.dumps(summary, indent=2))


@audit_app.command("key")
def audit_key_show() -> None:
    """The audit key's public half and fingerprint (creates the key block on first use); give it to auditors."""
    from tasks.audit import audit_key

    settings = Settings()
    try:
        key = audit_key(settings.audit.key_block)
    except ConfigError as exc:
        _fail(str(exc), 2)
    print(json.dumps({"block": settings.audit.key_block, "fingerprint": key.fingerprint,
                      "public_key": key.public_b64}, indent=2))


@audit_app.command("show")
def audit_show(tenant: Optional[str] = typer.Option(None), limit: int = typer.Option(20),
               after: int = typer.Option(0, help="Records after this seq, oldest first."),
               oldest: bool = typer.Option(False, "--oldest", help="From the first record on, oldest first.")) -> None:
    """Audit records as JSON lines: the newest `limit`, newest first (--oldest or --after: in order)."""
    from tasks.audit import read_audit

    runtime = _runtime()
    settings = runtime.settings
    newest = not oldest and not after
    for record in read_audit(runtime.pool(), tenant=tenant or settings.tenant, limit=limit, after_seq=after,
                             newest_first=newest):
        print(json.dumps(record, default=str))


def register(app: typer.Typer) -> None:
    app.add_typer(op_app, name="op")
    app.add_typer(approvers_app, name="approvers")
    app.add_typer(audit_app, name="audit")
    app.command()(approve)
    app.command()(reject)

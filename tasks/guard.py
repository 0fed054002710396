"""The guard's steps as Prefect tasks (plan, execute, verify), and the helpers around them: loading the credential
blocks an operation needs, idempotency keys, and scrubbing secrets out of everything that leaves the guard."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from blocks import tracing
from blocks.errors import AppError, ConfigError, GuardError
from blocks.retry import call_with_retries, scrub
from tasks.ops.base import Connections, OpInput, Plan, get_operation

__all__ = ["execute_step", "guarded", "idempotency_key", "load_connections", "plan_step", "scrub_error",
           "verify_step"]

_GUARDED: ContextVar[str | None] = ContextVar("devmesh_guarded_operation", default=None)


@contextmanager
def guarded(key: str) -> Iterator[None]:
    """Within: the execute and verify steps of the operation under idempotency `key` may run. Only the guard
    (flows.operate.run_operation) enters it, after the plan, the policy and any approval allowed the operation."""
    token = _GUARDED.set(key)
    try:
        yield
    finally:
        _GUARDED.reset(token)


def _require_guard(operation: str, key: str | None = None) -> None:
    allowed = _GUARDED.get()
    if allowed is None or (key is not None and allowed != key):
        raise GuardError(f"{operation}: operations execute only through the guard (flows.operate.run_operation or "
                         "the operate flow: plan, policy, approval, audit), not by calling its steps directly")


def load_connections(provider: str, name: str) -> Connections:
    """The credentials block of `provider` named `name` (a tenant's grant names it); ConfigError says how to fix
    a missing one."""
    if provider == "github":
        from blocks.github import GitHubConnection as block_type
    elif provider == "kubernetes":
        from blocks.kubernetes import KubernetesConnection as block_type
    elif provider == "aws":
        from prefect_aws import AwsCredentials as block_type
    else:
        raise ConfigError(f"no credentials block for provider {provider!r}")
    try:
        block = block_type.load(name)
    except ValueError as exc:
        raise ConfigError(f"{provider}: block {name!r} not found ({exc}); create it with "
                          f"{block_type.__name__}(...).save({name!r}) or in the Prefect UI") from None
    return Connections(**{provider: block})


def idempotency_key(given: str | None, flow_run_id: str | None, operation: str, args_hash: str) -> str:
    """The caller's key; else one derived from the flow run (stable across that run's retries); else random."""
    if given:
        return given
    if flow_run_id:
        return "run-" + hashlib.sha256(f"{flow_run_id}:{operation}:{args_hash}".encode()).hexdigest()[:32]
    return "once-" + uuid.uuid4().hex


def scrub_error(exc: BaseException, secrets: list[str]) -> str:
    """A one-line error text with every credential masked, safe for audit records, artifacts and logs."""
    kind = type(exc).__name__
    return scrub(f"{kind}: {exc}", *secrets, limit=1000)


def _retrying(conns: Connections, what: str, fn, retries: int):
    """fn() with transient provider errors retried (Retry-After honoured); other errors re-raised scrubbed."""
    operation, _, step = what.rpartition(" ")
    with tracing.span(f"operation.{step}", operation=operation, step=step):
        try:
            result = call_with_retries(fn, max_retries=retries, what=what)
        except AppError:
            raise
        except Exception as exc:  # a client library error our mapping did not know: never let its text leak secrets
            raise AppError(scrub_error(exc, conns.secrets())) from None
        if isinstance(result, Plan):
            tracing.set_attributes(target=result.target)
        return result


@task(name="plan", cache_policy=NONE)
def plan_step(operation: str, conns: Connections, inp: OpInput, retries: int = 4) -> Plan:
    """Dry run: what the operation would change, computed against the live target."""
    op = get_operation(operation)
    return _retrying(conns, f"{operation} plan", lambda: op.plan(conns, inp), retries)


@task(name="execute", cache_policy=NONE)
def execute_step(operation: str, conns: Connections, inp: OpInput, key: str, retries: int = 4) -> dict[str, Any]:
    """Do it, with the idempotency key: a retry after an ambiguous failure finds the first result. Refused outside
    the guard's `guarded(key)`."""
    _require_guard(operation, key)
    op = get_operation(operation)
    return _retrying(conns, f"{operation} execute", lambda: op.run(conns, inp, key), retries)


@task(name="verify", cache_policy=NONE)
def verify_step(operation: str, conns: Connections, inp: OpInput, result: dict[str, Any],
                retries: int = 4) -> dict[str, Any] | None:
    """Read back what execute did (a Kubernetes deploy waits for its rollout and rolls back when it fails)."""
    _require_guard(operation)
    op = get_operation(operation)
    if op.verify is None:
        return None
    return _retrying(conns, f"{operation} verify", lambda: op.verify(conns, inp, result), retries)

"""The cap on tool executions running at once (settings.ops.max_concurrent_tools, the guide's
`performance.concurrent_tool_executions`; default 5).

Every tool execution path — REST, MCP, CLI, the assistant and scheduled `operate` runs — goes through the guard
(flows.operate.run_operation), which takes a slot around each provider step (the plan of a dry run, the execute and
verify of a real one; never while waiting for an approval). The slots are a Prefect global concurrency limit named
`devmesh-tool-executions`, so the cap is shared by every process talking to the same Prefect server and shows in
the UI (Concurrency → Global); it is created on first use with the setting's value, and set to it again when a
process finds another value (the setting is the source of truth). Without a Prefect server (PREFECT_API_URL unset:
tests, a library embedded in a script) there is nothing shared to hold the slots, and a process-wide semaphore of
the same size caps that process alone. When the Prefect API cannot grant a slot (it failed or is overloaded), the
step does not run: a TransientError says so (the cap is never bypassed).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from blocks.errors import ConfigError, TransientError

__all__ = ["LIMIT_NAME", "ensure_tool_limit", "tool_slot"]

LIMIT_NAME = "devmesh-tool-executions"
_ensured: dict[str, int] = {}  # Prefect API -> the limit this process last set there
_local: dict[int, threading.BoundedSemaphore] = {}
_lock = threading.Lock()


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def ensure_tool_limit(limit: int) -> None:
    """Create the global concurrency limit with `limit` slots, or set an existing one to `limit` (and active)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(LIMIT_NAME)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=LIMIT_NAME, limit=limit))
                return
            except Exception as exc:  # another process created it meanwhile (the server answers 409 or 500): update it
                try:
                    found = client.read_global_concurrency_limit_by_name(LIMIT_NAME)
                except ObjectNotFound:
                    raise exc from None  # noqa: B904
        if found.limit != limit or not found.active:
            client.update_global_concurrency_limit(LIMIT_NAME, GlobalConcurrencyLimitUpdate(limit=limit, active=True))


@contextmanager
def tool_slot(limit: int) -> Iterator[None]:
    """Hold one of the `limit` tool-execution slots for the duration of the block (waiting for a free one)."""
    api = _api_url()
    if api is None:
        with _lock:
            semaphore = _local.setdefault(limit, threading.BoundedSemaphore(limit))
        with semaphore:
            yield
        return
    from prefect.concurrency.sync import concurrency

    if _ensured.get(api) != limit:
        with _lock:  # one set-up per process, not one per thread starting at once
            if _ensured.get(api) != limit:
                try:
                    ensure_tool_limit(limit)
                except Exception as exc:
                    raise ConfigError(f"could not set up the tool-execution cap (Prefect global concurrency limit "
                                      f"{LIMIT_NAME!r}, {limit} slots) on the Prefect API at {api}: "
                                      f"{type(exc).__name__}: {str(exc)[:200]}") from None
                _ensured[api] = limit
    with ExitStack() as held:
        try:
            held.enter_context(concurrency(LIMIT_NAME, occupy=1, strict=True))
        except Exception as exc:  # the Prefect API refused or failed: no slot, so no execution (the cap holds)
            raise TransientError(f"no tool-execution slot: the Prefect API at {api} could not grant one of "
                                 f"{LIMIT_NAME!r} ({type(exc).__name__}: {str(exc)[:200]}); nothing was executed, "
                                 "try again", provider="prefect", operation="concurrency") from None
        yield

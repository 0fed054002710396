"""The cap on tool executions running at once (settings.ops.max_concurrent_tools, the guide's
`performance.concurrent_tool_executions`; default 5), and each tenant's share of it
(settings.ops.max_concurrent_tools_per_tenant; default 3).

Every tool execution path — REST, MCP, CLI, the assistant and scheduled `operate` runs — goes through the guard
(flows.operate.run_operation), which takes a slot around each provider step that may lead to a change (the plan,
execute and verify of a real operation; never while waiting for an approval). The slots are Prefect global
concurrency limits, so the cap is shared by every process talking to the same Prefect server and shows in the UI
(Concurrency → Global): `devmesh-tool-executions` (the cap) and `devmesh-tool-executions-tenant-<tenant>` (that
tenant's share). A step takes one slot of both in one request (the server grants all or none), so one tenant
starting many operations at once holds at most its share and leaves the rest of the cap to the others. The limits
are created on first use with the settings' values, and set to them again when a process finds other values (the
settings are the source of truth).

A dry run (plan only, nothing changes) takes no shared slot: it is a read of the target, and the guard still
judges it (policy before and after the plan) and audits it. It holds a slot of the process-wide semaphores instead
(`shared=False`), so one process still never plans more than the cap at once. Why: a dry run is what an agent or
an operator asks for interactively, and a shared slot is a write to the Prefect server's database; measured in the
burst bench (docs/benchmarks.md section 10), that write waited behind the burst's events on the server.

Without a Prefect server (PREFECT_API_URL unset: tests, a library embedded in a script) there is nothing shared to
hold the slots, and the process-wide semaphores of the same sizes cap that process alone.

Why the slot request is written here rather than `prefect.concurrency.sync.concurrency`: Prefect's client retries an
overloaded server's 503 with exponential backoff (five times) and waits up to 60 s for each answer, so a step could
wait minutes (138 s measured) before failing; and Prefect's own wait for a busy slot cannot be told apart from that.
Here a busy cap (423 Locked) is waited for as long as it takes, honouring the server's Retry-After, while trouble
with the server itself (503, no answer, refused connection) ends the request after settings.ops.slot_api_timeout_s
with a TransientError saying so; nothing runs without its slot (the cap is never bypassed). The lease is renewed
while the step runs and released after it; a process that dies leaves a lease the server expires.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from blocks.errors import ConfigError, TransientError

__all__ = ["LIMIT_NAME", "TENANT_LIMIT_PREFIX", "ensure_limit", "ensure_tool_limit", "tenant_limit_name",
           "tool_slot"]

LIMIT_NAME = "devmesh-tool-executions"
TENANT_LIMIT_PREFIX = "devmesh-tool-executions-tenant-"
LEASE_S = 300.0  # a lease the holder stops renewing (its process died) frees its slots after this
RENEW_S = 60.0
MAX_WAIT_STEP_S = 3.0  # longest sleep between two requests for a busy slot, whatever Retry-After says
_ensured: dict[tuple[str, str], int] = {}  # (Prefect API, limit name) -> the limit this process last set there
_local: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_lock = threading.Lock()
_requests = threading.Lock()
_log = logging.getLogger("devmesh.tool_slots")


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def tenant_limit_name(tenant: str) -> str:
    """The name of `tenant`'s share: its id when it is a plain slug, else a digest of it (limit names may not hold
    every character a tenant id may). A digest starts with "_", which no plain slug does, so no tenant can register
    a slug that names another tenant's share."""
    safe = tenant if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}", tenant) else \
        "_" + hashlib.sha256(tenant.encode()).hexdigest()[:24]
    return TENANT_LIMIT_PREFIX + safe


def ensure_limit(name: str, limit: int, client=None) -> None:
    """Create the global concurrency limit `name` with `limit` slots, or set an existing one to `limit` (active)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    if client is None:
        with get_client(sync_client=True) as client:
            return ensure_limit(name, limit, client)
    try:
        found = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return
        except Exception as exc:  # another process created it meanwhile (the server answers 409 or 500): update it
            try:
                found = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                raise exc from None  # noqa: B904
    if found.limit != limit or not found.active:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))


def ensure_tool_limit(limit: int) -> None:
    """The cap itself (`devmesh-tool-executions`) with `limit` slots."""
    ensure_limit(LIMIT_NAME, limit)


def _semaphore(name: str, size: int) -> threading.BoundedSemaphore:
    with _lock:
        return _local.setdefault((name, size), threading.BoundedSemaphore(size))


@contextmanager
def _local_slot(limits: dict[str, int]) -> Iterator[None]:
    with ExitStack() as held:
        for name in sorted(limits):  # one order for every holder: no two holders wait on each other crosswise
            held.enter_context(_semaphore(name, limits[name]))
        yield


@contextmanager
def tool_slot(limit: int, *, tenant: str | None = None, per_tenant: int | None = None, shared: bool = True,
              api_timeout_s: float = 10.0) -> Iterator[None]:
    """Hold one of the `limit` tool-execution slots, and one of `tenant`'s `per_tenant` (at most `limit`), for the
    duration of the block, waiting for free ones. `shared=False`, or no Prefect API: the process-wide semaphores.
    TransientError when the Prefect API cannot grant them within `api_timeout_s` of trouble (nothing runs then)."""
    limits = {LIMIT_NAME: limit}
    if tenant is not None and per_tenant is not None:
        limits[tenant_limit_name(tenant)] = min(per_tenant, limit)
    api = _api_url() if shared else None
    if api is None:
        with _local_slot(limits):
            yield
        return
    for name, size in limits.items():
        if _ensured.get((api, name)) != size:
            with _lock:  # one set-up per process, not one per thread starting at once
                if _ensured.get((api, name)) != size:
                    _patiently(api, [name], api_timeout_s,
                               lambda client, name=name, size=size: ensure_limit(name, size, client),
                               what=f"set up ({size} slots)")
                    _ensured[(api, name)] = size
    names = sorted(limits)
    lease_id = _patiently(api, names, api_timeout_s, lambda client: client.increment_concurrency_slots_with_lease(
        names=names, slots=1, mode="concurrency", lease_duration=LEASE_S).json()["lease_id"], what="grant")
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lease_id, stop), daemon=True, name="tool-slot-lease")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        _release(api, names, lease_id, api_timeout_s)


@contextmanager
def _client(timeout_s: float):
    """A Prefect client that makes one attempt per request (no retries), waiting at most `timeout_s` for it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0, PREFECT_API_REQUEST_TIMEOUT: max(0.5, timeout_s)}), \
            get_client(sync_client=True) as client:
        yield client


def _patiently(api: str, names: list[str], api_timeout_s: float, attempt, what: str):
    """attempt(client) until it returns: after a 423 (every slot taken) as the server's Retry-After says, however
    long; after trouble with the server (5xx, 408, 429, no answer, refused) every 0.5 s for `api_timeout_s` at most,
    then a TransientError. Any other refusal (4xx: a bad name or limit) is a ConfigError."""
    import httpx

    trouble_since: float | None = None
    last, tries = "", 0
    while True:
        remaining = api_timeout_s - (time.monotonic() - trouble_since if trouble_since is not None else 0.0)
        try:
            # one request at a time per process (Prefect's own slot service serialises too): a SQLite-backed server
            # answers concurrent slot writes 503 (5 at once: 4 refused, measured)
            with _requests, _client(remaining) as client:
                return attempt(client)
        except httpx.HTTPStatusError as exc:
            code = exc.response.status_code
            if code == 423:  # every slot is taken: wait our turn (not trouble)
                trouble_since = None
                try:
                    wait = float(exc.response.headers.get("Retry-After", "1"))
                except ValueError:
                    wait = 1.0
                time.sleep(min(max(wait, 0.1), MAX_WAIT_STEP_S))
                continue
            if code not in (408, 429, 500, 502, 503, 504):
                raise ConfigError(f"the Prefect API at {api} refused to {what} the tool-execution limits "
                                  f"{', '.join(repr(n) for n in names)}: HTTP {code}: {exc.response.text[:200]}"
                                  ) from None
            last = f"HTTP {code}"
        except (httpx.HTTPError, OSError) as exc:
            last = f"{type(exc).__name__}: {str(exc)[:160]}"
        if trouble_since is None:
            trouble_since, tries = time.monotonic(), 0
        if time.monotonic() - trouble_since >= api_timeout_s:
            raise _refused(api, names, f"{last}, for {api_timeout_s:g} s") from None
        tries += 1  # backing off with jitter, so waiting holders do not answer an overloaded server in step
        time.sleep(random.uniform(0.5, 1.0) * min(2.0, 0.1 * 2 ** tries, api_timeout_s / 4))


def _refused(api: str, names: list[str], why: str) -> TransientError:
    return TransientError(f"no tool-execution slot: the Prefect API at {api} could not grant one of "
                          f"{', '.join(repr(n) for n in names)} ({why}); nothing was executed, try again",
                          provider="prefect", operation="concurrency")


def _renew(lease_id, stop: threading.Event) -> None:
    while not stop.wait(RENEW_S):
        try:
            with _requests, _client(10) as client:
                client.renew_concurrency_lease(lease_id, LEASE_S)
        except Exception as exc:  # noqa: BLE001 - the step is under way: stopping it half-done would be worse
            _log.warning("could not renew tool-slot lease %s (%s); it lapses %s s after the last renewal",
                         lease_id, exc, LEASE_S)


def _release(api: str, names: list[str], lease_id, api_timeout_s: float) -> None:
    try:
        _patiently(api, names, api_timeout_s, lambda client: client.release_concurrency_slots_with_lease(lease_id),
                   what="release")
    except Exception as exc:  # noqa: BLE001 - the lease lapses on its own; the step's outcome stands
        _log.warning("could not release tool-slot lease %s (%s); the server frees it within %s s", lease_id, exc,
                     LEASE_S)

"""The cap on tool executions (tasks.tool_slots): a Prefect global concurrency limit held by the guard around every
provider step. Against the session's real Prefect test server, 20 operations started at once never run more than
the setting's 5 provider steps together, and the limit is visible (by name, with its slots) on the server."""

from __future__ import annotations

import contextvars
import threading
from contextlib import contextmanager
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from blocks.policy import OperationPolicy
from blocks.settings import Settings
from flows.operate import OperateRequest, run_operation
from tasks.ops.base import REGISTRY, Connections, OpInput, Operation, Plan
from tasks.tool_slots import LIMIT_NAME, tenant_limit_name, tool_slot

POLICY = OperationPolicy(operations=["github.*"], github_repos=["octo/*"])


class ProbeInput(OpInput):
    n: int
    tenant: str = "-"


class Probe:
    """A provider step that takes a moment and records how many ran at once."""

    def __init__(self, hold_s: float = 0.4) -> None:
        self.hold_s, self.running, self.peak, self.calls = hold_s, 0, 0, 0
        self.tenant_running: Counter[str] = Counter()
        self.tenant_peak: Counter[str] = Counter()
        self.started: Counter[str] = Counter()
        self.started_before_b: int | None = None  # how many of the first tenant's had started when b-* started
        self.lock = threading.Lock()

    def plan(self, conns, inp: ProbeInput) -> Plan:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.peak = max(self.peak, self.running)
            self.tenant_running[inp.tenant] += 1
            self.tenant_peak[inp.tenant] = max(self.tenant_peak[inp.tenant], self.tenant_running[inp.tenant])
            if inp.tenant.startswith("b-") and self.started_before_b is None:
                self.started_before_b = sum(n for t, n in self.started.items() if t.startswith("a-"))
            self.started[inp.tenant] += 1
        try:
            time.sleep(self.hold_s)
        finally:
            with self.lock:
                self.running -= 1
                self.tenant_running[inp.tenant] -= 1
        return Plan(operation="github.slot_probe", target=f"github:octo/app#{inp.n}", summary="probe",
                    facts={"repo": "octo/app"})


@pytest.fixture
def probe():
    p = Probe()
    REGISTRY["github.slot_probe"] = Operation(name="github.slot_probe", description="probe",
                                              input_model=ProbeInput, plan=p.plan, run=lambda c, i, k: {})
    yield p
    REGISTRY.pop("github.slot_probe", None)


def _start_at_once(count: int, fn) -> list:
    barrier = threading.Barrier(count)

    def one(i):
        barrier.wait(timeout=60)
        return fn(i)

    with ThreadPoolExecutor(count) as pool:  # each thread in a copy of this context: the harness's Prefect API
        futures = [pool.submit(contextvars.copy_context().run, one, i) for i in range(count)]
        return [f.result(timeout=600) for f in futures]


def test_twenty_operations_at_once_run_at_most_five_provider_steps_together(prefect_harness, settings, probe):
    """20 real operations of four tenants at once: never more than the cap's 5 provider steps together, never more
    than a tenant's share of 3; both limits visible on the server, every slot given back."""
    from prefect.client.orchestration import get_client

    assert settings.ops.max_concurrent_tools == 5 and settings.ops.max_concurrent_tools_per_tenant == 3  # defaults
    tenants = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(4)]

    def operate(i):
        tenant = tenants[i % 4]
        request = OperateRequest(operation="github.slot_probe", arguments={"n": i, "tenant": tenant}, tenant=tenant,
                                 actor={"via": "pytest"}, dry_run=False)
        return run_operation(request, settings, connections=Connections(github=object()), policy=POLICY)

    results = _start_at_once(20, operate)
    assert [r["status"] for r in results] == ["succeeded"] * 20 and probe.calls == 20
    assert 2 <= probe.peak <= 5, probe.peak  # the cap held, and operations did run side by side
    assert max(probe.tenant_peak.values()) <= 3, probe.tenant_peak
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(LIMIT_NAME)
        shares = [client.read_global_concurrency_limit_by_name(tenant_limit_name(t)) for t in tenants]
    assert limit.limit == 5 and limit.active and limit.active_slots == 0  # every slot given back
    assert [(s.limit, s.active, s.active_slots) for s in shares] == [(3, True, 0)] * 4


def test_one_tenant_starting_twenty_at_once_cannot_keep_another_out(prefect_harness, settings, probe, monkeypatch):
    """Tenant A starts 20 operations at once; once A's steps run, tenant B asks for one. A holds at most its share
    (3 of the 5), so B's slot requests are granted without queueing (never 423), while A's requests queue (answered 423 Locked). With
    one global pool only, A's 20 would hold all 5 slots and B would queue behind them."""
    import httpx
    from prefect.client.orchestration import get_client

    from tasks import tool_slots

    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    probe.hold_s = 1.0
    answers: list[tuple[str, int]] = []  # (tenant limit asked for, HTTP status) of every slot request
    real_client = tool_slots._client

    @contextmanager
    def recording_client(timeout_s):
        with real_client(timeout_s) as client:
            increment = client.increment_concurrency_slots_with_lease

            def recorded(names, **kwargs):
                share = next(n for n in names if n != LIMIT_NAME)
                try:
                    response = increment(names=names, **kwargs)
                except httpx.HTTPStatusError as exc:
                    answers.append((share, exc.response.status_code))
                    raise
                answers.append((share, response.status_code))
                return response

            client.increment_concurrency_slots_with_lease = recorded
            yield client

    monkeypatch.setattr(tool_slots, "_client", recording_client)

    def operate(tenant, i):
        request = OperateRequest(operation="github.slot_probe", arguments={"n": i, "tenant": tenant}, tenant=tenant,
                                 actor={"via": "pytest"}, dry_run=False)
        return run_operation(request, settings, connections=Connections(github=object()), policy=POLICY)

    with ThreadPoolExecutor(1) as one:
        started_a = one.submit(contextvars.copy_context().run, _start_at_once, 20, lambda i: operate(a, i))
        deadline = time.monotonic() + 120
        while probe.started.get(a, 0) < 1 and time.monotonic() < deadline and not started_a.done():
            time.sleep(0.05)
        assert probe.started.get(a, 0) >= 1, "tenant A's operations never started"
        result_b = operate(b, 1000)
        results_a = started_a.result(timeout=600)
    assert result_b["status"] == "succeeded" and [r["status"] for r in results_a] == ["succeeded"] * 20
    assert probe.tenant_peak[a] <= 3, probe.tenant_peak
    asked_b = [status for share, status in answers if share == tenant_limit_name(b)]
    asked_a = [status for share, status in answers if share == tenant_limit_name(a)]
    # B's plan and execute each got a slot without queueing behind A (a 503 is the SQLite test server's lock, not
    # the cap): A could not hold the slots B needed
    assert asked_b.count(200) == 2 and 423 not in asked_b, asked_b
    assert asked_a.count(200) == 40 and 423 in asked_a, asked_a  # plan + execute of 20; A queued (423)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(tenant_limit_name(a)).limit == 3


def test_a_dry_run_holds_no_shared_slot_and_the_process_still_caps_it(prefect_harness, settings, tenant, probe,
                                                                      monkeypatch):
    """A dry run (plan only) never asks the Prefect server for a slot (it changes nothing; an interactive preview
    should not wait on the server's database), yet it is guarded and audited, and 20 at once in one process still
    plan at most 5 together."""
    from tasks import tool_slots

    def no_request(*args, **kwargs):
        raise AssertionError("a dry run asked the Prefect API for a tool slot")

    monkeypatch.setattr(tool_slots, "_patiently", no_request)

    def operate(i):
        request = OperateRequest(operation="github.slot_probe", arguments={"n": i, "tenant": tenant}, tenant=tenant,
                                 actor={"via": "pytest"}, dry_run=True)
        return run_operation(request, settings, connections=Connections(github=object()), policy=POLICY)

    results = _start_at_once(20, operate)
    assert [r["status"] for r in results] == ["planned"] * 20 and probe.calls == 20
    assert all(r["audit_seq"] for r in results)  # audited, each
    assert 2 <= probe.peak <= 5, probe.peak


def test_the_setting_sets_the_limit_and_caps_direct_holders(prefect_harness, pg_home):
    from prefect.client.orchestration import get_client

    settings = Settings(home=pg_home, ops={"max_concurrent_tools": 2})
    running, peak, lock = [0], [0], threading.Lock()

    def hold(_):
        with tool_slot(settings.ops.max_concurrent_tools):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.3)
            with lock:
                running[0] -= 1

    try:
        _start_at_once(8, hold)
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(LIMIT_NAME).limit == 2
        assert 1 <= peak[0] <= 2
    finally:
        with tool_slot(5):  # back to the default for the other tests of the session
            pass


def test_without_a_prefect_server_a_process_semaphore_caps_the_process(monkeypatch):
    from tasks import tool_slots

    monkeypatch.setattr(tool_slots, "_api_url", lambda: None)
    running, peak, lock = [0], [0], threading.Lock()

    def hold(_):
        with tool_slot(3):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.2)
            with lock:
                running[0] -= 1

    _start_at_once(10, hold)
    assert 2 <= peak[0] <= 3


class _Unavailable(BaseHTTPRequestHandler):
    """A Prefect API that answers every request 503, as the SQLite-backed server did under the burst."""

    seen: list[str] = []

    def _answer(self):
        type(self).seen.append(self.path)
        body = b'{"exception_message": "Service Unavailable"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("server", ["overloaded", "down"])
def test_when_the_prefect_api_cannot_grant_a_slot_nothing_executes_and_the_error_comes_at_once(server):
    """An overloaded Prefect server answering 503 (seen in the burst bench), or none at all: the step does not run
    (the cap is never bypassed), and after slot_api_timeout_s (1 s here) of trouble a TransientError says what
    happened, instead of Prefect's client's five retries with exponential backoff. The overloaded server saw a
    bounded number of requests, each answered 503: no request was retried behind the caller's back for long."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks.errors import TransientError
    from tasks import tool_slots

    _Unavailable.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    port = httpd.server_address[1]
    if server == "down":
        httpd.server_close()  # the port is closed: connections are refused
    else:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    ran = []
    try:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            with pytest.raises(TransientError) as raised:
                with tool_slots.tool_slot(5, tenant="t-outage", per_tenant=3, api_timeout_s=1.0):
                    ran.append(1)
    finally:
        if server != "down":
            httpd.shutdown()
            httpd.server_close()
    assert ran == []
    text = str(raised.value)
    assert "Prefect API" in text and "nothing was executed" in text
    assert ("503" in text) if server == "overloaded" else ("ConnectError" in text), text
    assert "for 1 s" in text, text
    if server == "overloaded":
        assert 1 <= len(_Unavailable.seen) <= 40, _Unavailable.seen


def test_no_slug_names_another_tenants_share():
    """A tenant id that is not a plain slug gets a digest name; a slug spelled like that digest names another share."""
    odd = "acme/ops team"
    digest = tenant_limit_name(odd).removeprefix("devmesh-tool-executions-tenant-")
    assert digest != odd and tenant_limit_name(digest.lstrip("_")) != tenant_limit_name(odd)
    assert tenant_limit_name("acme") == "devmesh-tool-executions-tenant-acme"

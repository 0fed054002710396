"""The cap on tool executions (tasks.tool_slots): a Prefect global concurrency limit held by the guard around every
provider step. Against the session's real Prefect test server, 20 operations started at once never run more than
the setting's 5 provider steps together, and the limit is visible (by name, with its slots) on the server."""

from __future__ import annotations

import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from blocks.policy import OperationPolicy
from blocks.settings import Settings
from flows.operate import OperateRequest, run_operation
from tasks.ops.base import REGISTRY, Connections, OpInput, Operation, Plan
from tasks.tool_slots import LIMIT_NAME, tool_slot

POLICY = OperationPolicy(operations=["github.*"], github_repos=["octo/*"])


class ProbeInput(OpInput):
    n: int


class Probe:
    """A provider step that takes a moment and records how many ran at once."""

    def __init__(self, hold_s: float = 0.4) -> None:
        self.hold_s, self.running, self.peak, self.calls = hold_s, 0, 0, 0
        self.lock = threading.Lock()

    def plan(self, conns, inp: ProbeInput) -> Plan:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(self.hold_s)
        finally:
            with self.lock:
                self.running -= 1
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


def test_twenty_operations_at_once_run_at_most_five_provider_steps_together(prefect_harness, settings, tenant,
                                                                             probe):
    from prefect.client.orchestration import get_client

    assert settings.ops.max_concurrent_tools == 5  # the default

    def operate(i):
        request = OperateRequest(operation="github.slot_probe", arguments={"n": i}, tenant=tenant,
                                 actor={"via": "pytest"}, dry_run=True)
        return run_operation(request, settings, connections=Connections(github=object()), policy=POLICY)

    results = _start_at_once(20, operate)
    assert [r["status"] for r in results] == ["planned"] * 20 and probe.calls == 20
    assert 2 <= probe.peak <= 5, probe.peak  # the cap held, and operations did run side by side
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(LIMIT_NAME)
    assert limit.limit == 5 and limit.active and limit.active_slots == 0  # every slot given back


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


def test_when_the_prefect_api_cannot_grant_a_slot_nothing_executes(prefect_harness, settings, tenant, probe,
                                                                   monkeypatch):
    """An overloaded Prefect server answering 503 to the slot request: the step does not run (the cap is never
    bypassed), and the error says what happened."""
    import prefect.concurrency.sync as prefect_concurrency
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError

    from blocks.errors import TransientError

    def refusing(*args, **kwargs):
        raise ConcurrencySlotAcquisitionError(f"Unable to acquire concurrency slots on {args[0]!r}: 503")

    monkeypatch.setattr(prefect_concurrency, "concurrency", refusing)
    request = OperateRequest(operation="github.slot_probe", arguments={"n": 1}, tenant=tenant,
                             actor={"via": "pytest"}, dry_run=True)
    with pytest.raises(TransientError, match="no tool-execution slot.*503.*nothing was executed"):
        run_operation(request, settings, connections=Connections(github=object()), policy=POLICY)
    assert probe.calls == 0

"""The straggler window of batched webhook handling, and its close (flows.github_events.hand_over).

A handler deployment has a concurrency limit of 1 that cancels new runs (CANCEL_NEW). A delivery emitted after the
running handler's last (empty) claim, while that run is still finishing, triggers a run the limit cancels at once:
without more, the delivery would wait for the 60 s schedule. The ending run's hook, called once its final state is
set (the slot free again), starts the next run when deliveries wait, and that run is not cancelled.

Driven on a real Prefect server (the session's test server) by proposing the states a runner and the flow engine
propose, in the order of the race; nothing sleeps."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
from prefect.states import Completed, Pending, Running
from psycopg.types.json import Jsonb

from flows.github_events import github_events, hand_over

ROUTE = "github-discussions"


def _deliver(pool, tenant: str) -> str:
    delivery_id = str(uuid.uuid4())
    payload = {"action": "opened", "issue": {"number": 1, "title": "t", "body": "b"}}
    with pool.connection() as conn:
        conn.execute("INSERT INTO webhook_deliveries (delivery_id, event, action, repository, tenant_id, payload,"
                     " route, status) VALUES (%s, 'issues', 'opened', 'octo/app', %s, %s, %s, 'emitted')",
                     [delivery_id, tenant, Jsonb(payload), ROUTE])
    return delivery_id


@pytest.fixture
def client(prefect_harness):
    with get_client(sync_client=True) as c:
        yield c


@pytest.fixture
def deployment(client):
    """github-events as the webhook deployments run it: concurrency limit 1, new runs cancelled."""
    flow_id = client.create_flow(github_events)
    return client.create_deployment(
        flow_id=flow_id, name=f"hand-over-{uuid.uuid4().hex[:8]}", parameters={"route": ROUTE},
        concurrency_limit=1,
        concurrency_options=ConcurrencyOptions(collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW))


def _start(client, deployment_id):
    """A run of the deployment taken by a runner (Pending: the slot) and started (Running); its state after."""
    run = client.create_flow_run_from_deployment(deployment_id, parameters={"route": ROUTE})
    state = client.set_flow_run_state(run.id, Pending()).state
    if state.is_pending():
        state = client.set_flow_run_state(run.id, Running()).state
    return run, state


def test_a_delivery_arriving_as_a_run_ends_is_handed_to_a_run_that_is_not_cancelled(client, deployment, settings,
                                                                                     pool, tenant):
    first, state = _start(client, deployment)
    assert state.is_running()
    # the first run made its last (empty) claim; now a delivery arrives and its event triggers a run ...
    _deliver(pool, tenant)
    second, state = _start(client, deployment)
    # ... which the deployment's limit cancels: the first run still holds the slot (the window)
    assert state.is_cancelled(), state
    # the first run ends; the engine calls its hooks after the final state is set
    assert client.set_flow_run_state(first.id, Completed()).state.is_completed()
    handed = hand_over(github_events, client.read_flow_run(first.id), Completed())
    assert handed is not None
    run = client.read_flow_run(handed)
    assert run.deployment_id == deployment and run.parameters == {"route": ROUTE}
    # a runner takes it: the slot is free, so it runs (and would claim the delivery)
    assert client.set_flow_run_state(handed, Pending()).state.is_pending()
    # the same ended run never hands over twice (its id is the idempotency key)
    assert hand_over(github_events, client.read_flow_run(first.id), Completed()) == handed


def test_nothing_waiting_starts_nothing(client, deployment, settings, pool, tenant):
    first, _ = _start(client, deployment)
    client.set_flow_run_state(first.id, Completed())
    assert hand_over(github_events, client.read_flow_run(first.id), Completed()) is None
    # a delivery another run holds (claimed, lease running) is not waiting either
    delivery_id = _deliver(pool, tenant)
    with pool.connection() as conn:
        conn.execute("UPDATE webhook_deliveries SET flow_run_id = %s, claimed_at = now() WHERE delivery_id = %s",
                     [str(uuid.uuid4()), delivery_id])
    assert hand_over(github_events, client.read_flow_run(first.id), Completed()) is None
    # a run outside a deployment (a test, a direct call) hands over nothing
    assert hand_over(github_events, type("Run", (), {"deployment_id": None, "parameters": {"route": ROUTE},
                                                     "id": uuid.uuid4()})(), Completed()) is None

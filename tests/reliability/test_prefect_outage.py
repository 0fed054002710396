"""The Prefect server crashes (SIGKILL) while signed webhooks arrive; after its restart on the same port and
database every accepted delivery runs its flow exactly once: none lost, none twice.

The stack is `devmesh up`'s (embedded PostgreSQL, Prefect server, `deployments.serve`, gateway), started component
by component by bench/outage.py's OutageStack so that the server can go away alone. The outage here is 8 s (the
issue's 30 s runs in `python -m bench.outage`); the runner polls every 2 s and the gateway retries every 1 s
instead of 10 s / 5 s, the server has no UI and no scheduler, and only the two deployments with event triggers
are served, to keep the test short — triggers, events, outbox and runs are the same.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.outage import OutageStack, outage
from tests.conftest import shared_testdata

DELIVERIES = 4  # issues opened, issue_comment created, pull_request opened, issues closed: one wave of the runner
REDELIVERIES = 2
DOWNTIME_S = 8.0


@pytest.mark.slow
def test_deliveries_during_a_prefect_outage_run_exactly_once(tmp_path: Path):
    shared_testdata("github-webhooks", "issues", "opened.json")
    logs: list[str] = []
    started = time.monotonic()
    with OutageStack(tmp_path / "home", runner_poll_s=2, retry_interval_s=1, webhook_deployments_only=True,
                     lean_server=True, log=logs.append) as stack:
        result = outage(stack, deliveries=DELIVERIES, redeliveries=REDELIVERIES, downtime_s=DOWNTIME_S,
                        drain_timeout_s=150, log=logs.append)
        alive = stack.alive()
    figures, rows, runs = result["figures"], result["rows"], result["runs"]
    accepted = result["accepted_ids"]
    print(f"{time.monotonic() - started:.0f} s in all;", *logs, sep="\n")

    # while the server was down: every new delivery accepted, every redelivery a duplicate, all held in the outbox,
    # whose emit attempts failed (and were retried)
    assert figures["statuses"] == {"202": DELIVERIES, "200": REDELIVERIES}
    assert len(accepted) == DELIVERIES and figures["duplicates"] == REDELIVERIES
    assert figures["downtime_seconds"] >= DOWNTIME_S
    assert figures["pending_at_gateway_while_down"] == DELIVERIES
    assert figures["emit_failed_while_down"] == DELIVERIES
    # after the restart: the gateway and the runner survived the outage, and each delivery ran exactly once
    assert all(alive.values()), alive
    per_delivery = {i: [r for r in runs if r["delivery_id"] == i] for i in accepted}
    assert {i: len(r) for i, r in per_delivery.items()} == {i: 1 for i in accepted}
    assert all(r[0]["state"] == "COMPLETED" for r in per_delivery.values()), per_delivery
    assert len(runs) == DELIVERIES  # and no run for anything else
    for i in accepted:
        assert rows[i]["status"] == "processed" and rows[i]["emitted_at"] is not None
        assert rows[i]["attempts"] >= 2  # emits failed while down (see emit_failed_while_down), then succeeded
        assert str(rows[i]["flow_run_id"]) == per_delivery[i][0]["id"]  # processed by that very run
    assert figures["late_redeliveries"] == {"200": DELIVERIES}  # a redelivery after the drain runs nothing
    assert figures["lost"] == 0 and figures["doubled"] == 0 and figures["failed"] == 0

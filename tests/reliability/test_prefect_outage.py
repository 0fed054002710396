"""The Prefect server crashes (SIGKILL) while signed webhooks arrive; after its restart on the same port and
database every accepted delivery is handled exactly once (by a batch handler run): none lost, none twice.

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
    # after the restart: the gateway and the runner survived the outage, and each delivery was handled exactly once,
    # by a handler run (one run drains many deliveries; runs triggered while one drains are cancelled at once)
    assert all(alive.values()), alive
    by_id = {r["id"]: r for r in runs}
    for i in accepted:
        assert rows[i]["status"] == "processed" and rows[i]["handled"] == 1, rows[i]
        assert rows[i]["emitted_at"] is not None
        assert rows[i]["attempts"] >= 2  # emits failed while down (see emit_failed_while_down), then succeeded
        assert by_id[str(rows[i]["flow_run_id"])]["state"] == "COMPLETED"  # processed by a run that completed
    assert {r["state"] for r in runs} <= {"COMPLETED", "CANCELLED"}, runs
    assert 1 <= figures["flow_runs_completed"] <= DELIVERIES
    assert figures["handled_per_delivery_min"] == figures["handled_per_delivery_max"] == 1
    assert figures["late_redeliveries"] == {"200": DELIVERIES}  # a redelivery after the drain runs nothing
    assert figures["lost"] == 0 and figures["doubled"] == 0 and figures["failed"] == 0

"""The queries that moved out of deployments/ into tasks/, on the real database: doctor's server status, the
in-flight operation check (tenant-scoped), and the gateway's pending count and its refusal of a NUL payload."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from psycopg_pool import AsyncConnectionPool

from blocks.postgres import PgVectorStore
from tasks.database_status import current_role, server_status
from tasks.migrate import migrations
from tasks.operation_log import claim_operation, in_flight, update_operation
from tasks.webhooks import UnstorablePayload, pending_count, record_delivery


def test_server_status_reports_the_applied_migrations_and_pgvector(pool):
    with pool.connection() as conn:
        status = server_status(conn)
        role = current_role(conn)
    assert status.has_migrations_table and status.version.split(".")[0].isdigit() and role
    assert tuple(int(p) for p in status.pgvector.split(".")[:2]) >= (0, 7)
    assert status.applied == {v: hashlib.sha256(sql.encode()).hexdigest() for v, _, sql in migrations()}


def test_in_flight_sees_only_the_tenants_running_or_waiting_operation(pool, tenant):
    row, created = claim_operation(pool, tenant=tenant, key="k1", operation="github.create_issue", arguments={},
                                   actor={"kind": "test"}, flow_run_id=None)
    assert created and in_flight(pool, tenant, "k1") is None  # planned: not in flight
    update_operation(pool, row["id"], status="awaiting_approval")
    assert in_flight(pool, tenant, "k1") == (str(row["id"]), "awaiting_approval")
    assert in_flight(pool, tenant + "-other", "k1") is None
    update_operation(pool, row["id"], status="succeeded")
    assert in_flight(pool, tenant, "k1") is None


def test_a_nul_payload_is_refused_whole_and_pending_counts_received(pool, pg_home, tenant):
    async def scenario() -> tuple[int, int]:
        url = PgVectorStore(home=str(pg_home)).resolve_url()
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as apool:
            before = await pending_count(apool)
            kept = json.dumps({"action": "opened"})
            assert await record_delivery(apool, delivery_id="d-ok", event="issues", action="opened",
                                         repository="octo/app", tenants=[tenant, tenant + "-b"], payload_json=kept,
                                         route="github-discussions")
            with pytest.raises(UnstorablePayload) as refused:
                await record_delivery(apool, delivery_id="d-nul", event="issues", action="opened",
                                      repository="octo/app", tenants=[tenant], payload_json='{"a": "x\\u0000y"}',
                                      route="github-discussions")
            assert refused.value.item == "body" and "\\u0000" in refused.value.reason
            return before, await pending_count(apool)

    before, after = asyncio.run(scenario())
    assert after == before + 2  # one row per tenant of the first delivery, none of the refused one
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM webhook_deliveries WHERE delivery_id LIKE 'd-nul%'"
                            ).fetchone()[0] == 0

"""`devmesh doctor`: every check says ok, warn or fail, and a failure says how to fix it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from deployments.cli import app
from deployments.doctor import run_checks

runner = CliRunner()


def test_healthy_installation(settings):
    checks = {c.name: c for c in run_checks(settings)}
    for name in ("settings", "database", "privileges", "pgvector", "migrations", "local model"):
        assert checks[name].status == "ok", checks[name]
    assert "current" in checks["migrations"].detail


def test_unreachable_database_fails_with_a_fix(settings, monkeypatch):
    monkeypatch.setenv("DEVMESH_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 1
    database = next(c for c in json.loads(result.stdout) if c["name"] == "database")
    assert database["status"] == "fail" and "DEVMESH_DATABASE_URL" in database["fix"]


def test_prefect_server_and_blocks_are_checked(settings, prefect_harness):
    from prefect_aws import AwsCredentials

    AwsCredentials(region_name="eu-west-1").save("devmesh-aws", overwrite=True)
    checks = {c.name: c for c in run_checks(settings)}
    assert checks["prefect server"].status == "ok"
    assert checks["block devmesh-aws"].status == "ok"
    assert all(c.fix for c in checks.values() if c.status != "ok")


def test_missing_search_indexes_are_reported_with_the_fix_then_rebuilt(settings, pool, fake_embedder):
    from deployments.doctor import REBUILD_COMMAND, rebuild_missing_indexes
    from tasks.indexes import drop_keyword_index, drop_model_index, model_index_name
    from tasks.registry import ensure_model

    model_id = ensure_model(pool, fake_embedder.model_id, fake_embedder.dimensions)
    assert {c.name: c for c in run_checks(settings)}["search indexes"].status == "ok"
    with pool.connection() as conn:  # what a bulk load cut short by a crash leaves
        drop_model_index(conn, model_id)
        drop_keyword_index(conn)
    check = {c.name: c for c in run_checks(settings)}["search indexes"]
    assert check.status == "warn"
    assert model_index_name(model_id) in check.detail and "chunks_tsv" in check.detail
    assert REBUILD_COMMAND in check.fix and "ingest" in check.fix
    assert set(rebuild_missing_indexes(settings)) >= {model_index_name(model_id), "chunks_tsv"}
    assert {c.name: c for c in run_checks(settings)}["search indexes"].status == "ok"

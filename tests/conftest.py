"""Shared fixtures: one embedded PostgreSQL per session, rows cleared per test; one Prefect harness."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from blocks.embedders import register_embedder
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from tasks.migrate import ensure_schema
from tests.factories import FakeEmbedder

SHARED_TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"


def shared_testdata(*parts: str) -> Path:
    """A path under ../shared/testdata, or skip the test with the reason."""
    path = SHARED_TESTDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present: ../shared/testdata travels with CI, not with a clone of this repository")
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No DEVMESH_* variable of the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("DEVMESH_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session", autouse=True)
def audit_signing_key():
    """One Ed25519 audit key for the session in place of the Secret block, so that appending an audit record needs
    no Prefect API (tests of the block itself call use_audit_key(None) under prefect_harness)."""
    from blocks.audit_key import AuditKey
    from tasks.audit import use_audit_key

    key = AuditKey.generate()
    use_audit_key(key)
    yield key
    use_audit_key(None)


@pytest.fixture(scope="session")
def pg_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("devmesh-home")


@pytest.fixture(scope="session")
def fake_embedder() -> FakeEmbedder:
    embedder = FakeEmbedder()
    register_embedder("fake", embedder)
    return embedder


@pytest.fixture(scope="session")
def session_pool(pg_home):
    pool = PgVectorStore(home=str(pg_home)).pool()
    ensure_schema(pool)
    return pool


@pytest.fixture
def pool(session_pool):
    """The session's pool, with every row of the previous test gone."""
    with session_pool.connection() as conn:
        conn.execute("TRUNCATE embedding_usage, tenant_models, model_switches, documents, chunks, embeddings, term_stats, tenant_stats,"
                     " contexts, context_messages, operations, approvals, approvers, webhook_deliveries, repository_sync,"
                     " organizations, api_keys, registration_invites, tenant_grants, webhook_bindings, admission_buckets,"
                     " admission_failures, admission_seen, embedding_claims CASCADE")
    return session_pool


@pytest.fixture
def settings(pg_home, pool, fake_embedder, monkeypatch) -> Settings:
    """Settings on the session database with the fake embedder; also exported as DEVMESH_* for flows."""
    monkeypatch.setenv("DEVMESH_HOME", str(pg_home))
    monkeypatch.setenv("DEVMESH_EMBEDDER", "fake")
    return Settings(home=pg_home, embedder="fake")


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (it takes ~15-20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield

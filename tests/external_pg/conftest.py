"""The managed-database suite: one ManagedPostgres per session (TLS via a terminating proxy, SCRAM, an application
role that is neither superuser nor owner, `vector` pre-created by the admin), and the shared fixtures pointed at it.

`session_pool`, `pool` and `settings` are overridden here, so a test in this directory — including the existing
tests re-collected by its modules — runs as `devmesh_app` through DEVMESH_DATABASE_URL. `pg_home` fails: nothing in
here may fall back to the embedded superuser server, and every test checks that no embedded server was joined.
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from blocks import postgres
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from tasks.migrate import ensure_schema
from tests.external_pg.managed import ManagedPostgres


@pytest.fixture(scope="session")
def managed_pg(tmp_path_factory):
    server = ManagedPostgres.start(tmp_path_factory.mktemp("managed-pg"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_home():
    pytest.fail("a test of the managed-database suite asked for the embedded server (pg_home)")


@pytest.fixture(scope="session")
def session_pool(managed_pg):
    pool = PgVectorStore(url=SecretStr(managed_pg.app_url)).pool()
    ensure_schema(pool)
    return pool


@pytest.fixture
def settings(managed_pg, pool, fake_embedder, monkeypatch) -> Settings:
    """Settings on the managed database with the fake embedder; also exported as DEVMESH_* for flows."""
    monkeypatch.setenv("DEVMESH_DATABASE_URL", managed_pg.app_url)
    monkeypatch.setenv("DEVMESH_EMBEDDER", "fake")
    return Settings(database_url=managed_pg.app_url, embedder="fake")


@pytest.fixture(autouse=True)
def _no_embedded_server(managed_pg, monkeypatch):
    """The test joins no embedded server (a code path that ignored DEVMESH_DATABASE_URL would)."""
    before = dict(postgres._embedded_urls)
    monkeypatch.setenv("DEVMESH_DATABASE_URL", managed_pg.app_url)
    yield
    assert dict(postgres._embedded_urls) == before, "an embedded PostgreSQL was started during this test"

"""Migrations are atomic: each file and its version row commit together or not at all, the error is the one that
stopped it, and the next call says the same again. Each test runs its own migrations on a scratch database of the
session's embedded server (tests/reliability/test_database_faults.py cuts the real ones short with a full disk)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg_pool import ConnectionPool

import tasks.migrate as migrate
from blocks.errors import StoreError


@pytest.fixture
def scratch(session_pool, tmp_path, monkeypatch):
    """(pool on a new empty database, the directory its migrations are read from)."""
    name = f"migrate_{uuid.uuid4().hex[:10]}"
    with session_pool.connection() as conn:
        conn.autocommit = True
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.autocommit = False
        url = conn.info.dsn
    info = psycopg.conninfo.conninfo_to_dict(url)
    pool = ConnectionPool(psycopg.conninfo.make_conninfo(**{**info, "dbname": name}), min_size=1, max_size=2,
                          open=False)
    pool.open(wait=True, timeout=30)
    sql = tmp_path / "sql"
    sql.mkdir()
    monkeypatch.setattr(migrate, "SQL_DIR", sql)
    try:
        yield pool, sql
    finally:
        pool.close()
        with session_pool.connection() as conn:
            conn.autocommit = True
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.autocommit = False


def _state(pool) -> tuple[list[int], set[str], dict[str, bool]]:
    with pool.connection() as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        indexes = dict(conn.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c"
                                    " ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
                                    " WHERE n.nspname = 'public'").fetchall())
    return versions, tables, indexes


def test_a_failing_migration_leaves_the_previous_schema_and_fails_the_same_way_again(scratch):
    pool, sql = scratch
    (sql / "001_one.sql").write_text("CREATE TABLE one (id int PRIMARY KEY);\n")
    (sql / "002_two.sql").write_text("CREATE TABLE two (id int);\nINSERT INTO missing VALUES (1);\n")
    (sql / "003_three.sql").write_text("CREATE TABLE three (id int);\n")
    for _ in (1, 2):
        with pytest.raises(psycopg.errors.UndefinedTable, match='relation "missing" does not exist'):
            migrate.ensure_schema(pool)
        versions, tables, _ = _state(pool)
        assert versions == [1] and tables == {"schema_migrations", "one"}  # nothing of 002, nor 003
    (sql / "002_two.sql").write_text("CREATE TABLE two (id int);\n")  # never released: it may still change
    assert migrate.ensure_schema(pool) == [2, 3]
    assert _state(pool)[:2] == ([1, 2, 3], {"schema_migrations", "one", "two", "three"})
    assert migrate.ensure_schema(pool) == []


def test_an_edited_released_migration_is_refused(scratch):
    pool, sql = scratch
    (sql / "001_one.sql").write_text("CREATE TABLE one (id int);\n")
    migrate.ensure_schema(pool)
    (sql / "001_one.sql").write_text("CREATE TABLE one (id bigint);\n")
    migrate._done.discard(pool)
    with pytest.raises(StoreError, match="001_one.sql differs from the one applied"):
        migrate.ensure_schema(pool)


def test_concurrently_in_an_ordinary_migration_is_refused_before_anything_runs(scratch):
    pool, sql = scratch
    (sql / "001_one.sql").write_text("CREATE TABLE one (id int);\n")
    (sql / "002_index.sql").write_text("-- built CONCURRENTLY? no: in a comment it is no statement\n"
                                       "CREATE INDEX CONCURRENTLY one_id ON one (id);\n")
    with pytest.raises(StoreError, match=r"002_index.sql uses CONCURRENTLY.*devmesh: no-transaction"):
        migrate.ensure_schema(pool)
    with pool.connection() as conn:
        assert conn.execute("SELECT to_regclass('one')").fetchone() == (None,)


def test_a_no_transaction_migration_holds_one_statement(scratch):
    pool, sql = scratch
    (sql / "001_index.sql").write_text(f"{migrate.NO_TRANSACTION}\nCREATE TABLE a (id int);\nCREATE TABLE b (id int);\n")
    with pytest.raises(StoreError, match="001_index.sql is marked .* exactly one statement"):
        migrate.ensure_schema(pool)


def test_a_concurrent_index_build_that_fails_leaves_no_invalid_index_and_is_built_on_the_next_call(scratch):
    pool, sql = scratch
    (sql / "001_one.sql").write_text("CREATE TABLE one (id int);\nINSERT INTO one VALUES (1), (1);\n")
    (sql / "002_unique.sql").write_text(
        f"{migrate.NO_TRANSACTION}\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS one_id ON one (id);\n")
    with pytest.raises(psycopg.errors.UniqueViolation):
        migrate.ensure_schema(pool)
    versions, _, indexes = _state(pool)
    assert versions == [1] and "one_id" not in indexes  # not left INVALID, where IF NOT EXISTS would keep it
    with pool.connection() as conn:
        conn.execute("DELETE FROM one WHERE ctid <> (SELECT min(ctid) FROM one)")
    assert migrate.ensure_schema(pool) == [2]
    versions, _, indexes = _state(pool)
    assert versions == [1, 2] and indexes["one_id"] is True

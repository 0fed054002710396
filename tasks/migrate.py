"""Apply the numbered SQL migrations in tasks/sql/, once, in order, under an advisory lock.

Each migration is atomic: its SQL and its row in `schema_migrations` commit in one transaction of their own, so a
migration cut short (disk full, server killed, an error in its SQL) leaves the schema as the previous migration
left it, and the error raised is the one that cut it short — the next call tries the same migration again and
fails the same way until its cause is gone, never on a half-built schema.

A statement PostgreSQL refuses inside a transaction block (`CREATE INDEX CONCURRENTLY`, `DROP INDEX
CONCURRENTLY`, `REINDEX ... CONCURRENTLY`, `VACUUM`) goes in a file of its own whose first line is
`-- devmesh: no-transaction` and which holds that one statement: it runs in autocommit, its version row is
written once it succeeded; if it fails, an INVALID index it left is dropped, so the next call builds it again.
Such a statement in an ordinary migration is refused with an error naming the file, before anything runs.

Hand-written rather than alembic/yoyo: the whole job is "run these files once, in order, each atomically, refuse
an edited one", about 100 lines; alembic brings SQLAlchemy models and revision graphs devmesh does not use, and
neither knows the no-transaction files above. The figure that matters is the reliability one: a migration cut short
by a full disk leaves the previous schema and says so again on the next call
(tests/reliability/test_database_faults.py, docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import re
import weakref
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from blocks.errors import StoreError

__all__ = ["migrations", "ensure_schema", "NO_TRANSACTION"]

# Any constant works; it only has to be the same in every devmesh process.
_LOCK_KEY = 0x6465766D657368
# Pools whose schema is known current. Weak, so a pool that is gone is forgotten (an id() could be reused by a
# new pool on a database that has no schema yet).
_done: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()

SQL_DIR = Path(__file__).parent / "sql"
NO_TRANSACTION = "-- devmesh: no-transaction"
_OUTSIDE_TRANSACTION = re.compile(r"\b(CONCURRENTLY|VACUUM)\b", re.IGNORECASE)
_CONCURRENT_INDEX = re.compile(
    r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(\"?[\w.]+\"?)", re.IGNORECASE)


def _code(sql: str) -> str:
    """The SQL without comments and string literals (where a keyword would not be a statement's)."""
    sql = re.sub(r"--[^\n]*", " ", sql)
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.DOTALL)
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


def _statements(code: str) -> list[str]:
    return [s for s in (part.strip() for part in code.split(";")) if s]


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every file SQL_DIR/NNN_name.sql (tasks/sql/), sorted by version.

    Raises StoreError naming the file when a statement that cannot run in a transaction is in an ordinary
    migration, or a no-transaction migration holds more than one statement.
    """
    out = []
    for entry in SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"):
        version, _, rest = entry.name.partition("_")
        sql = entry.read_text(encoding="utf-8")
        code = _code(sql)
        if sql.startswith(NO_TRANSACTION):
            if len(_statements(code)) != 1:
                raise StoreError(f"migration {entry.name} is marked '{NO_TRANSACTION}' and must hold exactly one "
                                 "statement (it runs outside a transaction, so only one statement is atomic)")
        elif match := _OUTSIDE_TRANSACTION.search(code):
            raise StoreError(f"migration {entry.name} uses {match.group(1).upper()}, which PostgreSQL refuses "
                             f"inside a transaction: put that statement in a file of its own starting with "
                             f"'{NO_TRANSACTION}'")
        out.append((int(version), rest.removesuffix(".sql"), sql))
    return sorted(out)


def ensure_schema(pool: ConnectionPool) -> list[int]:
    """Apply missing migrations, each in a transaction of its own; refuse to run if a released migration was
    edited. Returns the versions applied. A failing migration raises its own error (psycopg's: the caller maps
    it, e.g. a full disk to StoreUnavailable) and leaves every earlier migration applied, itself not at all."""
    if pool in _done:
        return []
    applied: list[int] = []
    with pool.connection() as conn:
        conn.commit()  # the pool hands out idle connections; autocommit may only change on one
        conn.autocommit = True  # every transaction below is explicit: `with conn.transaction()` is BEGIN..COMMIT
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
            try:
                _apply(conn, applied)
            except BaseException:
                _unlock_quietly(conn)  # the migration's error is the one to report, not a failed unlock
                raise
            conn.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
        finally:
            if not conn.closed and not conn.broken:
                conn.autocommit = False
    _done.add(pool)
    return applied


def _apply(conn: psycopg.Connection, applied: list[int]) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    known = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    for version, name, sql in migrations():
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        if version in known:
            if known[version] != checksum:
                raise StoreError(
                    f"migration {version:03d}_{name}.sql differs from the one applied to this database; "
                    "released migrations are never edited, add a new numbered file instead"
                )
            continue
        record = ("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                  [version, name, checksum])
        if sql.startswith(NO_TRANSACTION):
            try:
                conn.execute(sql)
            except BaseException:
                _drop_invalid_index(conn, sql)
                raise
            conn.execute(*record)
        else:
            with conn.transaction():
                conn.execute(sql)
                conn.execute(*record)
        applied.append(version)


def _drop_invalid_index(conn: psycopg.Connection, sql: str) -> None:
    """A failed CREATE INDEX CONCURRENTLY leaves its index INVALID (and `IF NOT EXISTS` would then keep it)."""
    match = _CONCURRENT_INDEX.search(_code(sql))
    if match is None or conn.closed or conn.broken:
        return
    try:
        invalid = conn.execute(
            "SELECT i.indexrelid::regclass::text FROM pg_index i WHERE NOT i.indisvalid"
            " AND i.indexrelid = to_regclass(%s)", [match.group(1)]).fetchone()
        if invalid:
            conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {invalid[0]}")
    except psycopg.Error:
        pass  # the next call finds it INVALID again and tries once more; the original error is the one raised


def _unlock_quietly(conn: psycopg.Connection) -> None:
    if conn.closed or conn.broken:
        return  # a session lock dies with its session
    try:
        conn.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
    except psycopg.Error:
        pass

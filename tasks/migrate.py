"""Apply the numbered SQL migrations in tasks/sql/, once, in order, under an advisory lock."""

from __future__ import annotations

import hashlib
from pathlib import Path

from psycopg_pool import ConnectionPool

from blocks.errors import StoreError

__all__ = ["migrations", "ensure_schema"]

# Any constant works; it only has to be the same in every devmesh process.
_LOCK_KEY = 0x6465766D657368
_done: set[int] = set()


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every file tasks/sql/NNN_name.sql, sorted by version."""
    out = []
    for entry in (Path(__file__).parent / "sql").glob("[0-9][0-9][0-9]_*.sql"):
        version, _, rest = entry.name.partition("_")
        out.append((int(version), rest.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    return sorted(out)


def ensure_schema(pool: ConnectionPool) -> list[int]:
    """Apply missing migrations; refuse to run if a released migration was edited. Returns versions applied."""
    if id(pool) in _done:
        return []
    applied: list[int] = []
    with pool.connection() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.commit()
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
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        [version, name, checksum],
                    )
                applied.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
            conn.commit()
    _done.add(id(pool))
    return applied

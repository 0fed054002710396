"""What `devmesh doctor` reads of the database server: its version, the pgvector extension (installed, or only
available), the migrations applied with their checksums, and the role devmesh connects as."""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import Connection

__all__ = ["ServerStatus", "current_role", "server_status"]


@dataclass(frozen=True)
class ServerStatus:
    version: str  # the server's, e.g. "16.4"
    pgvector: str | None  # the installed vector extension's version
    pgvector_available: str | None  # the version CREATE EXTENSION vector would install
    has_migrations_table: bool
    applied: dict[int, str] = field(default_factory=dict)  # migration version -> sha256 of its SQL


def server_status(conn: Connection) -> ServerStatus:
    version = conn.execute("SHOW server_version").fetchone()[0]
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    available = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    has_table = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    applied = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()) if has_table else {}
    return ServerStatus(version, row[0] if row else None, available[0] if available else None, has_table, applied)


def current_role(conn: Connection) -> str:
    return conn.execute("SELECT current_user").fetchone()[0]

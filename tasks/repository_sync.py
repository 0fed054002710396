"""A repository's sync cursors (repository_sync, migration 007) and the ids of what a tenant stored from it: the SQL
of the sync-repository and github-events flows."""

from __future__ import annotations

from datetime import datetime

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

__all__ = ["advance_code_cursor", "read_cursor", "save_cursor", "stored_documents"]

CURSOR = "SELECT * FROM repository_sync WHERE tenant_id = %s AND repository = %s"
SAVE_CURSOR = """
INSERT INTO repository_sync (tenant_id, repository, issues_since, code_ref, code_sha)
VALUES (%(tenant)s, %(repo)s, %(since)s, %(ref)s, %(sha)s)
ON CONFLICT (tenant_id, repository) DO UPDATE SET
  issues_since = coalesce(excluded.issues_since, repository_sync.issues_since),
  code_ref = coalesce(excluded.code_ref, repository_sync.code_ref),
  code_sha = coalesce(excluded.code_sha, repository_sync.code_sha), synced_at = now()"""
STORED = "SELECT document_id, metadata->>'sha' FROM documents WHERE tenant_id = %s AND document_id LIKE %s"
ADVANCE = ("UPDATE repository_sync SET code_sha = %s, synced_at = now() WHERE tenant_id = %s"
           " AND repository = %s AND code_ref = %s AND code_sha = %s")


def read_cursor(pool: ConnectionPool, tenant: str, repository: str) -> dict:
    """The tenant's cursors of `repository` (issues_since, code_ref, code_sha); {} before its first sync."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(CURSOR, [tenant, repository]).fetchone() or {}


def save_cursor(pool: ConnectionPool, tenant: str, repo: str, *, since: datetime | None = None,
                ref: str | None = None, sha: str | None = None) -> None:
    """Move the cursors given (the others keep their values)."""
    with pool.connection() as conn:
        conn.execute(SAVE_CURSOR, {"tenant": tenant, "repo": repo, "since": since, "ref": ref, "sha": sha})


def stored_documents(pool: ConnectionPool, tenant: str, prefix: str) -> dict[str, str | None]:
    """Stored document ids starting with `prefix`, with their metadata `sha` (a file's blob sha)."""
    with pool.connection() as conn:
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return dict(conn.execute(STORED, [tenant, pattern]).fetchall())


def advance_code_cursor(pool: ConnectionPool, tenant: str, repository: str, ref: str, before: str,
                        after: str) -> bool:
    """Move the code cursor from `before` to `after` (a push ingested exactly that step); False if it was elsewhere."""
    with pool.connection() as conn:
        return conn.execute(ADVANCE, [after, tenant, repository, ref, before]).rowcount == 1

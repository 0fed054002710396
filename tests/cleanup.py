"""The tables of the schema, read from the catalog: which ones the `pool` fixture empties before each test (all but
a few kept on purpose, each with its reason, so that a table a new migration adds is never missed), and every row of
every table as text (for tests that look for a secret or another tenant's data anywhere)."""

from __future__ import annotations

__all__ = ["KEPT_TABLES", "cleared_tables", "clear", "dump_all"]

KEPT_TABLES = {
    "schema_migrations": "which migrations the schema has",
    "audit_log": "append-only: its trigger refuses TRUNCATE, and its hash chain runs through the whole session",
    "embedding_models": "the model registry: each model owns an HNSW index named by its id, which would be orphaned",
}


def cleared_tables(pool) -> list[str]:
    """Every table of the schema but KEPT_TABLES, read from the catalog."""
    with pool.connection() as conn:
        return [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND NOT tablename = ANY(%s)"
            " ORDER BY tablename", [list(KEPT_TABLES)])]


def clear(pool, tables: list[str]) -> None:
    """Empty `tables` (those cleared_tables named) in one TRUNCATE."""
    with pool.connection() as conn:
        conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")


def dump_all(pool) -> str:
    """Every row of every table of the schema as text."""
    with pool.connection() as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename")]
        return "\n".join(conn.execute(f"SELECT coalesce(string_agg(t::text, '\n'), '') FROM \"{table}\" t")
                         .fetchone()[0] for table in tables)

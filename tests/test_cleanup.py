"""The per-test cleanup (tests/cleanup.py) empties every table of the schema but the few it keeps on purpose."""

from __future__ import annotations

import re

from tasks.migrate import migrations
from tests.cleanup import KEPT_TABLES, clear, cleared_tables


def test_every_table_the_migrations_create_is_cleared_or_kept_with_a_reason(pool):
    created = {name for _, _, sql in migrations()
               for name in re.findall(r"CREATE (?:UNLOGGED )?TABLE (?:IF NOT EXISTS )?(\w+)", sql, re.IGNORECASE)}
    cleared = set(cleared_tables(pool))
    assert "llm_usage" in cleared  # the table the hand-kept list had missed
    assert cleared.isdisjoint(KEPT_TABLES) and created <= cleared | set(KEPT_TABLES), created - cleared
    assert all(reason for reason in KEPT_TABLES.values())


def test_a_table_added_later_is_cleared_too(pool):
    with pool.connection() as conn:
        conn.execute("CREATE TABLE cleanup_probe (id int)")
    try:
        assert "cleanup_probe" in cleared_tables(pool)
    finally:
        with pool.connection() as conn:
            conn.execute("DROP TABLE cleanup_probe")


def test_clear_empties_the_table_the_hand_kept_list_missed(pool):
    with pool.connection() as conn:
        conn.execute("INSERT INTO llm_usage (tenant_id, provider, model, calls) VALUES ('cleanup', 'openai', 'gpt', 1)")
    clear(pool, cleared_tables(pool))
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM llm_usage").fetchone() == (0,)

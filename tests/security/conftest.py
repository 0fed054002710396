"""Fixtures of the attack tests: a database of one's own (a fresh audit chain from record 1, free to break)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from blocks import postgres


@pytest.fixture
def fresh_database_url(pg_home, session_pool):
    """The URL of a new database on the session's embedded server (devmesh applies its schema on first use),
    dropped afterwards with the pool this process opened on it."""
    url = postgres.start_embedded(pg_home)
    name = f"sec_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    fresh = make_conninfo(url, dbname=name)
    yield fresh
    with postgres._lock:
        pool = postgres._pools.pop(fresh, None)
    if pool is not None:
        pool.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

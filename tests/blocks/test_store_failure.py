"""PgVectorStore.failure / database_failure: which errors stop a whole ingest (StoreUnavailable) and which are
one call's (None): a busy pool is not a dead server, a full /dev/shm is not a full disk."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import SecretStr

from blocks.errors import StoreUnavailable
from blocks.pg_failure import database_failure
from blocks.postgres import PgVectorStore, start_embedded

DEAD_URL = "postgresql://nobody@127.0.0.1:9/none"


def test_a_busy_pool_is_not_a_lost_server(session_pool, pg_home):
    url = start_embedded(pg_home)
    small = ConnectionPool(url, min_size=1, max_size=1, open=True, name="busy")
    try:
        with small.connection():
            with pytest.raises(PoolTimeout) as timeout:
                small.getconn(timeout=0.2)
    finally:
        small.close()
    assert PgVectorStore(home=str(pg_home)).failure(timeout.value) is None  # embedded, its postmaster runs
    assert PgVectorStore(url=SecretStr(url)).failure(timeout.value) is None  # external, it answers


def test_a_pool_timeout_with_the_server_gone_is_a_lost_server(tmp_path):
    exc = PoolTimeout("couldn't get a connection after 30.00 sec")
    failure = PgVectorStore(home=str(tmp_path)).failure(exc)  # no postmaster runs there
    assert isinstance(failure, StoreUnavailable) and "lost the connection" in str(failure)
    failure = PgVectorStore(url=SecretStr(DEAD_URL)).failure(exc)
    assert isinstance(failure, StoreUnavailable) and "127.0.0.1:9" in str(failure)


def test_a_full_shared_memory_is_not_a_full_disk():
    shm = psycopg.errors.DiskFull('could not resize shared memory segment "/PostgreSQL.2861" to 1073741824 bytes: '
                                  "No space left on device")
    assert database_failure(shm, "embedded PostgreSQL") is None
    disk = psycopg.errors.DiskFull('could not extend file "base/16384/16410": No space left on device')
    assert "ran out of disk space" in str(database_failure(disk, "embedded PostgreSQL"))

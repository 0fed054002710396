"""The search indexes' lifecycle: one partial HNSW index per embedding model and the full-text GIN index, their
build memory (HNSW sizing), the advisory locks around dropping and rebuilding them, and bulk loads that drop them
first and rebuild them after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import Connection, sql
from psycopg_pool import ConnectionPool

from blocks.embedded_conf import machine_memory
from blocks.errors import StoreUnavailable
from blocks.postgres import PgVectorStore, embedded_url
from tasks.postings import defer_postings, deferred_tenants, rebuild_postings

__all__ = [
    "model_index_name", "drop_model_index", "build_model_index", "count_model_rows", "model_index_exists",
    "drop_keyword_index", "build_keyword_index", "keyword_index_exists", "analyze", "bulk_load", "BULK_THRESHOLD",
    "HNSW_BUILD_MEMORY_MB", "hnsw_build_memory_mb", "index_memory_cap_mb", "index_lock", "missing_indexes",
    "rebuild_indexes",
]

COUNT_MODEL_ROWS = "SELECT count(*) FROM embeddings WHERE model_id = %(model_id)s"
MODEL_INDEX_NAMES = """
SELECT name FROM (SELECT 'embeddings_hnsw_m' || id AS name FROM embedding_models UNION ALL SELECT 'chunks_tsv') i
WHERE to_regclass(name) IS NULL ORDER BY name"""


def model_index_name(model_id: int) -> str:
    """Name of the partial HNSW index of one model."""
    return f"embeddings_hnsw_m{model_id}"


# pgvector builds the HNSW graph in maintenance_work_mem; once the graph no longer fits, the build goes on on disk
# and "will take significantly more time" (a NOTICE says so). Measured with pgvector 0.8: 2,251 bytes a row at 384
# dimensions and m = 16, so a fixed 1GB held 470k rows, not a million. The build asks for what the model's rows
# need (estimate + 25%), within these bounds (MB), and within the server's cap (index_memory_cap_mb).
HNSW_BUILD_MEMORY_MB = (1024, 16384)


def hnsw_build_memory_mb(rows: int, dimensions: int, m: int = 16, cap_mb: int | None = None) -> int:
    """maintenance_work_mem (MB) for building the HNSW graph of `rows` vectors in memory, at most `cap_mb`
    (index_memory_cap_mb; default: a quarter of this machine's RAM, the embedded server's cap)."""
    per_row = 4 * dimensions + 8 + 48 * m  # the vector and its neighbour lists: 2,312 bytes at 384-d, m = 16
    low, high = HNSW_BUILD_MEMORY_MB
    high = min(high, cap_mb if cap_mb is not None else _machine_cap_mb())
    return min(max(-(-rows * per_row * 5 // 4 // 2**20), low), high)


def index_memory_cap_mb(store: PgVectorStore, configured_mb: int | None = None) -> int:
    """The most maintenance_work_mem an index build may ask of `store`'s server (MB).

    `configured_mb` (settings.ingest.index_memory_mb) wins. Otherwise the embedded server, on this machine, gets a
    quarter of its RAM (a million 1,536-d rows would ask 8 GB: an OOM kill of the postmaster on a laptop); an
    external server, whose RAM and other tenants are unknown here, the lower bound (1 GB).
    """
    if configured_mb is not None:
        return configured_mb
    return _machine_cap_mb() if store.embedded else HNSW_BUILD_MEMORY_MB[0]


def _machine_cap_mb() -> int:
    ram = machine_memory()
    return HNSW_BUILD_MEMORY_MB[0] if ram is None else max(ram // 4 // 2**20, 64)


def _pool_cap_mb(pool: ConnectionPool) -> int:
    """index_memory_cap_mb of the server a pool connects to (a URL this process started embedded, or not)."""
    return _machine_cap_mb() if embedded_url(pool.conninfo) else HNSW_BUILD_MEMORY_MB[0]


def _create_index(conn: Connection, statement: sql.Composable, memory_mb: int) -> None:
    """CREATE INDEX in `memory_mb` of maintenance_work_mem. Parallel builds share it through /dev/shm: when that
    is too small ("could not resize shared memory segment"), build again without parallel workers."""
    conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(f"{memory_mb}MB")))
    try:
        with conn.transaction():  # a savepoint: the caller's transaction (register_model's insert) survives
            conn.execute(statement)
    except psycopg.OperationalError as exc:  # 53100 or 53200, by the errno of the failed resize
        if "shared memory segment" not in str(exc):
            raise
        conn.execute("SET max_parallel_maintenance_workers = 0")
        conn.execute(statement)
        conn.execute("RESET max_parallel_maintenance_workers")
    conn.execute("RESET maintenance_work_mem")
    conn.commit()


def build_model_index(conn: Connection, model_id: int, dimensions: int, *, m: int = 16, ef_construction: int = 64,
                      memory_cap_mb: int | None = None) -> None:
    """Create the model's partial HNSW index if missing (cosine, over embedding::vector(dimensions))."""
    rows = count_model_rows(conn, model_id)
    _create_index(conn, sql.SQL(
        "CREATE INDEX IF NOT EXISTS {name} ON embeddings USING hnsw ((embedding::vector({dims})) vector_cosine_ops)"
        " WITH (m = {m}, ef_construction = {efc}) WHERE model_id = {model_id}"
    ).format(
        name=sql.Identifier(model_index_name(model_id)), dims=sql.Literal(dimensions), m=sql.Literal(m),
        efc=sql.Literal(ef_construction), model_id=sql.Literal(model_id),
    ), hnsw_build_memory_mb(rows, dimensions, m, memory_cap_mb))


def drop_keyword_index(conn: Connection) -> None:
    """Drop the full-text GIN index before a bulk load; build_keyword_index restores it."""
    conn.execute("DROP INDEX IF EXISTS chunks_tsv")
    conn.commit()


def build_keyword_index(conn: Connection) -> None:
    """Create the full-text GIN index if missing (PostgreSQL 18 builds GIN indexes in parallel)."""
    _create_index(conn, sql.SQL("CREATE INDEX IF NOT EXISTS chunks_tsv ON chunks USING gin (tsv)"),
                  HNSW_BUILD_MEMORY_MB[0])


def analyze(conn: Connection) -> None:
    """Refresh the planner's statistics after a bulk load (stale ones turn anti-joins into full scans)."""
    conn.execute("ANALYZE chunks")
    conn.execute("ANALYZE embeddings")
    conn.commit()


# Above this many new embeddings (and more than the model holds), a load drops the model's HNSW index and the
# full-text GIN index and rebuilds them after: both build far faster than they take rows one by one.
# Meanwhile searches still answer, by exact scans.
BULK_THRESHOLD = 20_000


# Who may drop or build the search indexes holds a session advisory lock (two int4 keys: this class, then the
# model id for its HNSW index, KEYWORD_INDEX_KEY for the full-text one) from the drop until the rebuild. An
# ingest that finds indexes missing rebuilds them only if it gets the locks: missing while someone holds them
# means a bulk load (or a backfill) is under way and will build them itself when done. A lock dies with its
# session: a load cut short (crash, kill) leaves the indexes missing and the locks free.
INDEX_LOCK_CLASS = 0x646D  # "dm"
KEYWORD_INDEX_KEY = 0  # model ids start at 1


class _IndexLock:
    """A dedicated connection holding the index locks of one model (see index_lock)."""

    def __init__(self, conn: Connection, model_id: int) -> None:
        self.conn, self.model_id = conn, model_id

    def close(self) -> None:
        try:
            self.conn.close()  # the session's advisory locks go with it
        except psycopg.Error:
            pass


def index_lock(pool: ConnectionPool, model_id: int, *, keyword: bool = True, wait: bool = False) -> _IndexLock | None:
    """Take the index locks of `model_id` (and of the full-text index if `keyword`) on a connection of their own;
    None if another session holds one of them and not `wait`. The caller closes the returned lock."""
    conn = psycopg.connect(pool.conninfo, **{**(pool.kwargs or {}), "autocommit": True})
    try:
        keys = [model_id, KEYWORD_INDEX_KEY] if keyword else [model_id]
        for key in keys:
            if wait:
                conn.execute("SELECT pg_advisory_lock(%s, %s)", [INDEX_LOCK_CLASS, key])
            elif not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", [INDEX_LOCK_CLASS, key]).fetchone()[0]:
                conn.close()
                return None
    except BaseException:
        conn.close()
        raise
    return _IndexLock(conn, model_id)


@contextmanager
def bulk_load(pool: ConnectionPool, model_id: int, dimensions: int, new_rows: int, *, tenant: str | None = None,
              memory_cap_mb: int | None = None) -> Iterator[bool]:
    """Around a load of `new_rows` embeddings: drop the indexes if it is a bulk load, rebuild them after (always).
    A bulk load into `tenant` defers that tenant's BM25 postings and document frequencies too (tasks/postings.py)
    and rebuilds them after.

    Indexes found missing (an earlier bulk load was cut short) are rebuilt after this load too, whatever its size,
    unless another load holds their lock (it is loading in bulk and rebuilds them when done). A bulk load whose
    locks are held elsewhere loads without dropping anything. `memory_cap_mb`: see index_memory_cap_mb
    (default: from the pool's server).
    """
    if memory_cap_mb is None:
        memory_cap_mb = _pool_cap_mb(pool)
    with pool.connection() as conn:  # (its transaction ends before the drop, which must wait for every reader)
        drop = new_rows >= BULK_THRESHOLD and new_rows > count_model_rows(conn, model_id)
        # missing: an earlier bulk load died before rebuilding them (server crash, full disk), or one is under way
        missing = not drop and not (model_index_exists(conn, model_id) and keyword_index_exists(conn))
    lock = index_lock(pool, model_id) if drop or missing else None  # None: a bulk load under way holds them
    deferred = drop and lock is not None and tenant is not None
    if drop and lock is not None:
        drop_model_index(lock.conn, model_id)
        drop_keyword_index(lock.conn)
    try:
        if deferred:
            defer_postings(pool, tenant)
        yield lock is not None
    except BaseException as exc:
        # A dead or full database cannot build them (and waiting for a connection would hide the error): the next
        # ingest sees them missing and rebuilds them. Otherwise try, without masking the error under way.
        if lock is not None and not isinstance(exc, StoreUnavailable):
            try:
                _rebuild_indexes(lock, dimensions, memory_cap_mb)
            except Exception as rebuild_error:  # noqa: BLE001 - the first error is the one to report
                exc.add_note(f"the search indexes were not rebuilt ({rebuild_error}); the next ingest rebuilds them")
        if lock is not None:
            lock.close()
        raise
    if lock is not None:
        try:
            _rebuild_indexes(lock, dimensions, memory_cap_mb)
        finally:
            lock.close()


def _rebuild_indexes(lock: _IndexLock, dimensions: int, memory_cap_mb: int | None) -> None:
    """Build the indexes on the connection holding their locks, and the postings and document frequencies of every
    deferred tenant: a bulk load defers only while it holds the full-text index's lock, which this session holds
    now, so each deferral is this load's own or one a load cut short left (the hourly compaction would rebuild
    that one later; until then its tenant's keyword searches take the slower GIN path)."""
    build_model_index(lock.conn, lock.model_id, dimensions, memory_cap_mb=memory_cap_mb)
    build_keyword_index(lock.conn)
    for tenant in deferred_tenants(lock.conn):
        rebuild_postings(lock.conn, tenant)
    analyze(lock.conn)


def rebuild_indexes(pool: ConnectionPool, model_id: int, dimensions: int, *, memory_cap_mb: int | None = None,
                    wait: bool = True) -> bool:
    """Build the model's HNSW index and the full-text index if missing, under their locks (waiting for a load
    that holds them, unless not `wait`: then False if one does)."""
    lock = index_lock(pool, model_id, wait=wait)
    if lock is None:
        return False
    if memory_cap_mb is None:
        memory_cap_mb = _pool_cap_mb(pool)
    try:
        _rebuild_indexes(lock, dimensions, memory_cap_mb)
    finally:
        lock.close()
    return True


def missing_indexes(conn: Connection) -> list[str]:
    """Names of the search indexes absent now: each model's HNSW index, the full-text one (dropped by a bulk load
    under way, or by one cut short)."""
    return [r[0] for r in conn.execute(MODEL_INDEX_NAMES).fetchall()]


def keyword_index_exists(conn: Connection) -> bool:
    """Whether the full-text GIN index exists (it is absent during a bulk load)."""
    return conn.execute("SELECT to_regclass('chunks_tsv') IS NOT NULL").fetchone()[0]


def drop_model_index(conn: Connection, model_id: int) -> None:
    """Drop a model's HNSW index before a bulk load (pgvector: load first, index after, is much faster)."""
    conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(model_index_name(model_id))))
    conn.commit()


def count_model_rows(conn: Connection, model_id: int) -> int:
    """Embeddings stored for one model, all tenants."""
    return conn.execute(COUNT_MODEL_ROWS, {"model_id": model_id}).fetchone()[0]


def model_index_exists(conn: Connection, model_id: int) -> bool:
    """Whether the model's HNSW index exists (it is absent during a bulk load)."""
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [model_index_name(model_id)]).fetchone()[0]

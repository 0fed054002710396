"""Store chunks and their embeddings: content-hash diffing, binary COPY, one HNSW index per model."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import psycopg
from psycopg import Connection, sql
from psycopg.types.json import Jsonb
from prefect import task
from prefect.cache_policies import NONE
from psycopg_pool import ConnectionPool

from blocks.errors import ConfigError, InputError, StoreError, StoreUnavailable
from blocks.postgres import PgVectorStore, embedded_url

__all__ = [
    "DocumentIn",
    "StoreResult",
    "register_model",
    "model_index_name",
    "drop_model_index",
    "build_model_index",
    "hashes_needing_embedding",
    "unchanged_documents",
    "write_documents",
    "delete_documents",
    "count_model_rows",
    "document_hash",
    "write_batch",
    "ensure_model",
    "model_index_exists",
    "check_vector",
    "drop_keyword_index",
    "build_keyword_index",
    "analyze",
    "bulk_load",
    "BULK_THRESHOLD",
    "HNSW_BUILD_MEMORY_MB",
    "hnsw_build_memory_mb",
    "index_memory_cap_mb",
    "index_lock",
    "missing_indexes",
    "rebuild_indexes",
]

GET_MODEL = "SELECT id, dimensions FROM embedding_models WHERE name = %(name)s"
INSERT_MODEL = """
INSERT INTO embedding_models (name, dimensions) VALUES (%(name)s, %(dimensions)s)
ON CONFLICT (name) DO NOTHING RETURNING id"""
UNCHANGED_DOCUMENTS = """
SELECT d.document_id, d.chunk_count FROM documents d
JOIN unnest(%(ids)s::text[], %(hashes)s::text[]) AS n(document_id, content_hash)
  ON n.document_id = d.document_id AND n.content_hash = d.content_hash
WHERE d.tenant_id = %(tenant)s
  AND NOT EXISTS (
    SELECT 1 FROM chunks c LEFT JOIN embeddings e ON e.chunk_id = c.id AND e.model_id = %(model_id)s
    WHERE c.tenant_id = d.tenant_id AND c.document_id = d.document_id AND e.chunk_id IS NULL)"""
EMBEDDED_HASHES = """
SELECT DISTINCT c.content_hash FROM chunks c
JOIN embeddings e ON e.chunk_id = c.id AND e.model_id = %(model_id)s
WHERE c.tenant_id = %(tenant)s AND c.content_hash = ANY(%(hashes)s)"""
CACHED_VECTORS = """
SELECT DISTINCT ON (c.content_hash) c.content_hash, e.embedding FROM chunks c
JOIN embeddings e ON e.chunk_id = c.id AND e.model_id = %(model_id)s
WHERE c.tenant_id = %(tenant)s AND c.content_hash = ANY(%(hashes)s)"""
LOCK_DOCUMENTS = """
SELECT pg_advisory_xact_lock(hashtextextended(%(tenant)s || '/' || id, 0))
FROM unnest(%(ids)s::text[]) AS id ORDER BY id"""
UPSERT_DOCUMENTS = """
INSERT INTO documents (tenant_id, document_id, source, kind, content_hash, chunk_count, metadata)
SELECT %(tenant)s, * FROM unnest(%(ids)s::text[], %(sources)s::text[], %(kinds)s::text[], %(hashes)s::text[],
                                 %(counts)s::int[], %(metas)s::jsonb[])
ON CONFLICT (tenant_id, document_id) DO UPDATE SET
  source = excluded.source, kind = excluded.kind, content_hash = excluded.content_hash,
  chunk_count = excluded.chunk_count, metadata = excluded.metadata, updated_at = now()"""
EXISTING_CHUNKS = """
SELECT c.document_id, c.id, c.seq, c.content_hash, c.metadata, e.chunk_id IS NOT NULL FROM chunks c
LEFT JOIN embeddings e ON e.chunk_id = c.id AND e.model_id = %(model_id)s
WHERE c.tenant_id = %(tenant)s AND c.document_id = ANY(%(ids)s) ORDER BY c.document_id, c.seq"""
RESEQUENCE = """
UPDATE chunks c SET seq = u.seq, metadata = u.metadata
FROM unnest(%(ids)s::bigint[], %(seqs)s::int[], %(metas)s::jsonb[]) AS u(id, seq, metadata)
WHERE c.id = u.id"""
DELETE_CHUNKS = "DELETE FROM chunks WHERE id = ANY(%(ids)s)"
NEXT_IDS = "SELECT nextval('chunks_id_seq') FROM generate_series(1, %(n)s)"
COPY_CHUNKS = (
    "COPY chunks (id, tenant_id, document_id, seq, content, content_hash, token_count, metadata)"
    " FROM STDIN WITH (FORMAT BINARY)"
)
COPY_EMBEDDINGS = "COPY embeddings (chunk_id, model_id, tenant_id, embedding) FROM STDIN WITH (FORMAT BINARY)"
DELETE_DOCUMENTS = "DELETE FROM documents WHERE tenant_id = %(tenant)s AND document_id = ANY(%(ids)s) RETURNING document_id"
COUNT_MODEL_ROWS = "SELECT count(*) FROM embeddings WHERE model_id = %(model_id)s"


@dataclass
class DocumentIn:
    """A document ready to store: its chunks (from tasks.chunk) and the hash of text + chunker parameters."""

    document_id: str
    content_hash: str
    chunks: list  # list[tasks.chunk.Chunk]
    kind: str = "text"
    source: str | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class StoreResult:
    """What one write did."""

    documents: int = 0
    chunks_inserted: int = 0
    chunks_kept: int = 0
    chunks_deleted: int = 0
    embeddings_inserted: int = 0

    def add(self, other: "StoreResult") -> "StoreResult":
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


def model_index_name(model_id: int) -> str:
    """Name of the partial HNSW index of one model."""
    return f"embeddings_hnsw_m{model_id}"


def register_model(conn: Connection, name: str, dimensions: int) -> int:
    """Id of embedding model `name`, creating it and its HNSW index the first time."""
    row = conn.execute(GET_MODEL, {"name": name}).fetchone()
    if row is None:
        inserted = conn.execute(INSERT_MODEL, {"name": name, "dimensions": dimensions}).fetchone()
        row = conn.execute(GET_MODEL, {"name": name}).fetchone()
        if inserted is not None:  # only the registering transaction builds it (two builds can collide)
            build_model_index(conn, row[0], row[1])
    conn.commit()
    if row[1] != dimensions:
        raise ConfigError(f"model {name!r} is registered with {row[1]} dimensions, the embedder gives {dimensions}")
    return row[0]


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
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return HNSW_BUILD_MEMORY_MB[0]
    return max(ram // 4 // 2**20, 64)


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
def bulk_load(pool: ConnectionPool, model_id: int, dimensions: int, new_rows: int, *,
              memory_cap_mb: int | None = None) -> Iterator[bool]:
    """Around a load of `new_rows` embeddings: drop the indexes if it is a bulk load, rebuild them after (always).

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
    if drop and lock is not None:
        drop_model_index(lock.conn, model_id)
        drop_keyword_index(lock.conn)
    try:
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
    """Build the indexes on the connection holding their locks."""
    build_model_index(lock.conn, lock.model_id, dimensions, memory_cap_mb=memory_cap_mb)
    build_keyword_index(lock.conn)
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
    rows = conn.execute(
        "SELECT name FROM (SELECT 'embeddings_hnsw_m' || id AS name FROM embedding_models UNION ALL"
        " SELECT 'chunks_tsv') i WHERE to_regclass(name) IS NULL ORDER BY name").fetchall()
    return [r[0] for r in rows]


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


def unchanged_documents(pool: ConnectionPool, tenant: str, model_id: int, docs: list[DocumentIn]) -> dict[str, int]:
    """{document id: chunk count} of documents stored with the same hash and fully embedded in this model."""
    if not docs:
        return {}
    with pool.connection() as conn:
        rows = conn.execute(
            UNCHANGED_DOCUMENTS,
            {"tenant": tenant, "model_id": model_id, "ids": [d.document_id for d in docs],
             "hashes": [d.content_hash for d in docs]},
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def hashes_needing_embedding(pool: ConnectionPool, tenant: str, model_id: int, hashes: list[str]) -> set[str]:
    """Chunk hashes that no stored chunk of this tenant has an embedding for, in this model."""
    unique = sorted(set(hashes))
    if not unique:
        return set()
    with pool.connection() as conn:
        done = {r[0] for r in conn.execute(EMBEDDED_HASHES, {"tenant": tenant, "model_id": model_id, "hashes": unique})}
    return set(unique) - done


def check_vector(vector: np.ndarray, dimensions: int, item: str) -> np.ndarray:
    """The vector as float32, or an InputError naming the item if its shape or values are wrong."""
    vector = np.asarray(vector, dtype=np.float32)
    if vector.shape != (dimensions,):
        raise InputError(f"expected a vector of {dimensions} dimensions, got shape {vector.shape}", item=item)
    if not np.all(np.isfinite(vector)):
        raise InputError("vector contains NaN or infinity", item=item)
    return vector


def write_documents(
    pool: ConnectionPool, tenant: str, model_id: int, dimensions: int, docs: list[DocumentIn],
    vectors: dict[str, np.ndarray],
) -> StoreResult:
    """Write documents in one transaction: keep unchanged chunks, delete removed ones, COPY new ones.

    `vectors` maps content hash -> embedding for the chunks that were embedded for this call; any other new
    chunk must find its vector already stored under the same hash (the content-hash cache).
    """
    result = StoreResult()
    if not docs:
        return result
    with pool.connection() as conn, conn.transaction():
        new_chunks: list[tuple] = []  # (document_id, chunk)
        needs_vector: list[tuple] = []  # (existing chunk id, or None for new_chunks[i], i, chunk, item)
        reseq_ids, reseq_seqs, reseq_metas, delete_ids = [], [], [], []
        docs = sorted(docs, key=lambda d: d.document_id)
        ids = [d.document_id for d in docs]
        if len(set(ids)) != len(ids):
            raise InputError("the same document id appears twice in one write", item=tenant)
        conn.execute(LOCK_DOCUMENTS, {"tenant": tenant, "ids": ids})
        conn.execute(UPSERT_DOCUMENTS, {
            "tenant": tenant, "ids": ids, "sources": [d.source for d in docs], "kinds": [d.kind for d in docs],
            "hashes": [d.content_hash for d in docs], "counts": [len(d.chunks) for d in docs],
            "metas": [Jsonb(d.metadata) for d in docs],
        })
        existing_by_doc: dict[str, dict] = defaultdict(lambda: defaultdict(list))
        for document_id, cid, seq, h, meta, embedded in conn.execute(
            EXISTING_CHUNKS, {"tenant": tenant, "ids": ids, "model_id": model_id}
        ):
            existing_by_doc[document_id][h].append((cid, seq, meta, embedded))
        for doc in docs:
            existing = existing_by_doc[doc.document_id]
            for chunk in doc.chunks:
                item = f"{doc.document_id}#{chunk.seq}"
                if existing.get(chunk.content_hash):
                    cid, seq, meta, embedded = existing[chunk.content_hash].pop(0)
                    result.chunks_kept += 1
                    if seq != chunk.seq or meta != chunk.metadata:
                        reseq_ids.append(cid), reseq_seqs.append(chunk.seq), reseq_metas.append(Jsonb(chunk.metadata))
                    if not embedded:
                        needs_vector.append((cid, 0, chunk, item))
                    continue
                needs_vector.append((None, len(new_chunks), chunk, item))
                new_chunks.append((doc.document_id, chunk))
            delete_ids.extend(cid for rows in existing.values() for cid, *_ in rows)
            result.documents += 1
        # Only chunks that get a vector now look for a stored one of the same text (the content-hash cache).
        wanted = sorted({c.content_hash for *_, c, _ in needs_vector} - set(vectors))
        cached = dict(conn.execute(CACHED_VECTORS, {"tenant": tenant, "model_id": model_id, "hashes": wanted})) \
            if wanted else {}
        new_embeddings = [(cid, index, _vector_for(chunk, vectors, cached, dimensions, item))
                          for cid, index, chunk, item in needs_vector]
        if delete_ids:
            conn.execute(DELETE_CHUNKS, {"ids": delete_ids})
        if reseq_ids:
            conn.execute(RESEQUENCE, {"ids": reseq_ids, "seqs": reseq_seqs, "metas": reseq_metas})
        new_ids = [r[0] for r in conn.execute(NEXT_IDS, {"n": len(new_chunks)})] if new_chunks else []
        with conn.cursor() as cur:
            if new_chunks:
                with cur.copy(COPY_CHUNKS) as copy:
                    copy.set_types(["int8", "text", "text", "int4", "text", "text", "int4", "jsonb"])
                    for cid, (document_id, c) in zip(new_ids, new_chunks):
                        copy.write_row(
                            (cid, tenant, document_id, c.seq, c.text, c.content_hash, c.token_count, Jsonb(c.metadata))
                        )
            if new_embeddings:
                with cur.copy(COPY_EMBEDDINGS) as copy:
                    copy.set_types(["int8", "int4", "text", "vector"])
                    for chunk_id, index, vector in new_embeddings:
                        copy.write_row((new_ids[index] if chunk_id is None else chunk_id, model_id, tenant, vector))
        result.chunks_inserted += len(new_chunks)
        result.chunks_deleted += len(delete_ids)
        result.embeddings_inserted += len(new_embeddings)
    return result


def _vector_for(chunk, vectors: dict, cached: dict, dimensions: int, item: str) -> np.ndarray:
    vector = vectors.get(chunk.content_hash)
    if vector is None:
        vector = cached.get(chunk.content_hash)
    if vector is None:
        # The plan said this hash was embedded already, but it is gone: another writer removed it meanwhile.
        raise StoreError(f"{item}: no embedding for chunk {chunk.content_hash[:12]} (concurrent change); retry the ingest")
    return check_vector(vector, dimensions, item)


def delete_documents(pool: ConnectionPool, tenant: str, document_ids: list[str]) -> list[str]:
    """Delete documents with their chunks and embeddings; returns the ids that existed."""
    with pool.connection() as conn:
        return [r[0] for r in conn.execute(DELETE_DOCUMENTS, {"tenant": tenant, "ids": document_ids})]


def document_hash(text: str, *parameters: object) -> str:
    """sha256 of a document's text and the chunker parameters that shaped its chunks."""
    h = hashlib.sha256(text.encode("utf-8", "surrogatepass"))
    h.update(repr(parameters).encode())
    return h.hexdigest()


@task(name="write-documents", task_run_name="write-{label}", cache_policy=NONE)
def write_batch(store: PgVectorStore, tenant: str, model_id: int, dimensions: int, docs: list[DocumentIn],
                vectors: dict[str, np.ndarray], label: str = "batch") -> StoreResult:
    """Write one batch of documents in a single transaction."""
    return write_documents(store.pool(), tenant, model_id, dimensions, docs, vectors)


def ensure_model(pool: ConnectionPool, name: str, dimensions: int) -> int:
    """Id of an embedding model, registering it (and its HNSW index) on first use."""
    with pool.connection() as conn:
        return register_model(conn, name, dimensions)


def model_index_exists(conn: Connection, model_id: int) -> bool:
    """Whether the model's HNSW index exists (it is absent during a bulk load)."""
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [model_index_name(model_id)]).fetchone()[0]

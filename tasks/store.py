"""The write path: documents and their chunks and embeddings, by content-hash diffing and binary COPY.

The search indexes' lifecycle is in tasks/indexes.py, the embedding models in tasks/registry.py.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from psycopg.types.json import Jsonb
from prefect import task
from prefect.cache_policies import NONE
from psycopg_pool import ConnectionPool

from blocks.errors import InputError, StoreError
from blocks.postgres import PgVectorStore

__all__ = [
    "DocumentIn",
    "StoreResult",
    "hashes_needing_embedding",
    "unchanged_documents",
    "write_documents",
    "delete_documents",
    "document_hash",
    "write_batch",
    "check_vector",
]

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

"""What the 1,000,000-chunk benchmark (bench/million.py) relies on, checked small and fast.

- The HNSW build asks for enough maintenance_work_mem for the model's rows: building over 3,000 384-d rows with
  the sizing of tasks.indexes gives no pgvector "graph no longer fits" notice, while a 1MB budget does (so the check
  can fail). A fixed 1GB, as before, held 470k of a million rows and built the rest on disk.
- The synthetic corpus is deterministic block by block, its texts (hence content hashes) are unique, and the
  streamed exact top-10 equals brute force over the whole matrix.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bench.million import BLOCK_ROWS, Corpus
from tasks.chunk import Chunk
from tasks.store import DocumentIn, write_documents
from tasks.indexes import build_model_index, drop_model_index, hnsw_build_memory_mb
from tasks.registry import ensure_model
import tasks.indexes as indexes

DIMS = 384
ROWS = 3_000


def _load(pool, tenant: str) -> int:
    model_id = ensure_model(pool, "test-scale-384", DIMS)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(ROWS, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs, by_hash = [], {}
    for d in range(ROWS // 20):
        chunks = []
        for seq in range(20):
            text = f"scale test document {d} chunk {seq}"
            h = hashlib.sha256(text.encode()).hexdigest()
            chunks.append(Chunk(seq=seq, text=text, token_count=6, content_hash=h))
            by_hash[h] = vectors[d * 20 + seq]
        docs.append(DocumentIn(document_id=f"scale-{d}", content_hash=f"h{d}", chunks=chunks))
    with pool.connection() as conn:
        drop_model_index(conn, model_id)
    assert write_documents(pool, tenant, model_id, DIMS, docs, by_hash).embeddings_inserted == ROWS
    return model_id


def _build(pool, model_id: int) -> list[str]:
    notices: list[str] = []

    def handler(diagnostic) -> None:
        notices.append(diagnostic.message_primary or "")

    with pool.connection() as conn:
        drop_model_index(conn, model_id)
        before = conn.execute("SHOW maintenance_work_mem").fetchone()[0]
        conn.add_notice_handler(handler)
        try:
            build_model_index(conn, model_id, DIMS)
            assert conn.execute("SHOW maintenance_work_mem").fetchone()[0] == before  # reset after the build
        finally:
            conn.remove_notice_handler(handler)
    return [n for n in notices if "no longer fits" in n]


def test_hnsw_build_memory_fits_the_graph(pool, tenant, monkeypatch):
    model_id = _load(pool, tenant)
    monkeypatch.setattr(indexes, "HNSW_BUILD_MEMORY_MB", (1, 16384))  # the estimate alone, without the 1GB floor
    assert hnsw_build_memory_mb(ROWS, DIMS) < 16  # small enough that an underestimate would show
    assert _build(pool, model_id) == []
    monkeypatch.setattr(indexes, "hnsw_build_memory_mb", lambda rows, dims, m=16, cap_mb=None: 1)
    assert _build(pool, model_id), "a 1MB budget should not hold 3,000 vectors of 384 dimensions"


def test_hnsw_build_memory_sizes():
    big = 1 << 20  # a cap above the ceiling
    assert hnsw_build_memory_mb(0, DIMS, cap_mb=big) == 1024  # the floor, as before
    assert 2600 <= hnsw_build_memory_mb(1_000_000, DIMS, cap_mb=big) <= 3000  # 2,251 bytes a row measured, + 25 %
    assert hnsw_build_memory_mb(100_000_000, DIMS, cap_mb=big) == 16384  # the ceiling
    assert hnsw_build_memory_mb(1_000_000, 1536, cap_mb=2048) == 2048  # 8.2 GB wanted, the server's cap given


def test_hnsw_build_memory_is_capped_by_the_server():
    from pydantic import SecretStr

    from blocks.embedded_conf import machine_memory
    from blocks.postgres import PgVectorStore
    from tasks.indexes import index_memory_cap_mb

    ram_mb = machine_memory() // 2**20  # the machine's, or its container's limit if lower
    embedded = PgVectorStore(home="unused")
    external = PgVectorStore(url=SecretStr("postgresql://db.example:5432/devmesh"))
    assert index_memory_cap_mb(embedded) == ram_mb // 4  # this machine's server: a quarter of its RAM
    assert index_memory_cap_mb(external) == 1024  # another machine's, shared: the old fixed 1 GB
    assert index_memory_cap_mb(external, 4096) == 4096  # unless configured (DEVMESH_INGEST__INDEX_MEMORY_MB)
    assert hnsw_build_memory_mb(10**9, 1536) <= ram_mb // 4  # the default is this machine's cap


def test_corpus_is_deterministic_unique_and_exact():
    corpus = Corpus(3 * BLOCK_ROWS + 400, seed=3)  # a short last block
    assert corpus.blocks == 4 and corpus.block_size(3) == 20
    v1, t1 = corpus.vectors(2)
    v2, t2 = Corpus(3 * BLOCK_ROWS + 400, seed=3).vectors(2)
    assert np.array_equal(v1, v2) and np.array_equal(t1, t2)
    assert v1.shape == (BLOCK_ROWS, DIMS) and np.allclose(np.linalg.norm(v1, axis=1), 1, atol=1e-5)
    texts = [t for b in range(corpus.blocks) for t in corpus.texts(b, corpus.vectors(b)[1])]
    assert len(texts) == corpus.rows == len(set(texts))
    whole = np.vstack([corpus.vectors(b)[0] for b in range(corpus.blocks)])
    queries, query_texts, kinds = corpus.queries(20)
    rows, sims = corpus.exact_top(queries)
    brute = np.argsort(-(queries @ whole.T), axis=1)[:, :10]
    assert (rows == brute).mean() > 0.99  # float ties aside
    assert np.allclose(sims, np.take_along_axis(queries @ whole.T, rows, 1), atol=1e-6)
    assert set(kinds) == {"document", "topic"} and all(len(t.split()) == 5 for t in query_texts)
    with pytest.raises(ValueError, match="multiple of 20"):
        Corpus(BLOCK_ROWS + 7)

"""Store-path benchmark: devmesh's write_documents against raw binary COPY and langchain-postgres, same rows.

The rows are 384-d vectors with the structure of real embeddings: SciFact's MiniLM document vectors plus
noisy copies (v + N(0, sigma) per dimension, renormalised) and the document texts with a copy suffix.
Without ../shared/testdata the vectors are synthetic clusters instead (stated in the report).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from psycopg.types.json import Jsonb

from blocks.embedders.local import MODEL_ID
from tasks.chunk import Chunk
from tasks.evaluate import document_text, load_beir, load_precomputed
from tasks.store import DocumentIn, write_documents
from tasks.indexes import build_keyword_index, build_model_index, drop_keyword_index, drop_model_index
from tasks.postings import defer_postings, rebuild_postings
from tasks.registry import ensure_model

__all__ = ["BenchData", "make_data", "extra_rows", "devmesh_documents", "load_devmesh", "run_store",
           "SCIFACT", "TENANT", "DIMENSIONS"]

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "scifact"
TENANT = "bench"
DIMENSIONS = 384
CHUNKS_PER_DOC = 20
BATCH_CHUNKS = 2000
# Noise per dimension of the copies. 0.04 puts a copy at cosine ~0.79 from its source, so a copy's nearest
# neighbour sits about where a real corpus of this domain puts it (SciFact alone: median 0.68 at 5k docs;
# a 100k corpus is denser); measured figures are printed with the results.
SIGMA = 0.04
LANGCHAIN_BUDGET_S = 180.0  # langchain on all rows only if its first 10% projects under this


@dataclass
class BenchData:
    """Rows to store (vectors, texts, metadata), query vectors and texts, and how they were made."""

    vectors: np.ndarray
    texts: list[str]
    metadata: list[dict]
    query_vectors: np.ndarray
    query_texts: list[str]
    origin: str
    query_origin: str = ""
    stats: dict = field(default_factory=dict)


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def _scifact(rows: int, rng: np.random.Generator, start: int = 0, tag: str = "copy") -> tuple | None:
    if not (SCIFACT / "corpus.jsonl").is_file():
        return None
    data = load_beir(SCIFACT)
    pre = load_precomputed(SCIFACT, DIMENSIONS)
    if pre is None:
        return None
    ids = [d for d in data.corpus if d in pre.documents]
    base = np.stack([pre.documents[d] for d in ids])
    passages = [document_text(*data.corpus[d]) for d in ids]
    index = np.arange(start, start + rows)
    source, copy = index % len(ids), index // len(ids)
    vectors = base[source].copy()
    noisy = copy > 0 if tag == "copy" else np.ones(rows, dtype=bool)
    vectors[noisy] = _unit(vectors[noisy] + rng.normal(0, SIGMA, (int(noisy.sum()), DIMENSIONS)))
    texts = [f"{passages[s]} [{tag} {c}]" for s, c in zip(source, copy)]
    metadata = [{"source": ids[s], tag: int(c)} for s, c in zip(source, copy)]
    queries = [(q, data.queries[q]) for q in data.queries if q in pre.queries]
    return (vectors, texts, metadata, np.stack([pre.queries[q] for q, _ in queries]), [t for _, t in queries],
            base)


def _synthetic(rows: int, rng: np.random.Generator, start: int = 0, tag: str = "copy") -> tuple:
    """Clustered vectors in a low-rank subspace and texts drawn from per-cluster vocabularies."""
    topics = np.random.default_rng(7)  # the same clusters for every call
    basis = topics.normal(size=(48, DIMENSIONS))
    centres = _unit(topics.normal(size=(1000, 48)) @ basis)
    vocab = [f"term{i}" for i in range(20000)]
    topic_words = topics.integers(0, len(vocab), (len(centres), 40))
    cluster = rng.integers(0, len(centres), rows)
    vectors = _unit(centres[cluster] + rng.normal(0, SIGMA, (rows, DIMENSIONS)))
    zipf = np.minimum(rng.zipf(1.3, (rows, 60)), len(vocab)) - 1
    texts = []
    for r in range(rows):
        words = [vocab[w] for w in rng.choice(topic_words[cluster[r]], 90)] + [vocab[w] for w in zipf[r]]
        texts.append(" ".join(words) + f" [{tag} {start + r}]")
    metadata = [{"source": f"cluster-{c}", tag: start + r} for r, c in enumerate(cluster)]
    qc = topics.integers(0, len(centres), 300)
    queries = _unit(centres[qc] + topics.normal(0, SIGMA, (300, DIMENSIONS)))
    query_texts = [" ".join(vocab[w] for w in topics.choice(topic_words[c], 6)) for c in qc]
    return vectors, texts, metadata, queries, query_texts, None


def _nn_stats(vectors: np.ndarray, sample: int = 1000, seed: int = 1) -> dict:
    """Median cosine of each sampled row's 1st and 10th nearest neighbour (itself excluded)."""
    rows = np.random.default_rng(seed).choice(len(vectors), min(sample, len(vectors)), replace=False)
    first, tenth = [], []
    for block in np.array_split(rows, max(1, len(rows) // 200)):
        sims = vectors[block] @ vectors.T
        sims[np.arange(len(block)), block] = -2
        top = -np.sort(-np.partition(sims, -10, axis=1)[:, -10:], axis=1)
        first += top[:, 0].tolist()
        tenth += top[:, 9].tolist()
    return {"nn1_median": round(float(np.median(first)), 3), "nn10_median": round(float(np.median(tenth)), 3)}


def make_data(rows: int = 100_000, seed: int = 0) -> BenchData:
    """The benchmark rows: SciFact vectors and noisy copies if the test data is present, else synthetic."""
    rng = np.random.default_rng(seed)
    made = _scifact(rows, rng)
    if made is not None:
        vectors, texts, metadata, queries, query_texts, base = made
        origin = (f"SciFact: {len(base):,} MiniLM document vectors and {rows - len(base):,} noisy copies "
                  f"(v + N(0, {SIGMA}) per dimension, renormalised); texts = passage + ' [copy k]'")
        stats = {"real": _nn_stats(base), "bench": _nn_stats(vectors)}
        query_origin = f"{len(queries)} SciFact test-query vectors (MiniLM, precomputed)"
    else:
        vectors, texts, metadata, queries, query_texts, _ = _synthetic(rows, rng)
        origin = (f"synthetic: {rows:,} vectors in 1,000 clusters of a 48-d subspace, N(0, {SIGMA}) noise "
                  f"({SCIFACT} is absent)")
        stats = {"bench": _nn_stats(vectors)}
        query_origin = f"{len(queries)} synthetic query vectors near cluster centres"
    return BenchData(vectors, texts, metadata, queries, query_texts, origin, query_origin, stats)


def extra_rows(rows: int, start: int, seed: int = 99) -> tuple[np.ndarray, list[str], list[dict]]:
    """More rows of the same kind (for inserts with the index live): new noisy copies, new texts."""
    rng = np.random.default_rng(seed)
    made = _scifact(rows, rng, start, tag="online") or _synthetic(rows, rng, start, tag="online")
    return made[0], made[1], made[2]


def devmesh_documents(vectors, texts, metadata, prefix: str = "bench") -> tuple[list[DocumentIn], dict]:
    """Documents of CHUNKS_PER_DOC chunks each, and hash -> vector (what the ingest pipeline hands the store)."""
    docs, by_hash = [], {}
    for d, start in enumerate(range(0, len(texts), CHUNKS_PER_DOC)):
        chunks = []
        for seq, r in enumerate(range(start, min(start + CHUNKS_PER_DOC, len(texts)))):
            h = hashlib.sha256(texts[r].encode("utf-8")).hexdigest()
            # Word count stands in for model tokens: the store only records the number.
            chunks.append(Chunk(seq=seq, text=texts[r], token_count=len(texts[r].split()), content_hash=h,
                                metadata=metadata[r]))
            by_hash[h] = vectors[r]
        doc_hash = hashlib.sha256("".join(c.content_hash for c in chunks).encode()).hexdigest()
        docs.append(DocumentIn(document_id=f"{prefix}-{d:05d}", content_hash=doc_hash, chunks=chunks))
    return docs, by_hash


def _write(pool, model_id: int, docs: list[DocumentIn], by_hash: dict) -> float:
    per_batch = max(1, BATCH_CHUNKS // CHUNKS_PER_DOC)
    start = time.perf_counter()
    for i in range(0, len(docs), per_batch):
        batch = docs[i : i + per_batch]
        write_documents(pool, TENANT, model_id, DIMENSIONS, batch,
                        {c.content_hash: by_hash[c.content_hash] for d in batch for c in d.chunks})
    return time.perf_counter() - start


def load_devmesh(pool, data: BenchData) -> dict:
    """Bulk path as flows/ingest.py takes it (tasks.indexes.bulk_load): drop the model's HNSW index and the
    full-text GIN index, defer the tenant's BM25 postings, write, rebuild all three, ANALYZE."""
    model_id = ensure_model(pool, MODEL_ID, DIMENSIONS)
    docs, by_hash = devmesh_documents(data.vectors, data.texts, data.metadata)
    with pool.connection() as conn:
        drop_model_index(conn, model_id)
        drop_keyword_index(conn)
    defer_postings(pool, TENANT)
    load_s = _write(pool, model_id, docs, by_hash)
    with pool.connection() as conn:
        start = time.perf_counter()
        build_model_index(conn, model_id, DIMENSIONS)
        hnsw_s = time.perf_counter() - start
        start = time.perf_counter()
        build_keyword_index(conn)
        gin_s = time.perf_counter() - start
        start = time.perf_counter()
        rebuild_postings(conn, TENANT)
        postings_s = time.perf_counter() - start
        start = time.perf_counter()
        conn.execute("ANALYZE documents, chunks, embeddings, term_stats")
        analyze_s = time.perf_counter() - start
    return {"rows": len(data.texts), "documents": len(docs), "load_s": load_s, "rows_per_s": len(data.texts) / load_s,
            "hnsw_build_s": hnsw_s, "gin_build_s": gin_s, "postings_build_s": postings_s, "analyze_s": analyze_s,
            "model_id": model_id}


def online_insert(pool, rows: int, start: int) -> dict:
    """Insert `rows` more chunks (new documents) with the model's HNSW index live."""
    model_id = ensure_model(pool, MODEL_ID, DIMENSIONS)
    vectors, texts, metadata = extra_rows(rows, start)
    docs, by_hash = devmesh_documents(vectors, texts, metadata, prefix="online")
    seconds = _write(pool, model_id, docs, by_hash)
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


RAW_TABLE = """
DROP TABLE IF EXISTS bench_raw;
CREATE TABLE bench_raw (id bigint PRIMARY KEY, content text NOT NULL, metadata jsonb NOT NULL,
                        embedding vector(384) NOT NULL)"""
# The chunks table's full-text column, loaded as devmesh's bulk path loads it: GIN index built afterwards.
RAW_FTS_TABLE = """
DROP TABLE IF EXISTS bench_raw_fts;
CREATE TABLE bench_raw_fts (id bigint PRIMARY KEY, content text NOT NULL, metadata jsonb NOT NULL,
                            embedding vector(384) NOT NULL,
                            tsv tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED)"""
CONTEXT_ROWS = 20_000  # the full-text context rows are measured on the first rows only, to save time


def raw_copy(pool, data: BenchData, table: str = "bench_raw", ddl: str = RAW_TABLE, limit: int | None = None) -> dict:
    """Binary COPY of (id, text, metadata, vector) in one transaction: the ceiling of the write path."""
    rows = len(data.texts) if limit is None else min(limit, len(data.texts))
    with pool.connection() as conn:
        conn.execute(ddl)
        conn.commit()
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY {table} (id, content, metadata, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "jsonb", "vector"])
            for i in range(rows):
                copy.write_row((i, data.texts[i], Jsonb(data.metadata[i]), data.vectors[i]))
        conn.commit()
        seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def _sqlalchemy_url(pool) -> str:
    """postgresql+psycopg:// form of the pool's URL (the embedded server listens on a unix socket)."""
    with pool.connection() as conn:
        info = conn.info
        return (f"postgresql+psycopg://{info.user}:@/{info.dbname}?host={info.host}"
                if info.host.startswith("/") else f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{info.dbname}")


def langchain_add(pool, data: BenchData) -> dict:
    """langchain-postgres PGVector.add_embeddings in batches of BATCH_CHUNKS; all rows if the first tenth
    projects under LANGCHAIN_BUDGET_S, else only the first 10,000."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langchain_core.embeddings import Embeddings
        from langchain_postgres import PGVector

        class _Precomputed(Embeddings):
            """Vectors are given to add_embeddings; nothing is embedded."""

            def embed_documents(self, texts):  # pragma: no cover - never called
                raise NotImplementedError

            def embed_query(self, text):  # pragma: no cover - never called
                raise NotImplementedError

        store = PGVector(embeddings=_Precomputed(), connection=_sqlalchemy_url(pool), embedding_length=DIMENSIONS,
                         collection_name="bench", pre_delete_collection=True, use_jsonb=True)
        vectors = data.vectors.tolist()  # add_embeddings takes lists of floats; converted outside the timing
        ids = [f"row-{i}" for i in range(len(data.texts))]
        total = len(ids)
        first = min(total, max(BATCH_CHUNKS, 10_000 if total > 10_000 else total))
        done, start = 0, time.perf_counter()
        while done < total:
            stop = min(done + BATCH_CHUNKS, total)
            store.add_embeddings(data.texts[done:stop], vectors[done:stop], data.metadata[done:stop], ids[done:stop])
            done = stop
            if done == first and done < total:
                projected = (time.perf_counter() - start) * total / done
                if projected > LANGCHAIN_BUDGET_S:
                    break
        seconds = time.perf_counter() - start
        if getattr(store, "_engine", None) is not None:
            store._engine.dispose()  # release its connections before devmesh's measurement
    return {"rows": done, "seconds": seconds, "rows_per_s": done / seconds, "subset": done < total}


def _checkpoint(pool) -> None:
    """Flush the previous load's WAL and dirty pages so it does not slow the next measurement."""
    with pool.connection() as conn:
        conn.execute("CHECKPOINT")


def _size(pool, *tables: str) -> int:
    with pool.connection() as conn:
        return sum(conn.execute("SELECT pg_total_relation_size(%s::regclass)", [t]).fetchone()[0] for t in tables)


def run_store(pool, data: BenchData, log=print) -> dict:
    """Raw COPY, raw COPY with devmesh's full-text column, langchain, then devmesh (bulk), on the same rows."""
    out: dict = {}
    log(f"store: raw binary COPY of {len(data.texts):,} rows")
    out["raw"] = raw_copy(pool, data)
    out["raw"]["bytes"] = _size(pool, "bench_raw")
    _checkpoint(pool)
    log(f"store: raw COPY of {CONTEXT_ROWS:,} rows with an english tsvector column (as devmesh's chunks table)")
    out["raw_fts"] = raw_copy(pool, data, "bench_raw_fts", RAW_FTS_TABLE, CONTEXT_ROWS)
    with pool.connection() as conn:
        conn.execute("DROP TABLE bench_raw, bench_raw_fts")
    _checkpoint(pool)
    log("store: langchain-postgres PGVector.add_embeddings")
    out["langchain"] = langchain_add(pool, data)
    out["langchain"]["bytes"] = _size(pool, "langchain_pg_embedding")
    with pool.connection() as conn:
        conn.execute("DROP TABLE IF EXISTS langchain_pg_embedding, langchain_pg_collection CASCADE")
    _checkpoint(pool)
    log("store: devmesh write_documents (bulk path: HNSW and GIN indexes dropped, then rebuilt)")
    out["devmesh"] = load_devmesh(pool, data)
    out["devmesh"]["bytes"] = _size(pool, "documents", "chunks", "embeddings", "term_stats", "tenant_stats", "chunk_postings")
    _checkpoint(pool)
    return out

"""Search benchmark at 100k chunks: latency of vector and hybrid queries through tasks.search.run_search, and
recall@10 of the HNSW index against exact (brute-force) search, for several ef_search values."""

from __future__ import annotations

import statistics
import time

import numpy as np

from blocks.embedders.local import MODEL_ID
from blocks.settings import SearchSettings
from bench.store import CHUNKS_PER_DOC, DIMENSIONS, SIGMA, TENANT, BenchData, load_devmesh
from tasks.search import SearchRequest, run_search
from tasks.registry import resolve_model

__all__ = ["run_search_bench", "EF_SEARCH", "HNSW_PARAMETERS"]

EF_SEARCH = (40, 100, 200)
HNSW_PARAMETERS = {"m": 16, "ef_construction": 64}  # tasks.indexes.build_model_index defaults
RANDOM_QUERIES = 100


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _loaded_rows(pool) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM embeddings e JOIN embedding_models m ON m.id = e.model_id"
            " WHERE m.name = %s AND e.tenant_id = %s", [MODEL_ID, TENANT]).fetchone()
    return row[0]


def _exact(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Row indexes of the exact top-k by cosine (vectors are unit length) and the k-th similarity."""
    top, kth = [], []
    for start in range(0, len(queries), 100):
        sims = queries[start : start + 100] @ vectors.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.take_along_axis(part, np.argsort(-np.take_along_axis(sims, part, 1), axis=1), 1)
        top.append(order)
        kth.append(np.take_along_axis(sims, order[:, -1:], 1)[:, 0])
    return np.vstack(top), np.concatenate(kth)


def _row(hit) -> int:
    return int(hit.document_id.rsplit("-", 1)[1]) * CHUNKS_PER_DOC + hit.seq


def _vector_runs(pool, model, data: BenchData, queries: np.ndarray, texts: list[str], ef: int,
                 exact_kth: np.ndarray) -> dict:
    settings = SearchSettings(ef_search=ef)
    latencies, recalls = [], []
    for q, text, kth in zip(queries, texts, exact_kth):
        request = SearchRequest(query=text, mode="vector", limit=10, tenant=TENANT)
        start = time.perf_counter()
        hits = run_search(pool, request, settings=settings, model=model, vector=q)
        latencies.append((time.perf_counter() - start) * 1000)
        # A hit counts when it is as similar as the exact 10th neighbour (ties at the boundary are not misses).
        rows = [_row(h) for h in hits]
        sims = data.vectors[rows] @ q if rows else np.zeros(0)
        recalls.append(float(np.sum(sims >= kth - 1e-6)) / 10)
    return {"ef_search": ef, "queries": len(latencies), "p50_ms": statistics.median(latencies),
            "p99_ms": _percentile(latencies, 99), "recall@10": float(np.mean(recalls))}


def _timed(pool, model, queries, texts, mode: str, budget_s: float, minimum: int, maximum: int) -> dict:
    latencies = []
    settings = SearchSettings()
    started = time.perf_counter()
    for q, text in zip(queries[:maximum], texts[:maximum]):
        start = time.perf_counter()
        run_search(pool, SearchRequest(query=text, mode=mode, limit=10, tenant=TENANT), settings=settings,
                   model=model, vector=q)
        latencies.append((time.perf_counter() - start) * 1000)
        if len(latencies) >= minimum and time.perf_counter() - started > budget_s:
            break
    return {"mode": mode, "queries": len(latencies), "p50_ms": statistics.median(latencies),
            "p99_ms": _percentile(latencies, 99), "ef_search": settings.ef_search, "candidates": settings.candidates}


def _query_embedding(texts: list[str]) -> dict:
    """Latency of embedding one query at a time with the warm local model."""
    from blocks.embedders.local import LocalEmbedder

    embedder = LocalEmbedder()
    embedder.embed(texts[:4])  # load, verify, warm up
    latencies = []
    for text in texts:
        start = time.perf_counter()
        embedder.embed([text])
        latencies.append((time.perf_counter() - start) * 1000)
    return {"queries": len(latencies), "p50_ms": statistics.median(latencies), "p99_ms": _percentile(latencies, 99),
            "threads": embedder.threads}


def run_search_bench(pool, data: BenchData, log=print) -> dict:
    """Vector latency and recall@10 per ef_search, hybrid latency, query-embedding latency; loads data if needed."""
    out: dict = {"rows": len(data.texts), "hnsw": HNSW_PARAMETERS}
    if _loaded_rows(pool) != len(data.texts):
        log(f"search: loading {len(data.texts):,} rows first (bulk path)")
        out["setup"] = load_devmesh(pool, data)
    model = resolve_model(pool, MODEL_ID)
    rng = np.random.default_rng(5)
    real = data.query_vectors
    noisy = (real + rng.normal(0, SIGMA, real.shape)).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    queries = np.vstack([real, noisy])
    texts = data.query_texts + data.query_texts
    out["queries"] = {"real": len(real), "noisy": len(noisy), "origin": data.query_origin}
    _, kth = _exact(data.vectors, queries)

    log(f"search: warm-up pass over {len(queries)} vector queries")
    _vector_runs(pool, model, data, queries, texts, EF_SEARCH[0], kth)
    out["vector"] = []
    for ef in EF_SEARCH:
        log(f"search: vector top-10, ef_search={ef}")
        out["vector"].append(_vector_runs(pool, model, data, queries, texts, ef, kth))

    random_q = rng.normal(size=(RANDOM_QUERIES, DIMENSIONS)).astype(np.float32)
    random_q /= np.linalg.norm(random_q, axis=1, keepdims=True)
    _, random_kth = _exact(data.vectors, random_q)
    out["random"] = [_vector_runs(pool, model, data, random_q, ["random"] * RANDOM_QUERIES, ef, random_kth)
                     for ef in EF_SEARCH]

    # Every query text twice (with its real and its noisy vector), as the vector figures: issue 13's figures.
    log(f"search: keyword top-10, all {len(queries)} queries")
    out["keyword"] = _timed(pool, model, queries, texts, "keyword", float("inf"), len(queries), len(queries))
    log(f"search: hybrid top-10, all {len(queries)} queries")
    out["hybrid"] = _timed(pool, model, queries, texts, "hybrid", float("inf"), len(queries), len(queries))
    log("search: query embedding with the local model")
    out["query_embedding"] = _query_embedding(data.query_texts)
    return out

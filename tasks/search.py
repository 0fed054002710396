"""Search: vector (HNSW, iterative scans), keyword (BM25 over Postgres lexemes) and hybrid (RRF).

Keyword search has two exact paths: without filters, the tenant's packed postings (tasks/postings.py), read once
and scored in numpy; with filters (documents, metadata, time), the chunks the GIN index finds, pruned by MaxScore
(tasks/gin_keyword.py), because the filters are conditions on chunks. A tenant whose postings a bulk load defers
takes the GIN path too until the load has rebuilt them. What the rankings of one search share (the request's
filters, the configured connection) is in tasks/ranking_scope.py."""

from __future__ import annotations

from concurrent.futures import Future
from datetime import datetime
from typing import Literal

import numpy as np
from psycopg import Connection, sql
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from blocks.errors import ConfigError, InputError
from blocks.pg_failure import search_deadline
from blocks.settings import SearchSettings
from blocks.storable import StorableModel
from tasks.fusion import convex, rescore_turns, turn_candidates
from tasks.gin_keyword import gin_keyword_ranking
from tasks.postings import postings_ranking
from tasks.ranking_scope import configure_hnsw, configure_search, ranking_connection, request_filters

__all__ = ["SearchRequest", "SearchHit", "configure_hnsw", "vector_ranking", "keyword_ranking", "gin_keyword_ranking",
           "rrf", "run_search"]

SearchMode = Literal["vector", "keyword", "hybrid"]

# Filters apply inside the ORDER BY ... LIMIT so that pgvector's iterative scan keeps reading the index
# until `limit` rows pass them (https://github.com/pgvector/pgvector#iterative-index-scans).
VECTOR_RANKING = """
WITH nearest AS MATERIALIZED (
  SELECT e.chunk_id, (e.embedding::vector({dims}) <=> %(q)s::vector({dims})) AS distance
  FROM embeddings e {join}
  WHERE e.model_id = {model_id} AND e.tenant_id = %(tenant)s {filters}
  ORDER BY distance LIMIT %(n)s)
SELECT chunk_id, 1 - distance FROM nearest ORDER BY distance, chunk_id"""
SIMILARITIES = """
SELECT chunk_id, 1 - (embedding::vector({dims}) <=> %(q)s::vector({dims})) FROM embeddings
WHERE model_id = {model_id} AND chunk_id = ANY(%(ids)s)"""
HIT_ROWS = """
SELECT id, document_id, seq, content, metadata, created_at FROM chunks WHERE tenant_id = %(tenant)s AND id = ANY(%(ids)s)"""


class SearchRequest(StorableModel):
    """One search: the query, the mode, filters and (optionally) ranking overrides."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, max_length=10_000, description="What to look for.")
    mode: SearchMode = Field("hybrid", description="vector, keyword or hybrid (RRF of both).")
    limit: int = Field(10, ge=1, le=200, description="Hits to return.")
    tenant: str = Field("default", min_length=1, max_length=128, description="Tenant whose data is searched.")
    document_ids: list[str] | None = Field(None, description="Only these documents (or context ids).")
    metadata: dict | None = Field(None, description="Only chunks whose metadata contains this JSON object.")
    min_similarity: float | None = Field(None, ge=-1, le=1, description="Drop hits below this cosine similarity.")
    model: str | None = Field(None, description="Embedding model to search; default: the embedder's.")
    rrf_k: int | None = Field(None, ge=1, description="Fuse by RRF with this constant (whatever the fusion setting).")
    vector_weight: float | None = Field(None, ge=0)
    keyword_weight: float | None = Field(None, ge=0)
    created_after: datetime | None = Field(
        None, description="Only chunks created at or after this time (a message's own created_at for conversations).")
    created_before: datetime | None = Field(None, description="Only chunks created before this time.")

    @field_validator("query")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("query contains a NUL byte")
        if not v.strip():
            raise ValueError("query is blank")
        return v

    @field_validator("created_after", "created_before")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2024-05-08T13:56:00Z)")
        return v

    @model_validator(mode="after")
    def _window_not_empty(self) -> "SearchRequest":
        if self.created_after and self.created_before and self.created_after >= self.created_before:
            raise ValueError("created_after must be before created_before")
        return self


class SearchHit(BaseModel):
    """One ranked chunk."""

    chunk_id: int
    document_id: str
    seq: int
    text: str
    score: float = Field(description="Ranking score of the mode (cosine, BM25 or RRF).")
    similarity: float | None = Field(None, description="Cosine similarity to the query, when embedded.")
    keyword_score: float | None = Field(None, description="BM25 score, when the keyword side matched.")
    metadata: dict
    relevance: Literal["high", "medium", "low"]
    created_at: datetime | None = Field(None, description="When the chunk's content was created (said, for a turn).")


def vector_ranking(db: ConnectionPool | Connection, model: tuple[int, int], vector: np.ndarray, request: SearchRequest,
                   n: int, settings: SearchSettings) -> list[tuple[int, float]]:
    """[(chunk_id, cosine similarity)] nearest first, filtered, from the model's HNSW index (on a connection of
    the pool `db`, or on the connection `db` run_search configured)."""
    model_id, dims = model
    vector = np.asarray(vector, dtype=np.float32)
    if vector.shape != (dims,):
        raise InputError(f"expected a query vector of {dims} dimensions, got shape {vector.shape}", item="vector")
    filters, params = request_filters(request)
    # Chunks are joined only to filter on them: without filters the index scan alone answers.
    join = sql.SQL("JOIN chunks c ON c.id = e.chunk_id") if params else sql.SQL("")
    query = sql.SQL(VECTOR_RANKING).format(dims=sql.Literal(dims), model_id=sql.Literal(model_id), filters=filters,
                                           join=join)
    with ranking_connection(db, settings, ef=n) as conn:
        rows = conn.execute(query, {**params, "q": vector, "tenant": request.tenant, "n": n}).fetchall()
    return [(r[0], float(r[1])) for r in rows]


def keyword_ranking(db: ConnectionPool | Connection, request: SearchRequest, n: int,
                    settings: SearchSettings) -> list[tuple[int, float]]:
    """[(chunk_id, BM25 score)] best first, exact: from the postings when the request has no filters, else from
    the GIN index (gin_keyword_ranking). `db`: as vector_ranking's."""
    if request_filters(request)[1]:
        return gin_keyword_ranking(db, request, n, settings)
    with ranking_connection(db, settings) as conn:
        ranked = postings_ranking(conn, request.query, request.tenant, n, settings)
        return ranked if ranked is not None else gin_keyword_ranking(conn, request, n, settings)


def rrf(rankings: list[list[int]], weights: list[float], k: int) -> list[tuple[int, float]]:
    """Reciprocal Rank Fusion: score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1; ties by first appearance."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def _relevance(similarity: float | None, score: float, top: float) -> str:
    if similarity is not None:  # all-MiniLM-L6-v2 cosine: > 0.6 is a near paraphrase, < 0.35 mostly unrelated
        return "high" if similarity >= 0.6 else "medium" if similarity >= 0.35 else "low"
    ratio = score / top if top > 0 else 0.0
    return "high" if ratio >= 0.75 else "medium" if ratio >= 0.4 else "low"


def _fuse(conn: Connection, request: SearchRequest, settings: SearchSettings, sims: dict[int, float],
          kw: dict[int, float]) -> list[tuple[int, float]]:
    """The hybrid ranking: RRF, or the convex fusion with conversation turns re-scored (tasks/fusion.py)."""
    weights = [request.vector_weight if request.vector_weight is not None else settings.vector_weight,
               request.keyword_weight if request.keyword_weight is not None else settings.keyword_weight]
    if settings.fusion == "rrf" or request.rrf_k is not None:
        return rrf([list(sims), list(kw)], weights, request.rrf_k or settings.rrf_k)
    if sum(weights) <= 0:
        raise InputError("vector_weight and keyword_weight cannot both be 0", item="search")
    fused = convex(sims, kw, *weights)
    if not fused or settings.turn_neighbour_weight + settings.turn_window_weight + settings.speaker_boost == 0:
        return fused
    filters, params = request_filters(request)
    fused, candidates = turn_candidates(conn, request.tenant, fused, settings.turn_window, filters, params)
    return rescore_turns(fused, candidates, request.query,
                         neighbour_weight=settings.turn_neighbour_weight, window=settings.turn_window,
                         window_weight=settings.turn_window_weight, speaker_boost=settings.speaker_boost)


def run_search(pool: ConnectionPool, request: SearchRequest, *, settings: SearchSettings,
               model: tuple[int, int] | None = None, vector: np.ndarray | Future | None = None) -> list[SearchHit]:
    """Rank, fuse and hydrate hits; `vector` is the embedded query (needed unless mode is keyword), or a Future
    of it (tasks.embed.embed_search_query: a hybrid search ranks by keyword while the query embeds). A ranking
    query running past settings.timeout_s is cancelled: SearchTimeout."""
    with search_deadline(settings.timeout_s):
        return _run_search(pool, request, settings, model, vector)


def _run_search(pool: ConnectionPool, request: SearchRequest, settings: SearchSettings,
                model: tuple[int, int] | None, vector: np.ndarray | Future | None) -> list[SearchHit]:
    """Every query of one search on one connection, in one transaction configured once."""
    n = max(settings.candidates, request.limit)
    nearest = n if request.mode == "hybrid" else request.limit
    sims: dict[int, float] = {}
    kw: dict[int, float] = {}
    if request.mode != "keyword" and (model is None or vector is None):
        raise ConfigError(f"{request.mode} search needs an embedding model and a query vector")
    with pool.connection() as conn:
        configure_search(conn, settings, nearest if request.mode != "keyword" else None)
        if request.mode != "vector":  # first: it needs no vector
            kw = dict(keyword_ranking(conn, request, n if request.mode == "hybrid" else request.limit, settings))
        if isinstance(vector, Future):
            vector = vector.result()  # the embedder's own error, if it failed
        if request.mode != "keyword":
            sims = dict(vector_ranking(conn, model, vector, request, nearest, settings))
        if request.mode == "vector":
            ranked = list(sims.items())
        elif request.mode == "keyword":
            ranked = list(kw.items())
        else:
            ranked = _fuse(conn, request, settings, sims, kw)
        missing = [cid for cid, _ in ranked if cid not in sims]
        if model is not None and vector is not None and missing:
            q = sql.SQL(SIMILARITIES).format(dims=sql.Literal(model[1]), model_id=sql.Literal(model[0]))
            sims.update((r[0], float(r[1])) for r in conn.execute(q, {"q": np.asarray(vector, np.float32), "ids": missing}))
        if request.min_similarity is not None:
            ranked = [(cid, s) for cid, s in ranked if sims.get(cid, -2.0) >= request.min_similarity]
        ranked = ranked[: request.limit]
        rows = {r[0]: r for r in conn.execute(HIT_ROWS, {"tenant": request.tenant, "ids": [c for c, _ in ranked]})}
    top = ranked[0][1] if ranked else 0.0
    return [
        SearchHit(chunk_id=cid, document_id=rows[cid][1], seq=rows[cid][2], text=rows[cid][3], score=score,
                  similarity=sims.get(cid), keyword_score=kw.get(cid), metadata=rows[cid][4],
                  relevance=_relevance(sims.get(cid), score, top), created_at=rows[cid][5])
        for cid, score in ranked if cid in rows
    ]

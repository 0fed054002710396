"""Search: vector (HNSW, iterative scans), keyword (BM25 over Postgres lexemes) and hybrid (RRF).

Keyword search has two exact paths: without filters, the tenant's packed postings (tasks/postings.py), read once
and scored in numpy; with filters (documents, metadata, time), the chunks the GIN index finds, pruned by MaxScore
(gin_keyword_ranking), because the filters are conditions on chunks. A tenant whose postings a bulk load defers
takes the GIN path too until the load has rebuilt them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import datetime
from typing import Literal

import numpy as np
from psycopg import Connection, sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from blocks.errors import ConfigError, InputError
from blocks.pg_failure import search_deadline
from blocks.settings import SearchSettings
from blocks.storable import StorableModel
from tasks.fusion import convex, rescore_turns, turn_candidates
from tasks.postings import postings_ranking

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
# BM25 (Robertson/Sparck Jones idf with +1, as Lucene) over the english lexemes of each chunk; document
# frequencies and lengths come from term_stats/tenant_stats, so only chunks matching a query term are read.
# Both tables hold up to 16 shards per key (018_bm25_stats_shards.sql): the figures are their sums. While a bulk
# load defers the tenant's term_stats (035_bulk_term_stats.sql), DEFERRED_DF counts the query's lexemes in the
# tenant's chunks instead (those matching the query, then their lexemes): exact, at the cost of a second read.
QUERY_TERMS = """
WITH q AS (SELECT DISTINCT lexeme FROM unnest(tsvector_to_array(to_tsvector('english', %(query)s))) AS lexeme),
s AS (SELECT sum(n_chunks)::bigint AS n_chunks, sum(total_len)::bigint AS total_len,
             EXISTS (SELECT FROM postings_deferred WHERE tenant_id = %(tenant)s) AS deferred
      FROM tenant_stats WHERE tenant_id = %(tenant)s)
SELECT q.lexeme, (SELECT sum(t.df)::bigint FROM term_stats t WHERE t.tenant_id = %(tenant)s AND t.lexeme = q.lexeme),
       s.n_chunks, s.total_len, s.deferred
FROM q CROSS JOIN s"""
DEFERRED_DF = """
SELECT u.lexeme, count(*) FROM chunks c, unnest(tsvector_to_array(c.tsv)) AS u(lexeme)
WHERE c.tenant_id = %(tenant)s AND c.tsv @@ %(match)s::tsquery AND u.lexeme = ANY(%(lexemes)s) GROUP BY 1"""
# setweight + ts_filter keep only the query's lexemes of a chunk's tsvector (weights mark them), so each
# candidate yields a handful of rows instead of one per distinct lexeme.
KEYWORD_RANKING = """
WITH idf AS (SELECT * FROM unnest(%(lexemes)s::text[], %(idfs)s::float8[]) AS i(lexeme, idf)),
cand AS (SELECT c.id, ts_filter(setweight(c.tsv, 'A', %(lexemes)s::text[]), '{{a}}') AS hits, c.token_count
         FROM chunks c
         WHERE c.tenant_id = %(tenant)s {filters} AND c.tsv @@ %(match)s::tsquery)
SELECT cand.id, sum(idf.idf * tf.v * (%(k1)s + 1)
                    / (tf.v + %(k1)s * (1 - %(b)s + %(b)s * cand.token_count / %(avgdl)s))) AS score
FROM cand CROSS JOIN LATERAL unnest(cand.hits) AS u
JOIN idf ON idf.lexeme = u.lexeme
CROSS JOIN LATERAL (SELECT coalesce(array_length(u.positions, 1), 1)::float8 AS v) AS tf
GROUP BY cand.id ORDER BY score DESC, cand.id LIMIT %(n)s"""
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


def _filters(request: SearchRequest) -> tuple[sql.Composable, dict]:
    parts, params = [], {}
    if request.document_ids is not None:
        parts.append(sql.SQL("AND c.document_id = ANY(%(document_ids)s)"))
        params["document_ids"] = request.document_ids
    if request.metadata is not None:
        parts.append(sql.SQL("AND c.metadata @> %(metadata)s"))
        params["metadata"] = Jsonb(request.metadata)
    if request.created_after is not None:
        parts.append(sql.SQL("AND c.created_at >= %(created_after)s"))
        params["created_after"] = request.created_after
    if request.created_before is not None:
        parts.append(sql.SQL("AND c.created_at < %(created_before)s"))
        params["created_before"] = request.created_before
    return sql.SQL(" ").join(parts), params


def configure_hnsw(conn, n: int, settings: SearchSettings) -> None:
    """For this transaction: ef_search of at least n, iterative scans so filters cannot starve the top n, and the
    search's statement_timeout."""
    conn.execute("SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true),"
                 " set_config('hnsw.max_scan_tuples', %s, true), set_config('statement_timeout', %s, true)",
                 [str(max(settings.ef_search, n)), str(settings.max_scan_tuples), _timeout_ms(settings)])


@contextmanager
def _connection(db: ConnectionPool | Connection, settings: SearchSettings, ef: int | None = None) -> Iterator[Connection]:
    """The connection a ranking runs on: `db` itself when it is one (run_search's, configured once for the whole
    search: one transaction, one checkout), else one from the pool `db`, configured here for this ranking (the
    search's statement_timeout; ef_search for `ef` nearest neighbours if given)."""
    if isinstance(db, Connection):
        yield db
        return
    with db.connection() as conn:
        _configure(conn, settings, ef)
        yield conn


def _configure(conn: Connection, settings: SearchSettings, ef: int | None) -> None:
    """This transaction's statement_timeout, and its HNSW settings for `ef` nearest neighbours unless None."""
    if ef is not None:
        configure_hnsw(conn, ef, settings)
    else:
        conn.execute("SELECT set_config('statement_timeout', %s, true)", [_timeout_ms(settings)])


def _timeout_ms(settings: SearchSettings) -> str:
    """statement_timeout of a search transaction ('0': none)."""
    return str(max(1, round(settings.timeout_s * 1000))) if settings.timeout_s is not None else "0"


def vector_ranking(db: ConnectionPool | Connection, model: tuple[int, int], vector: np.ndarray, request: SearchRequest,
                   n: int, settings: SearchSettings) -> list[tuple[int, float]]:
    """[(chunk_id, cosine similarity)] nearest first, filtered, from the model's HNSW index (on a connection of
    the pool `db`, or on the connection `db` run_search configured)."""
    model_id, dims = model
    vector = np.asarray(vector, dtype=np.float32)
    if vector.shape != (dims,):
        raise InputError(f"expected a query vector of {dims} dimensions, got shape {vector.shape}", item="vector")
    filters, params = _filters(request)
    # Chunks are joined only to filter on them: without filters the index scan alone answers.
    join = sql.SQL("JOIN chunks c ON c.id = e.chunk_id") if params else sql.SQL("")
    query = sql.SQL(VECTOR_RANKING).format(dims=sql.Literal(dims), model_id=sql.Literal(model_id), filters=filters,
                                           join=join)
    with _connection(db, settings, ef=n) as conn:
        rows = conn.execute(query, {**params, "q": vector, "tenant": request.tenant, "n": n}).fetchall()
    return [(r[0], float(r[1])) for r in rows]


def keyword_ranking(db: ConnectionPool | Connection, request: SearchRequest, n: int,
                    settings: SearchSettings) -> list[tuple[int, float]]:
    """[(chunk_id, BM25 score)] best first, exact: from the postings when the request has no filters, else from
    the GIN index (gin_keyword_ranking). `db`: as vector_ranking's."""
    if _filters(request)[1]:
        return gin_keyword_ranking(db, request, n, settings)
    with _connection(db, settings) as conn:
        ranked = postings_ranking(conn, request.query, request.tenant, n, settings)
        return ranked if ranked is not None else gin_keyword_ranking(conn, request, n, settings)


def gin_keyword_ranking(db: ConnectionPool | Connection, request: SearchRequest, n: int,
                        settings: SearchSettings) -> list[tuple[int, float]]:
    """[(chunk_id, BM25 score)] best first, exact, reading as few chunks as the query's terms allow (`db`: as
    vector_ranking's).

    MaxScore pruning (Turtle & Flood 1995) with a descending threshold: a term adds at most idf * (k1 + 1) to any
    chunk. Round 1 scores (on all query terms) the chunks holding the rarest terms, up to a budget of document
    frequency. Each later round picks a threshold theta and asks the GIN index, as a boolean tsquery
    (_threshold_query: the terms whose bounds add up to theta, AND-ed), for the chunks that could reach theta and
    were not scored before, and scores them. Once the n-th best score found is >= theta, no chunk left unscored can
    enter the top n (its bound, hence its score, is below theta): the ranking is exact. The first theta is a share
    of the sum of the bounds (_FIRST_THRESHOLD), so an early round reads only chunks holding several of the terms
    together, which GIN finds by intersecting posting lists; while fewer than n reach it, theta falls by _DESCENT
    (not below the n-th score found), and the last round (_MAX_ROUNDS) takes it down to the n-th score found. Before, one second round used round 1's n-th score,
    often low (the rare terms' chunks are not the best ones), and then read every chunk holding one common word.
    """
    with _connection(db, settings) as conn:
        rows = conn.execute(QUERY_TERMS, {"query": request.query, "tenant": request.tenant}).fetchall()
        if not rows or not rows[0][2]:
            return []
        total, total_len, deferred = rows[0][2], rows[0][3], rows[0][4]
        frequencies = conn.execute(DEFERRED_DF, {
            "tenant": request.tenant, "lexemes": [r[0] for r in rows],
            "match": " | ".join(_tsquery_literal(r[0]) for r in rows)}).fetchall() if deferred else rows
        avgdl = max(total_len / max(total, 1), 1.0)
        terms = sorted(((lex, df, math.log(1 + (total - df + 0.5) / (df + 0.5))) for lex, df, *_ in frequencies
                        if df and df > 0), key=lambda t: (-t[2], t[0]))
        if not terms:
            return []
        bounds = [idf * (settings.bm25_k1 + 1) for _, _, idf in terms]
        literals = [_tsquery_literal(t[0]) for t in terms]
        filters, params = _filters(request)
        query = sql.SQL(KEYWORD_RANKING).format(filters=filters)
        params.update(tenant=request.tenant, n=n, k1=settings.bm25_k1, b=settings.bm25_b, avgdl=avgdl,
                      lexemes=[t[0] for t in terms], idfs=[t[2] for t in terms])

        def rank(match: str) -> list[tuple[int, float]]:
            return [(r[0], float(r[1])) for r in conn.execute(query, {**params, "match": match})]

        essential, budget = 0, _DF_BUDGET
        while essential < len(terms) and (essential == 0 or terms[essential][1] <= budget):
            budget -= terms[essential][1]
            essential += 1
        scored = [" | ".join(literals[:essential])]  # tsqueries whose every match was scored
        best = rank(scored[0])
        if essential == len(terms):
            return best
        theta = max(_nth(best, n), sum(bounds) * _FIRST_THRESHOLD)
        everything = " | ".join(literals)
        for round_ in range(_MAX_ROUNDS):
            if round_ == _MAX_ROUNDS - 1:
                theta = _nth(best, n)  # the last round: down to what is known (0: every chunk holding a term)
            match = _threshold_query(literals, bounds, _margin(theta))
            if match is not None:
                # Excluding a scored tsquery excludes exactly the chunks it matched (cut or not): all were scored.
                best = _top(best + rank(f"({match}) & !({' | '.join(f'({q})' for q in scored)})"), n)
                scored.append(match)
                if theta <= 0 or match == everything or _nth(best, n) >= theta:
                    return best
            theta = max(_nth(best, n), theta * _DESCENT)
        # Not reached (the last round's theta is the n-th score found); should float rounding ever leave it, the
        # chunks not scored yet are all read: exact still.
        return _top(best + rank(f"({everything}) & !({' | '.join(f'({q})' for q in scored)})"), n)


_DF_BUDGET = 0  # chunks the first candidate terms may cover together (0: the rarest term alone)
_FIRST_THRESHOLD = 0.25  # first theta, as a share of the sum of the query terms' bounds
_DESCENT = 0.5  # theta's fall per round while fewer than n chunks were found
_MAX_ROUNDS = 6  # rounds after the first; the last reads whatever could still enter the top n
_MAX_QUERY_TERMS = 256  # lexemes in a threshold tsquery; beyond, its conjunctions are cut shorter


def _nth(ranked: list[tuple[int, float]], n: int) -> float:
    """The n-th best score found (0 when fewer than n chunks were found)."""
    return ranked[n - 1][1] if len(ranked) >= n else 0.0


def _top(ranked: list[tuple[int, float]], n: int) -> list[tuple[int, float]]:
    return sorted(ranked, key=lambda r: (-r[1], r[0]))[:n]


def _margin(score: float) -> float:
    """A threshold a hair below `score`, so that float rounding of bounds never excludes a tie."""
    return score - 1e-9 * max(1.0, abs(score))


def _threshold_query(literals: list[str], bounds: list[float], need: float) -> str | None:
    """A tsquery matching the chunks that hold a subset of the terms whose bounds add up to `need` or more
    (None when no subset does; `need` <= 0: any term).

    f(i, need) = (term_i & f(i+1, need - bound_i)) | f(i+1, need), true once need <= 0, false when the bounds
    left cannot reach need; terms rarest (largest bound) first. When that formula exceeds _MAX_QUERY_TERMS
    lexemes, conjunctions are cut after `depth` terms (f is then true when the rest could still reach need): a
    looser tsquery, matching a superset of those chunks, so the ranking stays exact at the cost of more reads.
    """
    suffix = [0.0] * (len(bounds) + 1)
    for i in range(len(bounds) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + bounds[i]
    if suffix[0] < need:
        return None
    if need <= 0:
        return " | ".join(literals)
    for depth in range(len(bounds), 0, -1):
        try:
            return _formula(literals, bounds, suffix, need, depth)
        except OverflowError:
            continue
    return " | ".join(literals)


def _formula(literals: list[str], bounds: list[float], suffix: list[float], need: float, depth: int) -> str:
    size = 0
    true = object()

    def f(i: int, left: float, d: int):
        nonlocal size
        if left <= 0 or (d == depth and suffix[i] >= left):
            return true
        if i == len(bounds) or suffix[i] < left:
            return None
        taken = f(i + 1, left - bounds[i], d + 1)
        if taken is None:  # then the terms after i cannot reach `left` either
            return None
        size += 1
        if size > _MAX_QUERY_TERMS:
            raise OverflowError
        mine = literals[i] if taken is true else f"{literals[i]} & ({taken})"
        skipped = f(i + 1, left, d)
        return mine if skipped is None else f"{mine} | {skipped}"

    out = f(0, need, 0)
    return " | ".join(literals) if out is true else out


def _tsquery_literal(lexeme: str) -> str:
    """A lexeme quoted for tsquery input (quotes doubled, backslashes escaped), matched as is."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


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
    filters, params = _filters(request)
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
        _configure(conn, settings, nearest if request.mode != "keyword" else None)
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

"""Keyword ranking over the GIN index, for requests with filters (documents, metadata, time): exact BM25 over the
chunks the index finds, pruned by MaxScore (gin_keyword_ranking's docstring). Requests without filters rank from
the packed postings (tasks/postings.py); tasks.search.keyword_ranking chooses."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from psycopg import Connection, sql
from psycopg_pool import ConnectionPool

from blocks.settings import SearchSettings
from tasks.ranking_scope import ranking_connection, request_filters

if TYPE_CHECKING:
    from tasks.search import SearchRequest

__all__ = ["gin_keyword_ranking"]

# BM25 (Robertson/Sparck Jones idf with +1, as Lucene) over the english lexemes of each chunk; document
# frequencies and lengths come from term_stats/tenant_stats, so only chunks matching a query term are read.
# Both tables hold up to 16 shards per key (018_bm25_stats_shards.sql): the figures are their sums. While a bulk
# load defers the tenant's term_stats (035_bulk_term_stats.sql), DEFERRED_DF counts the query's lexemes in the
# tenant's chunks instead (those matching the query, then their lexemes), with the chunk count and total length
# in the same statement, hence the same snapshot (the load commits meanwhile: a count from another snapshot could
# exceed the chunks counted, and an idf go negative): exact, at the cost of a second read.
QUERY_TERMS = """
WITH q AS (SELECT DISTINCT lexeme FROM unnest(tsvector_to_array(to_tsvector('english', %(query)s))) AS lexeme),
s AS (SELECT sum(n_chunks)::bigint AS n_chunks, sum(total_len)::bigint AS total_len,
             EXISTS (SELECT FROM postings_deferred WHERE tenant_id = %(tenant)s) AS deferred
      FROM tenant_stats WHERE tenant_id = %(tenant)s)
SELECT q.lexeme, (SELECT sum(t.df)::bigint FROM term_stats t WHERE t.tenant_id = %(tenant)s AND t.lexeme = q.lexeme),
       s.n_chunks, s.total_len, s.deferred
FROM q CROSS JOIN s"""
DEFERRED_DF = """
WITH s AS MATERIALIZED (SELECT count(*) AS n_chunks, sum(token_count)::bigint AS total_len FROM chunks
                        WHERE tenant_id = %(tenant)s)
SELECT u.lexeme, count(*), s.n_chunks, s.total_len
FROM chunks c
CROSS JOIN LATERAL unnest(tsvector_to_array(ts_filter(setweight(c.tsv, 'A', %(lexemes)s::text[]), '{a}'))) AS u(lexeme)
CROSS JOIN s
WHERE c.tenant_id = %(tenant)s AND c.tsv @@ %(match)s::tsquery
GROUP BY u.lexeme, s.n_chunks, s.total_len"""
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


def gin_keyword_ranking(db: ConnectionPool | Connection, request: SearchRequest, n: int,
                        settings: SearchSettings) -> list[tuple[int, float]]:
    """[(chunk_id, BM25 score)] best first, exact, reading as few chunks as the query's terms allow (`db`: a pool,
    or the connection run_search configured; tasks.ranking_scope.ranking_connection).

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
    with ranking_connection(db, settings) as conn:
        rows = conn.execute(QUERY_TERMS, {"query": request.query, "tenant": request.tenant}).fetchall()
        if rows and rows[0][4]:  # deferred: counted in the chunks
            rows = conn.execute(DEFERRED_DF, {"tenant": request.tenant, "lexemes": [r[0] for r in rows],
                                              "match": " | ".join(_tsquery_literal(r[0]) for r in rows)}).fetchall()
        if not rows or not rows[0][2]:
            return []
        total, total_len = rows[0][2], rows[0][3]
        avgdl = max(total_len / max(total, 1), 1.0)
        terms = sorted(((lex, df, math.log(1 + (total - df + 0.5) / (df + 0.5))) for lex, df, *_ in rows
                        if df and df > 0), key=lambda t: (-t[2], t[0]))
        if not terms:
            return []
        bounds = [idf * (settings.bm25_k1 + 1) for _, _, idf in terms]
        literals = [_tsquery_literal(t[0]) for t in terms]
        filters, params = request_filters(request)
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

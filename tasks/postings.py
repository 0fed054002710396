"""BM25 over the packed postings of tasks/sql/019_bm25_postings.sql: every chunk holding a query term is scored,
exactly, from one read of those terms' postings, with numpy.

Why by hand: the inverted index a BM25 engine keeps (tantivy, Lucene) would be a second store beside PostgreSQL,
which the workers of a distributed deployment share; `pg_textsearch` is not in the server devmesh embeds. What is
hand-written is only the scoring of a few arrays (the formula of tasks/gin_keyword.py's SQL path, term for term) and
the compaction's trigger (`devmesh_compact_postings`, in SQL).

Cost: reading n postings is a copy of 14 n bytes (uncompressed bytea) and a few vector operations: at 100,000
chunks a SciFact query reads ~50,000 entries in a few milliseconds, whatever the number of hits asked for, so a
hybrid search's 50 keyword candidates cost what 10 do. Entries of deleted chunks stay until the tenant is
compacted: when the query's lexemes hold more entries than their live document frequencies (term_stats, read in
the same snapshot), the top is checked against `chunks` (one index probe per hit) and refilled from the next best.
While a bulk load defers a tenant's postings and document frequencies (migrations 034 and 035;
tasks/indexes.bulk_load rebuilds both when done), postings_ranking says so and the search takes the GIN path.

Each process keeps the postings rows it read (SearchSettings.postings_cache_mb, an LRU bounded by bytes): a row is
never updated, only inserted and deleted (by a compaction), so its ctid and xmin name its bytes, and a search reads
first where its lexemes' rows are, then only the bytes it does not hold. Reading the bytes was about 1.4 of a
keyword search's 3.4 ms at 100k, in the server and in the client, and common lexemes are shared by most queries.
A row stays at most CACHE_TTL_S: a compaction's removal of deleted chunks' lexemes reaches every process's memory
within that time too (blocks/cipher.py).
"""

from __future__ import annotations

import math
import threading

import numpy as np
from cachetools import TTLCache
from psycopg_pool import ConnectionPool

from blocks.settings import SearchSettings

__all__ = ["postings_ranking", "defer_postings", "deferred_tenants", "compact_postings", "rebuild_postings",
           "tenants_to_compact"]

# The query's lexemes with their document frequency, the tenant's totals, whether a bulk load deferred its
# postings (migration 034), and the lexemes' postings (a lexeme with several segments comes once per segment;
# one without any, NULL: only while deferred). No lexeme with a live frequency: one row, lexeme NULL (whether
# deferred still says so: a deferred tenant's term_stats are not kept, 035).
POSTINGS = """
WITH q AS (SELECT DISTINCT lexeme FROM unnest(tsvector_to_array(to_tsvector('english', %(query)s))) AS lexeme),
s AS (SELECT sum(n_chunks)::bigint AS n_chunks, sum(total_len)::bigint AS total_len,
             EXISTS (SELECT FROM postings_deferred WHERE tenant_id = %(tenant)s) AS deferred
      FROM tenant_stats WHERE tenant_id = %(tenant)s),
t AS (SELECT t.lexeme, sum(t.df)::bigint AS df FROM term_stats t JOIN q USING (lexeme) WHERE t.tenant_id = %(tenant)s
      GROUP BY t.lexeme HAVING sum(t.df) > 0)
SELECT t.lexeme, t.df, s.n_chunks, s.total_len, s.deferred, p.n, p.entries
FROM s LEFT JOIN t ON true LEFT JOIN chunk_postings p ON p.tenant_id = %(tenant)s AND p.lexeme = t.lexeme"""
# The same rows, each naming its postings row (ctid, xmin) instead of carrying its bytes; then those bytes.
POSTINGS_WHERE = POSTINGS.replace("p.n, p.entries", "p.n, p.segment, p.ctid::text, p.xmin::text")
ENTRIES = """SELECT ctid::text, xmin::text, entries FROM chunk_postings
WHERE ctid = ANY(%(tids)s::tid[]) AND tenant_id = %(tenant)s"""
DEFER = "INSERT INTO postings_deferred (tenant_id) VALUES (%(tenant)s) ON CONFLICT DO NOTHING"
DEFERRED = "SELECT tenant_id FROM postings_deferred ORDER BY 1"
LIVE = "SELECT id FROM chunks WHERE tenant_id = %(tenant)s AND id = ANY(%(ids)s)"
COMPACT = "SELECT devmesh_compact_postings(%(tenant)s)"
# Tenants whose postings hold entries of deleted chunks (more entries than the live document frequencies add up
# to), or whose lexemes average more than `segments` segments (many small inserts), or whose postings a bulk load
# deferred and did not rebuild (it was cut short).
TO_COMPACT = """
SELECT p.tenant_id FROM (SELECT tenant_id, sum(n) AS n, count(*) AS rows, count(DISTINCT lexeme) AS lexemes
                         FROM chunk_postings GROUP BY tenant_id) p
LEFT JOIN (SELECT tenant_id, sum(df) AS df FROM term_stats GROUP BY tenant_id) s USING (tenant_id)
WHERE p.n > coalesce(s.df, 0) OR p.rows > %(segments)s * p.lexemes
UNION SELECT tenant_id FROM postings_deferred ORDER BY 1"""
_ENTRY = np.dtype([("id", ">i8"), ("tf", ">i2"), ("length", ">i4")])  # 14 bytes, as the trigger packs them
_MIN_SPARE = 10  # hits scored beyond the n asked for, in case some were deleted since the last compaction
CACHE_TTL_S = 600
_cache: TTLCache | None = None  # (tenant, lexeme, segment, n, ctid, xmin) -> entries, this process's
_cache_lock = threading.Lock()


def postings_ranking(conn, query: str, tenant: str, n: int, settings: SearchSettings) -> list[tuple[int, float]] | None:
    """[(chunk_id, BM25 score)] best first (ties: lower id first), over every chunk of `tenant` holding a term
    of `query`; the same scores as tasks.search's SQL path up to float summation order. None while a bulk load
    defers the tenant's postings (the caller ranks on the GIN path)."""
    k1, b = settings.bm25_k1, settings.bm25_b
    idf: dict[str, float] = {}
    extra: dict[str, int] = {}  # per lexeme: entries beyond its live document frequency (deleted chunks')
    parts, weights, counts = [], [], []
    avgdl = 1.0
    rows = _postings(conn, query, tenant, settings.postings_cache_mb)
    if rows is None:
        return None
    for lexeme, df, total, total_len, _, n_entries, entries in rows:
        if lexeme not in idf:
            idf[lexeme] = math.log(1 + (total - df + 0.5) / (df + 0.5))
            extra[lexeme] = -df
        if entries is None:  # no postings for a live lexeme (only while deferred): its df stays unmatched
            continue
        extra[lexeme] += n_entries
        avgdl = max(total_len / max(total, 1), 1.0)  # the tenant's: the same on every row
        parts.append(entries)
        weights.append(idf[lexeme])
        counts.append(len(entries) // _ENTRY.itemsize)
    if not parts:
        return []
    # every row's entries scored at once: one array, each entry weighted by its lexeme's idf
    entries = np.frombuffer(b"".join(parts), _ENTRY)
    tf = entries["tf"].astype(np.float64)
    norm = k1 * (1 - b + b * entries["length"] / avgdl)
    scores = np.repeat(np.asarray(weights), counts) * tf * (k1 + 1) / (tf + norm)
    chunk_ids, totals = _sum_by_id(entries["id"].astype(np.int64), scores)
    if not any(extra.values()):  # in this snapshot every entry read is a live chunk's: nothing to check
        return [(int(chunk_ids[i]), float(totals[i])) for i in _best(chunk_ids, totals, n)]
    want = n + max(_MIN_SPARE, n)
    while True:
        top = _best(chunk_ids, totals, want)
        live = {r[0] for r in conn.execute(LIVE, {"tenant": tenant, "ids": [int(chunk_ids[i]) for i in top]})}
        hits = [(int(chunk_ids[i]), float(totals[i])) for i in top if int(chunk_ids[i]) in live]
        if len(hits) >= n or len(top) == len(chunk_ids):
            return hits[:n]
        want *= 4


def _postings(conn, query: str, tenant: str, cache_mb: int) -> list[tuple] | None:
    """The POSTINGS rows of `query` (None while the tenant's postings are deferred), their entries from this
    process's cache where it holds them."""
    cache = _segment_cache(cache_mb)
    params = {"query": query, "tenant": tenant}
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(POSTINGS if cache is None else POSTINGS_WHERE, params).fetchall()
        if cache is not None and not _deferred(rows):
            entries = _cached_entries(cur, tenant, rows, cache)
            # None: a row was deleted between the two reads (a compaction committed; each statement has its own
            # snapshot), so read them again, bytes included
            rows = cur.execute(POSTINGS, params).fetchall() if entries is None else \
                [(*r[:6], e) for r, e in zip(rows, entries)]
    return None if _deferred(rows) else [r for r in rows if r[0] is not None]


def _deferred(rows: list[tuple]) -> bool:
    return bool(rows) and bool(rows[0][4])


def _segment_cache(cache_mb: int) -> TTLCache | None:
    global _cache
    if cache_mb <= 0:
        return None
    with _cache_lock:
        if _cache is None or _cache.maxsize != cache_mb * 2**20:
            _cache = TTLCache(maxsize=cache_mb * 2**20, ttl=CACHE_TTL_S, getsizeof=len)
        return _cache


def _cached_entries(cur, tenant: str, rows: list[tuple], cache: TTLCache) -> list[bytes | None] | None:
    """Each POSTINGS_WHERE row's entries (None for a lexeme without postings): from `cache`, else read by ctid and
    kept. None if a row is gone (deleted since the first read). Keys carry the tenant: the rows are this tenant's
    (both reads filter on it), and so is every entry taken from the cache for them."""
    keys = [None if r[7] is None else (tenant, r[0], r[6], r[5], r[7], r[8]) for r in rows]  # ends (ctid, xmin)
    with _cache_lock:
        found = [None if k is None else cache.get(k) for k in keys]
    missing = [k for k, e in zip(keys, found) if k is not None and e is None]
    if not missing:
        return found
    read = {(r[0], r[1]): r[2] for r in cur.execute(ENTRIES, {"tids": [k[4] for k in missing], "tenant": tenant})}
    if any(k[4:] not in read for k in missing):
        return None
    with _cache_lock:
        for k in missing:
            if len(read[k[4:]]) <= cache.maxsize:
                cache[k] = read[k[4:]]
    return [read[k[4:]] if k is not None and e is None else e for k, e in zip(keys, found)]


def _sum_by_id(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct ids ascending, each one's summed score)."""
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo < 4 * len(ids) + 1_000_000:  # ids of a tenant are mostly close together: count into a dense array
        dense = np.bincount(ids - lo, weights=scores, minlength=hi - lo + 1)
        # a term adds > 0 (tf >= 1; idf > 0 as df <= n_chunks): 0 only where absent (a float compare, then the
        # nonzero of the booleans: several times faster than the nonzero of the floats)
        where = np.flatnonzero(dense > 0)
        return where + lo, dense[where]
    unique, inverse = np.unique(ids, return_inverse=True)
    return unique, np.bincount(inverse, weights=scores)


def _best(ids: np.ndarray, totals: np.ndarray, m: int) -> np.ndarray:
    """Indexes of the m best totals, best first, ties by lower id."""
    m = min(m, len(ids))
    cut = np.argpartition(-totals, m - 1)[:m] if m < len(ids) else np.arange(len(ids))
    # a tie across the cut: take every index scoring the m-th total, so the lowest ids among them win
    nth = totals[cut].min()
    cut = np.union1d(cut, np.flatnonzero(totals == nth))
    order = np.lexsort((ids[cut], -totals[cut]))
    return cut[order][:m]


def defer_postings(pool: ConnectionPool, tenant: str) -> None:
    """From now until compact_postings(tenant): `tenant`'s inserts and deletes write no postings nor document
    frequencies, and its keyword searches take the GIN path (a bulk load's bracket, tasks/indexes.bulk_load)."""
    with pool.connection() as conn:
        conn.execute(DEFER, {"tenant": tenant})


def deferred_tenants(conn) -> list[str]:
    """Tenants whose postings and document frequencies a bulk load deferred and has not rebuilt yet."""
    return [r[0] for r in conn.execute(DEFERRED)]


def compact_postings(pool: ConnectionPool, tenant: str) -> int:
    """Rebuild `tenant`'s postings and term_stats from its chunks (drops deleted chunks' entries, merges segments
    and shards, ends a deferral); the postings rows written. Writers of the tenant wait for it (they hold its postings lock shared)."""
    with pool.connection() as conn:
        return rebuild_postings(conn, tenant)


def rebuild_postings(conn, tenant: str) -> int:
    """compact_postings on `conn`, committed."""
    written = conn.execute(COMPACT, {"tenant": tenant}).fetchone()[0]
    conn.commit()
    return written


def tenants_to_compact(pool: ConnectionPool, segments: int = 8) -> list[str]:
    """Tenants whose postings hold deleted chunks' entries or more than `segments` segments per lexeme."""
    with pool.connection() as conn:
        return [r[0] for r in conn.execute(TO_COMPACT, {"segments": segments})]

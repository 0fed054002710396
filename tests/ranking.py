"""Comparing two BM25 rankings (the keyword search tests of tests/tasks): equal up to float summation order and ties;
and checking a tenant's BM25 document frequencies against its chunks."""

from __future__ import annotations

import itertools

__all__ = ["same_ranking", "wrong_document_frequencies"]


def same_ranking(pruned, exact) -> bool:
    """Same scores (to 1e-9: the sum's order may differ) and the same chunks, ties aside: chunks of equal score
    may come in either order, and at the n-th place either of them may be kept."""
    if [round(s, 9) for _, s in pruned] != [round(s, 9) for _, s in exact]:
        return False
    groups = lambda r: {k: {c for c, _ in g} for k, g in itertools.groupby(r, key=lambda x: round(x[1], 9))}  # noqa: E731
    a, b = groups(pruned), groups(exact)
    last = round(exact[-1][1], 9) if exact else None
    return all(a[k] == b[k] for k in b if k != last)


def wrong_document_frequencies(pool, tenant: str) -> int:
    """Lexemes whose document frequency in term_stats (summed over shards) is not the count of the tenant's chunks
    holding them."""
    with pool.connection() as conn:
        return conn.execute("""
            SELECT count(*) FROM (SELECT lexeme, sum(df) AS df FROM term_stats WHERE tenant_id = %(t)s GROUP BY 1) t
            FULL JOIN (SELECT l AS lexeme, count(*) AS df FROM chunks, unnest(tsvector_to_array(tsv)) AS l
                       WHERE tenant_id = %(t)s GROUP BY l) r USING (lexeme)
            WHERE coalesce(t.df, 0) <> coalesce(r.df, 0)""", {"t": tenant}).fetchone()[0]

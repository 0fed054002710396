"""Embedding usage per tenant and model: add the embedders' Usage records to daily totals, and sum them up."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from decimal import Decimal

from psycopg_pool import ConnectionPool

from blocks.embedders.pricing import Usage
from blocks.metrics import EMBEDDING_COST, EMBEDDING_TOKENS

__all__ = ["record_usage", "usage_summary"]

ADD_USAGE = """
INSERT INTO embedding_usage (tenant_id, model, provider, estimated, calls, texts, tokens, cost_usd)
VALUES (%(tenant)s, %(model)s, %(provider)s, %(estimated)s, %(calls)s, %(texts)s, %(tokens)s, %(cost_usd)s)
ON CONFLICT (tenant_id, model, provider, day, estimated) DO UPDATE SET
    calls = embedding_usage.calls + EXCLUDED.calls,
    texts = embedding_usage.texts + EXCLUDED.texts,
    tokens = embedding_usage.tokens + EXCLUDED.tokens,
    cost_usd = embedding_usage.cost_usd + EXCLUDED.cost_usd,
    updated_at = now()"""
SUMMARY = """
SELECT provider, model, sum(calls)::bigint AS calls, sum(texts)::bigint AS texts, sum(tokens)::bigint AS tokens,
       sum(cost_usd) AS cost_usd, bool_or(estimated) AS estimated, min(day) AS first_day, max(day) AS last_day
FROM embedding_usage
WHERE tenant_id = %(tenant)s AND day >= %(since)s
GROUP BY provider, model
ORDER BY provider, model"""


def record_usage(pool: ConnectionPool, tenant: str, usages: Iterable[Usage]) -> int:
    """Add usage records to today's totals of `tenant`, one upsert per model; returns the records added."""
    totals: dict[tuple[str, str, bool], list] = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    count = 0
    for usage in usages:
        total = totals[(usage.provider, usage.model, usage.estimated)]
        total[0] += usage.calls
        total[1] += usage.texts
        total[2] += usage.tokens
        total[3] += usage.cost_usd
        count += 1
    if not totals:
        return 0
    for (provider, model, _), (_, _, tokens, cost) in totals.items():
        EMBEDDING_TOKENS.labels(tenant, model).inc(tokens)
        EMBEDDING_COST.labels(tenant, model).inc(float(cost))
    rows = [
        {"tenant": tenant, "provider": provider, "model": model, "estimated": estimated,
         "calls": calls, "texts": texts, "tokens": tokens, "cost_usd": cost}
        for (provider, model, estimated), (calls, texts, tokens, cost) in sorted(totals.items())
    ]
    # Sorted keys: concurrent writers lock the same rows in the same order, so they cannot deadlock.
    with pool.connection() as conn, conn.cursor() as cur:
        cur.executemany(ADD_USAGE, rows)
    return count


def usage_summary(pool: ConnectionPool, tenant: str, since: date | None = None) -> list[dict]:
    """Calls, texts, tokens and list-price cost of `tenant` per provider and model (since a UTC day)."""
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute(SUMMARY, {"tenant": tenant, "since": since or date.min})
        names = [column.name for column in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

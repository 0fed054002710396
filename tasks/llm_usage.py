"""Chat model usage per tenant, provider, model and UTC day: add the tokens of model turns, and sum them up."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date

from psycopg_pool import ConnectionPool

from blocks.llm import ChatTurn

__all__ = ["record_llm_usage", "llm_usage_summary"]

ADD_USAGE = """
INSERT INTO llm_usage (tenant_id, provider, model, calls, input_tokens, output_tokens)
VALUES (%(tenant)s, %(provider)s, %(model)s, %(calls)s, %(input_tokens)s, %(output_tokens)s)
ON CONFLICT (tenant_id, provider, model, day) DO UPDATE SET
    calls = llm_usage.calls + EXCLUDED.calls,
    input_tokens = llm_usage.input_tokens + EXCLUDED.input_tokens,
    output_tokens = llm_usage.output_tokens + EXCLUDED.output_tokens,
    updated_at = now()"""
SUMMARY = """
SELECT provider, model, sum(calls)::bigint AS calls, sum(input_tokens)::bigint AS input_tokens,
       sum(output_tokens)::bigint AS output_tokens, min(day) AS first_day, max(day) AS last_day
FROM llm_usage
WHERE tenant_id = %(tenant)s AND day >= %(since)s
GROUP BY provider, model
ORDER BY provider, model"""


def record_llm_usage(pool: ConnectionPool, tenant: str, provider: str, turns: Iterable[ChatTurn]) -> int:
    """Add the turns' tokens to today's totals of `tenant`, one upsert per model; returns the turns counted."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for turn in turns:
        total = totals[turn.model]
        total[0] += 1
        total[1] += turn.usage.input_tokens
        total[2] += turn.usage.output_tokens
    if not totals:
        return 0
    rows = [{"tenant": tenant, "provider": provider, "model": model, "calls": calls, "input_tokens": given,
             "output_tokens": produced} for model, (calls, given, produced) in sorted(totals.items())]
    # Sorted keys: concurrent writers lock the same rows in the same order, so they cannot deadlock.
    with pool.connection() as conn, conn.cursor() as cur:
        cur.executemany(ADD_USAGE, rows)
    return sum(row["calls"] for row in rows)


def llm_usage_summary(pool: ConnectionPool, tenant: str, since: date | None = None) -> list[dict]:
    """Calls and input / output tokens of `tenant` per provider and model (since a UTC day)."""
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute(SUMMARY, {"tenant": tenant, "since": since or date.min})
        names = [column.name for column in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

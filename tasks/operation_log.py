"""The operations table: one row per (tenant, idempotency key), so a repeated request never acts twice."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from blocks.errors import InputError

__all__ = ["arguments_hash", "claim_operation", "get_operation_row", "in_flight", "recent_counts", "update_operation"]

IN_FLIGHT = """
SELECT id::text, status FROM operations WHERE tenant_id = %s AND idempotency_key = %s
  AND status IN ('awaiting_approval', 'running')"""


def arguments_hash(operation: str, arguments: dict[str, Any]) -> str:
    canonical = json.dumps({"operation": operation, "arguments": arguments}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim_operation(pool: ConnectionPool, *, tenant: str, key: str, operation: str, arguments: dict[str, Any],
                    actor: dict[str, Any], flow_run_id: str | None) -> tuple[dict[str, Any], bool]:
    """(row, created). The same key with other arguments is refused: a key names one intended action."""
    args_hash = arguments_hash(operation, arguments)
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "INSERT INTO operations (id, tenant_id, idempotency_key, operation, arguments_hash, actor, status,"
            " flow_run_id) VALUES (%s, %s, %s, %s, %s, %s, 'planned', %s)"
            " ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING *",
            [uuid.uuid4(), tenant, key, operation, args_hash, Jsonb(actor), flow_run_id],
        )
        row = cur.fetchone()
        if row is not None:
            return row, True
        cur.execute("SELECT * FROM operations WHERE tenant_id = %s AND idempotency_key = %s", [tenant, key])
        row = cur.fetchone()
    if row["operation"] != operation or row["arguments_hash"] != args_hash:
        raise InputError("idempotency key was already used for a different operation or arguments",
                         item=f"idempotency_key {key}")
    return row, False


def in_flight(pool: ConnectionPool, tenant: str, key: str) -> tuple[str, str] | None:
    """(id, status) of the tenant's operation under this idempotency key while it awaits approval or runs."""
    with pool.connection() as conn:
        row = conn.execute(IN_FLIGHT, [tenant, key]).fetchone()
    return (row[0], row[1]) if row else None


def update_operation(pool: ConnectionPool, operation_id: Any, **fields: Any) -> None:
    """Set status, plan, plan_hash, target, result, error, flow_run_id or expires_at (approval deadline)."""
    allowed = {"status", "plan", "plan_hash", "target", "result", "error", "flow_run_id", "expires_at"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown operation fields {sorted(unknown)}")
    values = {k: Jsonb(v) if k in ("plan", "result") and v is not None else v for k, v in fields.items()}
    sets = ", ".join(f"{k} = %({k})s" for k in values)
    with pool.connection() as conn:
        conn.execute(f"UPDATE operations SET {sets}, updated_at = now() WHERE id = %(id)s",
                     {**values, "id": operation_id})


def get_operation_row(pool: ConnectionPool, operation_id: Any, tenant: str | None = None) -> dict[str, Any] | None:
    sql = "SELECT * FROM operations WHERE id = %s" + (" AND tenant_id = %s" if tenant is not None else "")
    params = [operation_id] + ([tenant] if tenant is not None else [])
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchone()


def recent_counts(pool: ConnectionPool, tenant: str, window: timedelta = timedelta(hours=1)) -> dict[str, int]:
    """Succeeded operations of `tenant` per name within `window` (the policy's hourly caps)."""
    since = datetime.now(timezone.utc) - window
    with pool.connection() as conn:
        rows = conn.execute("SELECT operation, count(*) FROM operations WHERE tenant_id = %s AND status = 'succeeded'"
                            " AND updated_at >= %s GROUP BY operation", [tenant, since]).fetchall()
    return {name: count for name, count in rows}

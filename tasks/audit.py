"""The audit trail: append-only (a trigger refuses UPDATE, DELETE, TRUNCATE) and hash-chained, so an edited,
inserted or deleted record is found by `verify_audit` even when someone with superuser rights disabled the trigger.

hash(n) = sha256(hash(n-1) + canonical JSON of record n); seq runs 1, 2, 3 ... without gaps. A deleted *last*
record leaves a valid shorter chain: compare the head (seq, hash) with a copy kept elsewhere — every record is
also published as a Prefect artifact, and `devmesh audit verify` prints the head for that purpose.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

__all__ = ["AuditReport", "GENESIS", "append_audit", "read_audit", "verify_audit"]

GENESIS = "0" * 64
_LOCK = 0x617564697400  # advisory lock key serialising appends ("audit")
FIELDS = ("seq", "at", "tenant_id", "actor", "operation", "target", "plan_hash", "approval", "status", "result",
          "error", "flow_run_id", "operation_id", "duration_ms")


def _plain(value: Any) -> Any:
    """JSON-safe and stable: the same record hashes the same before storing and after reading back."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, UUID):
        return str(value)
    return json.loads(json.dumps(value, default=str)) if value is not None else None


def _digest(prev_hash: str, record: dict[str, Any]) -> str:
    canonical = json.dumps({k: _plain(record.get(k)) for k in FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def append_audit(pool: ConnectionPool, *, tenant: str, actor: dict[str, Any], operation: str, status: str,
                 target: str | None = None, plan_hash: str | None = None, approval: dict | None = None,
                 result: dict | None = None, error: str | None = None, flow_run_id: str | None = None,
                 operation_id: str | None = None, duration_ms: int | None = None) -> dict[str, Any]:
    """Append one record (callers pass values already scrubbed of secrets); returns it with seq and hash."""
    record: dict[str, Any] = {
        "at": datetime.now(timezone.utc), "tenant_id": tenant, "actor": _plain(actor or {}), "operation": operation,
        "target": target, "plan_hash": plan_hash, "approval": _plain(approval), "status": status,
        "result": _plain(result), "error": error, "flow_run_id": flow_run_id, "operation_id": operation_id,
        "duration_ms": duration_ms,
    }
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        last = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        record["seq"] = seq
        record["prev_hash"] = prev
        record["hash"] = _digest(prev, record)
        conn.execute(
            "INSERT INTO audit_log (seq, at, tenant_id, actor, operation, target, plan_hash, approval, status, result,"
            " error, flow_run_id, operation_id, duration_ms, prev_hash, hash) VALUES (%(seq)s, %(at)s, %(tenant_id)s,"
            " %(actor)s, %(operation)s, %(target)s, %(plan_hash)s, %(approval)s, %(status)s, %(result)s, %(error)s,"
            " %(flow_run_id)s, %(operation_id)s, %(duration_ms)s, %(prev_hash)s, %(hash)s)",
            {**record, "actor": Jsonb(record["actor"]), "approval": _json(record["approval"]),
             "result": _json(record["result"])},
        )
    return record


def _json(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def read_audit(pool: ConnectionPool, *, tenant: str | None = None, operation_id: str | None = None,
               limit: int = 100, after_seq: int = 0, newest_first: bool = False) -> list[dict[str, Any]]:
    """Records in seq order (newest_first: the last `limit` of them, newest first), optionally of one tenant or
    one operation."""
    clauses, params = ["seq > %(after)s"], {"after": after_seq, "limit": limit}
    if tenant is not None:
        clauses.append("tenant_id = %(tenant)s")
        params["tenant"] = tenant
    if operation_id is not None:
        clauses.append("operation_id = %(op)s")
        params["op"] = operation_id
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        order = "DESC" if newest_first else ""
        cur.execute(f"SELECT * FROM audit_log WHERE {' AND '.join(clauses)} ORDER BY seq {order} LIMIT %(limit)s",
                    params)
        return cur.fetchall()


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    problem: str | None = None
    bad_seq: int | None = None


def verify_audit(pool: ConnectionPool) -> AuditReport:
    """Walk the whole chain; the first edited, inserted or missing record fails it, named by seq."""
    expected_seq, prev, count = 1, GENESIS, 0
    with pool.connection() as conn, conn.cursor(row_factory=dict_row, name="audit_verify") as cur:
        cur.itersize = 2000
        cur.execute("SELECT * FROM audit_log ORDER BY seq")
        for row in cur:
            if row["seq"] != expected_seq:
                problem = f"record {expected_seq} is missing (next is {row['seq']})" if row["seq"] > expected_seq \
                    else f"record {row['seq']} is duplicated"
                return AuditReport(False, count, expected_seq - 1, prev, problem, expected_seq)
            if row["prev_hash"] != prev:
                return AuditReport(False, count, row["seq"] - 1, prev,
                                   f"record {row['seq']} does not link to record {row['seq'] - 1}", row["seq"])
            if _digest(prev, row) != row["hash"]:
                return AuditReport(False, count, row["seq"] - 1, prev,
                                   f"record {row['seq']} was edited (its hash does not match its content)", row["seq"])
            prev, expected_seq, count = row["hash"], expected_seq + 1, count + 1
    return AuditReport(True, count, expected_seq - 1, prev)

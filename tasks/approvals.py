"""Approvers and their decisions. An approver authenticates with a token shown once and stored only hashed;
a decision is bound to the operation's plan hash and target, and the guard re-checks it before executing."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timezone
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from blocks.errors import AuthFailed, InputError

__all__ = ["add_approver", "authenticate_approver", "read_decision", "record_decision", "revoke_approver"]

TOKEN_PREFIX = "dmapprove_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_approver(pool: ConnectionPool, tenant: str, name: str) -> str:
    """Create (or re-issue) an approver of `tenant`; returns the token, which is never stored nor shown again."""
    if not name.strip():
        raise InputError("approver name is empty", item="name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with pool.connection() as conn:
        conn.execute("INSERT INTO approvers (tenant_id, name, token_hash) VALUES (%s, %s, %s)"
                     " ON CONFLICT (tenant_id, name) DO UPDATE SET token_hash = EXCLUDED.token_hash,"
                     " revoked_at = NULL, created_at = now()", [tenant, name.strip(), _hash(token)])
    return token


def revoke_approver(pool: ConnectionPool, tenant: str, name: str) -> bool:
    with pool.connection() as conn:
        cur = conn.execute("UPDATE approvers SET revoked_at = now() WHERE tenant_id = %s AND name = %s"
                           " AND revoked_at IS NULL", [tenant, name])
        return cur.rowcount == 1


def authenticate_approver(pool: ConnectionPool, tenant: str, token: str) -> str:
    """The approver's name, or AuthFailed. The lookup is by hash; the final compare is constant-time."""
    digest = _hash(token or "")
    with pool.connection() as conn:
        row = conn.execute("SELECT name, token_hash FROM approvers WHERE tenant_id = %s AND token_hash = %s"
                           " AND revoked_at IS NULL", [tenant, digest]).fetchone()
    if row is None or not hmac.compare_digest(row[1], digest):
        raise AuthFailed("approver token not recognised (or revoked)", provider="devmesh", operation="approve")
    return row[0]


def record_decision(pool: ConnectionPool, operation: dict[str, Any], approver: str, decision: str,
                    comment: str | None = None) -> dict[str, Any]:
    """Store the decision for an operation awaiting approval; one decision per operation."""
    if decision not in ("approved", "rejected"):
        raise InputError("decision must be 'approved' or 'rejected'", item=decision)
    if operation["status"] != "awaiting_approval":
        raise InputError(f"operation is {operation['status']}, not awaiting approval", item=str(operation["id"]))
    expires = operation.get("expires_at")
    if expires is not None and expires <= datetime.now(timezone.utc):
        raise InputError("the approval window has closed", item=str(operation["id"]))
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("INSERT INTO approvals (operation_id, plan_hash, target, approver, decision, comment)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (operation_id) DO NOTHING RETURNING *",
                    [operation["id"], operation["plan_hash"], operation["target"], approver, decision, comment])
        row = cur.fetchone()
    if row is None:
        raise InputError("a decision was already recorded", item=str(operation["id"]))
    return row


def read_decision(pool: ConnectionPool, operation_id: Any) -> dict[str, Any] | None:
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM approvals WHERE operation_id = %s", [operation_id]).fetchone()

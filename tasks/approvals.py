"""Approvers and their decisions. An approver authenticates with a token shown once and stored only hashed;
a decision is bound to the operation's plan hash and target, and the guard re-checks it before executing.

Who decided is an `Approver`: an approver of the operation's tenant (by token) or an admin API key of that tenant,
named by kind, id and name in the decision and the audit. The API key that requested an operation cannot approve
it (an agent holding an admin key would otherwise approve its own request): another key or an approver must."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from blocks.errors import AuthFailed, InputError

__all__ = ["Approver", "SelfApproval", "add_approver", "authenticate_approver", "read_decision", "record_decision",
           "revoke_approver"]

TOKEN_PREFIX = "dmapprove_"


@dataclass(frozen=True)
class Approver:
    """Who decides: kind "approver" (a person with a token) or "api_key" (an admin key), its id and name."""

    kind: str
    id: str
    name: str

    def actor(self, tenant: str) -> dict[str, Any]:
        """The audit record's actor."""
        if self.kind == "api_key":
            return {"tenant": tenant, "api_key_id": self.id, "api_key_name": self.name}
        return {"tenant": tenant, "approver_id": self.id, "approver": self.name}

    def as_dict(self) -> dict[str, str]:
        return {"approver": self.name, "approver_id": self.id, "approver_kind": self.kind}


class SelfApproval(InputError):
    """The API key that requested the operation tried to approve it."""

    def __init__(self, message: str, *, item: str) -> None:
        super().__init__(message, item=item)
        self.message = message


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


def authenticate_approver(pool: ConnectionPool, tenant: str, token: str) -> Approver:
    """The approver of `tenant` holding `token`, or AuthFailed. The lookup is by hash; the final compare is
    constant-time."""
    digest = _hash(token or "")
    with pool.connection() as conn:
        row = conn.execute("SELECT name, token_hash, id::text FROM approvers WHERE tenant_id = %s AND token_hash = %s"
                           " AND revoked_at IS NULL", [tenant, digest]).fetchone()
    if row is None or not hmac.compare_digest(row[1], digest):
        raise AuthFailed("approver token not recognised (or revoked)", provider="devmesh", operation="approve")
    return Approver("approver", row[2], row[0])


def record_decision(pool: ConnectionPool, operation: dict[str, Any], approver: Approver, decision: str,
                    comment: str | None = None) -> dict[str, Any]:
    """Store the decision for an operation awaiting approval; one decision per operation."""
    if decision not in ("approved", "rejected"):
        raise InputError("decision must be 'approved' or 'rejected'", item=decision)
    if operation["status"] != "awaiting_approval":
        raise InputError(f"operation is {operation['status']}, not awaiting approval", item=str(operation["id"]))
    expires = operation.get("expires_at")
    if expires is not None and expires <= datetime.now(timezone.utc):
        raise InputError("the approval window has closed", item=str(operation["id"]))
    requester = (operation.get("actor") or {}).get("api_key_id")
    if decision == "approved" and approver.kind == "api_key" and requester == approver.id:
        raise SelfApproval("the API key that requested this operation cannot approve it; another admin key of the "
                           "tenant or an approver must", item=str(operation["id"]))
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("INSERT INTO approvals (operation_id, plan_hash, target, approver, approver_id, approver_kind,"
                    " decision, comment) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (operation_id) DO NOTHING"
                    " RETURNING *", [operation["id"], operation["plan_hash"], operation["target"], approver.name,
                                     approver.id, approver.kind, decision, comment])
        row = cur.fetchone()
    if row is None:
        raise InputError("a decision was already recorded", item=str(operation["id"]))
    return row


def read_decision(pool: ConnectionPool, operation_id: Any) -> dict[str, Any] | None:
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM approvals WHERE operation_id = %s", [operation_id]).fetchone()

"""The audit trail: append-only (a trigger refuses UPDATE, DELETE, TRUNCATE), hash-chained, and signed with a key
the database does not hold, so that a database superuser cannot rewrite it unseen.

hash(n) = sha256(hash(n-1) + canonical JSON of record n); seq runs 1, 2, 3 ... without gaps; signature(n) =
Ed25519 over hash(n) with the audit key (blocks/audit_key.py: a Prefect Secret block). What `verify_audit` finds:

- an edited record: its hash no longer matches its content;
- an edited record whose chain was recomputed, or a forged one: its signature does not verify (only the key
  signs, and the hash it signs covers every record before it);
- a deleted record in the middle: a gap in seq; deleted last records: only a copy of the head kept elsewhere
  shows it — the checkpoints (tasks/audit_checkpoint.py: seq, hash, where signing began, signed by the key);
- a stripped signature: an unsigned record after the first signed one, or before where a checkpoint saw signing
  begin.

Records written before the key existed carry no signature: they verify by their chain only and are reported as
"unauthenticated legacy records 1..N"; the first signed record's signature covers their hashes from then on.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from blocks.audit_key import AuditKey, load_or_create_audit_key
from blocks.errors import ConfigError
from blocks.settings import Settings

__all__ = ["AuditReport", "GENESIS", "RECORD_CONTEXT", "append_audit", "audit_key", "read_audit", "use_audit_key",
           "verify_audit"]

GENESIS = "0" * 64
RECORD_CONTEXT = b"devmesh-audit-record:v1:"  # what a record's signature signs: this, then its hash
_LOCK = 0x617564697400  # advisory lock key serialising appends ("audit")
FIELDS = ("seq", "at", "tenant_id", "actor", "operation", "target", "plan_hash", "approval", "status", "result",
          "error", "flow_run_id", "operation_id", "duration_ms")

_installed: AuditKey | None = None
_loaded: dict[str, AuditKey] = {}
_key_lock = threading.Lock()


def use_audit_key(key: AuditKey | None) -> None:
    """Sign and verify with `key` in this process instead of the Secret block (embedding devmesh, tests);
    None goes back to the block."""
    global _installed
    _installed = key


def audit_key(block_name: str | None = None) -> AuditKey:
    """The audit key of this process: the one given to use_audit_key, else the Secret block's (created on first
    use), loaded once per process."""
    if _installed is not None:
        return _installed
    name = block_name or Settings().audit.key_block
    with _key_lock:
        if name not in _loaded:
            try:
                _loaded[name], _ = load_or_create_audit_key(name)
            except ConfigError:
                raise
            except Exception as exc:  # the Prefect API is down or refused: no key, so nothing may be audited
                raise ConfigError(f"cannot load the audit key from Prefect Secret block {name!r} "
                                  f"({type(exc).__name__}: {str(exc)[:200]}); nothing is audited without it") from exc
        return _loaded[name]


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
    """Append one signed record (callers pass values already scrubbed of secrets); returns it with seq and hash."""
    key = audit_key()  # before the transaction: loading the block may talk to the Prefect API
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
        record["key_id"] = key.fingerprint
        record["signature"] = key.sign(RECORD_CONTEXT + record["hash"].encode())
        conn.execute(
            "INSERT INTO audit_log (seq, at, tenant_id, actor, operation, target, plan_hash, approval, status, result,"
            " error, flow_run_id, operation_id, duration_ms, prev_hash, hash, key_id, signature) VALUES (%(seq)s,"
            " %(at)s, %(tenant_id)s, %(actor)s, %(operation)s, %(target)s, %(plan_hash)s, %(approval)s, %(status)s,"
            " %(result)s, %(error)s, %(flow_run_id)s, %(operation_id)s, %(duration_ms)s, %(prev_hash)s, %(hash)s,"
            " %(key_id)s, %(signature)s)",
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
    """What verify_audit found. `legacy_end`: the last unsigned record before signing began (0: none);
    `signed_from`: the first signed record; `checked_against`: the checkpoint the head was compared with."""

    ok: bool
    records: int
    head_seq: int
    head_hash: str
    problem: str | None = None
    bad_seq: int | None = None
    legacy_end: int = 0
    signed_from: int | None = None
    key: str | None = None
    checked_against: dict[str, Any] | None = field(default=None)

    def summary(self) -> dict[str, Any]:
        """The report as the CLI and the verify-audit flow print it."""
        out: dict[str, Any] = {"ok": self.ok, "records": self.records, "head_seq": self.head_seq,
                               "head_hash": self.head_hash, "key": self.key}
        if self.legacy_end:
            out["legacy"] = (f"unauthenticated legacy records 1..{self.legacy_end} (written before the audit key; "
                             "checked by their hash chain only)")
        if self.signed_from is not None:
            out["signed"] = f"records {self.signed_from}..{self.head_seq} signed by {self.key}"
        if self.checked_against is not None:
            out["checkpoint"] = {k: self.checked_against.get(k) for k in ("seq", "hash", "at", "source", "read_from")
                                  if self.checked_against.get(k) is not None}
        if not self.ok:
            out["problem"], out["bad_seq"] = self.problem, self.bad_seq
        return out


class _Walk:
    """The state of one pass over the chain."""

    def __init__(self, key: AuditKey | None, checkpoint_seq: int | None):
        self.key, self.checkpoint_seq = key, checkpoint_seq
        self.expected, self.prev, self.count = 1, GENESIS, 0
        self.legacy_end, self.signed_from = 0, None
        self.hash_at_checkpoint: str | None = None

    def step(self, row: dict[str, Any]) -> tuple[str, int] | None:
        """None when `row` is sound, else (what is wrong, its seq)."""
        seq = row["seq"]
        if seq != self.expected:
            return (f"record {self.expected} is missing (next is {seq})" if seq > self.expected
                    else f"record {seq} is duplicated"), self.expected
        if row["prev_hash"] != self.prev:
            return f"record {seq} does not link to record {seq - 1}", seq
        if _digest(self.prev, row) != row["hash"]:
            return f"record {seq} was edited (its hash does not match its content)", seq
        problem = self._signature(row)
        if problem:
            return problem, seq
        if seq == self.checkpoint_seq:
            self.hash_at_checkpoint = row["hash"]
        self.prev, self.expected, self.count = row["hash"], seq + 1, self.count + 1
        return None

    def _signature(self, row: dict[str, Any]) -> str | None:
        seq, signature = row["seq"], row.get("signature")
        if signature is None:
            if self.signed_from is not None:
                return (f"record {seq} has no signature although records are signed from {self.signed_from}: its "
                        "signature was removed, or it was written by someone without the audit key")
            self.legacy_end = seq
            return None
        if self.key is not None:
            if row.get("key_id") != self.key.fingerprint:
                return f"record {seq} is signed by key {row.get('key_id')}, not by the audit key {self.key.fingerprint}"
            if not self.key.verify(RECORD_CONTEXT + row["hash"].encode(), signature):
                return (f"record {seq}'s signature does not verify: the record was forged, or edited and the chain "
                        "recomputed from it")
        if self.signed_from is None:
            self.signed_from = seq
        return None


def verify_audit(pool: ConnectionPool, key: AuditKey | None = None,
                 checkpoint: dict[str, Any] | None = None) -> AuditReport:
    """Walk the whole chain: hashes, links, signatures (when `key` is given), then compare it with `checkpoint`
    (a head kept outside the table, already checked to be signed by the key: tasks.audit_checkpoint)."""
    walk = _Walk(key, checkpoint["seq"] if checkpoint else None)
    fingerprint = key.fingerprint if key else None

    def report(problem: str | None = None, bad_seq: int | None = None) -> AuditReport:
        return AuditReport(problem is None, walk.count, walk.expected - 1, walk.prev, problem, bad_seq,
                           walk.legacy_end, walk.signed_from, fingerprint, checkpoint)

    with pool.connection() as conn, conn.cursor(row_factory=dict_row, name="audit_verify") as cur:
        cur.itersize = 2000
        cur.execute("SELECT * FROM audit_log ORDER BY seq")
        for row in cur:
            found = walk.step(row)
            if found:
                return report(*found)
    if checkpoint is None:
        return report()
    seen, head, at = checkpoint["seq"], walk.expected - 1, checkpoint.get("at", "?")
    if head < seen:
        return report(f"the trail was truncated: it ends at record {head}, but the checkpoint of {at} saw record "
                      f"{seen}: records {head + 1}..{seen} were deleted", head + 1)
    if walk.hash_at_checkpoint != checkpoint["hash"]:
        return report(f"record {seen} differs from the checkpoint of {at} (hash {checkpoint['hash'][:16]}…, now "
                      f"{(walk.hash_at_checkpoint or '')[:16]}…): the chain up to it was rewritten", seen)
    began = checkpoint.get("signed_from")
    if began is not None and (walk.signed_from is None or walk.signed_from > began):
        return report(f"the checkpoint of {at} saw records signed from {began}, now the first signed record is "
                      f"{walk.signed_from or 'none'}: signatures were removed", began)
    return report()

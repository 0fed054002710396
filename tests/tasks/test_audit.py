"""The audit trail is append-only and hash-chained: edits, deletions and insertions are detected by seq."""

from __future__ import annotations

import psycopg
import pytest

from tasks.audit import append_audit, read_audit, verify_audit


def _append(pool, tenant, n=3):
    return [append_audit(pool, tenant=tenant, actor={"agent": "test"}, operation="github.create_issue",
                         status="succeeded", target=f"github:acme/app#{i}", result={"n": i, "f": 0.1})
            for i in range(n)]


def test_chain_verifies_and_refuses_update_delete_truncate(pool, tenant):
    records = _append(pool, tenant)
    assert [r["seq"] for r in records] == list(range(records[0]["seq"], records[0]["seq"] + 3))
    assert verify_audit(pool).ok
    assert [r["target"] for r in read_audit(pool, tenant=tenant)] == [r["target"] for r in records]
    for sql in ("UPDATE audit_log SET status = 'x' WHERE seq = %s", "DELETE FROM audit_log WHERE seq = %s"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), pool.connection() as conn:
            conn.execute(sql, [records[0]["seq"]])
    with pytest.raises(psycopg.errors.InsufficientPrivilege), pool.connection() as conn:
        conn.execute("TRUNCATE audit_log")


@pytest.fixture
def tamper(pool):
    """Run SQL with the append-only triggers disabled (as a superuser could), then put everything back."""
    def run(sql, params=()):
        with pool.connection() as conn:
            conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
            try:
                conn.execute(sql, params)
            finally:
                conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    return run


def test_edit_is_detected_by_seq(pool, tenant, tamper):
    records = _append(pool, tenant)
    seq = records[1]["seq"]
    tamper("UPDATE audit_log SET status = 'failed' WHERE seq = %s", [seq])
    try:
        report = verify_audit(pool)
        assert not report.ok and report.bad_seq == seq and "edited" in report.problem
    finally:
        tamper("UPDATE audit_log SET status = 'succeeded' WHERE seq = %s", [seq])
    assert verify_audit(pool).ok


def test_deletion_is_detected(pool, tenant, tamper):
    records = _append(pool, tenant)
    seq = records[1]["seq"]
    with pool.connection() as conn:
        saved = conn.execute("SELECT * FROM audit_log WHERE seq = %s", [seq]).fetchone()
        columns = [d.name for d in conn.execute("SELECT * FROM audit_log LIMIT 0").description]
    tamper("DELETE FROM audit_log WHERE seq = %s", [seq])
    try:
        report = verify_audit(pool)
        assert not report.ok and report.bad_seq == seq and "missing" in report.problem
    finally:
        placeholders = ", ".join(["%s"] * len(columns))
        with pool.connection() as conn:
            conn.execute(f"INSERT INTO audit_log ({', '.join(columns)}) VALUES ({placeholders})",
                         [psycopg.types.json.Jsonb(v) if isinstance(v, (dict, list)) else v for v in saved])
    assert verify_audit(pool).ok

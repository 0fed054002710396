"""Issue 18, item 3: a database superuser cannot rewrite the audit trail unseen.

Each attack is made as a superuser connection would make it (the append-only triggers disabled), on a database of
its own, and `devmesh audit verify` (the CLI, exit 5) names what happened: a truncated tail, an edited record whose
chain was recomputed, a forged record, stripped signatures, a forged checkpoint. Records written before the audit
key existed keep verifying, reported as unauthenticated legacy records.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from datetime import datetime, timezone

import psycopg
import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from blocks.audit_key import AuditKey, load_or_create_audit_key
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from deployments.cli import app
from tasks.audit import GENESIS, RECORD_CONTEXT, _digest, append_audit, audit_key, use_audit_key, verify_audit
from tasks.migrate import ensure_schema

runner = CliRunner()


@pytest.fixture
def trail(fresh_database_url, tmp_path, monkeypatch):
    """(pool, superuser connection factory, checkpoint file) of a fresh database the CLI is pointed at."""
    checkpoints = tmp_path / "audit-checkpoints.jsonl"
    monkeypatch.setenv("DEVMESH_DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("DEVMESH_AUDIT__CHECKPOINT_FILE", str(checkpoints))
    pool = PgVectorStore.from_settings(Settings()).pool()
    ensure_schema(pool)
    return pool, lambda: psycopg.connect(fresh_database_url, autocommit=True), checkpoints


def superuser(connect, sql: str, params=()) -> None:
    """What a superuser can do: switch the append-only triggers off, change rows, switch them on again."""
    with connect() as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        conn.execute(sql, params)
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


def legacy_records(pool, n: int) -> None:
    """Records as devmesh wrote them before the audit key (hash chain only), starting the chain."""
    with pool.connection() as conn:
        prev = GENESIS
        for seq in range(1, n + 1):
            record = {"seq": seq, "at": datetime.now(timezone.utc), "tenant_id": "default",
                      "actor": {"via": "cli", "user": "ops"}, "operation": "github.comment_issue", "target": None,
                      "plan_hash": None, "approval": None, "status": "succeeded", "result": {"n": seq},
                      "error": None, "flow_run_id": None, "operation_id": None, "duration_ms": 5}
            digest = _digest(prev, record)
            conn.execute("INSERT INTO audit_log (seq, at, tenant_id, actor, operation, status, result, duration_ms,"
                         " prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         [seq, record["at"], "default", Jsonb(record["actor"]), record["operation"], "succeeded",
                          Jsonb(record["result"]), 5, prev, digest])
            prev = digest


def signed_records(pool, n: int) -> list[dict]:
    return [append_audit(pool, tenant="acme", actor={"api_key_id": "k1"}, operation="aws.s3_put_object",
                         status="succeeded", target=f"s3://acme-data/{i}", result={"i": i}) for i in range(n)]


def recompute_chain(connect, from_seq: int) -> None:
    """Rehash every record from `from_seq` on, as someone who edited one and wants the chain to hold again."""
    with connect() as conn:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        rows = cur.execute("SELECT * FROM audit_log WHERE seq >= %s - 1 ORDER BY seq", [from_seq]).fetchall()
        prev = rows[0]["hash"] if rows[0]["seq"] == from_seq - 1 else GENESIS
        for row in (r for r in rows if r["seq"] >= from_seq):
            digest = _digest(prev, row)
            conn.execute("UPDATE audit_log SET prev_hash = %s, hash = %s WHERE seq = %s", [prev, digest, row["seq"]])
            prev = digest
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


def verify(*args: str):
    result = runner.invoke(app, ["audit", "verify", *args])
    out = result.stdout + (result.stderr or "")
    return result.exit_code, out


def test_legacy_records_keep_verifying_and_are_named_as_such(trail):
    pool, _, checkpoints = trail
    legacy_records(pool, 3)
    signed_records(pool, 3)
    code, out = verify()
    assert code == 0, out
    summary = json.loads(out[:out.rindex("}") + 1])
    assert summary["legacy"].startswith("unauthenticated legacy records 1..3")
    assert summary["signed"] == f"records 4..6 signed by {audit_key().fingerprint}"
    [line] = checkpoints.read_text().splitlines()
    checkpoint = json.loads(line)
    assert (checkpoint["seq"], checkpoint["signed_from"], checkpoint["legacy_end"]) == (6, 4, 3)
    assert checkpoint["key"] == audit_key().fingerprint and "signature" in checkpoint


def test_truncating_the_tail_is_named(trail):
    pool, connect, _ = trail
    signed_records(pool, 5)
    assert verify()[0] == 0  # the checkpoint sees record 5
    superuser(connect, "DELETE FROM audit_log WHERE seq >= 4")
    assert verify_audit(pool, audit_key()).ok  # what the chain alone says: a shorter trail that holds
    code, out = verify()
    assert code == 5, out
    assert "truncated" in out and "records 4..5 were deleted" in out


def test_an_edit_with_the_chain_recomputed_is_named(trail):
    pool, connect, _ = trail
    records = signed_records(pool, 4)
    superuser(connect, "UPDATE audit_log SET status = 'denied', result = NULL WHERE seq = 2")
    code, out = verify("--no-record")
    assert code == 5 and "record 2 was edited" in out, out
    recompute_chain(connect, 2)
    code, out = verify("--no-record")
    assert code == 5, out
    assert "record 2's signature does not verify" in out and "chain recomputed" in out
    assert records[1]["status"] == "succeeded"


def test_a_legacy_edit_recomputed_through_signed_records_is_caught_by_the_first_signature(trail):
    pool, connect, _ = trail
    legacy_records(pool, 3)
    signed_records(pool, 2)
    superuser(connect, "UPDATE audit_log SET actor = %s WHERE seq = 2", [Jsonb({"via": "cli", "user": "intern"})])
    recompute_chain(connect, 2)
    code, out = verify("--no-record")
    assert code == 5 and "record 4's signature does not verify" in out, out


def test_forged_records_are_named(trail):
    pool, connect, _ = trail
    signed_records(pool, 2)
    attacker = AuditKey.generate()
    row = {"seq": 3, "at": datetime.now(timezone.utc), "tenant_id": "acme", "actor": {"approver": "alice"},
           "operation": "aws.s3_put_object", "target": "s3://acme-data/x", "plan_hash": None,
           "approval": {"approver": "alice", "decision": "approved"}, "status": "approval_approved", "result": None,
           "error": None, "flow_run_id": None, "operation_id": str(uuid.uuid4()), "duration_ms": None}
    with pool.connection() as conn:
        prev = conn.execute("SELECT hash FROM audit_log WHERE seq = 2").fetchone()[0]
    digest = _digest(prev, row)
    insert = ("INSERT INTO audit_log (seq, at, tenant_id, actor, operation, target, approval, status, operation_id,"
              " prev_hash, hash, key_id, signature) VALUES (3, %s, 'acme', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
    values = [row["at"], Jsonb(row["actor"]), row["operation"], row["target"], Jsonb(row["approval"]),
              row["status"], row["operation_id"], prev, digest]
    for key_id, signature, named in (
            (None, None, "record 3 has no signature although records are signed from 1"),
            (attacker.fingerprint, attacker.sign(RECORD_CONTEXT + digest.encode()),
             f"record 3 is signed by key {attacker.fingerprint}, not by the audit key"),
            (audit_key().fingerprint, attacker.sign(RECORD_CONTEXT + digest.encode()),
             "record 3's signature does not verify: the record was forged")):
        superuser(connect, insert, values + [key_id, signature])
        try:
            code, out = verify("--no-record")
            assert code == 5 and named in out, out
        finally:
            superuser(connect, "DELETE FROM audit_log WHERE seq = 3")
    assert verify("--no-record")[0] == 0


def test_stripping_every_signature_is_caught_by_the_checkpoint(trail):
    pool, connect, _ = trail
    legacy_records(pool, 2)
    signed_records(pool, 3)
    assert verify()[0] == 0
    superuser(connect, "UPDATE audit_log SET key_id = NULL, signature = NULL")
    assert verify_audit(pool, audit_key()).ok  # the chain alone now looks like five legacy records
    code, out = verify()
    assert code == 5 and "signed from 3" in out and "signatures were removed" in out, out


def test_a_forged_or_foreign_checkpoint_is_refused(trail):
    pool, connect, checkpoints = trail
    signed_records(pool, 3)
    assert verify()[0] == 0
    # a line signed with another key, or an edited line, claiming a shorter head: refused, naming the line
    line = json.loads(checkpoints.read_text().splitlines()[0])
    edited = {**line, "seq": 2}
    with checkpoints.open("a") as f:
        f.write(json.dumps(edited) + "\n")
    code, out = verify()
    assert code == 5 and "line 2 of" in out and "not signed by the audit key" in out, out
    # a checkpoint given on the command line (e.g. copied from the verify-audit artifact) is checked the same way
    other = AuditKey.generate()
    code, out = verify("--checkpoint", json.dumps({**line, "key": other.fingerprint}))
    assert code == 5 and "the key was replaced" in out, out


def test_an_auditor_verifies_with_the_public_key_only(trail):
    pool, connect, checkpoints = trail
    signed_records(pool, 2)
    shown = runner.invoke(app, ["audit", "key"])
    public = json.loads(shown.stdout)["public_key"]
    assert public == audit_key().public_b64 and audit_key().private_b64() not in shown.stdout
    code, out = verify("--public-key", public)
    assert code == 0 and not checkpoints.exists(), out  # it can check, it cannot sign a checkpoint
    superuser(connect, "UPDATE audit_log SET status = 'failed' WHERE seq = 1")
    recompute_chain(connect, 1)
    code, out = verify("--public-key", public)
    assert code == 5 and "record 1's signature does not verify" in out


def test_the_key_is_created_in_a_secret_block_on_first_use_and_never_logged(prefect_harness, pool, caplog):
    from prefect.blocks.system import Secret

    name = f"audit-key-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.DEBUG):
        key, created = load_or_create_audit_key(name)
        again, created_again = load_or_create_audit_key(name)
    assert created and not created_again and again.fingerprint == key.fingerprint
    secret = Secret.load(name).get()
    assert AuditKey.from_private_b64(secret).fingerprint == key.fingerprint
    assert secret not in caplog.text
    previous = audit_key()
    use_audit_key(None)  # the process now loads the block named in settings
    try:
        import tasks.audit as audit

        audit._loaded.pop(name, None)
        assert audit.audit_key(name).fingerprint == key.fingerprint
    finally:
        use_audit_key(previous)


def test_the_daily_verify_run_checkpoints_the_head_and_fails_on_a_truncated_tail(prefect_harness, trail):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.housekeeping import AuditBroken, verify_audit_trail

    pool, connect, checkpoints = trail
    signed_records(pool, 3)
    out = verify_audit_trail()
    assert out["ok"] and out["head_seq"] == 3
    assert json.loads(checkpoints.read_text().splitlines()[-1])["source"] == "flow"
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[
            "devmesh-audit-head"])), limit=1, sort="CREATED_DESC")
    assert '"seq": 3' in artifact.data and out["head_hash"] in artifact.data  # a copy outside this machine's file
    superuser(connect, "DELETE FROM audit_log WHERE seq = 3")
    with pytest.raises(AuditBroken, match=r"truncated.*records 3\.\.3 were deleted"):
        verify_audit_trail()


def test_an_operation_that_could_not_be_audited_does_not_start(settings, pool, tenant):
    """Without its key (the Prefect API down at first use) nothing can be signed: the guard refuses before it
    plans, so nothing is stored and nothing reaches the provider."""
    import boto3
    from moto import mock_aws
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings
    from prefect_aws import AwsCredentials

    from blocks.errors import ConfigError
    from blocks.policy import OperationPolicy
    from flows.operate import OperateRequest, run_operation
    from tasks.ops.base import Connections

    with socket_closed_port() as port, mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket="acme-data", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        conns = Connections(aws=AwsCredentials(aws_access_key_id="AKIATEST", aws_secret_access_key="secret-value-1",
                                               region_name="eu-west-1"))
        policy = OperationPolicy(operations=["aws.*"], aws_regions=["eu-west-1"], aws_buckets=["acme-*"])
        request = OperateRequest(operation="aws.s3_put_object", tenant=tenant, dry_run=False, actor={"agent": "t"},
                                 arguments={"bucket": "acme-data", "key": "x.txt", "body": "unaudited"})
        previous = audit_key()
        use_audit_key(None)
        block = f"audit-key-unreachable-{uuid.uuid4().hex[:6]}"
        try:
            with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
                with pytest.raises(ConfigError, match=f"cannot load the audit key from Prefect Secret block '{block}'"):
                    run_operation(request, settings.model_copy(update={"audit": settings.audit.model_copy(
                        update={"key_block": block})}), connections=conns, policy=policy)
        finally:
            use_audit_key(previous)
        assert s3.list_objects_v2(Bucket="acme-data").get("KeyCount") == 0
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM operations WHERE tenant_id = %s", [tenant]).fetchone()[0] == 0


@contextlib.contextmanager
def socket_closed_port():
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port

"""Housekeeping flows: deliveries no trigger ran are redriven once; old ones are pruned; the audit head; deleted
chunks' keyword postings are compacted away."""

from __future__ import annotations

import uuid

from psycopg.types.json import Jsonb

from flows.housekeeping import (compact_keyword_index, prune_webhook_deliveries, redrive_webhook_deliveries,
                                 verify_audit_trail)
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from tasks.store import delete_documents
from tasks.audit import append_audit
from tasks.webhooks import get_delivery

ISSUE = {"action": "opened", "repository": {"full_name": "octo/app"},
         "issue": {"number": 3, "title": "Certificate expires Friday", "body": "Renew the ingress TLS certificate.",
                   "state": "open", "user": {"login": "bob"}, "labels": [], "updated_at": "2024-05-01T10:00:00Z",
                   "html_url": "https://github.com/octo/app/issues/3"}}


def _emitted(pool, tenant, minutes_ago: int, status: str = "emitted", received_days_ago: int = 0) -> str:
    delivery = str(uuid.uuid4())
    with pool.connection() as conn:
        conn.execute("INSERT INTO webhook_deliveries (delivery_id, event, action, repository, tenant_id, payload, route,"
                     " status, emitted_at, received_at) VALUES (%s, 'issues', 'opened', 'octo/app', %s, %s,"
                     " 'github-discussions', %s, now() - make_interval(mins => %s), now() - make_interval(days => %s))",
                     [delivery, tenant, Jsonb(ISSUE), status, minutes_ago, received_days_ago])
    return delivery


def test_redrive_processes_only_stale_emitted_deliveries_once(settings, pool, tenant):
    stale, fresh = _emitted(pool, tenant, 30), _emitted(pool, tenant, 1)
    assert redrive_webhook_deliveries.fn(older_than_minutes=10) == {"processed": 1, "failed": []}
    assert get_delivery(pool, stale)["status"] == "processed"
    assert get_delivery(pool, fresh)["status"] == "emitted"
    with pool.connection() as conn:
        docs = conn.execute("SELECT document_id FROM documents WHERE tenant_id = %s", [tenant]).fetchall()
    assert docs == [("github:octo/app#issue/3",)]
    assert redrive_webhook_deliveries.fn(older_than_minutes=10)["processed"] == 0


def test_prune_keeps_the_redelivery_window(settings, pool, tenant):
    old = _emitted(pool, tenant, 60, status="processed", received_days_ago=8)
    recent = _emitted(pool, tenant, 60, status="processed", received_days_ago=6)
    assert prune_webhook_deliveries.fn() == 1
    assert get_delivery(pool, old) is None and get_delivery(pool, recent) is not None


def test_verify_audit_trail_reports_the_head(settings, pool, tenant, prefect_harness):
    record = append_audit(pool, tenant=tenant, actor={"agent": "t"}, operation="aws.s3_list", status="succeeded")
    out = verify_audit_trail()
    assert out["ok"] and out["head_seq"] >= record["seq"]


def test_compaction_forgets_deleted_chunks_postings(settings, pool, tenant, prefect_harness):
    docs = [DocumentSpec(document_id="keep", text="rollout undo"), DocumentSpec(document_id="gone", text="xylophonic")]
    ingest_documents(IngestRequest(tenant=tenant, documents=docs), settings)
    delete_documents(pool, tenant, ["gone"])

    def lexemes() -> set[str]:
        with pool.connection() as conn:
            return {r[0] for r in conn.execute("SELECT lexeme FROM chunk_postings WHERE tenant_id = %s", [tenant])}

    assert "xylophon" in lexemes()  # left behind by the delete, never returned by a search
    assert tenant in compact_keyword_index()
    assert lexemes() == {"rollout", "undo"}
    assert tenant not in compact_keyword_index()

"""Scheduled housekeeping: verify the audit trail; redrive webhook deliveries no run processed; forget old ones."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks.errors import AppError
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from tasks.audit import verify_audit
from tasks.migrate import ensure_schema
from tasks.webhooks import prune_deliveries, stale_deliveries

__all__ = ["AuditBroken", "prune_webhook_deliveries", "redrive_webhook_deliveries", "verify_audit_trail"]


class AuditBroken(AppError):
    """The audit trail's hash chain does not verify."""


def _pool():
    pool = PgVectorStore.from_settings(Settings()).pool()
    ensure_schema(pool)
    return pool


@flow(name="verify-audit")
def verify_audit_trail() -> dict:
    """Walk the hash chain; publish the head (seq, hash) as an artifact, an anchor to compare later runs with."""
    report = verify_audit(_pool())
    create_markdown_artifact(key="devmesh-audit-head", description="audit trail verification",
                             markdown=f"ok: **{report.ok}**, records: {report.records}, head: #{report.head_seq} "
                                      f"`{report.head_hash}`" + (f"\n\n{report.problem}" if report.problem else ""))
    if not report.ok:
        raise AuditBroken(f"audit trail broken at record {report.bad_seq}: {report.problem}")
    get_run_logger().info("audit trail ok: %s records, head %s", report.records, report.head_hash[:16])
    return {"ok": True, "records": report.records, "head_seq": report.head_seq, "head_hash": report.head_hash}


@flow(name="prune-webhook-deliveries")
def prune_webhook_deliveries() -> int:
    """Delete deliveries older than the 7-day redelivery window that are done with."""
    return prune_deliveries(_pool())


@flow(name="redrive-webhook-deliveries")
def redrive_webhook_deliveries(older_than_minutes: int = 10) -> dict:
    """Process deliveries that were emitted but never handled (their event found no trigger, or the run died)."""
    from datetime import timedelta

    from flows.github_events import handle_delivery

    done, failed = 0, []
    for delivery_id in stale_deliveries(_pool(), timedelta(minutes=older_than_minutes)):
        try:
            handle_delivery(delivery_id)
            done += 1
        except Exception as exc:  # recorded on the delivery row by handle_delivery; keep going with the others
            failed.append(f"{delivery_id}: {type(exc).__name__}")
    if failed:
        get_run_logger().warning("%s deliveries failed again: %s", len(failed), "; ".join(failed[:20]))
    return {"processed": done, "failed": failed}

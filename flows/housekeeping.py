"""Scheduled housekeeping: verify and checkpoint the audit trail; redrive webhook deliveries no run processed; forget
old ones; compact the keyword index."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks.errors import AppError
from blocks.settings import Settings
from tasks.audit import audit_key
from tasks.audit_checkpoint import verify_against_checkpoint
from tasks.postings import compact_postings, tenants_to_compact
from tasks.webhooks import prune_deliveries, stale_deliveries
from tasks.runtime import Runtime

__all__ = ["AuditBroken", "compact_keyword_index", "prune_webhook_deliveries", "redrive_webhook_deliveries",
           "verify_audit_trail"]


class AuditBroken(AppError):
    """The audit trail's hash chain does not verify."""


def _pool():
    pool = Runtime(Settings()).pool()
    return pool


@flow(name="verify-audit")
def verify_audit_trail() -> dict:
    """Verify the audit trail's hashes, signatures and head against the last checkpoint; checkpoint the new head
    (the checkpoint file, this run's artifact and a devmesh.audit.checkpoint event) to compare later runs with."""
    import json

    from prefect.events import emit_event

    settings = Settings()
    report, checkpoint = verify_against_checkpoint(_pool(), settings, audit_key(settings.audit.key_block),
                                                   source="flow")
    summary = report.summary()
    create_markdown_artifact(key="devmesh-audit-head", description="audit trail verification",
                             markdown=f"ok: **{report.ok}**, records: {report.records}, head: #{report.head_seq} "
                                      f"`{report.head_hash}`" + (f"\n\n{report.problem}" if report.problem else "")
                                      + (f"\n\ncheckpoint:\n\n```json\n{json.dumps(checkpoint)}\n```"
                                         if checkpoint else ""))
    if checkpoint:
        emit_event(event="devmesh.audit.checkpoint", resource={"prefect.resource.id": "devmesh.audit-log"},
                   payload=checkpoint)
    if not report.ok:
        where = f" at record {report.bad_seq}" if report.bad_seq is not None else ""
        raise AuditBroken(f"audit trail broken{where}: {report.problem}")
    get_run_logger().info("audit trail ok: %s records, head %s%s", report.records, report.head_hash[:16],
                          f"; {summary['legacy']}" if "legacy" in summary else "")
    return summary


@flow(name="compact-keyword-index")
def compact_keyword_index(segments_per_lexeme: int = 8) -> dict[str, int]:
    """Rebuild the postings of every tenant whose postings still hold deleted chunks' entries (their lexemes stay
    there, unreturned, until this runs) or average more than `segments_per_lexeme` segments; {tenant: rows}."""
    pool = _pool()
    done = {tenant: compact_postings(pool, tenant) for tenant in tenants_to_compact(pool, segments_per_lexeme)}
    get_run_logger().info("compacted the keyword postings of %d tenant(s)", len(done))
    return done


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

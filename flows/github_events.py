"""The github-events flows: stored webhook deliveries (issues, issue_comment, pull_request, push) into the store.

`github-events` (what the webhook deployments run): a handler run claims its route's pending deliveries in batches
(tasks.webhooks.claim_batch, oldest first, FOR UPDATE SKIP LOCKED) until none is left, lingering a few seconds for
stragglers. The discussions of a batch (issues, comments, pull requests) are ingested together per tenant, so 100
small deliveries cost one embedding call and one write instead of 100 flow runs; a push fetches its files alone. A
delivery whose payload or documents fail is marked failed with the reason; the others of its batch are processed.
The deployments run it with a concurrency limit of 1 that cancels new runs while one runs (prefect.yaml): the burst
of events a burst of deliveries emits does not pile up runs; a run that ends while deliveries wait (one arrived after
its last claim, and the run its event triggered was cancelled because this one still held the slot) starts the next
run itself once its slot is free (`hand_over`); the trailing schedule is the last resort.

`github-event`: one delivery by id (a re-run of a failed one, the redrive).

The delivery is read from `webhook_deliveries`, processed once (a delivery already processed returns
{"status": "duplicate"}), and marked processed, or failed with the error text before the error is re-raised (the
flow run is Failed and the delivery row says why). Documents go to the delivery's tenant; ids are those of
tasks.github_docs, so an edit replaces the document and `deleted` removes it.

A run's claim on its delivery is a lease (tasks.webhooks.CLAIM_LEASE), renewed before and after each write of the
DocumentSink and every minute while files are fetched; a run that lost it (another run took the delivery over after
the lease passed) raises ClaimLost before writing on, and marks nothing.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from fnmatch import fnmatchcase
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.errors import AppError, InputError
from blocks.settings import Settings
from flows.sync_repository import DocumentSink, advance_code_cursor, github_client, stored_documents, sync_code
from tasks.github_docs import comment_doc, comment_id, issue_doc, issue_id, pull_doc, repository_name, require
from tasks.webhooks import BatchLease, ClaimLost, Lease, claim_batch, claim_processing, get_delivery
from tasks.runtime import Runtime

__all__ = ["drain_deliveries", "github_event", "github_events", "hand_over", "handle_batch", "handle_delivery"]

ZERO_SHA = "0" * 40
MAX_PUSH_COMMITS = 20  # a push payload lists at most 20 commits; a longer push is compared instead


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.id


def handle_delivery(delivery_id: str, settings: Settings | None = None, github: Any = None,
                    branches: list[str] | None = None) -> dict:
    """Process one delivery; `github` (a PyGithub client or a GitHubConnection) serves pushes, default: the
    settings' block. `branches`: glob patterns of branches besides the default one whose pushes are ingested."""
    settings = settings or Settings()
    pool = Runtime(settings).pool()
    delivery = claim_processing(pool, delivery_id, _flow_run_id())
    if delivery is None:
        row = get_delivery(pool, delivery_id)
        if row is None:
            raise InputError("no such webhook delivery", item=delivery_id)
        return {"status": "duplicate", "delivery_id": delivery_id, "previous_status": row["status"]}
    lease = Lease.of(pool, delivery)
    sink = DocumentSink(settings, delivery["tenant_id"], renew=lease.renew)
    try:
        result = _dispatch(delivery, sink, settings, github, branches or [])
        sink.finish()
    except ClaimLost:
        raise  # the delivery is another run's now: mark nothing
    except Exception as exc:
        try:
            lease.finish(error=f"{type(exc).__name__}: {exc}"[:1000])
        except ClaimLost as lost:
            exc.add_note(str(lost))
        raise
    lease.finish()
    return {"status": "processed", "delivery_id": delivery_id, "event": delivery["event"],
            "action": delivery["action"], "tenant": sink.tenant, **result, **sink.summary()}


def _dispatch(delivery: dict, sink: DocumentSink, settings: Settings, github: Any, branches: list[str]) -> dict:
    payload, event = delivery["payload"], delivery["event"]
    if not isinstance(payload, dict):
        raise InputError("payload is not a JSON object", item=delivery["delivery_id"])
    action = delivery["action"] or payload.get("action")
    repo = repository_name(payload)
    result: dict[str, Any] = {"repository": repo}
    if event == "issues" and action in ("deleted", "transferred"):  # gone from this repository
        number = require(payload, "issue.number", int)
        ids = [issue_id(repo, number), *stored_documents(sink.pool, sink.tenant, issue_id(repo, number) + "/")]
        sink.delete(ids)
    elif event == "issues":
        sink.add(issue_doc(repo, payload.get("issue")))
    elif event == "pull_request":
        sink.add(pull_doc(repo, payload.get("pull_request")))
    elif event == "issue_comment":
        number = require(payload, "issue.number", int)
        if action == "deleted":
            sink.delete([comment_id(repo, number, require(payload, "comment.id", int))])
        else:
            sink.add(comment_doc(repo, number, payload.get("comment")))
    elif event == "push":
        result.update(_push(payload, repo, sink, settings, github, branches))
    else:
        result["ignored"] = f"event {event!r} is not ingested"
    return result


def _push(payload: dict, repo: str, sink: DocumentSink, settings: Settings, github: Any,
          branches: list[str]) -> dict:
    """Fetch the pushed branch's added and modified files at `after`; remove the removed ones."""
    ref = require(payload, "ref", str)
    if payload.get("deleted"):
        return {"ignored": f"{ref} was deleted"}
    if not ref.startswith("refs/heads/"):
        return {"ignored": f"{ref} is not a branch"}
    branch = ref.removeprefix("refs/heads/")
    default = payload["repository"].get("default_branch") or payload["repository"].get("master_branch")
    if branch != default and not any(fnmatchcase(branch, p) for p in branches):
        return {"ignored": f"branch {branch} is not the default branch ({default}) nor configured"}
    after = require(payload, "after", str)
    before = payload.get("before") if payload.get("before") != ZERO_SHA else None
    commits = payload.get("commits") or []
    changes = None
    if before and not payload.get("forced") and len(commits) < MAX_PUSH_COMMITS:
        changes = _pushed_paths(commits)
    if changes == (set(), set()):
        code = {"mode": "push", "from": before, "to": after, "fetched": 0, "removed": 0}
    else:
        gh = github_client(settings, github)
        code = sync_code(gh.get_repo(repo), sink, name=repo, head=after, branch=branch, base=before,
                         changes=changes, label=None if branch == default else branch)
        sink.finish()
    if before:
        sink.renew()
        advance_code_cursor(sink.pool, sink.tenant, repo, branch, before, after)
    return {"code": code}


def _pushed_paths(commits: list) -> tuple[set[str], set[str]]:
    """(added or modified, removed) paths of a push's commits, oldest first: a later commit's change wins."""
    upserts: set[str] = set()
    removed: set[str] = set()
    for i, commit in enumerate(commits):
        for key in ("added", "modified", "removed"):
            paths = (commit.get(key) or []) if isinstance(commit, dict) else None
            if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
                raise InputError(f"payload.commits[{i}].{key} must be a list of paths")
            if key == "removed":
                removed.update(paths)
                upserts.difference_update(paths)
            else:
                upserts.update(paths)
                removed.difference_update(paths)
    return upserts, removed


class _BatchSink(DocumentSink):
    """A DocumentSink shared by the deliveries of a batch that remembers which delivery gave which document (to
    fail exactly those whose documents were refused) and writes what is pending before a delete (an issue deleted
    after a comment on it in the same batch takes the comment with it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.current: str | None = None
        self.owners: dict[str, set[str]] = defaultdict(set)

    def add(self, doc) -> None:
        self.owners[doc.document_id].add(self.current)
        super().add(doc)

    def delete(self, ids: list[str]) -> list[str]:
        self.flush()
        return super().delete(ids)

    def flush(self) -> None:
        try:
            super().flush()
        except ClaimLost:
            raise
        except Exception as exc:  # the shared write: every delivery with documents in it is concerned
            raise _SharedWriteFailed(_error_text(exc)) from exc


class _SharedWriteFailed(Exception):
    """Writing a batch's shared documents failed (the store, not one delivery's payload)."""


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


def handle_batch(batch: BatchLease, settings: Settings, github: Any = None, branches: list[str] | None = None
                 ) -> dict:
    """Process the claimed deliveries of `batch`: per tenant, discussions into one shared sink (written together),
    pushes one by one. Each delivery ends processed or failed (with its reason); returns the counts."""
    totals: dict[str, Any] = defaultdict(int)
    failed: dict[str, str] = {}
    by_tenant: dict[str, list[dict]] = defaultdict(list)
    for d in batch.deliveries:
        by_tenant[d["tenant_id"]].append(d)
    for tenant, deliveries in by_tenant.items():
        sink = _BatchSink(settings, tenant, renew=batch.renew)
        done: list[str] = []
        try:
            for d in deliveries:
                try:
                    if d["event"] == "push":  # fetches files: alone, so its failure is its own
                        own = DocumentSink(settings, tenant, renew=batch.renew)
                        _dispatch(d, own, settings, github, branches or [])
                        own.finish()
                        _add(totals, own.summary())
                        batch.finish([d["delivery_id"]])
                        totals["processed"] += 1
                        continue
                    sink.current = d["delivery_id"]
                    _dispatch(d, sink, settings, github, branches or [])
                    done.append(d["delivery_id"])
                except (ClaimLost, _SharedWriteFailed):
                    raise
                except Exception as exc:  # this delivery's payload or push: the others go on
                    failed[d["delivery_id"]] = _error_text(exc)
                    batch.finish([d["delivery_id"]], error=failed[d["delivery_id"]])
            sink.flush()
        except ClaimLost:
            raise
        except _SharedWriteFailed as exc:  # none of the deliveries written together was stored: failed, saying why
            if sink.current and sink.current not in done and sink.current not in failed:
                done.append(sink.current)
            for delivery_id in done:
                failed[delivery_id] = str(exc)
            batch.finish(done, error=str(exc))
            batch.release([d["delivery_id"] for d in deliveries])  # the ones not reached yet: claimable again at once, by the next run
            continue
        refused: dict[str, str] = {}
        for e in sink.errors:
            for delivery_id in sink.owners.get(e.item, ()):
                refused.setdefault(delivery_id, f"IngestIncomplete: {e.item}: {e.error}"[:1000])
        for delivery_id, error in refused.items():
            if delivery_id in done:
                batch.finish([delivery_id], error=error)
                failed[delivery_id] = error
        ok = [i for i in done if i not in refused]
        batch.finish(ok)
        totals["processed"] += len(ok)
        _add(totals, sink.summary())
    totals["failed"] = len(failed)
    return {**totals, "failures": failed}


def _add(totals: dict, summary: dict) -> None:
    for key in ("documents_written", "documents_deleted", "texts_embedded", "embedding_calls"):
        totals[key] += summary.get(key, 0)


def drain_deliveries(route: str, settings: Settings | None = None, github: Any = None,
                     branches: list[str] | None = None, batch_size: int = 100, linger_s: float = 0.0,
                     claimer: str | None = None) -> dict:
    """Claim and process `route`'s pending deliveries `batch_size` at a time until none is left and none arrived
    for `linger_s` seconds; returns the counts and the failures (delivery id -> reason)."""
    import time

    if batch_size < 1:
        raise InputError("batch_size must be at least 1", item="batch_size")
    settings = settings or Settings()
    pool = Runtime(settings).pool()
    claimer = claimer or _flow_run_id() or str(uuid.uuid4())
    totals: dict[str, Any] = {"batches": 0, "processed": 0, "failed": 0, "documents_written": 0,
                              "documents_deleted": 0, "texts_embedded": 0, "embedding_calls": 0}
    failures: dict[str, str] = {}
    idle_since = time.monotonic()
    while True:
        batch = claim_batch(pool, route, claimer, batch_size)
        if batch is None:
            if time.monotonic() - idle_since >= linger_s:
                break
            time.sleep(min(0.5, linger_s))
            continue
        result = handle_batch(batch, settings, github, branches)
        failures.update(result.pop("failures"))
        for key, value in result.items():
            totals[key] = totals.get(key, 0) + value
        totals["batches"] += 1
        idle_since = time.monotonic()
    totals["failed"] = len(failures)
    return {**totals, "route": route, "failures": failures}


def hand_over(flow, flow_run, state) -> str | None:
    """After a handler run ended (its hook: Prefect calls it once the final state is set, so the deployment's
    concurrency slot is free again): when deliveries of its route are claimable, start the next run of its deployment;
    returns that run's id, else None.

    Why: a delivery emitted after the run's last (empty) claim but before its final state triggers a run that the
    deployment's concurrency limit cancels at once (CANCEL_NEW: the finishing run still holds the slot), and it would
    wait for the 60 s schedule. The new run is created after the slot was released, so it is not cancelled; a
    delivery emitted after this check triggers a run of its own, which is not cancelled either. One run per ended
    run at most (its id is the idempotency key), and none when nothing waits, so an idle route starts nothing."""
    route = (flow_run.parameters or {}).get("route")
    if not flow_run.deployment_id or not route:
        return None
    from tasks.webhooks import claimable

    waiting = claimable(Runtime(Settings()).pool(), route)
    if not waiting:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            flow_run.deployment_id, parameters=dict(flow_run.parameters), idempotency_key=f"hand-over-{flow_run.id}")
    import logging

    logging.getLogger(__name__).info("%s deliveries of %s waiting as run %s ended: started run %s", waiting, route,
                                     flow_run.id, run.id)
    return str(run.id)


class DeliveriesFailed(AppError):
    """Some deliveries of a handler run failed; their rows say why (last_error), the others were processed."""


@flow(name="github-events", flow_run_name="github-events-{route}",
      task_runner=ThreadPoolTaskRunner(max_workers=2), on_completion=[hand_over], on_failure=[hand_over])
def github_events(route: str = "github-discussions", batch_size: int = 100, linger_s: float = 5.0,
                  branches: list[str] | None = None) -> dict:
    """Process every pending webhook delivery of `route` (the deployment's name), in batches, until none is left;
    the run fails naming the deliveries that failed, after processing all the others."""
    summary = drain_deliveries(route, batch_size=batch_size, linger_s=linger_s, branches=branches)
    get_run_logger().info("%s: %s deliveries processed in %s batches, %s failed (%s documents written, %s deleted, "
                          "%s texts embedded)", route, summary["processed"], summary["batches"], summary["failed"],
                          summary["documents_written"], summary["documents_deleted"], summary["texts_embedded"])
    if summary["failures"]:
        first = "; ".join(f"{k}: {v}" for k, v in list(summary["failures"].items())[:5])
        raise DeliveriesFailed(f"{summary['failed']} of {summary['failed'] + summary['processed']} deliveries "
                               f"failed (see webhook_deliveries.last_error): {first}")
    return summary


@flow(name="github-event", flow_run_name="github-event-{delivery_id}",
      task_runner=ThreadPoolTaskRunner(max_workers=2))
def github_event(delivery_id: str, branches: list[str] | None = None) -> dict:
    """Ingest one GitHub webhook delivery (issue, comment, pull request or push); a processed one is skipped."""
    summary = handle_delivery(delivery_id, branches=branches)
    get_run_logger().info("delivery %s: %s (%s written, %s deleted, %s texts embedded)", delivery_id,
                          summary["status"], summary.get("documents_written", 0), summary.get("documents_deleted", 0),
                          summary.get("texts_embedded", 0))
    return summary

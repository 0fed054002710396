"""The github-event flow: one stored webhook delivery (issues, issue_comment, pull_request, push) into the store.

The delivery is read from `webhook_deliveries`, processed once (a delivery already processed returns
{"status": "duplicate"}), and marked processed, or failed with the error text before the error is re-raised (the
flow run is Failed and the delivery row says why). Documents go to the delivery's tenant; ids are those of
tasks.github_docs, so an edit replaces the document and `deleted` removes it.

A run's claim on its delivery is a lease (tasks.webhooks.CLAIM_LEASE), renewed before and after each write of the
DocumentSink and every minute while files are fetched; a run that lost it (another run took the delivery over after
the lease passed) raises ClaimLost before writing on, and marks nothing.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.errors import InputError
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from flows.sync_repository import DocumentSink, advance_code_cursor, github_client, stored_documents, sync_code
from tasks.github_docs import comment_doc, comment_id, issue_doc, issue_id, pull_doc, repository_name, require
from tasks.migrate import ensure_schema
from tasks.webhooks import ClaimLost, Lease, claim_processing, get_delivery

__all__ = ["github_event", "handle_delivery"]

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
    pool = PgVectorStore.from_settings(settings).pool()
    ensure_schema(pool)
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


@flow(name="github-event", flow_run_name="github-event-{delivery_id}",
      task_runner=ThreadPoolTaskRunner(max_workers=2))
def github_event(delivery_id: str, branches: list[str] | None = None) -> dict:
    """Ingest one GitHub webhook delivery (issue, comment, pull request or push); a processed one is skipped."""
    summary = handle_delivery(delivery_id, branches=branches)
    get_run_logger().info("delivery %s: %s (%s written, %s deleted, %s texts embedded)", delivery_id,
                          summary["status"], summary.get("documents_written", 0), summary.get("documents_deleted", 0),
                          summary.get("texts_embedded", 0))
    return summary

"""The sync-repository flow: ingest what changed in a GitHub repository's issues, pull requests, comments and code.

Cursors live in `repository_sync` (one row per tenant and repository) and move only after their part was stored:
`issues_since` (GitHub's `since`, read again with a short overlap; unchanged documents cost no embedding) and
`code_sha` (the commit last ingested: the next run fetches only the files changed since, by the compare API).
Deleted issues and comments are invisible to `since`; the github-event flow removes them. GitHub's failures come
out as devmesh errors (blocks.vendor_errors.map_github_errors), with GitHub's status on `.status`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.errors import AppError, NotFound, ProviderError
from blocks.github import GitHubConnection
from blocks.redact import register_secrets, secret_values
from blocks.settings import Settings
from blocks.vendor_errors import map_github_errors
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from tasks.github_docs import (
    MAX_FILE_BYTES, Skipped, code_doc, code_prefix, comment_doc, issue_doc, issue_number_from_url, require,
    skip_reason,
)
from tasks.read import ItemError, SourceDoc
from tasks.repository_sync import advance_code_cursor, read_cursor, save_cursor, stored_documents
from tasks.store import delete_documents
from tasks.runtime import Runtime

if TYPE_CHECKING:
    import github
    from github.Repository import Repository

__all__ = ["DocumentSink", "IngestIncomplete", "MAX_FILES", "advance_code_cursor", "github_client", "run_sync",
           "stored_documents", "sync_code", "sync_repository"]

MAX_FILES = 5000  # files of a whole-tree ingest; the rest are skipped (and named)
BATCH = 200  # documents per ingest call
RENEW_EVERY = 60.0  # seconds between DocumentSink renewals while documents are only being added (fetched)
OVERLAP = timedelta(minutes=2)  # `since` is read this much earlier: clocks and listing races lose nothing
COMPARE_FILE_LIMIT = 300  # the compare API lists at most 300 files; more falls back to the whole tree


class IngestIncomplete(AppError):
    """Some documents were not stored; no cursor moved, so the next run tries them again."""


def github_client(settings: Settings, github: Any = None) -> github.Github:
    """A PyGithub client: `github` itself (a client or a GitHubConnection), else the settings' connection block.
    The connection's credentials are registered as secrets: no error or log line of this process shows them."""
    if github is None:
        github = GitHubConnection.load(settings.ops.github_block)
    if isinstance(github, GitHubConnection):
        register_secrets(secret_values(github))
        return github.client()
    return github


class DocumentSink:
    """Ingests documents BATCH at a time (the last one given per id wins), deletes ids, and adds up the work.

    `renew` (optional) is called before and after every write, and every RENEW_EVERY seconds while documents are
    added: a run holding a lease (a webhook delivery's claim) keeps it, and learns it lost it (`renew` raises)
    before writing on."""

    def __init__(self, settings: Settings, tenant: str, renew: Callable[[], None] | None = None) -> None:
        self.settings, self.tenant = settings, tenant
        self._renew, self._renewed = renew, time.monotonic()
        self.runtime = Runtime(settings)
        self.pool = self.runtime.pool()
        self.pending: dict[str, SourceDoc] = {}
        self.totals = dict.fromkeys(("documents_written", "documents_unchanged", "documents_deleted", "chunks",
                                     "chunks_inserted", "chunks_deleted", "embedding_calls", "texts_embedded"), 0)
        self.skipped: list[str] = []
        self.errors: list[ItemError] = []

    def renew(self, *, due_only: bool = False) -> None:
        """Call `renew` (only when RENEW_EVERY seconds have passed, with `due_only`)."""
        if self._renew is not None and (not due_only or time.monotonic() - self._renewed >= RENEW_EVERY):
            self._renew()
            self._renewed = time.monotonic()

    def add(self, doc: SourceDoc) -> None:
        self.renew(due_only=True)
        self.pending[doc.document_id] = doc
        if len(self.pending) >= BATCH:
            self.flush()

    def skip(self, item: Skipped | str) -> None:
        self.skipped.append(str(item))

    def delete(self, ids: list[str]) -> list[str]:
        """Delete these documents (with their chunks); returns the ids that existed."""
        for i in ids:
            self.pending.pop(i, None)
        if not ids:
            return []
        self.renew()
        deleted = delete_documents(self.pool, self.tenant, sorted(set(ids)))
        self.totals["documents_deleted"] += len(deleted)
        return deleted

    def flush(self) -> None:
        if not self.pending:
            return
        self.renew()
        docs = [DocumentSpec(**asdict(d)) for d in self.pending.values()]
        self.pending = {}
        result = ingest_documents(IngestRequest(tenant=self.tenant, documents=docs), self.runtime)
        self.renew()
        for key in ("documents_unchanged", "chunks", "chunks_inserted", "chunks_deleted", "embedding_calls",
                    "texts_embedded"):
            self.totals[key] += getattr(result, key)
        self.totals["documents_written"] += result.documents - result.documents_unchanged
        self.skipped += result.skipped
        self.errors += result.errors

    def finish(self) -> None:
        """Ingest what is pending; IngestIncomplete if any document failed (so no cursor moves)."""
        self.flush()
        if self.errors:
            first = "; ".join(f"{e.item}: {e.error}" for e in self.errors[:3])
            raise IngestIncomplete(f"{len(self.errors)} documents not stored: {first}")

    def summary(self) -> dict:
        return {**self.totals, "skipped": self.skipped,
                "errors": [{"item": e.item, "error": e.error} for e in self.errors]}


def _fetch(repo: Repository, sink: DocumentSink, name: str, path: str, head: str, branch: str,
           label: str | None, max_bytes: int) -> bool:
    """Add the file at `head` to the sink; False when it is gone or skipped (its stored document must go)."""
    if reason := skip_reason(path, None, max_bytes):
        sink.skip(Skipped(path, reason))
        return False
    try:
        with map_github_errors("get_contents", unusable=()):
            found = repo.get_contents(path, ref=head)
    except NotFound:
        return False
    if isinstance(found, list) or found.type != "file":
        sink.skip(Skipped(path, "a directory" if isinstance(found, list) else f"a {found.type}"))
        return False
    if found.encoding != "base64":
        sink.skip(Skipped(path, f"{found.size:,} bytes, too large for the contents API"))
        return False
    doc = code_doc(name, path, found.decoded_content, ref=branch, sha=found.sha, branch=label, max_bytes=max_bytes)
    if isinstance(doc, Skipped):
        sink.skip(doc)
        return False
    sink.add(doc)
    return True


def _compare(repo: Repository, base: str, head: str) -> tuple[set[str], set[str]] | None:
    """(changed or added paths, removed paths) from base to head; None when the compare API cannot say (base
    unknown or not an ancestor after a force push, or 300 files or more)."""
    try:
        with map_github_errors("compare", unusable=()):
            comparison = repo.compare(base, head)
            status, files = comparison.status, comparison.files
    except ProviderError as exc:
        if exc.status in (404, 422):
            return None
        raise
    if status not in ("ahead", "identical") or len(files) >= COMPARE_FILE_LIMIT:
        return None
    upserts, removed = set(), set()
    for f in files:
        if f.status == "removed":
            removed.add(f.filename)
            continue
        upserts.add(f.filename)
        if f.status == "renamed" and f.previous_filename:
            removed.add(f.previous_filename)
    return upserts, removed


def _whole_tree(repo: Repository, sink: DocumentSink, prefix: str, head: str, max_files: int,
                max_bytes: int) -> tuple[set[str], set[str]]:
    """The tree at head against what is stored: (paths whose blob differs from the stored one, stored paths gone)."""
    tree = repo.get_git_tree(head, recursive=True)
    wanted: dict[str, str] = {}
    for entry in tree.tree:
        if entry.type != "blob" or entry.mode == "120000":  # directories, submodules, symlinks
            continue
        if reason := skip_reason(entry.path, entry.size, max_bytes):
            sink.skip(Skipped(entry.path, reason))
        elif len(wanted) >= max_files:
            sink.skip(Skipped(entry.path, f"over max_files ({max_files})"))
        else:
            wanted[entry.path] = entry.sha
    stored = {i.removeprefix(prefix): sha for i, sha in stored_documents(sink.pool, sink.tenant, prefix).items()}
    if tree.truncated:
        sink.skip(f"{head}: tree listing truncated by GitHub; files past it were not ingested nor removed")
    gone = set() if tree.truncated else set(stored) - set(wanted)
    return {p for p, sha in wanted.items() if stored.get(p) != sha}, gone


@map_github_errors("sync_code", unusable=())
def sync_code(repo: Repository, sink: DocumentSink, *, name: str, head: str, branch: str, base: str | None = None,
              changes: tuple[set[str], set[str]] | None = None, label: str | None = None,
              max_files: int = MAX_FILES, max_bytes: int = MAX_FILE_BYTES) -> dict:
    """Bring `name`'s files (ids under `code_prefix(name, label)`) to commit `head`.

    Which files: `changes` (paths to fetch, paths removed) when given; else those between `base` and head (compare
    API); else the whole tree, where only files whose blob sha differs from the stored one are fetched and stored
    files missing from the tree are removed. Returns {"mode", "from", "to", "fetched", "removed"}.
    """
    if base == head and changes is None:
        return {"mode": "unchanged", "from": base, "to": head, "fetched": 0, "removed": 0}
    mode = "push" if changes is not None else "incremental"
    if changes is None and base:
        changes = _compare(repo, base, head)
    prefix = code_prefix(name, label)
    if changes is None:
        mode = "full"
        changes = _whole_tree(repo, sink, prefix, head, max_files, max_bytes)
    upserts, removed = changes
    gone = set(removed) - set(upserts)
    fetched = 0
    for path in sorted(upserts):
        if _fetch(repo, sink, name, path, head, branch, label, max_bytes):
            fetched += 1
        else:
            gone.add(path)
    deleted = sink.delete([prefix + p for p in sorted(gone)])
    return {"mode": mode, "from": base, "to": head, "fetched": fetched, "removed": len(deleted)}


def _listing(gh: github.Github, url: str, params: dict[str, str]):
    """Every item of a paginated REST list as the JSON GitHub sent (no per-item requests)."""
    from github.PaginatedList import PaginatedList

    return PaginatedList(lambda requester, headers, attributes: attributes, gh.requester, url, params)


def _utc(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else None


def _sync_issues(gh: github.Github, repo: Repository, sink: DocumentSink, name: str,
                 since: datetime | None) -> tuple[dict, datetime | None]:
    """Issues, pull requests and comments updated since `since` into the sink; (counts, newest updated_at)."""
    params = {"sort": "updated", "direction": "asc"}
    if since is not None:
        params["since"] = (since - OVERLAP).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    counts = {"since": since.isoformat() if since else None, "issues": 0, "pull_requests": 0, "comments": 0}
    newest = since
    for item in _listing(gh, f"{repo.url}/issues", {**params, "state": "all"}):
        doc = issue_doc(name, item, where="issue")
        sink.add(doc)
        counts["pull_requests" if doc.metadata["kind"] == "pull_request" else "issues"] += 1
        newest = max(filter(None, [newest, _utc(item.get("updated_at"))]), default=None)
    for item in _listing(gh, f"{repo.url}/issues/comments", params):
        number = issue_number_from_url(require(item, "issue_url", str, where="comment"), "comment")
        sink.add(comment_doc(name, number, item, where="comment"))
        counts["comments"] += 1
        newest = max(filter(None, [newest, _utc(item.get("updated_at"))]), default=None)
    return counts, newest


@map_github_errors("sync", unusable=())
def run_sync(repository: str, tenant: str = "default", ref: str | None = None, include_code: bool = True,
             include_issues: bool = True, settings: Settings | None = None, github: Any = None,
             max_files: int = MAX_FILES, max_file_bytes: int = MAX_FILE_BYTES) -> dict:
    """The work of the sync-repository flow; `github` is a PyGithub client or a GitHubConnection (default: the
    settings' block). Returns the cursors' moves and what was stored (see DocumentSink.summary)."""
    settings = settings or Settings()
    gh = github_client(settings, github)
    repo = gh.get_repo(repository)
    name, default = repo.full_name, repo.default_branch
    sink = DocumentSink(settings, tenant)
    cursor = read_cursor(sink.pool, tenant, name)
    result: dict[str, Any] = {"repository": name, "tenant": tenant}
    if include_code and (head := _head(repo, ref or default)) is None:
        result["code"] = {"mode": "empty", "from": cursor.get("code_sha"), "to": None, "fetched": 0, "removed": 0}
    elif include_code:
        branch = ref or default
        base = cursor.get("code_sha") if cursor.get("code_ref") == branch else None
        result["code"] = sync_code(repo, sink, name=name, head=head, branch=branch, base=base,
                                   label=None if branch == default else branch, max_files=max_files,
                                   max_bytes=max_file_bytes)
        sink.finish()
        save_cursor(sink.pool, tenant, name, ref=branch, sha=head)
    if include_issues:
        result["issues"], newest = _sync_issues(gh, repo, sink, name, cursor.get("issues_since"))
        sink.finish()
        if newest is not None:
            save_cursor(sink.pool, tenant, name, since=newest)
    return {**result, **sink.summary()}


def _head(repo: Repository, ref: str) -> str | None:
    """The commit sha `ref` names; None for a repository without commits (GitHub answers 409)."""
    try:
        with map_github_errors("get_commit", unusable=()):
            return repo.get_commit(ref).complete().sha  # made lazily: its sha is the ref until fetched
    except ProviderError as exc:
        if exc.status == 409:
            return None
        raise


@flow(name="sync-repository", flow_run_name="sync-{repository}", task_runner=ThreadPoolTaskRunner(max_workers=2))
def sync_repository(repository: str, tenant: str = "default", ref: str | None = None, include_code: bool = True,
                    include_issues: bool = True) -> dict:
    """Ingest what changed in a GitHub repository since the last sync: issues, pull requests, comments, code."""
    summary = run_sync(repository, tenant, ref, include_code, include_issues)
    get_run_logger().info("%s: %s documents written, %s unchanged, %s deleted; %s texts embedded; %s skipped",
                          summary["repository"], summary["documents_written"], summary["documents_unchanged"],
                          summary["documents_deleted"], summary["texts_embedded"], len(summary["skipped"]))
    return summary

"""GitHub webhook payloads and REST objects as documents to ingest (pure: no network, no database).

Document ids (GitHub numbers issues and pull requests in one sequence, so `#issue/{n}` never collides):

    github:{owner/repo}#issue/{n}                  an issue: "title\\n\\nbody", markdown
    github:{owner/repo}#pull/{n}                   a pull request
    github:{owner/repo}#issue/{n}/comment/{id}     a comment on an issue or a pull request
    github:{owner/repo}:{path}                     a file of the default branch (code chunker)
    github:{owner/repo}@{branch}:{path}            a file of another branch

The documents are `tasks.read.SourceDoc`s (flows wrap them as `flows.ingest.DocumentSpec`). A missing or mistyped
field raises InputError naming it, e.g. "payload.issue.number missing".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from blocks.errors import InputError
from tasks.read import SKIP_DIRS, SourceDoc, decode_text

__all__ = ["MAX_FILE_BYTES", "Skipped", "code_doc", "code_id", "code_prefix", "comment_doc", "comment_id",
           "issue_doc", "issue_id", "issue_number_from_url", "pull_doc", "repository_name", "require",
           "skip_reason"]

MAX_FILE_BYTES = 1_048_576  # GitHub's contents API inlines files up to 1 MiB
VENDORED_DIRS = SKIP_DIRS | {"vendor", "third_party", "third-party", "bower_components", "Pods", ".yarn", "target"}
BINARY_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".tif", ".tiff", ".psd", ".pdf", ".zip", ".gz",
    ".tgz", ".bz2", ".xz", ".7z", ".rar", ".tar", ".jar", ".war", ".class", ".so", ".dylib", ".dll", ".exe",
    ".o", ".a", ".pyc", ".whl", ".egg", ".woff", ".woff2", ".ttf", ".otf", ".eot", ".mp3", ".mp4", ".mov",
    ".avi", ".wav", ".ogg", ".webm", ".bin", ".dat", ".db", ".sqlite", ".parquet", ".npy", ".pt", ".onnx",
}
LOCKFILES = {"package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "Cargo.lock", "go.sum",
             "composer.lock", "Gemfile.lock", "uv.lock", "Pipfile.lock"}
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}")


@dataclass(frozen=True)
class Skipped:
    """A file not ingested, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def require(obj: Any, dotted: str, kind: type | tuple[type, ...] = object, *, where: str = "payload") -> Any:
    """`obj[a][b]...` for `dotted` "a.b"; InputError "{where}.a.b missing" (or "... must be int") otherwise."""
    value = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            raise InputError(f"{where}.{dotted} missing")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(f"{where}.{dotted} must be {name}, got {type(value).__name__}")
    return value


def repository_name(payload: Mapping[str, Any], where: str = "payload") -> str:
    """The payload's `repository.full_name` ("owner/name")."""
    name = require(payload, "repository.full_name", str, where=where)
    if not _REPO.fullmatch(name):
        raise InputError(f"{where}.repository.full_name is not 'owner/name': {name[:120]!r}")
    return name


def issue_id(repo: str, number: int, pull: bool = False) -> str:
    return f"github:{repo}#{'pull' if pull else 'issue'}/{number}"


def comment_id(repo: str, number: int, comment: int) -> str:
    return f"github:{repo}#issue/{number}/comment/{comment}"


def code_prefix(repo: str, branch: str | None = None) -> str:
    """The id prefix of a repository's files: `github:{repo}:` (default branch) or `github:{repo}@{branch}:`."""
    return f"github:{repo}@{branch}:" if branch else f"github:{repo}:"


def code_id(repo: str, path: str, branch: str | None = None) -> str:
    return code_prefix(repo, branch) + path


def issue_number_from_url(url: str, where: str) -> int:
    """The number at the end of an `issue_url` (.../issues/42)."""
    tail = url.rstrip("/").rsplit("/", 1)[-1]
    if not tail.isdigit():
        raise InputError(f"{where}.issue_url does not end in an issue number: {url[:200]!r}")
    return int(tail)


def _clean(text: str) -> str:
    return text.replace("\x00", "")  # PostgreSQL text cannot hold NUL; GitHub text may


def _login(obj: Mapping[str, Any]) -> str | None:
    user = obj.get("user")
    return user.get("login") if isinstance(user, Mapping) else None


def _labels(obj: Mapping[str, Any]) -> list[str]:
    names = [label.get("name") if isinstance(label, Mapping) else label for label in obj.get("labels") or []]
    return [name for name in names if isinstance(name, str)]


def _discussion(repo: str, obj: Mapping[str, Any], where: str, pull: bool, merged: bool | None) -> SourceDoc:
    number = require(obj, "number", int, where=where)
    title = _clean(require(obj, "title", str, where=where))
    body = obj.get("body")
    if body is not None and not isinstance(body, str):
        raise InputError(f"{where}.body must be str, got {type(body).__name__}")
    state = require(obj, "state", str, where=where)
    metadata = {"source": "github", "repository": repo, "kind": "pull_request" if pull else "issue",
                "number": number, "state": state, "state_reason": obj.get("state_reason"), "title": title,
                "author": _login(obj), "labels": _labels(obj), "url": obj.get("html_url"),
                "updated_at": obj.get("updated_at")}
    if pull:
        metadata["merged"] = bool(merged)
    text = f"{title}\n\n{_clean(body)}" if body and body.strip() else title
    return SourceDoc(issue_id(repo, number, pull), text, "markdown", None, metadata)


def issue_doc(repo: str, issue: Mapping[str, Any], where: str = "payload.issue") -> SourceDoc:
    """An issue (webhook `issue` or REST issue). A REST issue with a `pull_request` key is a pull request."""
    if not isinstance(issue, Mapping):
        raise InputError(f"{where} missing")
    pull = issue.get("pull_request")
    merged = bool(pull.get("merged_at")) if isinstance(pull, Mapping) else None
    return _discussion(repo, issue, where, pull is not None, merged)


def pull_doc(repo: str, pull: Mapping[str, Any], where: str = "payload.pull_request") -> SourceDoc:
    """A pull request (webhook `pull_request` or REST pull)."""
    if not isinstance(pull, Mapping):
        raise InputError(f"{where} missing")
    merged = pull.get("merged")
    return _discussion(repo, pull, where, True, merged if merged is not None else bool(pull.get("merged_at")))


def comment_doc(repo: str, number: int, comment: Mapping[str, Any], where: str = "payload.comment") -> SourceDoc:
    """A comment on issue or pull request `number`; its text is the comment's body."""
    cid = require(comment, "id", int, where=where)
    body = _clean(require(comment, "body", str, where=where))
    metadata = {"source": "github", "repository": repo, "kind": "comment", "number": number, "comment_id": cid,
                "author": _login(comment), "url": comment.get("html_url"), "updated_at": comment.get("updated_at")}
    return SourceDoc(comment_id(repo, number, cid), body, "markdown", None, metadata)


def skip_reason(path: str, size: int | None = None, max_bytes: int = MAX_FILE_BYTES) -> str | None:
    """Why a repository file is not worth ingesting (vendored, binary, lockfile, minified, too large), or None."""
    parts = PurePosixPath(path).parts
    if vendored := next((p for p in parts[:-1] if p in VENDORED_DIRS), None):
        return f"vendored or generated directory {vendored}/"
    name = parts[-1] if parts else path
    if PurePosixPath(name).suffix.lower() in BINARY_SUFFIXES:
        return "binary file type"
    if name in LOCKFILES:
        return "lockfile"
    if name.endswith((".min.js", ".min.css", ".map")):
        return "minified or source map"
    if size is not None and size > max_bytes:
        return f"{size:,} bytes, over the {max_bytes:,}-byte limit"
    return None


def code_doc(repo: str, path: str, data: bytes, *, ref: str, sha: str, branch: str | None = None,
             max_bytes: int = MAX_FILE_BYTES) -> SourceDoc | Skipped:
    """A repository file for the code chunker (its path picks the language), or why it is skipped."""
    if reason := skip_reason(path, len(data), max_bytes):
        return Skipped(path, reason)
    try:
        text = decode_text(data, path)
    except InputError as exc:
        return Skipped(path, str(exc).removeprefix(f"{path}: "))
    metadata = {"source": "github", "repository": repo, "kind": "code", "path": path, "ref": ref, "sha": sha}
    return SourceDoc(code_id(repo, path, branch), text, "code", path, metadata)

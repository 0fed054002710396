"""What the GitHub operations share: the PyGithub client of the connection, its failures mapped once onto
devmesh's error tree (blocks.vendor_errors.map_github_errors, secrets scrubbed), the idempotency marker a mutating
run writes into the body it posts, and the policy facts an input fixes (`repo_facts`)."""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from blocks.errors import ConfigError, InputError
from blocks.vendor_errors import map_github_errors
from tasks.ops.base import Connections

if TYPE_CHECKING:
    import github

__all__ = ["KEY_PLACEHOLDER", "PROVIDER", "client", "github_errors", "marker", "owner_of", "repo_facts", "same_text",
           "token_login", "with_marker"]

PROVIDER = "github"
KEY_PLACEHOLDER = "{idempotency_key}"  # stands for the key in a plan's request body
_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def client(conns: Connections) -> github.Github:
    if conns.github is None:
        raise ConfigError("GitHub operations need a GitHubConnection block (Connections.github)")
    return conns.client("github", conns.github.client)


def github_errors(conns: Connections, operation: str):
    """PyGithub's and requests' failures as blocks.errors, with every secret of the connections scrubbed."""
    return map_github_errors(operation, secrets=conns.secrets)


def token_login(conns: Connections, gh: github.Github) -> str | None:
    """The token's user, whose issues are searched for a marker; None for a GitHub App (its bot opens them)."""
    if getattr(conns.github, "token", None) is None:
        return None
    return conns.client("github:login", lambda: gh.get_user().login)


def owner_of(repo: str | None) -> str | None:
    return repo.split("/", 1)[0] if repo else None


def marker(key: str) -> str:
    """The hidden HTML comment that ties a posted body to an idempotency key.

    A key of other characters than A-Z a-z 0-9 . _ : - (or longer than 128) is written as `sha256-<hex>`, so
    that no key can close the comment early.
    """
    if not key:
        raise InputError("an idempotency key is required", item="idempotency key")
    if key != KEY_PLACEHOLDER and not _KEY.fullmatch(key):
        key = "sha256-" + hashlib.sha256(key.encode()).hexdigest()
    return f"<!-- devmesh:idempotency-key={key} -->"


def with_marker(body: str, key: str) -> str:
    return f"{body}\n\n{marker(key)}" if body else marker(key)


def same_text(a: str | None, b: str | None) -> bool:
    return (a or "").replace("\r\n", "\n").strip() == (b or "").replace("\r\n", "\n").strip()


def repo_facts(conns: Connections, inp: Any) -> dict[str, Any]:
    repo = getattr(inp, "repo", None)
    number = getattr(inp, "issue_number", None)
    return {"repo": repo, "owner": owner_of(repo),
            "target": (f"github:{repo}" if repo else "github:*") + (f"#{number}" if number else "")}

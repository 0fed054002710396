"""github.create_issue and github.comment_issue: mutating, idempotent under the key.

plan    reads the repository (archived? issues enabled?) or the issue; the request shows the marker with the key's
        placeholder
run     looks for the marker among the newest SCAN_LIMIT issues by the same author (or the issue's newest comments)
        and returns what carries it; else posts the body with the marker
verify  reads the issue or comment back: the title and body sent
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any

from pydantic import Field

from blocks.errors import InvalidRequest, MalformedResponse
from tasks.ops.base import Connections, OpInput, Operation, Plan, register
from tasks.ops.github.client import (
    KEY_PLACEHOLDER, PROVIDER, client, github_errors, marker, owner_of, repo_facts, same_text, token_login,
    with_marker,
)
from tasks.ops.github.fields import Label, Login, Repo

if TYPE_CHECKING:
    import github

__all__ = ["COMMENT_ISSUE", "CREATE_ISSUE", "CommentIssueInput", "CreateIssueInput"]

BODY_LIMIT = 65_536  # GitHub's limit on an issue or comment body, in characters
MAX_BODY = BODY_LIMIT - 200  # room for the idempotency marker
SCAN_LIMIT = 300  # newest issues / comments searched for an idempotency marker


class CreateIssueInput(OpInput):
    """Open an issue: title up to 256 characters, Markdown body, labels (created if new), assignees."""

    repo: Repo = Field(description="owner/name")
    title: str = Field(min_length=1, max_length=256)
    body: str = Field(default="", max_length=MAX_BODY)
    labels: list[Label] = Field(default_factory=list, max_length=100)
    assignees: list[Login] = Field(default_factory=list, max_length=10)


class CommentIssueInput(OpInput):
    """Comment on an issue or pull request by its number."""

    repo: Repo = Field(description="owner/name")
    issue_number: int = Field(ge=1)
    body: str = Field(min_length=1, max_length=MAX_BODY)


# --- github.create_issue ---------------------------------------------------------------------------------------

CREATE_ISSUE = "github.create_issue"


def _issue_result(issue: Any, repo: str, key: str, existing: bool) -> dict[str, Any]:
    return {"repo": repo, "number": issue.number, "id": issue.id, "url": issue.url, "html_url": issue.html_url,
            "title": issue.title, "state": issue.state, "idempotency_key": key, "existing": existing,
            "created_at": issue.created_at.isoformat() if issue.created_at else None}


def _writable_repo_facts(gh: github.Github, repo_name: str, operation: str) -> dict[str, Any]:
    repo = gh.get_repo(repo_name)
    facts = {"repo": repo_name, "owner": owner_of(repo_name), "private": repo.private,
             "visibility": repo.visibility, "archived": repo.archived}
    if repo.archived:
        raise InvalidRequest(f"{repo_name} is archived (read-only)", provider=PROVIDER, operation=operation)
    if not repo.has_issues:
        raise InvalidRequest(f"{repo_name} has issues disabled", provider=PROVIDER, operation=operation)
    return facts


def plan_create_issue(conns: Connections, inp: CreateIssueInput) -> Plan:
    with github_errors(conns, CREATE_ISSUE):
        facts = _writable_repo_facts(client(conns), inp.repo, CREATE_ISSUE)
    body = {"title": inp.title, "body": with_marker(inp.body, KEY_PLACEHOLDER), "labels": inp.labels,
            "assignees": inp.assignees}
    extras = "".join(f" {name}: {', '.join(v)}." for name, v in (("labels", inp.labels),
                                                                  ("assignees", inp.assignees)) if v)
    return Plan(operation=CREATE_ISSUE, target=f"github:{inp.repo}",
                summary=f"Open an issue in {inp.repo}: {inp.title!r}.{extras}",
                request={"method": "POST", "path": f"/repos/{inp.repo}/issues", "json": body},
                facts={**facts, "title": inp.title, "labels": inp.labels, "assignees": inp.assignees})


def run_create_issue(conns: Connections, inp: CreateIssueInput, key: str) -> dict[str, Any]:
    tag = marker(key)
    with github_errors(conns, CREATE_ISSUE):
        gh = client(conns)
        repo = gh.get_repo(inp.repo)
        login = token_login(conns, gh)
        recent = repo.get_issues(state="all", sort="created", direction="desc", **({"creator": login} if login else {}))
        for issue in islice(recent, SCAN_LIMIT):  # islice: PyGithub's own slice fails on an empty list
            if tag in (issue.body or ""):
                return _issue_result(issue, inp.repo, key, existing=True)
        issue = repo.create_issue(title=inp.title, body=with_marker(inp.body, key), labels=inp.labels,
                                  assignees=inp.assignees)
        return _issue_result(issue, inp.repo, key, existing=False)


def verify_create_issue(conns: Connections, inp: CreateIssueInput, result: dict[str, Any]) -> dict[str, Any]:
    with github_errors(conns, CREATE_ISSUE):
        issue = client(conns).get_repo(inp.repo).get_issue(int(result["number"]))
        title, body, state = issue.title, issue.body, issue.state
    if title != inp.title or not same_text(body, with_marker(inp.body, result["idempotency_key"])):
        raise MalformedResponse(f"issue #{result['number']} does not hold the title and body that were sent",
                                provider=PROVIDER, operation=CREATE_ISSUE)
    return {"repo": inp.repo, "number": result["number"], "state": state, "verified": True}


# --- github.comment_issue --------------------------------------------------------------------------------------

COMMENT_ISSUE = "github.comment_issue"


def plan_comment_issue(conns: Connections, inp: CommentIssueInput) -> Plan:
    with github_errors(conns, COMMENT_ISSUE):
        issue = client(conns).get_repo(inp.repo).get_issue(inp.issue_number)
        facts = {"repo": inp.repo, "owner": owner_of(inp.repo), "issue_number": inp.issue_number,
                 "issue_title": issue.title, "issue_state": issue.state, "locked": issue.locked,
                 "pull_request": "/pull/" in (issue.html_url or "")}
    path = f"/repos/{inp.repo}/issues/{inp.issue_number}/comments"
    return Plan(operation=COMMENT_ISSUE, target=f"github:{inp.repo}#{inp.issue_number}",
                summary=f"Comment on {inp.repo}#{inp.issue_number} ({facts['issue_title']!r}), "
                        f"{len(inp.body)} characters.",
                request={"method": "POST", "path": path, "json": {"body": with_marker(inp.body, KEY_PLACEHOLDER)}},
                facts=facts)


def _comment_result(comment: Any, inp: CommentIssueInput, key: str, existing: bool) -> dict[str, Any]:
    return {"repo": inp.repo, "number": inp.issue_number, "id": comment.id, "url": comment.url,
            "html_url": comment.html_url, "idempotency_key": key, "existing": existing}


def run_comment_issue(conns: Connections, inp: CommentIssueInput, key: str) -> dict[str, Any]:
    tag = marker(key)
    with github_errors(conns, COMMENT_ISSUE):
        issue = client(conns).get_repo(inp.repo).get_issue(inp.issue_number)
        for comment in islice(issue.get_comments().reversed, SCAN_LIMIT):  # newest first
            if tag in (comment.body or ""):
                return _comment_result(comment, inp, key, existing=True)
        comment = issue.create_comment(with_marker(inp.body, key))
        return _comment_result(comment, inp, key, existing=False)


def verify_comment_issue(conns: Connections, inp: CommentIssueInput, result: dict[str, Any]) -> dict[str, Any]:
    with github_errors(conns, COMMENT_ISSUE):
        issue = client(conns).get_repo(inp.repo).get_issue(inp.issue_number)
        body = issue.get_comment(int(result["id"])).body
    if not same_text(body, with_marker(inp.body, result["idempotency_key"])):
        raise MalformedResponse(f"comment {result['id']} does not hold the body that was sent",
                                provider=PROVIDER, operation=COMMENT_ISSUE)
    return {"repo": inp.repo, "number": inp.issue_number, "id": result["id"], "verified": True}


register(Operation(CREATE_ISSUE, "Open an issue in a GitHub repository (idempotent under the key).",
                   CreateIssueInput, plan=plan_create_issue, run=run_create_issue, verify=verify_create_issue,
                   facts=repo_facts))
register(Operation(COMMENT_ISSUE, "Comment on a GitHub issue or pull request (idempotent under the key).",
                   CommentIssueInput, plan=plan_comment_issue, run=run_comment_issue, verify=verify_comment_issue,
                   facts=repo_facts))

"""github.search_code and github.search_issues: reads. The plan is the query as it will be sent (qualifiers from
the fields); run returns the first `limit` hits and GitHub's total count."""

from __future__ import annotations

from itertools import islice
from typing import Any, Literal

from pydantic import Field, model_validator

from blocks.github import PER_PAGE
from tasks.ops.base import Connections, OpInput, Operation, Plan, register
from tasks.ops.github.client import client, github_errors, owner_of, repo_facts
from tasks.ops.github.fields import Query, Repo, lift_qualifiers

__all__ = ["SEARCH_CODE", "SEARCH_ISSUES", "SearchCodeInput", "SearchIssuesInput"]

SEARCH_CODE = "github.search_code"
SEARCH_ISSUES = "github.search_issues"


class SearchCodeInput(OpInput):
    """GitHub code search (default branch only); the query (`query` or GitHub's `q`) may use qualifiers: one
    repo: and one language: become the fields of those names, org:/user: are refused."""

    query: Query
    repo: Repo | None = Field(default=None, description="owner/name; unset: all code the credentials can read")
    language: str | None = Field(default=None, pattern=r"^[A-Za-z0-9#+._-]{1,40}$")
    limit: int = Field(default=20, ge=1, le=100)

    @model_validator(mode="before")
    @classmethod
    def _qualifiers(cls, data: Any) -> Any:
        return lift_qualifiers(data, ("repo", "language"))


class SearchIssuesInput(OpInput):
    """GitHub issue and pull-request search; the query (`query` or `q`) may use qualifiers: one repo: and one
    state: (or is:open/is:closed) become those fields, org:/user: are refused."""

    query: Query
    repo: Repo | None = Field(default=None, description="owner/name; unset: all issues the credentials can read")
    state: Literal["open", "closed"] | None = None
    limit: int = Field(default=20, ge=1, le=100)

    @model_validator(mode="before")
    @classmethod
    def _qualifiers(cls, data: Any) -> Any:
        return lift_qualifiers(data, ("repo", "state"))


def _qualifiers(inp: SearchCodeInput | SearchIssuesInput) -> dict[str, str]:
    extra = ("language", inp.language) if isinstance(inp, SearchCodeInput) else ("state", inp.state)
    return {k: v for k, v in (("repo", inp.repo), extra) if v}


def _search_plan(operation: str, path: str, inp: SearchCodeInput | SearchIssuesInput) -> Plan:
    quals = _qualifiers(inp)
    q = " ".join([inp.query, *(f"{k}:{v}" for k, v in quals.items())])
    what = "code" if operation == SEARCH_CODE else "issues"
    return Plan(operation=operation, target=f"github:{inp.repo}" if inp.repo else "github:*",
                summary=f"Search {what} in {inp.repo or 'every readable repository'} for {q!r} "
                        f"(first {inp.limit}).",
                request={"method": "GET", "path": path, "params": {"q": q, "per_page": PER_PAGE}, "json": None},
                facts={"repo": inp.repo, "owner": owner_of(inp.repo), **quals}, mutating=False)


def plan_search_code(conns: Connections, inp: SearchCodeInput) -> Plan:
    return _search_plan(SEARCH_CODE, "/search/code", inp)


def plan_search_issues(conns: Connections, inp: SearchIssuesInput) -> Plan:
    return _search_plan(SEARCH_ISSUES, "/search/issues", inp)


def run_search_code(conns: Connections, inp: SearchCodeInput, key: str = "") -> dict[str, Any]:
    with github_errors(conns, SEARCH_CODE):
        results = client(conns).search_code(inp.query, **_qualifiers(inp))
        # "repository": {"full_name"} as GitHub's own search items have it (the guide reads it there)
        items = [{"repo": hit.repository.full_name, "repository": {"full_name": hit.repository.full_name},
                  "path": hit.path, "name": hit.name, "sha": hit.sha, "html_url": hit.html_url, "score": hit.score}
                 for hit in islice(results, inp.limit)]
        return {"total_count": results.totalCount, "incomplete_results": bool(results.incomplete_results),
                "items": items}


def run_search_issues(conns: Connections, inp: SearchIssuesInput, key: str = "") -> dict[str, Any]:
    with github_errors(conns, SEARCH_ISSUES):
        results = client(conns).search_issues(inp.query, **_qualifiers(inp))
        items = [{"repo": hit.repository_url.rsplit("/repos/", 1)[-1], "number": hit.number, "title": hit.title,
                  "state": hit.state, "html_url": hit.html_url, "user": hit.user.login if hit.user else None,
                  "labels": [label.name for label in hit.labels], "comments": hit.comments,
                  "created_at": hit.created_at.isoformat() if hit.created_at else None,
                  "pull_request": "/pull/" in (hit.html_url or "")} for hit in islice(results, inp.limit)]
        return {"total_count": results.totalCount, "incomplete_results": bool(results.incomplete_results),
                "items": items}


register(Operation(SEARCH_CODE, "Search code on GitHub, in one repository or every readable one.",
                   SearchCodeInput, plan=plan_search_code, run=run_search_code, mutating=False, facts=repo_facts))
register(Operation(SEARCH_ISSUES, "Search GitHub issues and pull requests.", SearchIssuesInput,
                   plan=plan_search_issues, run=run_search_issues, mutating=False, facts=repo_facts))

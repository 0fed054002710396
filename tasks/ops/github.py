"""GitHub operations through PyGithub: create_issue and comment_issue (idempotent), search_code, search_issues,
get_file.

Idempotency: a mutating run appends `<!-- devmesh:idempotency-key=KEY -->` to the body it posts and, before
posting, looks for an issue or comment that already carries it (the repository's newest issues by the same
author, or the issue's newest comments; GitHub's search index lags, so it is not used for this). A run repeated
after a lost answer (timeout, 502) returns the first result instead of posting twice. A plan, made before any
key exists, shows the marker with the placeholder `{idempotency_key}`; otherwise its request is the one sent.
"""

from __future__ import annotations

import hashlib
import re
from itertools import islice
import urllib.parse
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from blocks.errors import (
    ConfigError,
    InputError,
    InvalidRequest,
    MalformedResponse,
)
from blocks.github import PER_PAGE
from blocks.vendor_errors import map_github_errors
from tasks.ops.base import Connections, OpInput, Operation, Plan, register

if TYPE_CHECKING:
    import github

__all__ = ["CommentIssueInput", "CreateIssueInput", "GetFileInput", "SearchCodeInput", "SearchIssuesInput",
           "marker", "with_marker"]

PROVIDER = "github"
BODY_LIMIT = 65_536  # GitHub's limit on an issue or comment body, in characters
MAX_BODY = BODY_LIMIT - 200  # room for the idempotency marker
MAX_FILE_BYTES = 1_048_576  # get_file refuses larger files (the contents API inlines at most 1 MiB)
SCAN_LIMIT = 300  # newest issues / comments searched for an idempotency marker
KEY_PLACEHOLDER = "{idempotency_key}"  # stands for the key in a plan's request body
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_REPO_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SCOPE_QUALIFIER = re.compile(r"(?:^|\s)-?(?:repo|org|user|owner):", re.IGNORECASE)


def _check_repo(value: str) -> str:
    owner, sep, name = value.partition("/")
    if not (sep and _NAME.fullmatch(owner) and _REPO_NAME.fullmatch(name) and name not in (".", "..")):
        raise ValueError("must be 'owner/name' (letters, digits, '-', and '.', '_' in the name)")
    return value


def _check_query(value: str) -> str:
    if _SCOPE_QUALIFIER.search(value):
        raise ValueError("scope the search with the `repo` field (or one repo:owner/name qualifier), not "
                         "org:/user:/owner: or negated qualifiers")
    return value


_LIFTED = re.compile(r'(?:^|(?<=\s))(-?)(repo|language|state|is):("[^"]*"|\S+)', re.IGNORECASE)


def _lift_qualifiers(data: Any, fields: tuple[str, ...]) -> Any:
    """GitHub's `q` as the guide writes it ("TODO repo:acme/app language:python"): the qualifiers that have a
    field become that field, so that the policy judges the repository named (one repo: qualifier at most)."""
    if not isinstance(data, dict):
        return data
    if "q" in data:
        if "query" in data:
            raise ValueError("give query or q, not both")
        data = {("query" if k == "q" else k): v for k, v in data.items()}
    query = data.get("query")
    if not isinstance(query, str):
        return data
    lifted: dict[str, str] = {}

    def take(match: re.Match) -> str:
        negated, key, value = match.group(1), match.group(2).lower(), match.group(3).strip('"')
        key = "state" if key == "is" and value.lower() in ("open", "closed") else key
        if key not in fields:
            return match.group(0)
        if negated:
            raise ValueError(f"-{key}: cannot be a field; scope the search positively")
        if key in lifted or data.get(key) not in (None, value):
            raise ValueError(f"the search names {key} twice ({data.get(key) or lifted[key]!r} and {value!r})")
        lifted[key] = value.lower() if key == "state" else value
        return ""

    rest = " ".join(_LIFTED.sub(take, query).split())
    return {**data, **lifted, "query": rest}


def _check_path(value: str) -> str:
    value = value.strip("/")
    if not value or any(part in ("", ".", "..") for part in value.split("/")) or "\0" in value:
        raise ValueError("must be a relative file path without '.' or '..' segments")
    return value


Repo = Annotated[str, AfterValidator(_check_repo)]
Login = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]
Query = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_check_query)]
Ref = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_./@-]+$")]


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
        return _lift_qualifiers(data, ("repo", "language"))


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
        return _lift_qualifiers(data, ("repo", "state"))


class GetFileInput(OpInput):
    """Read one UTF-8 text file of at most 1 MiB."""

    repo: Repo = Field(description="owner/name")
    path: Annotated[str, StringConstraints(max_length=1024), AfterValidator(_check_path)]
    ref: Ref | None = Field(default=None, description="branch, tag or commit sha; unset: the default branch")


# --- shared ----------------------------------------------------------------------------------------------------


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


def _same_text(a: str | None, b: str | None) -> bool:
    return (a or "").replace("\r\n", "\n").strip() == (b or "").replace("\r\n", "\n").strip()


def _client(conns: Connections) -> github.Github:
    if conns.github is None:
        raise ConfigError("GitHub operations need a GitHubConnection block (Connections.github)")
    return conns.client("github", conns.github.client)


def _login(conns: Connections, gh: github.Github) -> str | None:
    """The token's user, whose issues are searched for a marker; None for a GitHub App (its bot opens them)."""
    if getattr(conns.github, "token", None) is None:
        return None
    return conns.client("github:login", lambda: gh.get_user().login)


def _owner(repo: str | None) -> str | None:
    return repo.split("/", 1)[0] if repo else None


def _errors(conns: Connections, operation: str):
    """PyGithub's and requests' failures as blocks.errors, with every secret of the connections scrubbed."""
    return map_github_errors(operation, secrets=conns.secrets)


# --- github.create_issue ---------------------------------------------------------------------------------------

CREATE_ISSUE = "github.create_issue"


def _issue_result(issue: Any, repo: str, key: str, existing: bool) -> dict[str, Any]:
    return {"repo": repo, "number": issue.number, "id": issue.id, "url": issue.url, "html_url": issue.html_url,
            "title": issue.title, "state": issue.state, "idempotency_key": key, "existing": existing,
            "created_at": issue.created_at.isoformat() if issue.created_at else None}


def _writable_repo_facts(gh: github.Github, repo_name: str, operation: str) -> dict[str, Any]:
    repo = gh.get_repo(repo_name)
    facts = {"repo": repo_name, "owner": _owner(repo_name), "private": repo.private,
             "visibility": repo.visibility, "archived": repo.archived}
    if repo.archived:
        raise InvalidRequest(f"{repo_name} is archived (read-only)", provider=PROVIDER, operation=operation)
    if not repo.has_issues:
        raise InvalidRequest(f"{repo_name} has issues disabled", provider=PROVIDER, operation=operation)
    return facts


def plan_create_issue(conns: Connections, inp: CreateIssueInput) -> Plan:
    with _errors(conns, CREATE_ISSUE):
        facts = _writable_repo_facts(_client(conns), inp.repo, CREATE_ISSUE)
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
    with _errors(conns, CREATE_ISSUE):
        gh = _client(conns)
        repo = gh.get_repo(inp.repo)
        login = _login(conns, gh)
        recent = repo.get_issues(state="all", sort="created", direction="desc", **({"creator": login} if login else {}))
        for issue in islice(recent, SCAN_LIMIT):  # islice: PyGithub's own slice fails on an empty list
            if tag in (issue.body or ""):
                return _issue_result(issue, inp.repo, key, existing=True)
        issue = repo.create_issue(title=inp.title, body=with_marker(inp.body, key), labels=inp.labels,
                                  assignees=inp.assignees)
        return _issue_result(issue, inp.repo, key, existing=False)


def verify_create_issue(conns: Connections, inp: CreateIssueInput, result: dict[str, Any]) -> dict[str, Any]:
    with _errors(conns, CREATE_ISSUE):
        issue = _client(conns).get_repo(inp.repo).get_issue(int(result["number"]))
        title, body, state = issue.title, issue.body, issue.state
    if title != inp.title or not _same_text(body, with_marker(inp.body, result["idempotency_key"])):
        raise MalformedResponse(f"issue #{result['number']} does not hold the title and body that were sent",
                                provider=PROVIDER, operation=CREATE_ISSUE)
    return {"repo": inp.repo, "number": result["number"], "state": state, "verified": True}


# --- github.comment_issue --------------------------------------------------------------------------------------

COMMENT_ISSUE = "github.comment_issue"


def plan_comment_issue(conns: Connections, inp: CommentIssueInput) -> Plan:
    with _errors(conns, COMMENT_ISSUE):
        issue = _client(conns).get_repo(inp.repo).get_issue(inp.issue_number)
        facts = {"repo": inp.repo, "owner": _owner(inp.repo), "issue_number": inp.issue_number,
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
    with _errors(conns, COMMENT_ISSUE):
        issue = _client(conns).get_repo(inp.repo).get_issue(inp.issue_number)
        for comment in islice(issue.get_comments().reversed, SCAN_LIMIT):  # newest first
            if tag in (comment.body or ""):
                return _comment_result(comment, inp, key, existing=True)
        comment = issue.create_comment(with_marker(inp.body, key))
        return _comment_result(comment, inp, key, existing=False)


def verify_comment_issue(conns: Connections, inp: CommentIssueInput, result: dict[str, Any]) -> dict[str, Any]:
    with _errors(conns, COMMENT_ISSUE):
        issue = _client(conns).get_repo(inp.repo).get_issue(inp.issue_number)
        body = issue.get_comment(int(result["id"])).body
    if not _same_text(body, with_marker(inp.body, result["idempotency_key"])):
        raise MalformedResponse(f"comment {result['id']} does not hold the body that was sent",
                                provider=PROVIDER, operation=COMMENT_ISSUE)
    return {"repo": inp.repo, "number": inp.issue_number, "id": result["id"], "verified": True}


# --- searches --------------------------------------------------------------------------------------------------

SEARCH_CODE = "github.search_code"
SEARCH_ISSUES = "github.search_issues"


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
                facts={"repo": inp.repo, "owner": _owner(inp.repo), **quals}, mutating=False)


def plan_search_code(conns: Connections, inp: SearchCodeInput) -> Plan:
    return _search_plan(SEARCH_CODE, "/search/code", inp)


def plan_search_issues(conns: Connections, inp: SearchIssuesInput) -> Plan:
    return _search_plan(SEARCH_ISSUES, "/search/issues", inp)


def run_search_code(conns: Connections, inp: SearchCodeInput, key: str = "") -> dict[str, Any]:
    with _errors(conns, SEARCH_CODE):
        results = _client(conns).search_code(inp.query, **_qualifiers(inp))
        # "repository": {"full_name"} as GitHub's own search items have it (the guide reads it there)
        items = [{"repo": hit.repository.full_name, "repository": {"full_name": hit.repository.full_name},
                  "path": hit.path, "name": hit.name, "sha": hit.sha, "html_url": hit.html_url, "score": hit.score}
                 for hit in islice(results, inp.limit)]
        return {"total_count": results.totalCount, "incomplete_results": bool(results.incomplete_results),
                "items": items}


def run_search_issues(conns: Connections, inp: SearchIssuesInput, key: str = "") -> dict[str, Any]:
    with _errors(conns, SEARCH_ISSUES):
        results = _client(conns).search_issues(inp.query, **_qualifiers(inp))
        items = [{"repo": hit.repository_url.rsplit("/repos/", 1)[-1], "number": hit.number, "title": hit.title,
                  "state": hit.state, "html_url": hit.html_url, "user": hit.user.login if hit.user else None,
                  "labels": [label.name for label in hit.labels], "comments": hit.comments,
                  "created_at": hit.created_at.isoformat() if hit.created_at else None,
                  "pull_request": "/pull/" in (hit.html_url or "")} for hit in islice(results, inp.limit)]
        return {"total_count": results.totalCount, "incomplete_results": bool(results.incomplete_results),
                "items": items}


# --- github.get_file -------------------------------------------------------------------------------------------

GET_FILE = "github.get_file"


def plan_get_file(conns: Connections, inp: GetFileInput) -> Plan:
    params = {"ref": inp.ref} if inp.ref else {}
    return Plan(operation=GET_FILE, target=f"github:{inp.repo}",
                summary=f"Read {inp.path} of {inp.repo} at {inp.ref or 'the default branch'}.",
                request={"method": "GET", "path": f"/repos/{inp.repo}/contents/{urllib.parse.quote(inp.path)}",
                         "params": params, "json": None},
                facts={"repo": inp.repo, "owner": _owner(inp.repo), "path": inp.path, "ref": inp.ref},
                mutating=False)


def run_get_file(conns: Connections, inp: GetFileInput, key: str = "") -> dict[str, Any]:
    item = f"{inp.repo}:{inp.path}"
    with _errors(conns, GET_FILE):
        repo = _client(conns).get_repo(inp.repo)
        found = repo.get_contents(inp.path, **({"ref": inp.ref} if inp.ref else {}))
        if isinstance(found, list):
            raise InputError("is a directory, not a file", item=item)
        if found.type != "file":
            raise InputError(f"is a {found.type}, not a file", item=item)
        if found.size > MAX_FILE_BYTES or found.encoding != "base64":
            raise InputError(f"is {found.size} bytes; get_file reads at most {MAX_FILE_BYTES}", item=item)
        data = found.decoded_content
        result = {"repo": inp.repo, "path": found.path, "ref": inp.ref, "sha": found.sha, "size": found.size,
                  "html_url": found.html_url}
    if b"\0" in data:
        raise InputError("is a binary file", item=item)
    try:
        return {**result, "text": data.decode("utf-8")}
    except UnicodeDecodeError:
        raise InputError("is not UTF-8 text", item=item) from None


# --- facts: what the input fixes, judged before planning ------------------------------------------------------


def _repo_facts(conns: Connections, inp: Any) -> dict[str, Any]:
    repo = getattr(inp, "repo", None)
    number = getattr(inp, "issue_number", None)
    return {"repo": repo, "owner": _owner(repo),
            "target": (f"github:{repo}" if repo else "github:*") + (f"#{number}" if number else "")}


# --- registry --------------------------------------------------------------------------------------------------

register(Operation(CREATE_ISSUE, "Open an issue in a GitHub repository (idempotent under the key).",
                   CreateIssueInput, plan_create_issue, run_create_issue, verify_create_issue, facts=_repo_facts))
register(Operation(COMMENT_ISSUE, "Comment on a GitHub issue or pull request (idempotent under the key).",
                   CommentIssueInput, plan_comment_issue, run_comment_issue, verify_comment_issue,
                   facts=_repo_facts))
register(Operation(SEARCH_CODE, "Search code on GitHub, in one repository or every readable one.",
                   SearchCodeInput, plan_search_code, run_search_code, mutating=False, facts=_repo_facts))
register(Operation(SEARCH_ISSUES, "Search GitHub issues and pull requests.", SearchIssuesInput,
                   plan_search_issues, run_search_issues, mutating=False, facts=_repo_facts))
register(Operation(GET_FILE, "Read one UTF-8 text file (at most 1 MiB) from a GitHub repository.", GetFileInput,
                   plan_get_file, run_get_file, mutating=False, facts=_repo_facts))

"""A stateful fake of GitHub's REST API on loopback, for the real PyGithub (`base_url=fake.url`).

Repositories, files, issues and comments live in memory. Responses take their shapes from GitHub's own examples
in ../shared/testdata/github-api/ when present, else from the minimal shapes embedded here (the repository must
stand alone). Every answer carries the x-ratelimit-* headers. Auth: `token X` or `Bearer X` with X == fake.token,
or an installation token that a GitHub App (`add_app`) got from POST /app/installations/{id}/access_tokens.

Set up with add_repo, add_file, add_issue, add_comment, add_app; inspect with issues, comments, posts, requests.
Faults: FakeAPI.script (the next requests) or script_writes (the next writes only, GETs pass). Fault.error(403 or
429) answers GitHub's secondary-rate-limit body (`code="primary"`: the primary-limit body, x-ratelimit-remaining
0), Fault.error(422) the documented Validation Failed body, Fault.error(403, "text") that message;
Fault.after(502) creates the issue or comment, then answers 502.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import re
import secrets
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from tests.fakes.server import FakeAPI, Fault, Response, Seen, json_response

__all__ = ["FakeGitHub", "TESTDATA", "shape"]

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "github-api"
DOCS = "https://docs.github.com/rest"
MAX_INLINE = 1_048_576  # the contents API inlines files up to 1 MiB; larger ones come with encoding "none"

_USER = {"login": "octocat", "id": 1, "node_id": "MDQ6VXNlcjE=",
         "avatar_url": "https://github.com/images/error/octocat_happy.gif", "gravatar_id": "",
         "url": "https://api.github.com/users/octocat", "html_url": "https://github.com/octocat",
         "type": "User", "site_admin": False}
_ISSUE = {"id": 1, "node_id": "MDU6SXNzdWUx", "url": "", "repository_url": "", "labels_url": "", "comments_url": "",
          "events_url": "", "html_url": "", "number": 1, "state": "open", "title": "", "body": "", "user": _USER,
          "labels": [{"id": 1, "node_id": "", "url": "", "name": "bug", "description": None, "color": "f29513",
                      "default": True}],
          "assignee": None, "assignees": [], "milestone": None, "locked": False, "active_lock_reason": None,
          "comments": 0, "closed_at": None, "created_at": "", "updated_at": "", "closed_by": None,
          "author_association": "OWNER", "state_reason": None}
_COMMENT = {"id": 1, "node_id": "", "url": "", "html_url": "", "body": "", "user": _USER, "created_at": "",
            "updated_at": "", "issue_url": "", "author_association": "OWNER"}
_REPO = {"id": 1, "node_id": "", "name": "Hello-World", "full_name": "octocat/Hello-World", "owner": _USER,
         "private": False, "html_url": "https://github.com/octocat/Hello-World", "description": None, "fork": False,
         "url": "https://api.github.com/repos/octocat/Hello-World",
         "issues_url": "https://api.github.com/repos/octocat/Hello-World/issues{/number}",
         "contents_url": "https://api.github.com/repos/octocat/Hello-World/contents/{+path}",
         "default_branch": "main", "open_issues_count": 0, "has_issues": True, "archived": False, "disabled": False,
         "visibility": "public", "pushed_at": "", "created_at": "", "updated_at": "",
         "permissions": {"admin": True, "push": True, "pull": True}}
_RATE = {"resources": {"core": {}, "search": {}}, "rate": {}}
_ERRORS = {
    "secondary-rate-limit.403.http.json": {
        "status": 403, "headers": {"Content-Type": "application/json; charset=utf-8", "Connection": "close"},
        "body": {"message": "You have exceeded a secondary rate limit and have been temporarily blocked from content "
                            "creation. Please retry your request again later.",
                 "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api"
                                      "#secondary-rate-limits"}},
    "primary-rate-limit-exceeded.403.http.json": {
        "status": 403, "headers": {"x-ratelimit-remaining": "0"},
        "body": {"message": "API rate limit exceeded for xxx.xxx.xxx.xxx. (But here's the good news: Authenticated "
                            "requests get a higher rate limit. Check out the documentation for more details.)",
                 "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api"
                                      "#rate-limiting"}},
    "validation-failed.422.http.json": {
        "status": 422, "headers": {},
        "body": {"message": "Validation Failed",
                 "errors": [{"resource": "Issue", "field": "title", "code": "missing_field"}]}},
    "problems-parsing-json.400.http.json": {"status": 400, "headers": {}, "body": {"message": "Problems parsing JSON"}},
    "body-should-be-json-object.400.http.json": {"status": 400, "headers": {},
                                                 "body": {"message": "Body should be a JSON object"}},
    "server-timeout.http.json": {"status": None, "headers": {}, "body": {"message": "Server Error"}},
}
_FALLBACK: dict[str, Any] = {
    "create-issue.201.json": _ISSUE, "create-issue-comment.201.json": _COMMENT, "get-repo.200.json": _REPO,
    "search-code.200.json": {"items": [{"repository": {k: _REPO[k] for k in (
        "id", "node_id", "name", "full_name", "owner", "private", "html_url", "description", "fork", "url")}}]},
    "rate-limit.200.json": _RATE, **_ERRORS,
}
_LANGUAGES = {"python": (".py",), "javascript": (".js", ".mjs"), "typescript": (".ts",), "go": (".go",),
              "yaml": (".yml", ".yaml"), "markdown": (".md",), "shell": (".sh",), "json": (".json",)}
_TOKEN = re.compile(r'[\w-]+:"[^"]*"|[\w-]+:\S+|"[^"]*"|\S+')


@cache
def _read(directory: Path | None, name: str) -> Any:
    path = directory / name if directory else None
    return json.loads(path.read_text()) if path and path.exists() else _FALLBACK[name]


def shape(name: str, testdata: Path | None = TESTDATA) -> Any:
    """A fresh copy of GitHub's example `name` (a file of testdata/github-api), or the embedded fallback."""
    return copy.deepcopy(_read(testdata, name))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retarget(value: Any, swaps: list[tuple[str, str]]) -> Any:
    """`value` with every string rewritten by `swaps` (octocat's URLs become the fake's)."""
    if isinstance(value, str):
        for old, new in swaps:
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _retarget(v, swaps) for k, v in value.items()}
    if isinstance(value, list):
        return [_retarget(v, swaps) for v in value]
    return value


def _query(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """A search query's free terms (lower-case) and its qualifiers (`repo:o/r` -> {"repo": ["o/r"]})."""
    terms: list[str] = []
    quals: dict[str, list[str]] = {}
    for token in _TOKEN.findall(text):
        name, sep, value = token.partition(":")
        if sep and not token.startswith('"') and re.fullmatch(r"[\w-]+", name):
            quals.setdefault(name.lower(), []).append(value.strip('"').lower())
        else:
            terms.append(token.strip('"').lower())
    return [t for t in terms if t], quals


class FakeGitHub(FakeAPI):
    """In-memory repos, files, issues and comments behind GitHub's REST routes; see the module docstring."""

    def __init__(self, token: str = "ghp_fake0123456789abcdefTOKEN", login: str = "devmesh-bot",
                 testdata: Path | None = TESTDATA) -> None:
        super().__init__()
        self.token = self.expected_token = token
        self.login = login
        self.testdata = testdata if testdata and testdata.exists() else None
        self._state = threading.RLock()
        self.write_faults: deque[Fault] = deque()
        self._clear()

    def __enter__(self) -> FakeGitHub:
        super().__enter__()
        assert self._server is not None
        # headers and body go out in two writes: without TCP_NODELAY each answer waits ~40 ms for a delayed ACK
        self._server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
        return self

    # --- state (call after start: URLs in the answers point at fake.url) ----------------------------------------

    def _clear(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}  # lower-case full name -> {"json", "issues", "files", ...}
        self.apps: dict[int, dict[str, Any]] = {}  # installation id -> {"app_id", "public_key", "slug"}
        self.installation_tokens: dict[str, str] = {}  # token -> bot login
        self._ids = {"repo": 100, "issue": 1000, "comment": 5000, "label": 9000}
        self._comments: dict[int, dict[str, Any]] = {}
        reset = int(time.time())
        self.limits = {"core": {"limit": 5000, "used": 0, "reset": reset + 3600},
                       "search": {"limit": 30, "used": 0, "reset": reset + 60}}

    def reset(self) -> None:
        """Forget requests, faults, repositories, issues, apps; the expected token again."""
        super().reset()
        with self._state:
            self._clear()
            self.write_faults.clear()
            self.token = self.expected_token

    def script_writes(self, *faults: Fault) -> None:
        """Queue faults for the next write requests (POST, PATCH, PUT, DELETE) only; GETs pass untouched.

        Fault.error answers the error, Fault.after does the write then answers the error, Fault.slow waits, then
        does the write (a client with a shorter timeout has given up: the answer is lost).
        """
        with self._state:
            self.write_faults.extend(faults)

    def _next(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    def user(self, login: str) -> dict[str, Any]:
        """A user object (GitHub's `simple-user`) for `login`."""
        user_id = int.from_bytes(hashlib.blake2b(login.lower().encode(), digest_size=3).digest(), "big")
        swaps = [("https://api.github.com", self.url), ("https://github.com", self.url), ("octocat", login)]
        user = _retarget(shape("create-issue.201.json", self.testdata)["user"], swaps)
        user.update(login=login, id=user_id, node_id=base64.b64encode(f"04:User{user_id}".encode()).decode(),
                    type="Bot" if login.endswith("[bot]") else "User", site_admin=False)
        return user

    def add_repo(self, full_name: str, *, private: bool = False, default_branch: str = "main",
                 archived: bool = False, has_issues: bool = True) -> dict[str, Any]:
        """Create `owner/name` (GitHub's get-repo shape) and return its JSON."""
        owner, name = full_name.split("/")
        with self._state:
            repo_id = self._next("repo")
            data = shape("get-repo.200.json", self.testdata)
            for key in ("parent", "source", "template_repository", "organization"):
                data.pop(key, None)
            swaps = [("octocat/Hello-World", full_name), ("Hello-World", name), ("octocat", owner),
                     ("https://api.github.com", self.url), ("http://api.github.com", self.url),
                     ("https://github.com", self.url)]
            data = _retarget(data, swaps)
            data.update(id=repo_id, node_id=base64.b64encode(f"010:Repository{repo_id}".encode()).decode(),
                        name=name, full_name=full_name, owner=self.user(owner), private=private,
                        visibility="private" if private else "public", default_branch=default_branch, fork=False,
                        archived=archived, disabled=False, has_issues=has_issues, open_issues_count=0,
                        created_at=_now(), updated_at=_now(), pushed_at=_now(),
                        permissions={"admin": True, "maintain": True, "push": True, "triage": True, "pull": True})
            if "open_issues" in data:
                data["open_issues"] = 0
            self.repos[full_name.lower()] = {"json": data, "issues": [], "files": {}, "labels": {}}
            return data

    def add_file(self, repo: str, path: str, text: str | bytes, ref: str = "main") -> None:
        """Store a file at `ref` (a branch, tag or sha); bytes for binary content."""
        data = text.encode() if isinstance(text, str) else text
        with self._state:
            self._repo(repo)["files"].setdefault(ref, {})[path.strip("/")] = data

    def add_issue(self, repo: str, title: str, body: str = "", *, user: str | None = None,
                  state: str = "open") -> dict[str, Any]:
        """Store an issue as if someone had opened it (default: the token's user); returns its JSON."""
        with self._state:
            issue = self._new_issue(self._repo(repo), {"title": title, "body": body}, user or self.login)
            if state == "closed":
                issue.update(state="closed", closed_at=_now(), state_reason="completed")
            return self._public(issue)

    def add_comment(self, repo: str, number: int, body: str, *, user: str | None = None) -> dict[str, Any]:
        """Store a comment on issue `number` as if someone had posted it (default: the token's user)."""
        with self._state:
            stored = self._repo(repo)
            issue = self._issue(stored, number)
            assert issue is not None, f"no issue {repo}#{number}"
            return self._public(self._new_comment(stored, issue, body, user or self.login))

    def edit_issue(self, repo: str, number: int, **fields: Any) -> None:
        """Change a stored issue behind the client's back (title, body, state ...)."""
        with self._state:
            issue = self._issue(self._repo(repo), number)
            assert issue is not None, f"no issue {repo}#{number}"
            issue.update(fields, updated_at=_now())

    def add_app(self, app_id: int, public_key_pem: str, installation_id: int, slug: str = "devmesh-app") -> None:
        """Accept JWTs signed for `app_id` (RS256, verified with `public_key_pem`) for this installation."""
        with self._state:
            self.apps[installation_id] = {"app_id": app_id, "public_key": public_key_pem, "slug": slug}

    def issues(self, repo: str) -> list[dict[str, Any]]:
        """The stored issues of `repo`, oldest first."""
        with self._state:
            return copy.deepcopy(self._repo(repo)["issues"])

    def comments(self, repo: str, number: int) -> list[dict[str, Any]]:
        """The stored comments of issue `number`, oldest first."""
        with self._state:
            issue = self._issue(self._repo(repo), number)
            return [copy.deepcopy(self._comments[i]) for i in issue["_comment_ids"]] if issue else []

    def posts(self) -> list[Seen]:
        """The write requests received (POST, PATCH, PUT, DELETE)."""
        return [s for s in self.requests if s.method != "GET"]

    def _repo(self, full_name: str) -> dict[str, Any]:
        return self.repos[full_name.lower()]

    @staticmethod
    def _issue(repo: dict[str, Any], number: int) -> dict[str, Any] | None:
        return next((i for i in repo["issues"] if i["number"] == number), None)

    def _label(self, repo: dict[str, Any], name: str) -> dict[str, Any]:
        if name.lower() not in repo["labels"]:  # GitHub creates unknown labels for users with push access
            label = shape("create-issue.201.json", self.testdata)["labels"][0]
            label_id = self._next("label")
            label.update(id=label_id, node_id=f"LA_{label_id}", name=name, description=None, color="ededed",
                         default=False, url=f"{repo['json']['url']}/labels/{name}")
            repo["labels"][name.lower()] = label
        return repo["labels"][name.lower()]

    def _new_issue(self, repo: dict[str, Any], body: dict[str, Any], login: str) -> dict[str, Any]:
        full, number, issue_id = repo["json"]["full_name"], len(repo["issues"]) + 1, self._next("issue")
        url = f"{self.url}/repos/{full}/issues/{number}"
        issue = shape("create-issue.201.json", self.testdata)
        issue.pop("pull_request", None)  # an issue, not a pull request
        assignees = [self.user(a) for a in body.get("assignees") or []]
        issue.update(
            id=issue_id, node_id=f"I_{issue_id}", number=number, url=url, repository_url=repo["json"]["url"],
            labels_url=f"{url}/labels{{/name}}", comments_url=f"{url}/comments", events_url=f"{url}/events",
            html_url=f"{self.url}/{full}/issues/{number}", state="open", title=body["title"],
            body=body.get("body"), user=self.user(login), labels=[self._label(repo, n) for n in body.get("labels")
                                                                      or []],
            assignee=assignees[0] if assignees else None, assignees=assignees, milestone=None, locked=False,
            active_lock_reason=None, comments=0, closed_at=None, created_at=_now(), updated_at=_now(),
            closed_by=None, author_association="OWNER", state_reason=None)
        if "timeline_url" in issue:
            issue["timeline_url"] = f"{url}/timeline"
        repo["issues"].append(issue)
        repo["json"]["open_issues_count"] += 1
        issue["_comment_ids"] = []
        return issue

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}

    # --- HTTP --------------------------------------------------------------------------------------------------

    def _limit_headers(self, resource: str, count: bool) -> dict[str, str]:
        limit = self.limits[resource]
        if count:
            limit["used"] += 1
        remaining = max(0, limit["limit"] - limit["used"])
        return {"x-ratelimit-limit": str(limit["limit"]), "x-ratelimit-remaining": str(remaining),
                "x-ratelimit-used": str(limit["used"]), "x-ratelimit-reset": str(limit["reset"]),
                "x-ratelimit-resource": resource, "x-github-request-id": secrets.token_hex(8).upper(),
                "x-github-media-type": "github.v3; format=json"}

    def _reply(self, status: int, body: Any, resource: str = "core", headers: dict[str, str] | None = None,
               count: bool = True) -> Response:
        return json_response(status, body, {**self._limit_headers(resource, count), **(headers or {})})

    def _fail(self, status: int, message: str, resource: str = "core") -> Response:
        return self._reply(status, {"message": message, "documentation_url": DOCS, "status": str(status)}, resource)

    def _documented(self, name: str, resource: str = "core", headers: dict[str, str] | None = None) -> Response:
        example = shape(name, self.testdata)
        kept = {k: v for k, v in example["headers"].items() if k.lower() in ("content-type", "connection")}
        with self._state:
            limit = self._limit_headers(resource, count=False)
        merged = {**limit, **{k.lower(): v for k, v in example["headers"].items() if k.lower().startswith("x-")},
                  **kept, **{k.lower(): v for k, v in (headers or {}).items()}}
        return json_response(example["status"] or 500, example["body"], merged)

    def error(self, fault: Fault) -> Response:
        default = fault.message == "scripted failure"
        documented, extra = None, {k.lower(): v for k, v in fault.headers.items()}
        if fault.status in (403, 429) and fault.code == "primary":
            documented = "primary-rate-limit-exceeded.403.http.json"
            extra = {"x-ratelimit-reset": str(self.limits["core"]["reset"]), **extra}
        elif fault.status in (403, 429) and default:
            documented = "secondary-rate-limit.403.http.json"
        elif fault.status in (400, 422) and default:
            documented = {400: "problems-parsing-json.400.http.json", 422: "validation-failed.422.http.json"}[
                fault.status]
        if documented:
            _, headers, body = self._documented(documented, headers=extra)
            return fault.status, headers, body
        message = "Server Error" if fault.status >= 500 and default else fault.message
        with self._state:
            headers = {**self._limit_headers("core", count=False), **{k.lower(): v for k, v in fault.headers.items()}}
        return json_response(fault.status, {"message": message, "documentation_url": DOCS}, headers)

    def _caller(self, seen: Seen) -> str | None:
        """The login the request authenticates as, or None."""
        scheme, _, value = seen.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("token", "bearer") or not value:
            return None
        if value == self.token:
            return self.login
        return self.installation_tokens.get(value)

    def answer(self, seen: Seen, fault: Fault | None) -> Response:
        with self._state:
            write_fault = self.write_faults.popleft() if seen.method != "GET" and self.write_faults else None
        if write_fault and write_fault.kind == "error":
            return self.error(write_fault)
        if write_fault and write_fault.kind == "slow":
            time.sleep(write_fault.seconds)  # then do the work: the client has given up by now
        parts = urlsplit(seen.path)
        path, params = unquote(parts.path), {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._state:
            if seen.method == "POST" and (m := re.fullmatch(r"/app/installations/(\d+)/access_tokens", path)):
                response = self._access_token(seen, int(m.group(1)))
            elif (login := self._caller(seen)) is None:
                message = "Bad credentials" if seen.headers.get("authorization") else "Requires authentication"
                response = self._fail(401, message)
            else:
                response = self._route(seen, path, params, login)
        return self.error(write_fault) if write_fault and write_fault.kind == "after" else response

    def _route(self, seen: Seen, path: str, params: dict[str, str], login: str) -> Response:
        verb = seen.method
        if verb == "GET" and path == "/user":
            if login.endswith("[bot]"):
                return self._fail(403, "Resource not accessible by integration")
            return self._reply(200, self.user(login))
        if verb == "GET" and path == "/rate_limit":
            return self._rate_limit()
        if verb == "GET" and path in ("/search/issues", "/search/code"):
            return self._search(seen, path, params)
        m = re.fullmatch(r"/repos/([^/]+/[^/]+)(/.*)?", path)
        if not m or m.group(1).lower() not in self.repos:
            return self._fail(404, "Not Found")
        repo, rest = self._repo(m.group(1)), m.group(2) or ""
        if verb == "GET" and rest == "":
            return self._reply(200, copy.deepcopy(repo["json"]))
        if rest.startswith("/issues") and not repo["json"]["has_issues"]:
            return self._fail(410, "Issues are disabled for this repo")
        if rest == "/issues":
            return self._create_issue(seen, repo, login) if verb == "POST" else self._list_issues(seen, repo, params)
        if verb == "GET" and (c := re.fullmatch(r"/issues/comments/(\d+)", rest)):
            comment = self._comments.get(int(c.group(1)))
            if comment is None or not comment["issue_url"].startswith(repo["json"]["url"] + "/"):
                return self._fail(404, "Not Found")
            return self._reply(200, self._public(comment))
        if i := re.fullmatch(r"/issues/(\d+)(/comments)?", rest):
            issue = self._issue(repo, int(i.group(1)))
            if issue is None:
                return self._fail(404, "Not Found")
            if not i.group(2) and verb == "GET":
                return self._reply(200, self._public(issue))
            if i.group(2) and verb == "POST":
                return self._create_comment(seen, repo, issue, login)
            if i.group(2) and verb == "GET":
                rows = [self._comments[c] for c in issue["_comment_ids"]]
                if since := params.get("since"):
                    rows = [c for c in rows if c["updated_at"] >= since]
                return self._paged(seen, params, [self._public(c) for c in rows])
        if verb == "GET" and (rest == "/contents" or rest.startswith("/contents/")):
            return self._contents(repo, rest.removeprefix("/contents").strip("/"), params)
        return self._fail(404, "Not Found")

    def _body(self, seen: Seen) -> dict[str, Any] | Response:
        if isinstance(seen.body, (bytes, bytearray)):
            return self._documented("problems-parsing-json.400.http.json")
        if not isinstance(seen.body, dict):
            return self._documented("body-should-be-json-object.400.http.json")
        return seen.body

    @staticmethod
    def _invalid(resource: str, field: str, code: str, message: str | None = None) -> dict[str, Any]:
        error = {"resource": resource, "field": field, "code": code}
        if message:
            error["message"] = message
        return {"message": "Validation Failed", "errors": [error], "documentation_url": DOCS, "status": "422"}

    def _create_issue(self, seen: Seen, repo: dict[str, Any], login: str) -> Response:
        body = self._body(seen)
        if not isinstance(body, dict):
            return body
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            return self._documented("validation-failed.422.http.json")
        if len(title) > 256:
            return self._reply(422, self._invalid("Issue", "title", "custom",
                                                  "title is too long (maximum is 256 characters)"))
        if len(body.get("body") or "") > 65536:
            return self._reply(422, self._invalid("Issue", "body", "custom",
                                                  "body is too long (maximum is 65536 characters)"))
        issue = self._new_issue(repo, body, login)
        return self._reply(201, self._public(issue), headers={"Location": issue["url"]})

    def _create_comment(self, seen: Seen, repo: dict[str, Any], issue: dict[str, Any], login: str) -> Response:
        body = self._body(seen)
        if not isinstance(body, dict):
            return body
        text = body.get("body")
        if not isinstance(text, str) or not text.strip():
            return self._reply(422, self._invalid("IssueComment", "body", "missing_field"))
        if len(text) > 65536:
            return self._reply(422, self._invalid("IssueComment", "body", "custom",
                                                  "body is too long (maximum is 65536 characters)"))
        comment = self._new_comment(repo, issue, text, login)
        return self._reply(201, self._public(comment), headers={"Location": comment["url"]})

    def _new_comment(self, repo: dict[str, Any], issue: dict[str, Any], text: str, login: str) -> dict[str, Any]:
        comment_id, full = self._next("comment"), repo["json"]["full_name"]
        comment = shape("create-issue-comment.201.json", self.testdata)
        comment.update(id=comment_id, node_id=f"IC_{comment_id}", url=f"{self.url}/repos/{full}/issues/comments/"
                       f"{comment_id}", html_url=f"{issue['html_url']}#issuecomment-{comment_id}", body=text,
                       user=self.user(login), created_at=_now(), updated_at=_now(), issue_url=issue["url"],
                       author_association="OWNER")
        self._comments[comment_id] = comment
        issue["_comment_ids"].append(comment_id)
        issue.update(comments=issue["comments"] + 1, updated_at=_now())
        return comment

    def _list_issues(self, seen: Seen, repo: dict[str, Any], params: dict[str, str]) -> Response:
        state = params.get("state", "open")
        rows = [i for i in repo["issues"] if state == "all" or i["state"] == state]
        if creator := params.get("creator"):
            rows = [i for i in rows if i["user"]["login"].lower() == creator.lower()]
        if since := params.get("since"):
            rows = [i for i in rows if i["updated_at"] >= since]
        key = {"created": "created_at", "updated": "updated_at", "comments": "comments"}.get(
            params.get("sort", "created"), "created_at")
        rows.sort(key=lambda i: (i[key], i["number"]), reverse=params.get("direction", "desc") == "desc")
        return self._paged(seen, params, [self._public(i) for i in rows])

    def _paged(self, seen: Seen, params: dict[str, str], rows: list[Any], wrap: dict[str, Any] | None = None,
               resource: str = "core") -> Response:
        """One page of `rows` with GitHub's Link header (`per_page` up to 100, `page` from 1)."""
        try:
            per_page = min(100, max(1, int(params.get("per_page", 30))))
            page = max(1, int(params.get("page", 1)))
        except ValueError:
            return self._fail(422, "Validation Failed", resource)
        last = max(1, math.ceil(len(rows) / per_page))
        base = f"{self.url}{urlsplit(seen.path).path}"

        def link(n: int, rel: str) -> str:
            return f'<{base}?{urlencode({**params, "page": n})}>; rel="{rel}"'

        links = ([link(page + 1, "next"), link(last, "last")] if page < last else []) + (
            [link(1, "first"), link(page - 1, "prev")] if page > 1 else [])
        chunk = rows[(page - 1) * per_page: page * per_page]
        body: Any = {**wrap, "items": chunk} if wrap is not None else chunk
        return self._reply(200, body, resource, {"Link": ", ".join(links)} if links else None)

    def _contents(self, repo: dict[str, Any], path: str, params: dict[str, str]) -> Response:
        ref = params.get("ref") or repo["json"]["default_branch"]
        files = repo["files"].get(ref)
        if files is None:
            return self._fail(404, f"No commit found for the ref {ref}")
        if path in files:
            return self._reply(200, self._file(repo, ref, path, files[path], inline=True))
        prefix = f"{path}/" if path else ""
        children = sorted({p[len(prefix):].split("/")[0] for p in files if p.startswith(prefix)})
        if not children:
            return self._fail(404, "Not Found")
        listing = []
        for name in children:
            child = prefix + name
            if child in files:
                listing.append(self._file(repo, ref, child, files[child], inline=False))
            else:
                listing.append({"type": "dir", "name": name, "path": child, "size": 0, "sha": "0" * 40,
                                "url": f"{repo['json']['url']}/contents/{child}?ref={ref}"})
        return self._reply(200, listing)

    def _file(self, repo: dict[str, Any], ref: str, path: str, data: bytes, inline: bool) -> dict[str, Any]:
        full, sha = repo["json"]["full_name"], hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        url = f"{self.url}/repos/{full}/contents/{path}?ref={ref}"
        git_url, html_url = f"{self.url}/repos/{full}/git/blobs/{sha}", f"{self.url}/{full}/blob/{ref}/{path}"
        entry = {"type": "file", "size": len(data), "name": path.rsplit("/", 1)[-1], "path": path, "sha": sha,
                 "url": url, "git_url": git_url, "html_url": html_url,
                 "download_url": f"{self.url}/raw/{full}/{ref}/{path}",
                 "_links": {"self": url, "git": git_url, "html": html_url}}
        if inline and len(data) <= MAX_INLINE:
            b64 = base64.b64encode(data).decode()
            entry.update(encoding="base64", content="\n".join(b64[i:i + 60] for i in range(0, len(b64), 60)) + "\n")
        elif inline:
            entry.update(encoding="none", content="")
        return entry

    def _search(self, seen: Seen, path: str, params: dict[str, str]) -> Response:
        q = params.get("q", "")
        if not q.strip():
            return self._reply(422, self._invalid("Search", "q", "missing"), "search")
        terms, quals = _query(q)
        repos = [r for key, r in self.repos.items() if not quals.get("repo") or key in quals["repo"]]
        if path == "/search/issues":
            items = [self._public(i) | {"score": 1.0} for r in repos for i in r["issues"] if self._issue_hit(
                i, terms, quals)]
            items.sort(key=lambda i: i["created_at"], reverse=True)
        else:
            items = [self._code_hit(r, p, d) for r in repos for p, d in
                     sorted(r["files"].get(r["json"]["default_branch"], {}).items()) if self._code_match(
                p, d, terms, quals)]
        return self._paged(seen, params, items, {"total_count": len(items), "incomplete_results": False}, "search")

    @staticmethod
    def _issue_hit(issue: dict[str, Any], terms: list[str], quals: dict[str, list[str]]) -> bool:
        states = quals.get("state", []) + [v for v in quals.get("is", []) if v in ("open", "closed")]
        if states and issue["state"] not in states:
            return False
        if "pr" in quals.get("is", []) + quals.get("type", []):
            return False
        if (authors := quals.get("author")) and issue["user"]["login"].lower() not in authors:
            return False
        text = f"{issue['title']}\n{issue.get('body') or ''}".lower()
        return all(t in text for t in terms)

    @staticmethod
    def _code_match(path: str, data: bytes, terms: list[str], quals: dict[str, list[str]]) -> bool:
        if b"\0" in data[:8000]:
            return False
        for language in quals.get("language", []):
            if not path.lower().endswith(_LANGUAGES.get(language, (f".{language}",))):
                return False
        if any(p.strip("/") not in path.lower() for p in quals.get("path", [])):
            return False
        text = data.decode("utf-8", "replace").lower() + "\n" + path.lower()
        return all(t in text for t in terms)

    def _code_hit(self, repo: dict[str, Any], path: str, data: bytes) -> dict[str, Any]:
        item = self._file(repo, repo["json"]["default_branch"], path, data, inline=False)
        keys = shape("search-code.200.json", self.testdata)["items"][0]["repository"].keys()
        minimal = {k: copy.deepcopy(repo["json"][k]) for k in keys if k in repo["json"]}
        return {k: item[k] for k in ("name", "path", "sha", "url", "git_url", "html_url")} | {
            "repository": minimal, "score": 1.0}

    def _rate_limit(self) -> Response:
        body = shape("rate-limit.200.json", self.testdata)
        for name, limit in self.limits.items():
            body["resources"][name] = {"limit": limit["limit"], "used": limit["used"],
                                       "remaining": max(0, limit["limit"] - limit["used"]), "reset": limit["reset"]}
        body["rate"] = body["resources"]["core"]
        return self._reply(200, body, count=False)  # GET /rate_limit does not count against the limit

    def _access_token(self, seen: Seen, installation_id: int) -> Response:
        import jwt

        app = self.apps.get(installation_id)
        scheme, _, value = seen.headers.get("authorization", "").partition(" ")
        if app is None:
            return self._fail(404, "Not Found")
        try:
            claims = jwt.decode(value, app["public_key"], algorithms=["RS256"]) if scheme.lower() == "bearer" else {}
        except jwt.PyJWTError:
            claims = {}
        if str(claims.get("iss")) != str(app["app_id"]):
            return self._fail(401, "A JSON web token could not be decoded")
        token = "ghs_" + secrets.token_hex(18)
        self.installation_tokens[token] = f"{app['slug']}[bot]"
        expires = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._reply(201, {"token": token, "expires_at": expires, "repository_selection": "all",
                                 "permissions": {"issues": "write", "contents": "read", "metadata": "read"}})

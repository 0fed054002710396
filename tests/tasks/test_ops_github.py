"""GitHub operations through the real PyGithub against a stateful fake GitHub API on loopback.

The operations are called directly (plan / run / verify), not through the guard: these tests pin what the guard
relies on, above all that a run repeated under the same key after a lost answer opens no second issue.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from urllib.parse import parse_qs, urlsplit

import github
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prefect.testing.standard_test_suites import BlockStandardTestSuite

import tasks.ops.github as gh_ops  # registers the github.* operations
from blocks.errors import (
    AuthFailed, ConfigError, InputError, InvalidRequest, MalformedResponse, NotFound, ProviderTimeout, RateLimited,
    TransientError,
)
from blocks.github import GitHubConnection
from tasks.ops.base import REGISTRY, Connections, parse_input
from tests.conftest import shared_testdata
from tests.fakes import FakeGitHub, Fault
from tests.fakes.github_server import shape

REPO = "octo/app"
CREATE, COMMENT = REGISTRY["github.create_issue"], REGISTRY["github.comment_issue"]
SEARCH_CODE, SEARCH_ISSUES, GET_FILE = (REGISTRY[f"github.{n}"] for n in ("search_code", "search_issues", "get_file"))


@pytest.fixture(scope="module")
def server():
    with FakeGitHub() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    server.add_repo(REPO)
    return server


def connection(fake: FakeGitHub, **options) -> GitHubConnection:
    options = {"token": fake.token, **options}
    return GitHubConnection(base_url=fake.url, timeout=1, seconds_between_requests=0, seconds_between_writes=0,
                            **options)


@pytest.fixture
def conns(fake) -> Connections:
    return Connections(github=connection(fake))


def issue_input(**fields):
    return parse_input(CREATE, {"repo": REPO, "title": "Deploy failed on staging", "body": "Logs attached.",
                                "labels": ["bug"], "assignees": ["octocat"], **fields})


def sent(fake: FakeGitHub, method: str = "POST"):
    return [s for s in fake.requests if s.method == method]


def filled(plan_json: dict, key: str) -> dict:
    return json.loads(json.dumps(plan_json).replace(gh_ops.KEY_PLACEHOLDER, key))


# --- the operations --------------------------------------------------------------------------------------------


def test_create_issue_plan_is_the_exact_request_and_changes_nothing(fake, conns):
    inp = issue_input()
    plan = CREATE.plan(conns, inp)
    assert fake.posts() == [] and fake.issues(REPO) == []
    assert plan.mutating and plan.target == f"github:{REPO}"
    assert plan.facts["repo"] == REPO and plan.facts["owner"] == "octo"
    assert plan.request == {"method": "POST", "path": f"/repos/{REPO}/issues", "json": {
        "title": "Deploy failed on staging", "body": f"Logs attached.\n\n{gh_ops.marker(gh_ops.KEY_PLACEHOLDER)}",
        "labels": ["bug"], "assignees": ["octocat"]}}
    assert "Authorization" not in json.dumps(plan.request) and fake.token not in plan.model_dump_json()

    result = CREATE.run(conns, inp, "key-1")
    [post] = fake.posts()
    assert (post.path, post.body) == (plan.request["path"], filled(plan.request["json"], "key-1"))
    json.dumps(result)  # JSON-serialisable
    assert result["number"] == 1 and result["existing"] is False and result["html_url"].endswith("/issues/1")
    assert result["url"] == f"{fake.url}/repos/{REPO}/issues/1" and result["id"]
    assert CREATE.verify(conns, inp, result)["verified"] is True
    [stored] = fake.issues(REPO)
    assert stored["body"].endswith("<!-- devmesh:idempotency-key=key-1 -->")
    assert [label["name"] for label in stored["labels"]] == ["bug"]


def test_create_issue_after_a_lost_502_is_not_duplicated(fake, conns):
    inp = issue_input()
    fake.script_writes(Fault.after(502))
    with pytest.raises(TransientError, match="502"):
        CREATE.run(conns, inp, "key-1")
    assert len(fake.issues(REPO)) == 1  # GitHub did it; the answer was lost

    again = CREATE.run(conns, inp, "key-1")  # what the guard does next
    assert again["existing"] is True and again["number"] == 1
    assert len(fake.issues(REPO)) == 1 and len(fake.posts()) == 1

    other = CREATE.run(conns, inp, "key-2")
    assert other["existing"] is False and other["number"] == 2 and len(fake.issues(REPO)) == 2


def test_create_issue_after_a_timeout_is_not_duplicated(fake, conns):
    inp = issue_input()
    fake.script_writes(Fault.slow(1.3))  # the connection times out after 1 s; GitHub finishes the write later
    with pytest.raises(ProviderTimeout):
        CREATE.run(conns, inp, "key-slow")
    deadline = time.monotonic() + 3
    while not fake.issues(REPO) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert CREATE.run(conns, inp, "key-slow")["existing"] is True
    assert len(fake.issues(REPO)) == 1


def test_the_marker_is_found_among_older_pages_and_other_authors_are_ignored(fake, conns):
    fake.add_issue(REPO, "someone else's", gh_ops.with_marker("copy", "key-x"), user="mallory")
    for n in range(150):  # the key's issue is not on the first page of 100
        fake.add_issue(REPO, f"older {n}") if n else fake.add_issue(REPO, "mine", gh_ops.with_marker("", "key-x"))
    result = CREATE.run(conns, issue_input(), "key-x")
    assert result["existing"] is True and result["title"] == "mine"
    listing = [parse_qs(urlsplit(s.path).query) for s in sent(fake, "GET") if urlsplit(s.path).path.endswith(
        "/issues")]
    assert listing[0] == {"state": ["all"], "sort": ["created"], "direction": ["desc"], "creator": ["devmesh-bot"],
                          "per_page": ["100"]}
    assert len(listing) == 2 and fake.posts() == []


def test_pygithub_does_not_retry_a_post(fake, conns):
    fake.script_writes(Fault.error(502))
    with pytest.raises(TransientError):
        CREATE.run(conns, issue_input(), "key-1")
    assert len(fake.posts()) == 1 and fake.issues(REPO) == []
    assert conns.github.client().requester.kwargs["retry"] is None


def test_any_idempotency_key_is_safe_in_the_marker(fake, conns):
    with pytest.raises(InputError, match="idempotency key"):
        CREATE.run(conns, issue_input(), "")
    assert fake.requests == []
    odd = "deploy 2024/01 -->"
    assert CREATE.run(conns, issue_input(), odd)["existing"] is False
    assert CREATE.run(conns, issue_input(), odd)["existing"] is True
    body = fake.issues(REPO)[0]["body"]
    digest = hashlib.sha256(odd.encode()).hexdigest()
    assert body.count("-->") == 1 and body.endswith(f"idempotency-key=sha256-{digest} -->")


def test_verify_notices_an_issue_that_is_not_what_was_sent(fake, conns):
    inp = issue_input()
    result = CREATE.run(conns, inp, "key-1")
    fake.edit_issue(REPO, result["number"], title="something else")
    with pytest.raises(MalformedResponse, match="title and body"):
        CREATE.verify(conns, inp, result)


def test_comment_issue_plan_run_verify_and_no_duplicate_after_a_lost_answer(fake, conns):
    fake.add_issue(REPO, "Flaky test", "It fails on Tuesdays.")
    for n in range(130):  # the new comment lands on the second page: the scan reads newest first
        fake.add_comment(REPO, 1, f"comment {n}", user="someone")
    inp = parse_input(COMMENT, {"repo": REPO, "issue_number": 1, "body": "Fixed in #2."})
    plan = COMMENT.plan(conns, inp)
    assert fake.posts() == []
    assert plan.target == f"github:{REPO}#1" and plan.facts["issue_title"] == "Flaky test"
    assert plan.request == {"method": "POST", "path": f"/repos/{REPO}/issues/1/comments",
                            "json": {"body": f"Fixed in #2.\n\n{gh_ops.marker(gh_ops.KEY_PLACEHOLDER)}"}}

    fake.script_writes(Fault.after(502))
    with pytest.raises(TransientError):
        COMMENT.run(conns, inp, "key-c")
    result = COMMENT.run(conns, inp, "key-c")
    assert result["existing"] is True and len(fake.comments(REPO, 1)) == 131 and len(fake.posts()) == 1
    assert fake.posts()[0].body == filled(plan.request["json"], "key-c")
    assert COMMENT.verify(conns, inp, result)["verified"] is True
    assert COMMENT.run(conns, inp, "key-d")["existing"] is False and len(fake.comments(REPO, 1)) == 132
    json.dumps(result)


def test_comment_on_a_missing_issue_is_not_found(fake, conns):
    inp = parse_input(COMMENT, {"repo": REPO, "issue_number": 7, "body": "hello"})
    with pytest.raises(NotFound):
        COMMENT.plan(conns, inp)
    with pytest.raises(NotFound):
        COMMENT.run(conns, inp, "key-1")
    assert fake.posts() == []


def test_search_code_plan_is_the_request(fake, conns):
    fake.add_file(REPO, "src/deploy.py", "def rollout():\n    return 'canary'\n")
    fake.add_file(REPO, "docs/deploy.md", "rollout the canary")
    fake.add_repo("octo/other")
    fake.add_file("octo/other", "x.py", "canary")
    inp = parse_input(SEARCH_CODE, {"query": "canary", "repo": REPO, "language": "python"})
    plan = SEARCH_CODE.plan(conns, inp)
    assert not plan.mutating and fake.requests == []
    result = SEARCH_CODE.run(conns, inp, "")
    [get] = fake.requests
    query = {k: v[0] for k, v in parse_qs(urlsplit(get.path).query).items()}
    assert (urlsplit(get.path).path, query) == (plan.request["path"], {k: str(v) for k, v in
                                                                       plan.request["params"].items()})
    assert query["q"] == "canary repo:octo/app language:python"
    assert result["total_count"] == 1 and [i["path"] for i in result["items"]] == ["src/deploy.py"]
    assert result["items"][0]["repo"] == REPO
    json.dumps(result)


def test_search_issues(fake, conns):
    fake.add_issue(REPO, "Deploy fails", "timeout in rollout")
    fake.add_issue(REPO, "Old deploy bug", "rollout", state="closed")
    fake.add_issue(REPO, "Unrelated", "nothing")
    inp = parse_input(SEARCH_ISSUES, {"query": "rollout", "repo": REPO, "state": "open", "limit": 5})
    assert SEARCH_ISSUES.plan(conns, inp).request["params"]["q"] == "rollout repo:octo/app state:open"
    result = SEARCH_ISSUES.run(conns, inp, "")
    assert [(i["number"], i["title"], i["repo"]) for i in result["items"]] == [(1, "Deploy fails", REPO)]
    assert result["items"][0]["pull_request"] is False and len(fake.requests) == 1
    json.dumps(result)


def test_get_file(fake, conns):
    fake.add_file(REPO, "deploy/values.yaml", "replicas: 3\nimage: api:1.2\n")
    fake.add_file(REPO, "deploy/values.yaml", "replicas: 1\n", ref="v1.0")
    inp = parse_input(GET_FILE, {"repo": REPO, "path": "/deploy/values.yaml"})
    plan = GET_FILE.plan(conns, inp)
    assert plan.request["path"] == f"/repos/{REPO}/contents/deploy/values.yaml" and fake.requests == []
    result = GET_FILE.run(conns, inp, "")
    assert result["text"] == "replicas: 3\nimage: api:1.2\n" and result["size"] == 27
    assert urlsplit(fake.requests[-1].path).path == plan.request["path"]
    tagged = parse_input(GET_FILE, {"repo": REPO, "path": "deploy/values.yaml", "ref": "v1.0"})
    assert GET_FILE.run(conns, tagged, "")["text"] == "replicas: 1\n"
    assert parse_qs(urlsplit(fake.requests[-1].path).query) == {"ref": ["v1.0"]}


@pytest.mark.parametrize("path, data, message", [
    ("logo.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "binary"),
    ("latin1.txt", "café".encode("latin-1"), "not UTF-8"),
    ("big.log", b"x" * (1_048_576 + 1), "at most"),
    ("deploy", None, "directory"),
])
def test_get_file_refuses_what_is_not_a_small_text_file(fake, conns, path, data, message):
    fake.add_file(REPO, path if data is not None else "deploy/values.yaml", data or b"a: 1\n")
    with pytest.raises(InputError, match=message):
        GET_FILE.run(conns, parse_input(GET_FILE, {"repo": REPO, "path": path}), "")


# --- errors ----------------------------------------------------------------------------------------------------


def test_secondary_rate_limit_is_rate_limited_with_retry_after(fake, conns):
    inp = parse_input(SEARCH_CODE, {"query": "canary"})
    fake.script(Fault.error(403, headers={"retry-after": "7"}))
    with pytest.raises(RateLimited, match="secondary rate limit") as caught:
        SEARCH_CODE.run(conns, inp, "")
    assert caught.value.retry_after == 7

    fake.script(Fault.error(403))  # no retry-after, requests remaining: wait a minute (GitHub's rule)
    with pytest.raises(RateLimited) as caught:
        SEARCH_CODE.run(conns, inp, "")
    assert caught.value.retry_after == 60

    fake.script_writes(Fault.error(429, headers={"retry-after": "3"}))
    with pytest.raises(RateLimited) as caught:
        CREATE.run(conns, issue_input(), "key-1")
    assert caught.value.retry_after == 3 and fake.issues(REPO) == []


def test_primary_rate_limit_waits_until_the_reset(fake, conns):
    reset = int(time.time()) + 120
    fake.script(Fault.error(403, code="primary", headers={"x-ratelimit-reset": str(reset)}))
    with pytest.raises(RateLimited, match="API rate limit exceeded") as caught:
        GET_FILE.run(conns, parse_input(GET_FILE, {"repo": REPO, "path": "a.txt"}), "")
    assert 100 < caught.value.retry_after <= 120


def test_observed_rate_limit_messages_are_recognised_by_their_text(fake, conns):
    cases = json.loads(shared_testdata("github-api", "secondary-rate-limit.observed.json").read_text())["cases"]
    messages = [c.get("body", {}).get("message") or c.get("body_message") for c in cases]
    messages += [m.split(" // ")[0] for c in cases for m in (c.get("primary_message"), c.get("secondary_message")) if m]
    messages = [m for m in messages if m]
    assert len(messages) >= 6
    for message in messages:
        # X-RateLimit-Remaining is not 0 on a secondary limit (KnpLabs/php-github-api#1072)
        fake.script(Fault.error(403, message, headers={"X-RateLimit-Remaining": "14",
                                                       "X-RateLimit-Resource": "search"}))
        with pytest.raises(RateLimited):
            SEARCH_ISSUES.run(conns, parse_input(SEARCH_ISSUES, {"query": "x"}), "")


def test_validation_failed_names_the_field(fake, conns):
    fake.script_writes(Fault.error(422))
    with pytest.raises(InvalidRequest, match=r"Validation Failed \(Issue\.title missing_field\)"):
        CREATE.run(conns, issue_input(), "key-1")


def test_bad_token_is_auth_failed_and_never_repeated(fake):
    secret = "ghp_wrongSECRET0123456789abcdef"
    conns = Connections(github=connection(fake, token=secret))
    errors = []
    for call in (lambda: CREATE.plan(conns, issue_input()), lambda: CREATE.run(conns, issue_input(), "k"),
                 lambda: SEARCH_CODE.run(conns, parse_input(SEARCH_CODE, {"query": "x"}), "")):
        with pytest.raises(AuthFailed, match="Bad credentials") as caught:
            call()
        errors.append(caught.value)
    # a proxy or vendor that echoes the token: the message is scrubbed
    fake.token = secret
    fake.script(Fault.error(403, f"token {secret} lacks the repo scope"))
    with pytest.raises(AuthFailed, match=r"token \*\*\* lacks") as caught:
        SEARCH_CODE.run(conns, parse_input(SEARCH_CODE, {"query": "x"}), "")
    errors.append(caught.value)
    for error in errors:
        assert secret not in "".join(traceback.format_exception(error)) and secret not in repr(error)
    assert fake.posts() == []


def test_unknown_repository_is_not_found(fake, conns):
    inp = issue_input(repo="octo/missing")
    with pytest.raises(NotFound):
        CREATE.plan(conns, inp)
    with pytest.raises(NotFound):
        CREATE.run(conns, inp, "key-1")
    with pytest.raises(NotFound):
        GET_FILE.run(conns, parse_input(GET_FILE, {"repo": "octo/missing", "path": "a"}), "")
    with pytest.raises(NotFound):
        GET_FILE.run(conns, parse_input(GET_FILE, {"repo": REPO, "path": "nope.txt"}), "")


def test_server_errors_broken_bodies_and_dead_servers(fake, conns):
    inp = parse_input(SEARCH_CODE, {"query": "x"})
    fake.script(Fault.error(503))
    with pytest.raises(TransientError, match="503"):
        SEARCH_CODE.run(conns, inp, "")
    fake.script(Fault.malformed())
    with pytest.raises(MalformedResponse):
        SEARCH_CODE.run(conns, inp, "")
    dead = Connections(github=GitHubConnection(base_url="http://127.0.0.1:9", token="t", seconds_between_requests=0))
    with pytest.raises(TransientError, match="connection failed"):
        SEARCH_CODE.run(dead, inp, "")


def test_archived_repository_or_disabled_issues_are_refused_at_plan_time(fake, conns):
    fake.add_repo("octo/old", archived=True)
    fake.add_repo("octo/wiki", has_issues=False)
    with pytest.raises(InvalidRequest, match="archived"):
        CREATE.plan(conns, issue_input(repo="octo/old"))
    with pytest.raises(InvalidRequest, match="issues disabled"):
        CREATE.plan(conns, issue_input(repo="octo/wiki"))


@pytest.mark.parametrize("op, arguments, field", [
    (CREATE, {"repo": "octo", "title": "t"}, "repo"),
    (CREATE, {"repo": "octo/app/x", "title": "t"}, "repo"),
    (CREATE, {"repo": "-octo/app", "title": "t"}, "repo"),
    (CREATE, {"repo": "octo/..", "title": "t"}, "repo"),
    (CREATE, {"repo": "octo app/x", "title": "t"}, "repo"),
    (CREATE, {"repo": REPO, "title": ""}, "title"),
    (CREATE, {"repo": REPO, "title": "   "}, "title"),
    (CREATE, {"repo": REPO, "title": "t" * 257}, "title"),
    (CREATE, {"repo": REPO, "title": "t", "body": "b" * 65_536}, "body"),
    (CREATE, {"repo": REPO, "title": "t", "assignees": ["not a login"]}, "assignees"),
    (CREATE, {"repo": REPO, "title": "t", "milestone": 1}, "milestone"),
    (COMMENT, {"repo": REPO, "issue_number": 0, "body": "b"}, "issue_number"),
    (COMMENT, {"repo": REPO, "issue_number": 1, "body": ""}, "body"),
    (SEARCH_CODE, {"query": "x org:other"}, "query"),  # repo: becomes the repo field (policy-judged); org: cannot
    (SEARCH_ISSUES, {"query": "x", "state": "all"}, "state"),
    (GET_FILE, {"repo": REPO, "path": "../etc/passwd"}, "path"),
    (GET_FILE, {"repo": REPO, "path": "a", "ref": "main; rm"}, "ref"),
])
def test_invalid_input_is_an_input_error_naming_the_field(op, arguments, field):
    with pytest.raises(InputError, match=field):
        parse_input(op, arguments)


# --- the block -------------------------------------------------------------------------------------------------


def test_the_token_stays_out_of_repr_and_str(fake):
    block = connection(fake, token="ghp_CANARY_never_print_me")
    assert "CANARY" not in repr(block) and "CANARY" not in str(block)
    assert Connections(github=block).secrets() == ["ghp_CANARY_never_print_me"]


@pytest.mark.parametrize("options, message", [
    ({}, "no credentials"),
    ({"app_id": 1, "installation_id": 2}, "needs app_id, private_key and installation_id"),
    ({"token": "t", "app_id": 1}, "not both"),
    ({"app_id": 1, "private_key": "-----BEGIN RSA PRIVATE KEY-----\nnope", "installation_id": 2}, "not a usable"),
])
def test_missing_or_mixed_credentials_are_a_config_error(options, message):
    with pytest.raises(ConfigError, match=message):
        GitHubConnection(**options).client()
    with pytest.raises(ConfigError):
        CREATE.plan(Connections(), issue_input())


def test_github_app_installation_auth(fake):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    fake.add_app(app_id=42, public_key_pem=public, installation_id=7)
    conns = Connections(github=connection(fake, token=None, app_id=42, private_key=pem.replace("\n", "\\n"),
                                          installation_id=7))
    first = CREATE.run(conns, issue_input(), "key-app")
    assert CREATE.run(conns, issue_input(), "key-app") == {**first, "existing": True}
    [issue] = fake.issues(REPO)
    assert issue["user"]["login"] == "devmesh-app[bot]"
    assert not any(urlsplit(s.path).path == "/user" for s in fake.requests)
    assert pem not in json.dumps(first) and len(Connections(github=conns.github).secrets()) == 1


class TestGitHubConnectionStandards(BlockStandardTestSuite):
    test_has_a_valid_image = None  # no logo: the check downloads it, and tests reach no network

    @pytest.fixture
    def block(self):
        return GitHubConnection


# --- the fake follows GitHub's shapes --------------------------------------------------------------------------


def test_fake_answers_in_githubs_documented_shapes(fake, conns):
    testdata = shared_testdata("github-api")
    result = CREATE.run(conns, issue_input(), "key-1")
    issue = fake.issues(REPO)[0]
    documented = json.loads((testdata / "create-issue.201.json").read_text())
    assert set(documented) - {"pull_request"} <= set(issue)
    fake.add_comment(REPO, result["number"], "me too")
    comment = fake.comments(REPO, result["number"])[0]
    assert set(json.loads((testdata / "create-issue-comment.201.json").read_text())) == set(comment)
    assert set(json.loads((testdata / "get-repo.200.json").read_text())) - {
        "parent", "source", "template_repository", "organization"} <= set(fake.repos[REPO]["json"])

    client = conns.github.client()
    with pytest.raises(github.GithubException) as caught:  # GitHub's own check, reached past our input model
        client.get_repo(REPO).create_issue(title="")
    documented = json.loads((testdata / "validation-failed.422.http.json").read_text())
    assert (caught.value.status, caught.value.data) == (422, documented["body"])
    fake.script(Fault.error(403))
    with pytest.raises(github.RateLimitExceededException) as caught:
        client.get_repo(REPO).get_issue(1).title
    documented = json.loads((testdata / "secondary-rate-limit.403.http.json").read_text())
    assert caught.value.data == documented["body"]
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-used", "x-ratelimit-reset",
            "x-ratelimit-resource"} <= set(caught.value.headers)


def test_fake_stands_alone_without_shared_testdata(tmp_path):
    with FakeGitHub(testdata=tmp_path / "absent") as fake:
        assert fake.testdata is None
        fake.add_repo(REPO)
        fake.add_file(REPO, "README.md", "canary")
        conns = Connections(github=connection(fake))
        result = CREATE.run(conns, issue_input(), "key-1")
        assert CREATE.verify(conns, issue_input(), result)["verified"] is True
        assert SEARCH_CODE.run(conns, parse_input(SEARCH_CODE, {"query": "canary"}), "")["total_count"] == 1
        fake.script_writes(Fault.error(422))
        with pytest.raises(InvalidRequest, match="title"):
            CREATE.run(conns, issue_input(), "key-2")
        fake.script(Fault.error(403, headers={"retry-after": "5"}))
        with pytest.raises(RateLimited):
            SEARCH_CODE.run(conns, parse_input(SEARCH_CODE, {"query": "canary"}), "")
    assert shape("validation-failed.422.http.json", None)["body"]["errors"][0]["field"] == "title"

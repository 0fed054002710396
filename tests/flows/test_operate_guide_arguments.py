"""Tool arguments as the Developer Mesh guide writes them: `repository` for `repo`, GitHub code search as `q` with
repo:/language: qualifiers. The guard judges the repository the qualifier names (with a policy that judges reads:
allow_read_only=False); results keep GitHub's shape."""

from __future__ import annotations

import pytest

from blocks.errors import InputError, OperationDenied
from flows.operate import OperateRequest, run_operation
from tasks.audit import read_audit
from blocks.policy import OperationPolicy
from blocks.postgres import PgVectorStore
from tests.fakes.fixtures import github_connections


@pytest.fixture
def github(github):
    """The shared fake GitHub with a file in each repository."""
    github.add_file("octo/app", "src/main.py", "# TODO: retry the payments call\nprint('hi')\n")
    github.add_file("evil/app", "steal.py", "# TODO: exfiltrate\n")
    return github


READS_JUDGED = OperationPolicy(operations=["github.*"], github_repos=["octo/*"], max_issues_per_hour=3,
                               allow_read_only=False)


def run(settings, fake, tenant, operation, arguments):
    request = OperateRequest(operation=operation, arguments=arguments, tenant=tenant, dry_run=False,
                             actor={"agent": "guide"})
    return run_operation(request, settings, connections=github_connections(fake), policy=READS_JUDGED)


def test_code_search_as_q_with_qualifiers_is_scoped_and_judged_by_the_named_repo(settings, github, tenant):
    out = run(settings, github, tenant, "github.search_code", {"q": "TODO repo:octo/app language:python"})
    assert out["status"] == "succeeded" and out["target"] == "github:octo/app"
    items = out["result"]["items"]
    assert [(i["path"], i["repository"]["full_name"]) for i in items] == [("src/main.py", "octo/app")]
    assert all(i["html_url"] for i in items)
    sent = [r for r in github.requests if r.path.startswith("/search/code")][-1].path
    assert "repo%3Aocto%2Fapp" in sent and "language%3Apython" in sent
    with pytest.raises(OperationDenied, match="github_repos: repository 'evil/app'"):
        run(settings, github, tenant, "github.search_code", {"q": "TODO repo:evil/app"})
    assert [r["target"] for r in read_audit(PgVectorStore.from_settings(settings).pool(), tenant=tenant)][-1] == "github:evil/app"
    assert not [r for r in github.requests if "evil" in r.path and r.path.startswith("/search")]


@pytest.mark.parametrize("arguments, message", [
    ({"q": "TODO repo:octo/app repo:evil/app"}, "names repo twice"),
    ({"q": "TODO org:evil"}, "org:/user:/owner:"),
    ({"q": "TODO -repo:octo/app"}, "-repo: cannot be a field"),
    ({"q": "TODO", "query": "x"}, "query or q, not both"),
    ({"q": "TODO repo:octo/app", "repo": "evil/app"}, "names repo twice"),
])
def test_qualifiers_that_would_blur_the_target_are_refused(settings, github, tenant, arguments, message):
    with pytest.raises(InputError, match=message):
        run(settings, github, tenant, "github.search_code", arguments)


def test_create_issue_with_the_guides_repository_field(settings, github, tenant):
    out = run(settings, github, tenant, "github.create_issue", {
        "repository": "octo/app", "title": "Track TODOs", "body": "found by search", "labels": [], "assignees": []})
    assert out["status"] == "succeeded" and out["result"]["html_url"].endswith("/octo/app/issues/1")
    assert github.issues("octo/app")[0]["title"] == "Track TODOs"
    with pytest.raises(InputError, match="repo or repository, not both"):
        run(settings, github, tenant, "github.create_issue", {"repository": "octo/app", "repo": "octo/app",
                                                              "title": "x"})
    with pytest.raises(OperationDenied, match="github_repos"):
        run(settings, github, tenant, "github.create_issue", {"repository": "evil/app", "title": "x"})

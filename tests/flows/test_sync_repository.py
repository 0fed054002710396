"""The sync-repository flow's work (run_sync, called directly) against FakeGitHubRepo through the real PyGithub."""

from __future__ import annotations

import pytest

from blocks.errors import NotFound, TransientError
from blocks.github import GitHubConnection
from flows.search import search_now
from flows.sync_repository import run_sync
from tasks.search import SearchRequest
from tests.fakes import Fault
from tests.fakes.github_repo_server import FakeGitHubRepo

REPO = "octo/app"
FILES = {
    "src/app.py": "def deploy(target):\n    return f'rolling deploy to {target}'\n",
    "src/util.py": "def retry_budget():\n    return 3\n",
    "docs/guide.md": "# Guide\n\nThe canary stage waits ten minutes.\n",
    "README.md": "# App\n\nA service that deploys itself.\n",
    "node_modules/left-pad/index.js": "module.exports = leftPad\n",
    "img/logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00",
}


@pytest.fixture(scope="module")
def server():
    with FakeGitHubRepo() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    server.add_repo(REPO)
    return server


@pytest.fixture
def github(fake) -> GitHubConnection:
    return GitHubConnection(base_url=fake.url, token=fake.token, timeout=5, seconds_between_requests=0,
                            seconds_between_writes=0)


def _ids(settings, tenant: str, query: str) -> list[str]:
    hits = search_now(SearchRequest(query=query, mode="keyword", tenant=tenant, limit=50), settings)
    return sorted({h.document_id for h in hits})


def _stored(pool, tenant: str) -> dict[str, dict]:
    with pool.connection() as conn:
        return dict(conn.execute("SELECT document_id, metadata FROM documents WHERE tenant_id = %s",
                                 [tenant]).fetchall())


def _contents_read(fake) -> list[str]:
    return sorted(s.path.split("?")[0].split("/contents/", 1)[1] for s in fake.requests if "/contents/" in s.path)


def test_first_sync_everything_second_nothing_third_only_the_changes(settings, pool, tenant, fake, github):
    c1 = fake.commit(REPO, FILES)
    fake.add_issue(REPO, "Deploys time out", "The rollout stalls behind the load balancer.", user="alice")
    fake.add_pull(REPO, "Shorten the canary stage", "Five minutes are enough.", merged=True)
    fake.add_comment(REPO, 1, "Raising the health check grace period helped.", user="bob")

    first = run_sync(REPO, tenant, settings=settings, github=github)
    assert first["code"] == {"mode": "full", "from": None, "to": c1, "fetched": 4, "removed": 0}
    assert first["issues"] | {"since": None} == {"since": None, "issues": 1, "pull_requests": 1, "comments": 1}
    assert first["documents_written"] == 7 and first["texts_embedded"] > 0
    assert {s.split(":")[0] for s in first["skipped"]} == {"node_modules/left-pad/index.js", "img/logo.png"}
    stored = _stored(pool, tenant)
    assert stored[f"github:{REPO}:src/app.py"] | {"sha": None} == {
        "source": "github", "repository": REPO, "kind": "code", "path": "src/app.py", "ref": "main", "sha": None}
    assert stored[f"github:{REPO}#pull/2"]["merged"] is True
    assert stored[f"github:{REPO}#issue/1/comment/5001"]["author"] == "bob"
    assert _ids(settings, tenant, "rollout stalls") == [f"github:{REPO}#issue/1"]
    assert _ids(settings, tenant, "retry_budget") == [f"github:{REPO}:src/util.py"]

    fake.requests.clear()
    second = run_sync(REPO, tenant, settings=settings, github=github)
    assert second["code"]["mode"] == "unchanged"
    assert second["embedding_calls"] == 0 and second["texts_embedded"] == 0
    assert second["documents_written"] == 0 and second["documents_deleted"] == 0
    assert _contents_read(fake) == []

    c2 = fake.commit(REPO, {"src/app.py": "def deploy(target):\n    return f'blue green deploy to {target}'\n",
                            "src/util.py": None, "docs/guide.md": None,
                            "docs/manual.md": FILES["docs/guide.md"]})  # a rename
    fake.add_issue(REPO, "Metrics endpoint returns 500", "Prometheus scrape fails since Tuesday.")
    fake.requests.clear()
    third = run_sync(REPO, tenant, settings=settings, github=github)
    assert third["code"] == {"mode": "incremental", "from": c1, "to": c2, "fetched": 2, "removed": 2}
    assert _contents_read(fake) == ["docs/manual.md", "src/app.py"]
    assert third["documents_written"] == 3  # app.py, manual.md (same text, new id), the new issue
    assert _ids(settings, tenant, "prometheus scrape") == [f"github:{REPO}#issue/3"]
    assert _ids(settings, tenant, "rolling") == []
    assert _ids(settings, tenant, "retry_budget") == []
    assert _ids(settings, tenant, "waits") == [f"github:{REPO}:docs/manual.md"]


def test_force_push_falls_back_to_the_whole_tree(settings, pool, tenant, fake, github):
    c1 = fake.commit(REPO, {"a.py": "def alpha():\n    pass\n", "b.py": "def beta():\n    pass\n"})
    c2 = fake.commit(REPO, {"c.py": "def gamma_ray():\n    pass\n"})
    run_sync(REPO, tenant, settings=settings, github=github, include_issues=False)
    assert f"github:{REPO}:c.py" in _stored(pool, tenant)
    c3 = fake.commit(REPO, {"b.py": "def beta_two():\n    pass\n"}, parent=c1)  # main now diverges from c2
    fake.requests.clear()
    summary = run_sync(REPO, tenant, settings=settings, github=github, include_issues=False)
    assert summary["code"] == {"mode": "full", "from": c2, "to": c3, "fetched": 1, "removed": 1}
    assert _contents_read(fake) == ["b.py"]  # a.py's blob is the stored one
    assert sorted(_stored(pool, tenant)) == [f"github:{REPO}:a.py", f"github:{REPO}:b.py"]
    assert "issues" not in summary


def test_max_files_bounds_the_first_sync(settings, pool, tenant, fake, github):
    fake.commit(REPO, {f"m{i}.py": f"def f{i}():\n    pass\n" for i in range(5)})
    summary = run_sync(REPO, tenant, settings=settings, github=github, include_issues=False, max_files=3)
    assert summary["code"]["fetched"] == 3
    assert sum("over max_files" in s for s in summary["skipped"]) == 2


def test_an_empty_repository_syncs_its_issues(settings, pool, tenant, fake, github):
    fake.add_issue(REPO, "First issue", "Nothing pushed yet.")
    summary = run_sync(REPO, tenant, settings=settings, github=github)
    assert summary["code"]["mode"] == "empty" and summary["issues"]["issues"] == 1
    assert list(_stored(pool, tenant)) == [f"github:{REPO}#issue/1"]


def test_github_failures_come_out_as_devmesh_errors_and_move_no_cursor(settings, pool, tenant, fake, github):
    """The flow catches only devmesh's errors: GitHub's answers come out of it mapped (blocks.vendor_errors), with
    their status and retryability, and without the token."""
    with pytest.raises(NotFound) as missing:
        run_sync("octo/missing", tenant, settings=settings, github=github)
    assert missing.value.status == 404 and str(missing.value).startswith("github sync: HTTP 404")
    fake.commit(REPO, {"src/app.py": "def deploy():\n    return 1\n"})
    fake.script(Fault.error(503, f"upstream failed for {fake.token}"))
    with pytest.raises(TransientError) as unavailable:
        run_sync(REPO, tenant, settings=settings, github=github)
    assert unavailable.value.status == 503 and fake.token not in str(unavailable.value)
    assert _stored(pool, tenant) == {}
    assert run_sync(REPO, tenant, settings=settings, github=github)["code"]["fetched"] == 1

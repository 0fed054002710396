"""The github-event flow's work (handle_delivery, called directly): deliveries from webhook_deliveries into the store.

Payloads are GitHub's real examples from ../shared/testdata/github-webhooks when present, plus minimal inline ones
so that the core runs without them. Pushes read files from FakeGitHubRepo through the real PyGithub.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import timedelta

import pytest
from psycopg.types.json import Jsonb

from blocks.errors import InputError
from blocks.github import GitHubConnection
from flows import github_events, sync_repository
from flows.sync_repository import DocumentSink
from flows.github_events import handle_delivery
from flows.search import search_now
from tasks.github_docs import issue_doc
from tasks.search import SearchRequest
from tasks.webhooks import ClaimLost, Lease, claim_processing, get_delivery
from tests.conftest import shared_testdata
from tests.fakes.github_repo_server import FakeGitHubRepo

REPO = "octo/app"


def _issue(number: int = 7, title: str = "Flaky deploy on staging", body: str = "The rollout hangs at 80 percent.",
           state: str = "open") -> dict:
    return {"number": number, "title": title, "body": body, "state": state, "state_reason": None,
            "user": {"login": "alice"}, "labels": [{"name": "bug"}], "html_url": f"https://github.com/{REPO}/issues/7",
            "updated_at": "2024-05-01T10:00:00Z"}


def _deliver(pool, tenant: str, event: str, payload: dict) -> str:
    delivery_id = str(uuid.uuid4())
    with pool.connection() as conn:
        conn.execute("INSERT INTO webhook_deliveries (delivery_id, event, action, repository, tenant_id, payload,"
                     " route, status) VALUES (%s, %s, %s, %s, %s, %s, 'github-discussions', 'received')",
                     [delivery_id, event, payload.get("action"), (payload.get("repository") or {}).get("full_name"),
                      tenant, Jsonb(payload)])
    return delivery_id


def _payload(name: str) -> dict:
    return json.loads(shared_testdata("github-webhooks", name).read_text())


def _ids(settings, tenant: str, query: str) -> list[str]:
    hits = search_now(SearchRequest(query=query, mode="keyword", tenant=tenant, limit=50), settings)
    return [h.document_id for h in hits]


def _docs(pool, tenant: str) -> dict[str, dict]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT document_id, metadata FROM documents WHERE tenant_id = %s", [tenant]).fetchall()
    return dict(rows)


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


# --- issues and comments (inline payloads: no ../shared needed) -----------------------------------------------------

def test_issue_lifecycle_inline(settings, pool, tenant):
    repo = {"full_name": REPO, "default_branch": "main"}
    opened = handle_delivery(_deliver(pool, tenant, "issues", {"action": "opened", "issue": _issue(),
                                                                "repository": repo}), settings)
    assert opened["status"] == "processed" and opened["documents_written"] == 1
    assert _ids(settings, tenant, "rollout hangs") == [f"github:{REPO}#issue/7"]
    meta = _docs(pool, tenant)[f"github:{REPO}#issue/7"]
    assert meta | {"updated_at": None} == {
        "source": "github", "repository": REPO, "kind": "issue", "number": 7, "state": "open", "state_reason": None,
        "title": "Flaky deploy on staging", "author": "alice", "labels": ["bug"],
        "url": f"https://github.com/{REPO}/issues/7", "updated_at": None}

    edited = {"action": "edited", "issue": _issue(body="Pods crashloop after the migration."), "repository": repo}
    handle_delivery(_deliver(pool, tenant, "issues", edited), settings)
    assert _ids(settings, tenant, "rollout hangs") == []
    assert _ids(settings, tenant, "crashloop migration") == [f"github:{REPO}#issue/7"]

    closed = {"action": "closed", "repository": repo,
              "issue": _issue(body="Pods crashloop after the migration.", state="closed") | {
                  "state_reason": "completed"}}
    summary = handle_delivery(_deliver(pool, tenant, "issues", closed), settings)
    assert summary["texts_embedded"] == 0  # same text: only the metadata changed
    assert _docs(pool, tenant)[f"github:{REPO}#issue/7"]["state"] == "closed"
    assert _docs(pool, tenant)[f"github:{REPO}#issue/7"]["state_reason"] == "completed"

    comment = {"id": 99, "body": "Rolling back the migration fixed it.", "user": {"login": "bob"},
               "html_url": "https://github.com/octo/app/issues/7#issuecomment-99", "updated_at": "2024-05-02T00:00:00Z"}
    handle_delivery(_deliver(pool, tenant, "issue_comment", {"action": "created", "issue": _issue(),
                                                             "comment": comment, "repository": repo}), settings)
    cid = f"github:{REPO}#issue/7/comment/99"
    assert _ids(settings, tenant, "rolling back") == [cid]
    assert _docs(pool, tenant)[cid]["author"] == "bob" and _docs(pool, tenant)[cid]["number"] == 7

    deleted = handle_delivery(_deliver(pool, tenant, "issues", {"action": "deleted", "issue": _issue(),
                                                                "repository": repo}), settings)
    assert deleted["documents_deleted"] == 2  # the issue and its comment
    assert _docs(pool, tenant) == {}


def test_a_delivery_processed_twice_does_nothing_the_second_time(settings, pool, tenant):
    delivery = _deliver(pool, tenant, "issues", {"action": "opened", "issue": _issue(),
                                                 "repository": {"full_name": REPO}})
    first = handle_delivery(delivery, settings)
    processed_at = get_delivery(pool, delivery)["processed_at"]
    with pool.connection() as conn:  # were it processed again, this document would come back
        conn.execute("DELETE FROM documents WHERE tenant_id = %s", [tenant])
    second = handle_delivery(delivery, settings)
    assert first["status"] == "processed"
    assert second == {"status": "duplicate", "delivery_id": delivery, "previous_status": "processed"}
    assert _docs(pool, tenant) == {}
    assert get_delivery(pool, delivery)["processed_at"] == processed_at


def test_a_second_run_of_a_delivery_another_run_holds_is_a_duplicate_until_the_lease_passes(settings, pool, tenant):
    """Prefect's triggers dedupe event ids in memory only: an event re-emitted across a server crash can start a
    second run while the first still processes. The claim is a lease: the second run is a duplicate."""
    delivery = _deliver(pool, tenant, "issues", {"action": "opened", "issue": _issue(),
                                                 "repository": {"full_name": REPO}})
    first_run, second_run = str(uuid.uuid4()), str(uuid.uuid4())
    assert claim_processing(pool, delivery, first_run)["delivery_id"] == delivery
    assert claim_processing(pool, delivery, second_run) is None  # held by the first run
    assert handle_delivery(delivery, settings) == {"status": "duplicate", "delivery_id": delivery,
                                                  "previous_status": "received"}
    assert claim_processing(pool, delivery, first_run) is not None  # the same run, retried by Prefect
    assert claim_processing(pool, delivery, second_run, lease=timedelta(0)) is not None  # the holder crashed
    assert str(get_delivery(pool, delivery)["flow_run_id"]) == second_run
    with pool.connection() as conn:  # the lease passed: a redrive processes it
        conn.execute("UPDATE webhook_deliveries SET claimed_at = now() - interval '11 minutes'"
                     " WHERE delivery_id = %s", [delivery])
    assert handle_delivery(delivery, settings)["status"] == "processed"


def test_a_failed_delivery_is_leased_too_and_released_when_its_run_ends(settings, pool, tenant):
    """A failed delivery may be re-run at once (its run gave the claim up), but two re-runs at once are not both
    winners: the second is a duplicate while the first holds it."""
    issue = _issue()
    del issue["number"]
    delivery = _deliver(pool, tenant, "issues", {"action": "opened", "issue": issue,
                                                 "repository": {"full_name": REPO}})
    with pytest.raises(InputError):
        handle_delivery(delivery, settings)
    assert get_delivery(pool, delivery)["status"] == "failed" and get_delivery(pool, delivery)["claimed_at"] is None
    first_run, second_run = str(uuid.uuid4()), str(uuid.uuid4())
    assert claim_processing(pool, delivery, first_run) is not None  # a re-run: at once
    assert claim_processing(pool, delivery, second_run) is None  # a second re-run while the first holds it
    assert handle_delivery(delivery, settings) == {"status": "duplicate", "delivery_id": delivery,
                                                  "previous_status": "failed"}
    assert claim_processing(pool, delivery, first_run) is not None  # the same run, retried by Prefect


def test_a_run_that_renews_its_claim_keeps_it_past_the_lease(settings, pool, tenant):
    delivery = _deliver(pool, tenant, "issues", {"action": "opened", "issue": _issue(),
                                                 "repository": {"full_name": REPO}})
    first_run = str(uuid.uuid4())
    claimed = claim_processing(pool, delivery, first_run)
    with pool.connection() as conn:  # the run has been working for 11 minutes
        claimed["claimed_at"] = conn.execute(
            "UPDATE webhook_deliveries SET claimed_at = claimed_at - interval '11 minutes' WHERE delivery_id = %s"
            " RETURNING claimed_at", [delivery]).fetchone()[0]
    lease = Lease.of(pool, claimed)
    lease.renew()  # as its DocumentSink does around each batch
    assert claim_processing(pool, delivery, str(uuid.uuid4())) is None  # a redrive now: a duplicate
    lease.finish()
    row = get_delivery(pool, delivery)
    assert row["status"] == "processed" and str(row["flow_run_id"]) == first_run and row["claimed_at"] is None


@pytest.mark.parametrize("event", ["opened", "deleted"])
def test_a_run_that_lost_its_claim_stops_before_writing_and_marks_nothing(settings, pool, tenant, monkeypatch, event):
    """The lease passed and another run took the delivery over: the first run learns it at its next write (an
    ingest batch or a delete), raises ClaimLost, writes nothing more and leaves the delivery to the other run."""
    repo = {"full_name": REPO}
    handle_delivery(_deliver(pool, tenant, "issues", {"action": "opened", "issue": _issue(), "repository": repo}),
                    settings)
    stored = "SELECT document_id, content_hash, updated_at FROM documents WHERE tenant_id = %s ORDER BY 1"
    with pool.connection() as conn:
        before = conn.execute(stored, [tenant]).fetchall()
    edited = _issue(body="Pods crashloop after the migration.")
    delivery = _deliver(pool, tenant, "issues", {"action": event, "issue": edited, "repository": repo})
    other_run = str(uuid.uuid4())
    name = "issue_doc" if event == "opened" else "stored_documents"
    original = getattr(github_events, name)

    def taken_over(*args, **kwargs):  # while this run works, its lease passes and a redrive claims the delivery
        assert claim_processing(pool, delivery, other_run, lease=timedelta(0)) is not None
        return original(*args, **kwargs)

    monkeypatch.setattr(github_events, name, taken_over)
    with pytest.raises(ClaimLost, match=f"claim passed to flow run {other_run} .*stopped writing"):
        handle_delivery(delivery, settings)
    with pool.connection() as conn:
        assert conn.execute(stored, [tenant]).fetchall() == before and len(before) == 1
    row = get_delivery(pool, delivery)
    assert row["status"] == "received" and str(row["flow_run_id"]) == other_run and row["last_error"] is None


def test_the_sink_renews_around_each_write_and_while_fetching(settings, pool, tenant, monkeypatch):
    calls = []
    sink = DocumentSink(settings, tenant, renew=lambda: calls.append("renew"))
    sink.add(issue_doc(REPO, _issue(1)))
    assert calls == []  # not due yet: adding costs no query
    monkeypatch.setattr(sync_repository, "RENEW_EVERY", 0.0)
    sink.add(issue_doc(REPO, _issue(2)))
    assert calls == ["renew"]  # a long fetch keeps the lease
    sink.finish()
    assert len(calls) == 3  # before and after the batch
    sink.delete([f"github:{REPO}#issue/1"])
    assert len(calls) == 4 and sink.totals["documents_deleted"] == 1


def test_a_payload_missing_issue_number_fails_the_delivery_naming_the_field(settings, pool, tenant):
    issue = _issue()
    del issue["number"]
    delivery = _deliver(pool, tenant, "issues", {"action": "opened", "issue": issue,
                                                 "repository": {"full_name": REPO}})
    with pytest.raises(InputError, match=r"payload\.issue\.number missing"):
        handle_delivery(delivery, settings)
    row = get_delivery(pool, delivery)
    assert row["status"] == "failed"
    assert "payload.issue.number missing" in row["last_error"]
    assert _docs(pool, tenant) == {}


def test_an_unknown_delivery_is_an_input_error(settings, pool):
    with pytest.raises(InputError, match="no such webhook delivery"):
        handle_delivery("no-such-delivery", settings)


# --- GitHub's real payloads ------------------------------------------------------------------------------------------

def test_real_issue_payloads(settings, pool, tenant):
    opened = _payload("issues/opened.json")
    handle_delivery(_deliver(pool, tenant, "issues", opened), settings)
    doc = "github:Codertocat/Hello-World#issue/1"
    assert _ids(settings, tenant, "accidently") == [doc]
    assert _docs(pool, tenant)[doc]["labels"] == ["bug"] and _docs(pool, tenant)[doc]["author"] == "Codertocat"

    edited = _payload("issues/edited.json")
    edited["issue"]["body"] = "The typo is in CONTRIBUTING, not the README."
    handle_delivery(_deliver(pool, tenant, "issues", edited), settings)
    assert _ids(settings, tenant, "accidently") == []
    assert _ids(settings, tenant, "typo contributing") == [doc]

    closed = _payload("issues/closed.json")  # a real delivery of another repository, with state_reason
    handle_delivery(_deliver(pool, tenant, "issues", closed), settings)
    meta = _docs(pool, tenant)["github:daeuniverse/ci-bot-experiment#issue/32"]
    assert (meta["state"], meta["state_reason"]) == ("closed", "completed")


def test_real_comment_and_pull_request_payloads(settings, pool, tenant):
    handle_delivery(_deliver(pool, tenant, "issue_comment", _payload("issue_comment/created.json")), settings)
    cid = "github:Codertocat/Hello-World#issue/1/comment/492700400"
    assert _ids(settings, tenant, "totally right") == [cid]
    assert _docs(pool, tenant)[cid]["author"] == "Codertocat"

    handle_delivery(_deliver(pool, tenant, "pull_request", _payload("pull_request/closed.json")), settings)
    meta = _docs(pool, tenant)["github:Codertocat/Hello-World#pull/2"]
    assert (meta["kind"], meta["state"], meta["merged"]) == ("pull_request", "closed", False)


def test_real_payload_without_issue_number_fails_visibly(settings, pool, tenant):
    payload = _payload("issues/opened.json")
    del payload["issue"]["number"]
    delivery = _deliver(pool, tenant, "issues", payload)
    with pytest.raises(InputError):
        handle_delivery(delivery, settings)
    assert "payload.issue.number missing" in get_delivery(pool, delivery)["last_error"]


# --- pushes ----------------------------------------------------------------------------------------------------------

def _push(before: str, after: str, added=(), modified=(), removed=(), ref: str = "refs/heads/main") -> dict:
    return {"ref": ref, "before": before, "after": after, "created": False, "deleted": False, "forced": False,
            "repository": {"full_name": REPO, "default_branch": "main"},
            "commits": [{"id": after, "added": list(added), "modified": list(modified), "removed": list(removed)}]}


def test_push_reingests_modified_files_and_deletes_removed_ones(settings, pool, tenant, fake, github):
    c1 = fake.commit(REPO, {"src/app.py": "def deploy():\n    return 'canary rollout'\n",
                            "src/old.py": "def legacy_helper():\n    pass\n", "README.md": "# App\n\nHow to deploy.\n"})
    first = handle_delivery(_deliver(pool, tenant, "push", _push("0" * 40, c1)), settings, github)
    assert first["code"]["mode"] == "full" and first["code"]["fetched"] == 3
    assert _ids(settings, tenant, "legacy_helper") == [f"github:{REPO}:src/old.py"]

    c2 = fake.commit(REPO, {"src/app.py": "def deploy():\n    return 'blue green switch'\n", "src/old.py": None,
                            "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00",
                            "src/new.go": "package main\n\nfunc Tally() {}\n"})
    fake.requests.clear()
    second = handle_delivery(_deliver(pool, tenant, "push", _push(c1, c2, added=["logo.png", "src/new.go"],
                                                                  modified=["src/app.py"], removed=["src/old.py"])),
                             settings, github)
    assert second["code"] == {"mode": "push", "from": c1, "to": c2, "fetched": 2, "removed": 1}
    assert any(s.startswith("logo.png: binary") for s in second["skipped"])
    assert _ids(settings, tenant, "legacy_helper") == []
    assert _ids(settings, tenant, "canary") == []
    assert _ids(settings, tenant, "blue green switch") == [f"github:{REPO}:src/app.py"]
    meta = _docs(pool, tenant)[f"github:{REPO}:src/new.go"]
    assert meta["ref"] == "main" and meta["path"] == "src/new.go" and len(meta["sha"]) == 40
    fetched = sorted(s.path.split("?")[0].rsplit("/contents/", 1)[1] for s in fake.requests if "/contents/" in s.path)
    assert fetched == ["src/app.py", "src/new.go"]  # the README was not read again


def test_pushes_that_delete_a_branch_or_touch_another_branch_are_ignored(settings, pool, tenant, fake, github):
    deleted = _push("a" * 40, "0" * 40) | {"deleted": True}
    assert "was deleted" in handle_delivery(_deliver(pool, tenant, "push", deleted), settings, github)["ignored"]
    c1 = fake.commit(REPO, {"lib.py": "def feature_flag():\n    pass\n"}, branch="feature-x")
    other = _push("b" * 40, c1, added=["lib.py"], ref="refs/heads/feature-x")
    assert "not the default branch" in handle_delivery(_deliver(pool, tenant, "push", other), settings,
                                                       github)["ignored"]
    assert _docs(pool, tenant) == {}
    handle_delivery(_deliver(pool, tenant, "push", other), settings, github, branches=["feature-*"])
    assert list(_docs(pool, tenant)) == [f"github:{REPO}@feature-x:lib.py"]


def test_real_push_payloads(settings, pool, tenant, fake, github):
    tag_deleted = _payload("push/push.json")  # GitHub's example deletes a tag
    summary = handle_delivery(_deliver(pool, tenant, "push", tag_deleted), settings, github)
    assert summary["status"] == "processed" and "ignored" in summary

    payload = copy.deepcopy(_payload("_captured-dae-bot/push.json"))
    repo = payload["repository"]["full_name"]
    fake.add_repo(repo)
    before = fake.commit(repo, {"main.go": "package main\n\nfunc oldEntry() {}\n"})
    after = fake.commit(repo, {"main.go": "package main\n\nfunc webhookEntry() {}\n"})
    payload.update(before=before, after=after)
    payload["commits"][0]["modified"] = ["main.go"]
    handle_delivery(_deliver(pool, tenant, "push", payload), settings, github)
    assert _ids(settings, tenant, "webhookEntry") == [f"github:{repo}:main.go"]

"""Batched webhook handling (flows.github_events.drain_deliveries): a handler run claims its route's pending
deliveries in batches until none is left; each delivery ends processed or failed exactly once, concurrent
handlers never share one, a bad delivery fails alone, and a run that lost its claim marks nothing."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from psycopg.types.json import Jsonb

from flows import sync_repository
from flows.github_events import drain_deliveries
from flows.search import search_now
from tasks.search import SearchRequest
from tasks.webhooks import ClaimLost, claim_batch, get_delivery

REPO = "octo/app"
WORDS = ["kernel", "ingress", "rollout", "certificate", "pipeline", "registry", "latency", "replica", "quota", "secret"]


def _issue(number: int, body: str) -> dict:
    return {"number": number, "title": f"Issue {number}", "body": body, "state": "open", "state_reason": None,
            "user": {"login": "alice"}, "labels": [], "html_url": f"https://github.com/{REPO}/issues/{number}",
            "updated_at": "2024-05-01T10:00:00Z"}


def _deliver(pool, tenant: str, event: str, payload: dict, route: str = "github-discussions",
             status: str = "emitted") -> str:
    delivery_id = str(uuid.uuid4())
    with pool.connection() as conn:
        conn.execute("INSERT INTO webhook_deliveries (delivery_id, event, action, repository, tenant_id, payload,"
                     " route, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                     [delivery_id, event, payload.get("action"), REPO, tenant, Jsonb(payload), route, status])
    return delivery_id


def _rows(pool, ids: list[str]) -> dict[str, dict]:
    return {i: get_delivery(pool, i) for i in ids}


def _opened(pool, tenant: str, number: int, word: str, **kw) -> str:
    return _deliver(pool, tenant, "issues", {"action": "opened", "repository": {"full_name": REPO},
                                             "issue": _issue(number, f"The {word}{number} check broke.")}, **kw)


def test_a_drain_processes_every_pending_delivery_once_in_few_batches(settings, pool, tenant):
    other = f"{tenant}-b"
    ids = [_opened(pool, tenant if n % 3 else other, n, WORDS[n % len(WORDS)]) for n in range(1, 26)]
    unemitted = _opened(pool, tenant, 98, "unemitted", status="received")  # its event is not in Prefect yet
    comment = {"action": "created", "repository": {"full_name": REPO}, "issue": _issue(1, "x"),
               "comment": {"id": 501, "body": "Bumping the zeta501 limit fixed it.", "user": {"login": "bob"},
                           "html_url": "https://github.com/octo/app/issues/1#issuecomment-501",
                           "updated_at": "2024-05-02T00:00:00Z"}}
    ids.append(_deliver(pool, tenant, "issue_comment", comment))
    broken = _deliver(pool, tenant, "issues", {"action": "opened", "repository": {"full_name": REPO},
                                               "issue": {"title": "no number"}})
    push = _opened(pool, tenant, 99, "other", route="github-push")  # another route: not this handler's

    summary = drain_deliveries("github-discussions", settings, batch_size=10)

    assert summary["processed"] == 26 and summary["failed"] == 1 and summary["batches"] == 3
    assert list(summary["failures"]) == [broken] and "issue.number" in summary["failures"][broken]
    rows = _rows(pool, ids)
    assert {r["status"] for r in rows.values()} == {"processed"}
    assert {r["handled"] for r in rows.values()} == {1}
    assert all(r["claimed_at"] is None for r in rows.values())
    assert len({str(r["flow_run_id"]) for r in rows.values()}) == 1  # one handler (its claimer id) did them all
    assert get_delivery(pool, broken)["status"] == "failed" and get_delivery(pool, broken)["handled"] == 1
    assert get_delivery(pool, push)["status"] == "emitted"
    assert get_delivery(pool, unemitted)["status"] == "received"  # the outbox emits it first, then it is claimed
    # embedded together: a call per batch and tenant, not per delivery (the fake embedder's max batch is larger)
    assert summary["texts_embedded"] == 26 and summary["embedding_calls"] <= 6
    hits = search_now(SearchRequest(query="certificate3", mode="keyword", tenant=other, limit=5), settings)
    assert [h.document_id for h in hits] == [f"github:{REPO}#issue/3"]
    hits = search_now(SearchRequest(query="zeta501", mode="keyword", tenant=tenant, limit=5), settings)
    assert [h.document_id for h in hits] == [f"github:{REPO}#issue/1/comment/501"]
    again = drain_deliveries("github-discussions", settings)
    assert again["processed"] == 0 and again["batches"] == 0  # nothing left: nothing done twice
    assert {r["handled"] for r in _rows(pool, ids).values()} == {1}


def test_concurrent_handlers_never_share_a_delivery(settings, pool, tenant):
    ids = [_opened(pool, tenant, n, WORDS[n % len(WORDS)]) for n in range(1, 41)]
    results, errors = [], []

    def drain():
        try:
            results.append(drain_deliveries("github-discussions", settings, batch_size=5))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=drain) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 3
    assert sum(r["processed"] for r in results) == 40
    rows = _rows(pool, ids)
    assert {r["status"] for r in rows.values()} == {"processed"} and {r["handled"] for r in rows.values()} == {1}
    with pool.connection() as conn:
        count = conn.execute("SELECT count(*) FROM documents WHERE tenant_id = %s", [tenant]).fetchone()[0]
    assert count == 40


def test_a_batch_claim_is_a_lease_and_a_run_that_lost_it_marks_nothing(settings, pool, tenant):
    ids = [_opened(pool, tenant, n, "lease") for n in range(1, 4)]
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    held = claim_batch(pool, "github-discussions", first)
    assert held is not None and held.ids == ids
    assert claim_batch(pool, "github-discussions", second) is None  # all held by the first run
    again = claim_batch(pool, "github-discussions", first)  # the same run again (Prefect retried it)
    assert again is not None and again.ids == ids
    taken = claim_batch(pool, "github-discussions", second, lease=timedelta(0))  # the first run's lease passed
    assert taken is not None and taken.ids == ids
    with pytest.raises(ClaimLost):
        again.renew()
    with pytest.raises(ClaimLost):
        again.finish(ids)
    assert {r["status"] for r in _rows(pool, ids).values()} == {"emitted"}
    taken.finish(ids[:2])
    taken.release(ids)  # the third was never worked on: claimable at once
    rows = _rows(pool, ids)
    assert [rows[i]["status"] for i in ids] == ["processed", "processed", "emitted"]
    assert rows[ids[2]]["claimed_at"] is None and [rows[i]["handled"] for i in ids] == [1, 1, 0]


def test_a_failed_shared_write_fails_its_deliveries_saying_why_and_releases_the_rest(settings, pool, tenant,
                                                                                    monkeypatch):
    """The store refuses the batch's write: the deliveries in it are failed with the reason (as a single delivery's
    run would be), none is marked processed; the ones not reached are released and claimed again at once."""
    ids = [_opened(pool, tenant, n, "refused") for n in range(1, 4)]
    deleted = _deliver(pool, tenant, "issues", {"action": "deleted", "repository": {"full_name": REPO},
                                                "issue": _issue(7, "gone")})
    after = _opened(pool, tenant, 8, "later")
    real = sync_repository.ingest_documents

    def refusing(*args, **kwargs):
        raise RuntimeError("database is read-only")

    monkeypatch.setattr(sync_repository, "ingest_documents", refusing)
    summary = drain_deliveries("github-discussions", settings, batch_size=5)
    rows = _rows(pool, ids + [deleted, after])
    assert [rows[i]["status"] for i in ids + [deleted, after]] == ["failed"] * 5
    assert all("database is read-only" in r["last_error"] and r["handled"] == 1 for r in rows.values())
    # the delete wrote the three before it (and failed with them); the last one was released, claimed again by a
    # second batch of the same drain, and failed on its own write
    assert summary["failed"] == 5 and summary["processed"] == 0 and summary["batches"] == 2
    monkeypatch.setattr(sync_repository, "ingest_documents", real)
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM documents WHERE tenant_id = %s", [tenant]).fetchone()[0] == 0

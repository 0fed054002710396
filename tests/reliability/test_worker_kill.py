"""kill -9 of the process running a guarded operation, then a re-run with the same idempotency key.

The operation (`github.create_issue`, allowed without approval) runs in a child process against the fake GitHub
server of this test process. The fake holds its answer to the create — after creating the issue (the provider
accepted it) or before (the request never got through) — while the test SIGKILLs the child: no handler, no
`finally`, no audit record, the operations row stays `running`. The re-run with the same key must finish
`succeeded`, leave exactly one issue carrying the key's marker, and write exactly one `succeeded` audit record
on a chain that still verifies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from blocks.github import GitHubConnection
from blocks.policy import OperationPolicy
from blocks.postgres import PgVectorStore
from flows.operate import OperateRequest, run_operation
from tasks.audit import audit_key, read_audit, verify_audit
from tasks.operation_log import get_operation_row
from tasks.ops.base import Connections
from tasks.ops.github import marker
from tests.fakes import FakeGitHub, Fault

TOKEN = "ghp_KILLTEST0123456789abcdefghijklmno"
REPO = "octo/app"
ISSUE = {"repo": REPO, "title": "Disk full on db-1", "body": "df shows 100% on /var/lib/postgresql"}
POLICY = OperationPolicy(operations=["github.*"], github_repos=["octo/*"], max_issues_per_hour=5)
ROOT = Path(__file__).resolve().parents[2]
CHILD_DEADLINE_S = 60.0  # the child imports prefect (a few seconds on a busy machine) before it posts

# The "worker": run_operation in its own interpreter, exactly as a served flow or the CLI would call it.
CHILD = r"""
import json, sys
from blocks.github import GitHubConnection
from blocks.policy import OperationPolicy
from blocks.settings import Settings
from flows.operate import OperateRequest, run_operation
from tasks.ops.base import Connections
from blocks.audit_key import AuditKey
from tasks.audit import use_audit_key

spec = json.loads(sys.argv[1])
use_audit_key(AuditKey.from_private_b64(spec["audit_key"]))  # the test's key, as the session's Secret block would be
conns = Connections(github=GitHubConnection(base_url=spec["github_url"], token=spec["token"], timeout=120,
                                            seconds_between_requests=0, seconds_between_writes=0))
request = OperateRequest(**spec["request"])
out = run_operation(request, Settings(database_url=spec["database_url"]), connections=conns,
                    policy=OperationPolicy(**spec["policy"]))
print(json.dumps({"status": out["status"]}))
"""


class HoldingGitHub(FakeGitHub):
    """FakeGitHub that holds its answer to the first `POST /repos/{repo}/issues`.

    mode "after": the issue is created (GitHub accepted it), then the answer waits for `release`.
    mode "before": the request waits for `release` and is then dropped without creating anything.
    `created` counts the POSTs that created an issue.
    """

    def __init__(self, mode: str, **kw) -> None:
        super().__init__(**kw)
        assert mode in ("after", "before")
        self.mode = mode
        self.held = threading.Event()  # the create reached the fake (and, in "after" mode, was done)
        self.release = threading.Event()
        self.created = 0

    def answer(self, seen, fault):
        is_create = seen.method == "POST" and urlsplit(seen.path).path == f"/repos/{REPO}/issues"
        if is_create and not self.held.is_set():
            if self.mode == "before":
                self.held.set()
                self.release.wait(CHILD_DEADLINE_S)
                return self.error(Fault.error(502))  # the caller is gone; nothing was stored
            response = super().answer(seen, fault)
            self.created += response[0] == 201
            self.held.set()
            self.release.wait(CHILD_DEADLINE_S)
            return response
        response = super().answer(seen, fault)
        self.created += is_create and response[0] == 201
        return response


def _request(tenant: str, key: str) -> OperateRequest:
    return OperateRequest(operation="github.create_issue", arguments=ISSUE, tenant=tenant,
                          actor={"api_key_id": "key-1", "agent": "pytest"}, dry_run=False, idempotency_key=key)


def _kill_mid_create(fake: HoldingGitHub, settings, tenant: str, key: str) -> None:
    """Start the child, wait until the fake holds its create, SIGKILL it, then let the fake's thread go."""
    from tasks.audit import audit_key

    spec = {"github_url": fake.url, "token": TOKEN, "policy": POLICY.model_dump(mode="json"),
            "audit_key": audit_key().private_b64(),
            "request": _request(tenant, key).model_dump(mode="json"),
            "database_url": PgVectorStore.from_settings(settings).resolve_url()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVMESH_")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + CHILD_DEADLINE_S
        while not fake.held.wait(0.1):
            if child.poll() is not None:
                out, err = child.communicate()
                pytest.fail(f"the child exited ({child.returncode}) before its create reached the fake:\n{out}\n"
                            f"{err[-3000:]}")
            assert time.monotonic() < deadline, "the child's create did not reach the fake in time"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
        fake.release.set()


def _marked(fake: FakeGitHub, key: str) -> list[dict]:
    return [i for i in fake.issues(REPO) if marker(key) in (i.get("body") or "")]


@pytest.mark.parametrize("mode", ["after", "before"])
def test_rerun_after_kill_completes_the_operation_once(settings, pool, tenant, mode):
    key = f"kill-{mode}-{tenant}"
    with HoldingGitHub(mode, token=TOKEN) as fake:
        fake.add_repo(REPO)
        _kill_mid_create(fake, settings, tenant, key)

        # what the kill left behind: the row claimed and marked running, no audit record, and (after) the issue
        with pool.connection() as conn:
            (op_id,) = conn.execute("SELECT id FROM operations WHERE tenant_id = %s AND idempotency_key = %s",
                                    [tenant, key]).fetchone()
        assert get_operation_row(pool, op_id)["status"] == "running"
        assert read_audit(pool, operation_id=str(op_id)) == []
        assert len(_marked(fake, key)) == (1 if mode == "after" else 0)

        conns = Connections(github=GitHubConnection(base_url=fake.url, token=TOKEN, timeout=10,
                                                    seconds_between_requests=0, seconds_between_writes=0))
        out = run_operation(_request(tenant, key), settings, connections=conns, policy=POLICY)

        assert out["status"] == "succeeded" and out["operation_id"] == str(op_id)
        assert out["result"]["existing"] is (mode == "after")  # after: found by its marker, not posted again
        issues = _marked(fake, key)
        assert len(issues) == 1 and len(fake.issues(REPO)) == 1
        assert out["result"]["number"] == issues[0]["number"]
        assert fake.created == 1  # exactly one POST created an issue
        creates = [s for s in fake.posts() if urlsplit(s.path).path == f"/repos/{REPO}/issues"]
        assert len(creates) == (1 if mode == "after" else 2)  # before: the dropped POST, then the re-run's

    row = get_operation_row(pool, op_id)
    assert row["status"] == "succeeded" and row["result"]["number"] == issues[0]["number"]
    records = read_audit(pool, operation_id=str(op_id))
    assert [r["status"] for r in records] == ["succeeded"]
    assert records[0]["result"]["number"] == issues[0]["number"]
    report = verify_audit(pool, audit_key())  # the child's record is signed with the session's key too
    assert report.ok, report.problem

    # and a third run with the same key acts not again: it replays the recorded result
    again = run_operation(_request(tenant, key), settings, connections=conns, policy=POLICY)
    assert again["replayed"] is True and again["result"]["number"] == issues[0]["number"]
    assert len(fake.issues(REPO)) == 1 and fake.created == 1
    assert [r["status"] for r in read_audit(pool, operation_id=str(op_id))] == ["succeeded"]

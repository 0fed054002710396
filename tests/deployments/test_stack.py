"""End to end: `devmesh up` starts the stack; a signed real `issues/opened` delivery to the gateway triggers the
github-discussions deployment through a Prefect event; the issue's text becomes searchable; Ctrl-C stops it all."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from blocks.errors import ConfigError
from blocks.settings import Settings
from flows.search import search_now
from tasks.search import SearchRequest
from tests.conftest import SHARED_TESTDATA

ROOT = Path(__file__).resolve().parents[2]
SECRET = "e2e-webhook-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def issue_payload() -> bytes:
    real = SHARED_TESTDATA / "github-webhooks" / "issues" / "opened.json"
    if real.exists():
        return real.read_bytes()
    return json.dumps({"action": "opened", "repository": {"full_name": "octo/hello", "name": "hello",
                                                          "owner": {"login": "octo"}},
                       "issue": {"number": 1, "title": "Spelling error in the README file",
                                 "body": "It looks like you accidently spelled 'commit' with two 't's.",
                                 "state": "open", "user": {"login": "octo"}, "labels": [],
                                 "html_url": "https://github.com/octo/hello/issues/1",
                                 "updated_at": "2019-05-15T15:20:18Z"}}).encode()


@pytest.mark.slow
def test_up_webhook_to_searchable_issue_then_clean_stop(tmp_path):
    home = tmp_path / "stack"
    gateway_port, prefect_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVMESH_", "PREFECT_"))}
    env.update({"DEVMESH_HOME": str(home), "DEVMESH_EMBEDDER": "local", "DEVMESH_PREFECT_PORT": str(prefect_port),
                "PREFECT_SERVER_ENCRYPTION_KEY": Fernet.generate_key().decode(),
                "DEVMESH_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"})
    stack = subprocess.Popen([sys.executable, "-m", "deployments.cli", "up", "--port", str(gateway_port)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        gateway = f"http://127.0.0.1:{gateway_port}"
        deadline = time.monotonic() + 900  # 300 s ran out with the load average at 19 on 2 cores
        while time.monotonic() < deadline:
            assert stack.poll() is None, stack.stdout.read()
            try:
                if httpx.get(f"{gateway}/healthz", timeout=1).status_code == 200 and (home / "stack.json").exists():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("the stack did not come up in 900 s")
        status = subprocess.run([sys.executable, "-m", "deployments.cli", "status", "--json"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and json.loads(status.stdout)["up"], status.stdout + status.stderr
        assert json.loads(status.stdout)["registration"].startswith("open"), status.stdout
        # every devmesh block type is in the UI's catalog
        auth = tuple((home / "prefect-auth").read_text().strip().split(":", 1))
        block_types = httpx.post(f"http://127.0.0.1:{prefect_port}/api/block_types/filter", json={}, auth=auth,
                                 timeout=10).json()
        from blocks.catalog import BLOCK_TYPES

        assert {b.get_block_type_slug() for b in BLOCK_TYPES} <= {t["slug"] for t in block_types}
        body = issue_payload()
        issue = json.loads(body)
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        response = httpx.post(f"{gateway}/webhooks/github", content=body, timeout=10, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "issues", "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": signature})
        assert response.status_code == 202, response.text
        settings = Settings(home=home, embedder="local")
        tenant = "default"
        query = issue["issue"]["title"]
        deadline = time.monotonic() + 240
        hits = []
        while time.monotonic() < deadline and not hits:
            try:
                hits = [h for h in search_now(SearchRequest(query=query, tenant=tenant, limit=5), settings)
                        if f"#issue/{issue['issue']['number']}" in h.document_id]
            except ConfigError:  # nothing stored in this home yet: the run has not finished
                pass
            time.sleep(2)
        assert hits, f"the issue never became searchable; logs in {home / 'logs'}"
        assert hits[0].metadata["repository"] == issue["repository"]["full_name"]
        # the same server accepts `prefect deploy --all` of prefect.yaml into a process work pool
        api = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api", "DEVMESH_ROOT": str(ROOT),
               "PREFECT_API_AUTH_STRING": (home / "prefect-auth").read_text().strip()}
        prefect = [sys.executable, "-m", "prefect"]
        pool = subprocess.run(prefect + ["work-pool", "create", "devmesh", "--type", "process"], cwd=ROOT, env=api,
                              capture_output=True, text=True, timeout=120)
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deployed = subprocess.run(prefect + ["--no-prompt", "deploy", "--all"], cwd=ROOT, env=api,
                                  capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        assert deployed.stdout.count("prefect worker start --pool 'devmesh'") >= 1
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            out, _ = stack.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            stack.kill()
            out, _ = stack.communicate()
    assert stack.returncode == 0, out
    assert "devmesh stopped" in out and not (home / "stack.json").exists()
    assert "registration: open (anyone may register" in out, out


def test_the_prefect_server_of_up_keeps_its_state_in_the_embedded_postgres(settings, pool, monkeypatch):
    """`devmesh up` gives the Prefect server a `prefect` database in the embedded cluster (created on first use,
    reached over the cluster's Unix socket by asyncpg); SQLite when asked for; a URL the operator gave wins."""
    import psycopg

    from blocks.postgres import PgVectorStore
    from deployments.stack import prefect_database

    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)
    store = PgVectorStore.from_settings(settings)
    env, line = prefect_database(settings, store)
    url = env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "/prefect?" in url and "embedded PostgreSQL" in line
    with psycopg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1)) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "prefect"
    assert prefect_database(settings, store)[0] == env  # a second start reuses it

    env, line = prefect_database(settings.model_copy(update={"prefect_database": "sqlite"}), store)
    assert env == {} and "SQLite" in line and "DEVMESH_PREFECT_DATABASE=sqlite" in line

    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://prefect@db/prefect")
    env, line = prefect_database(settings, store)
    assert env == {} and "PREFECT_SERVER_DATABASE_CONNECTION_URL" in line

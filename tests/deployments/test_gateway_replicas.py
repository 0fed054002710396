"""Issue 17, gateway replicas: two gateway processes (`python -m deployments.gateway_server`, as `devmesh up` runs
it) on two ports over one embedded PostgreSQL, with the webhook block and the events of the test Prefect server.

A key's rate limit holds across both (its quota is granted once, even under concurrent requests to both), the
failed-authentication lockout holds across both, a delivery posted to both is stored once, and each replica's
/metrics counts its own requests (each has its own PROMETHEUS_MULTIPROC_DIR).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from blocks.webhooks import GitHubWebhook
from tests.rest import API, new_key, register

ROOT = Path(__file__).resolve().parents[2]
SECRET = "replica-webhook-secret-0001"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
ACCEPT = {"Accept": "application/json, text/event-stream"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def replicas(prefect_harness, pg_home, session_pool, tmp_path_factory):
    """Two gateway processes; yields their base URLs. The webhook block lives on the test Prefect server."""
    from prefect.settings import PREFECT_API_URL

    GitHubWebhook(secrets=[SecretStr(SECRET)]).save("devmesh-github-webhook", overwrite=True)
    logs = tmp_path_factory.mktemp("replicas")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DEVMESH_", "PROMETHEUS_"))}
    base |= {"DEVMESH_HOME": str(pg_home), "DEVMESH_EMBEDDER": "local", "PREFECT_API_URL": PREFECT_API_URL.value(),
             "DEVMESH_ADMISSION__MAX_FAILURES": "3", "DEVMESH_ADMISSION__LOCKOUT_S": "120"}
    procs, urls = [], []
    for name in ("a", "b"):
        port, metrics = _free_port(), logs / f"metrics-{name}"
        metrics.mkdir()
        log = open(logs / f"gateway-{name}.log", "wb")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "deployments.gateway_server", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env={**base, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}, stdout=log, stderr=subprocess.STDOUT),
            log))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 120
        for (proc, _), url in zip(procs, urls):
            while True:
                assert proc.poll() is None, (logs / "gateway-a.log").read_text()[-3000:]
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{url} did not come up"
                time.sleep(0.2)
        yield urls
    finally:
        for proc, log in procs:
            proc.send_signal(signal.SIGINT)
        for proc, log in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def client(url: str, n: int) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=f"127.0.0.{n}"))


def test_a_keys_quota_is_granted_once_across_replicas(replicas, session_pool, tenant):
    a, b = (client(u, 11) for u in replicas)
    with a, b:
        org = register(a, tenant)
        key = new_key(a, org, ["read"], rate_per_minute=1, burst=6)
        calls = [(a if i % 2 else b, "rest" if i % 3 else "mcp") for i in range(30)]

        def one(call):
            http, surface = call
            if surface == "rest":
                return http.get(f"{API}/contexts", headers=key.headers).status_code
            return http.post("/mcp", json=INIT, headers={**ACCEPT, **key.headers}).status_code

        with ThreadPoolExecutor(10) as pool:  # concurrently, on both replicas and both surfaces
            codes = list(pool.map(one, calls))
    assert sorted(codes) == [200] * 6 + [429] * 24


def test_the_lockout_holds_across_replicas(replicas, tenant):
    a, b = (client(u, 12) for u in replicas)
    fresh_from_elsewhere = client(replicas[1], 13)
    with a, b, fresh_from_elsewhere:
        org = register(a, tenant)
        fresh = new_key(a, org, ["read"])  # made by the admin key; never used from 127.0.0.12
        for _ in range(3):
            assert a.get(f"{API}/contexts", headers={"X-API-Key": "devmesh_" + "q" * 43}).status_code == 401
        locked = b.get(f"{API}/contexts", headers=fresh.headers)
        assert locked.status_code == 429 and locked.json()["error"]["code"] == "locked_out"
        assert b.post("/mcp", json=INIT, headers={**ACCEPT, **fresh.headers}).status_code == 429
        assert fresh_from_elsewhere.get(f"{API}/contexts", headers=fresh.headers).status_code == 200


def _delivered(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in re.findall(
        r'devmesh_webhook_deliveries_total\{event="issues",outcome="(\w+)"\} ([0-9.e+]+)', text)}


def test_deliveries_are_deduplicated_across_replicas_and_each_metrics_counts_its_own(replicas, session_pool):
    before = [_delivered(u) for u in replicas]
    body = json.dumps({"action": "opened", "repository": {"full_name": "octo/app"},
                       "issue": {"number": 1, "title": "t", "body": "b", "user": {"login": "u"},
                                 "html_url": "https://github.com/octo/app/issues/1"}}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    deliveries = [str(uuid.uuid4()) for _ in range(10)]

    def post(args):
        url, delivery = args
        return httpx.post(f"{url}/webhooks/github", content=body, timeout=30, headers={
            "X-GitHub-Event": "issues", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature,
            "Content-Type": "application/json"}).status_code

    with ThreadPoolExecutor(8) as pool:  # every delivery to both replicas at once
        codes = list(pool.map(post, [(u, d) for d in deliveries for u in replicas]))
    assert sorted(codes) == [200] * 10 + [202] * 10
    with session_pool.connection() as conn:
        stored = conn.execute("SELECT count(*) FROM webhook_deliveries WHERE delivery_id = ANY(%s)",
                              [deliveries]).fetchone()[0]
    assert stored == 10
    three_more = [str(uuid.uuid4()) for _ in range(3)]
    assert [post((replicas[0], d)) for d in three_more] == [202] * 3  # to replica a only
    after = [_delivered(u) for u in replicas]
    counted = [{k: after[i].get(k, 0) - before[i].get(k, 0) for k in ("accepted", "duplicate")} for i in (0, 1)]
    assert counted[0]["accepted"] + counted[1]["accepted"] == 13
    assert counted[0]["duplicate"] + counted[1]["duplicate"] == 10
    assert counted[0]["accepted"] + counted[0]["duplicate"] == 13  # a's own 10 + 3, not b's
    assert counted[1]["accepted"] + counted[1]["duplicate"] == 10

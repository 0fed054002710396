"""REST and webhooks together: a bounded mixed load on the gateway (one process, as `devmesh up` runs it) for
`seconds`, every class at its own fixed rate (open loop), all on 127.0.0.1.

    python -m bench.mixed                      # 60 s at the default rates into a fresh bench/.data/mixed
    python -m bench.mixed --seconds 10         # a short check

The gateway process (bench.rest.serve: uvicorn, one worker, REST API + webhooks + MCP) runs on the bench's embedded
PostgreSQL with the local MiniLM embedder warm, as deployed. Its corpus is `rows` chunks with precomputed vectors
(bench.store.make_data: SciFact's MiniLM document vectors when ../shared/testdata is present, synthetic otherwise),
loaded through the bulk store path. The outbox emits to a counting stand-in of the Prefect API on loopback
(bench.gateway.Sink), so every accepted delivery can be checked for exactly one event.

Classes (requests at due times i / rate, whatever the answers do; latency counts from the due time, so waiting for
a free connection counts):
- `vector`, `hybrid`, `keyword`: POST /api/v1/search with SciFact query texts; the server embeds the query with the
  local model (~8 ms of CPU) for vector and hybrid: these are what an agent sees.
- `vector_raw`: POST /api/v1/search/vector with the precomputed MiniLM query vector: no embedding, the store path.
- `append`: POST /api/v1/contexts/{id}/messages (one message, embedded and indexed), over `contexts` contexts.
- `read`: GET /api/v1/contexts/{id}?limit=20 and GET /api/v1/contexts?limit=20, alternately.
- `webhook`: POST /webhooks/github, signed, real payloads from ../shared/testdata/github-webhooks (ping excluded:
  it is answered, not stored) or a synthetic issues payload; every `redeliver_every`-th repeats an earlier id.

Errors are every answer other than the class's expected status (200; 201 for append; 202, or 200 for a redelivery,
for webhook) and every exception. After the load: deliveries persisted == deliveries accepted (202), each
redelivery answered 200 and stored once, every routed delivery emitted exactly once; every accepted append stored.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

from bench.http import HttpConnection

ROOT = Path(__file__).resolve().parents[1]
WEBHOOKS = ROOT.parent / "shared" / "testdata" / "github-webhooks"
SECRET = "bench-rest-webhook-secret-01"  # the secret bench.rest.serve gives the gateway
TENANT = "bench"
PASSWORD = "bench-mixed-password-0001"
# Requests per second of each class. The sum (85/s) is about half of what this gateway served closed-loop on
# 2 cores at 100k chunks (151 vector searches/s, each embedding its query); webhooks alone sustained ~500/s. At these
# rates the gateway process used ~0.5 core and the embedded PostgreSQL ~0.4 (measured, printed with the results).
RATES = {"vector": 10.0, "hybrid": 5.0, "keyword": 5.0, "vector_raw": 10.0, "append": 5.0, "read": 10.0,
         "webhook": 40.0}
EXPECTED = {"append": {201}, "webhook": {202}}
CONNECTIONS = 16  # per class: the bound of requests in flight
MESSAGE_ROWS = ("SELECT context_id::text, count(*) FROM context_messages WHERE context_id = ANY(%s::uuid[])"
                " GROUP BY context_id")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(latencies_s: list[float]) -> dict:
    if not latencies_s:
        return {}
    ms = np.asarray(latencies_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


def webhook_payloads() -> tuple[list[tuple[str, bytes]], str]:
    """[(X-GitHub-Event, compact JSON body)] and where they came from."""
    index = WEBHOOKS / "_index.json"
    if index.is_file():
        out = []
        for name, info in sorted(json.loads(index.read_text()).items()):
            event = info.get("x_github_event")
            if event and event != "ping" and (WEBHOOKS / name).is_file():
                body = json.dumps(json.loads((WEBHOOKS / name).read_bytes()), separators=(",", ":")).encode()
                out.append((event, body))
        if out:
            return out, f"{len(out)} real payloads from {WEBHOOKS} (ping excluded)"
    body = json.dumps({"action": "opened", "issue": {"number": 1, "title": "t", "body": "b" * 2000},
                       "repository": {"full_name": "octo/hello"}}).encode()
    return [("issues", body)], "1 synthetic issues.opened payload (../shared/testdata is absent)"


MESSAGES = [
    "The payments deploy failed with OOMKilled on two pods",
    "Raise the memory limit of the payments pods to 1Gi and redeploy",
    "Latency of the checkout service went above 800 ms after the release",
    "Roll back the checkout deployment to the previous revision",
    "The nightly backup job of the orders database timed out",
    "Rotate the webhook secret of the infra repository this week",
    "Scale the search workers to four replicas during the sale",
    "CI is red on main because the integration tests cannot reach the cache",
]


class Load:
    """One open-loop run: a scheduler per class on one event loop, a bounded pool of connections per class."""

    def __init__(self, port: int, headers: dict, queries: list[str], query_vectors: np.ndarray, model: str,
                 contexts: list[str], payloads: list[tuple[str, bytes]], redeliver_every: int):
        self.port, self.headers, self.queries, self.model = port, headers, queries, model
        self.query_vectors = [json.dumps({"vector": [round(float(x), 6) for x in v], "model": model,
                                          "limit": 10}).encode() for v in query_vectors]
        self.contexts, self.payloads, self.redeliver_every = contexts, payloads, redeliver_every
        self.rng = random.Random(7)
        self.sent_ids: list[str] = []
        self.redelivered: list[str] = []
        self.accepted_ids: list[str] = []
        self.appended: Counter[str] = Counter()

    def request(self, cls: str, i: int) -> tuple[str, str, dict, bytes, set[int]]:
        """(method, path, headers, body, expected statuses) of the i-th request of a class."""
        q = self.queries[i % len(self.queries)]
        if cls in ("vector", "hybrid", "keyword"):
            return "POST", "/api/v1/search", self.headers, json.dumps({"query": q, "mode": cls, "limit": 10}).encode(), {200}
        if cls == "vector_raw":
            return "POST", "/api/v1/search/vector", self.headers, self.query_vectors[i % len(self.query_vectors)], {200}
        if cls == "append":
            cid = self.contexts[i % len(self.contexts)]
            body = json.dumps({"messages": [{"role": "user" if i % 2 else "assistant",
                                             "content": f"{MESSAGES[i % len(MESSAGES)]} (note {i})"}]}).encode()
            return "POST", f"/api/v1/contexts/{cid}/messages", self.headers, body, {201}
        if cls == "read":
            if i % 2:
                return "GET", "/api/v1/contexts?limit=20", self.headers, b"", {200}
            return "GET", f"/api/v1/contexts/{self.contexts[i % len(self.contexts)]}?limit=20", self.headers, b"", {200}
        if cls == "webhook":
            event, body = self.payloads[i % len(self.payloads)]
            if self.redeliver_every and i % self.redeliver_every == self.redeliver_every - 1 and self.accepted_ids:
                # a redelivery of one already acknowledged: answered 200, not stored or emitted again
                delivery, expected = self.rng.choice(self.accepted_ids), {200}
                self.redelivered.append(delivery)
            else:
                delivery, expected = str(uuid.uuid4()), {202}
                self.sent_ids.append(delivery)
            signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            return "POST", "/webhooks/github", {
                "Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": signature}, body, expected
        raise ValueError(f"unknown request class {cls!r}")

    async def run_class(self, cls: str, rate: float, seconds: float, start: float) -> dict:
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        errors: Counter[str] = Counter()
        samples: list[str] = []
        idle: asyncio.Queue = asyncio.Queue()
        for _ in range(CONNECTIONS):
            idle.put_nowait(None)  # opened on first use

        async def one(i: int, due: float) -> None:
            method, path, headers, body, expected = self.request(cls, i)
            conn = await idle.get()
            try:
                conn = conn or await HttpConnection.open(self.port)
                status, answer = await asyncio.wait_for(conn.request(method, path, headers, body), 60)
                latencies.append(time.perf_counter() - due)
                statuses[status] += 1
                if status not in expected:
                    errors[f"HTTP {status}"] += 1
                    if len(samples) < 5:
                        samples.append(f"{method} {path.split('?')[0]} -> {status}: {answer[:200]!r}")
                elif cls == "webhook" and status == 202:
                    self.accepted_ids.append(headers["X-GitHub-Delivery"])
                elif cls == "append":
                    self.appended[path.split("/")[4]] += 1
                idle.put_nowait(conn)
            except Exception as exc:  # noqa: BLE001 - every exception is an error of the class
                errors[type(exc).__name__] += 1
                if len(samples) < 5:
                    samples.append(f"{method} {path.split('?')[0]} -> {type(exc).__name__}: {exc}"[:300])
                latencies.append(time.perf_counter() - due)
                if conn is not None:
                    conn.close()
                idle.put_nowait(None)

        total = int(rate * seconds)
        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        while not idle.empty():
            conn = idle.get_nowait()
            if conn is not None:
                conn.close()
        return {"class": cls, "rate": rate, "requests": total, "completed": len(latencies),
                "achieved_rate": round(total / elapsed, 2), "statuses": dict(statuses),
                "errors": sum(errors.values()), "error_kinds": dict(errors), "error_samples": samples,
                **_percentiles(latencies)}

    async def run(self, rates: dict[str, float], seconds: float) -> list[dict]:
        start = time.perf_counter() + 0.2
        return list(await asyncio.gather(*(self.run_class(c, r, seconds, start) for c, r in rates.items() if r > 0)))


async def _setup_api(port: int, contexts: int) -> tuple[dict, list[str]]:
    """Register the bench organization (slug = tenant), a read+write key the limiter never stops, and contexts."""
    conn = await HttpConnection.open(port)
    json_headers = {"Content-Type": "application/json"}
    try:
        status, body = await conn.request("POST", "/api/v1/auth/register/organization", json_headers, json.dumps({
            "name": "bench", "slug": TENANT, "admin_email": "bench@example.org", "admin_name": "bench",
            "password": PASSWORD}).encode())
        if status != 201:
            raise RuntimeError(f"registration answered {status}: {body[:300]!r}")
        admin = {"Authorization": f"Bearer {json.loads(body)['api_key']}", **json_headers}
        status, body = await conn.request("POST", "/api/v1/keys", admin, json.dumps({
            "name": "bench-mixed", "scopes": ["read", "write"], "rate_per_minute": 1_000_000,
            "burst": 1_000_000}).encode())
        if status != 201:
            raise RuntimeError(f"key creation answered {status}: {body[:300]!r}")
        headers = {"Authorization": f"Bearer {json.loads(body)['api_key']}", **json_headers}
        ids = []
        for k in range(contexts):
            status, body = await conn.request("POST", "/api/v1/contexts", headers, json.dumps({
                "user_id": f"user-{k % 5}", "agent_id": "bench", "metadata": {"bench": "mixed"}}).encode())
            if status != 201:
                raise RuntimeError(f"context creation answered {status}: {body[:300]!r}")
            ids.append(json.loads(body)["id"])
        return headers, ids
    finally:
        conn.close()


def _start_gateway(settings, port: int, api_url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"from bench.rest import serve; serve({int(port)})"], cwd=ROOT,
                            env={**os.environ, "DEVMESH_BENCH_SETTINGS": settings.model_dump_json(),
                                 "PREFECT_API_URL": api_url})


def _wait_up(port: int, server: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.3)


def _postgres_cpu(workdir: Path) -> float:
    """CPU seconds (user + system) used so far by the embedded server's processes."""
    import psutil

    try:
        postmaster = psutil.Process(int((workdir / "pgdata" / "postmaster.pid").read_text().split()[0]))
        total = 0.0
        for p in [postmaster, *postmaster.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total
    except (OSError, ValueError, psutil.Error):
        return float("nan")


def _seed(pool, rows: int, log) -> tuple[list[str], np.ndarray, str, dict]:
    from blocks.embedders.local import MODEL_ID
    from bench.store import load_devmesh, make_data

    data = make_data(rows)
    log(f"mixed: loading {rows:,} chunks with precomputed vectors (bulk path)")
    setup = load_devmesh(pool, data)
    return data.query_texts, data.query_vectors, MODEL_ID, {"rows": setup["rows"], "origin": data.origin}


def run(workdir: Path, seconds: float = 60.0, rates: dict[str, float] | None = None, rows: int = 6_000,
        contexts: int = 20, redeliver_every: int = 50, warmup_s: float = 3.0, log=None) -> dict:
    """The mixed load against a gateway on an embedded PostgreSQL under `workdir`; the figures and parameters."""
    import psutil

    from bench.gateway import Sink
    from bench.run import _pool, _settings

    log = log or (lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True))
    rates = {**RATES, **(rates or {})}
    unknown = set(rates) - set(RATES)
    if unknown:
        raise ValueError(f"unknown request classes {sorted(unknown)}; known: {', '.join(RATES)}")
    settings = _settings(Path(workdir))
    pool = _pool(settings)
    queries, query_vectors, model, corpus = _seed(pool, rows, log)
    payloads, payload_origin = webhook_payloads()
    sink = Sink()
    port = _free_port()
    server = _start_gateway(settings, port, sink.url)
    try:
        _wait_up(port, server)
        headers, context_ids = asyncio.run(_setup_api(port, contexts))
        log(f"mixed: gateway up on :{port}; warm-up {warmup_s:.0f} s at a fifth of the rates")
        warm = Load(port, headers, queries, query_vectors, model, context_ids, payloads, 0)
        warm_results = asyncio.run(warm.run({c: max(1.0, r / 5) for c, r in rates.items() if r > 0}, warmup_s))
        with pool.connection() as conn:
            before_messages = dict(conn.execute(
                MESSAGE_ROWS, [context_ids]).fetchall())
        proc = psutil.Process(server.pid)
        me = psutil.Process()
        cpu0, pg0, me0, wall0 = proc.cpu_times(), _postgres_cpu(Path(workdir)), me.cpu_times(), time.perf_counter()
        host0 = psutil.cpu_times()
        log(f"mixed: {seconds:.0f} s at {sum(rates.values()):.0f} requests/s: "
            + ", ".join(f"{c} {r:g}/s" for c, r in rates.items()))
        load = Load(port, headers, queries, query_vectors, model, context_ids, payloads, redeliver_every)
        results = asyncio.run(load.run(rates, seconds))
        cpu1, pg1, me1, wall = proc.cpu_times(), _postgres_cpu(Path(workdir)), me.cpu_times(), time.perf_counter() - wall0
        host1 = psutil.cpu_times()
        host_busy = sum(getattr(host1, f) - getattr(host0, f) for f in ("user", "system", "nice", "irq", "softirq"))
        # every accepted delivery persisted once, every routed one emitted once
        accepted = set(load.accepted_ids)
        with pool.connection() as conn:
            persisted = {r[0]: r[1] for r in conn.execute(
                "SELECT delivery_id, route FROM webhook_deliveries WHERE delivery_id = ANY(%s)", [load.sent_ids])}
        routed = {d for d, route in persisted.items() if route is not None}
        drain_start = time.perf_counter()
        while time.perf_counter() - drain_start < 60 and not routed <= set(sink.ids):
            time.sleep(0.2)
        emitted = set(sink.ids)
        with pool.connection() as conn:
            after_messages = dict(conn.execute(
                MESSAGE_ROWS, [context_ids]).fetchall())
        webhook = {
            "payloads": payload_origin, "sent": len(load.sent_ids) + len(load.redelivered),
            "new_ids": len(set(load.sent_ids)), "accepted_202": len(load.accepted_ids),
            "redeliveries": len(load.redelivered), "persisted": len(persisted), "routed": len(routed),
            "ignored_unrouted": len(persisted) - len(routed), "accepted_not_persisted": len(accepted - set(persisted)),
            "persisted_not_accepted": len(set(persisted) - accepted), "emitted_routed": len(routed & emitted),
            "lost": len(accepted - set(persisted)) + len(routed - emitted),
            "emitted_twice": sum(1 for i in routed if sink.ids[i] > 1),
            "emitted_unrouted": len(emitted & (set(persisted) - routed)),
            "drain_s": round(time.perf_counter() - drain_start, 2),
        }
        webhook["persisted_equals_accepted"] = set(persisted) == accepted and len(accepted) == len(load.accepted_ids)
        appended = sum(load.appended.values())
        grown = sum(after_messages.get(c, 0) - before_messages.get(c, 0) for c in context_ids)
        appends = {"accepted_201": appended, "message_rows_added": grown, "all_stored": grown == appended}
        errors = sum(r["errors"] for r in results)
        return {
            "seconds": seconds, "rates": rates, "total_rate": sum(rates.values()), "connections_per_class": CONNECTIONS,
            "corpus": corpus, "contexts": contexts, "redeliver_every": redeliver_every, "embedder": settings.embedder,
            "classes": {r["class"]: r for r in results}, "errors": errors,
            "requests": sum(r["requests"] for r in results), "webhooks": webhook, "appends": appends,
            # CPU used during the load, in % of one core: the gateway process, the embedded server, this load generator
            "loadgen_cpu_percent": round(100 * ((me1.user - me0.user) + (me1.system - me0.system)) / wall, 1),
            "gateway_cpu_percent": round(100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall, 1),
            "postgres_cpu_percent": round(100 * (pg1 - pg0) / wall, 1),
            "host_cpu_busy_percent": round(100 * host_busy / wall / (os.cpu_count() or 1), 1),
            "warmup_errors": sum(r["errors"] for r in warm_results), "cores": os.cpu_count(),
            "ok": errors == 0 and webhook["persisted_equals_accepted"] and webhook["lost"] == 0
            and webhook["emitted_twice"] == 0 and webhook["emitted_unrouted"] == 0 and appends["all_stored"],
        }
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        sink.server.shutdown()


if __name__ == "__main__":
    import warnings

    from bench.million import _fresh

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = argparse.ArgumentParser(prog="python -m bench.mixed", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rows", type=int, default=6_000)
    parser.add_argument("--rate", action="append", default=[], metavar="CLASS=PER_SECOND",
                        help=f"override a class's rate ({', '.join(f'{c}={r:g}' for c, r in RATES.items())})")
    parser.add_argument("--dir", type=Path, default=ROOT / "bench" / ".data" / "mixed")
    a = parser.parse_args()
    overrides = {}
    for item in a.rate:
        name, _, value = item.partition("=")
        try:
            overrides[name.strip()] = float(value)
        except ValueError:
            parser.error(f"--rate expects CLASS=PER_SECOND, got {item!r}")
    result = run(_fresh(a.dir), seconds=a.seconds, rates=overrides, rows=a.rows)
    text = json.dumps(result, indent=2, default=str)
    (a.dir / "result.json").write_text(text, encoding="utf-8")
    print(text)
    sys.exit(0 if result["ok"] else 1)

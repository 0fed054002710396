"""REST search end to end: `POST /api/v1/search` against the gateway in its own process on loopback, over
`rows` chunks with precomputed vectors, the local embedder warm in the server.

1. Sequential latency per mode (one request at a time) against the p50 <= 20 ms goal, each next to the same
   searches through `search_now` in this process, so that what the REST layer adds shows.
2. `clients` concurrent keep-alive connections in closed loops for `seconds`, vector then hybrid: throughput,
   latency and errors (which must be 0). The key has a limit high enough that the limiter never answers 429.

What the shared limiter (rate limits and lockouts in PostgreSQL, issue 17) adds to each of these requests is measured
beside this section by bench/admission.py (`--only admission`): the same gateway with the shared state and with an
in-memory one, alternating requests, p50 and p99.

The load generator speaks HTTP/1.1 itself, as bench/gateway.py does (httpx's async client tops out near
110 requests/s on 2 cores and would measure itself).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.http import HttpConnection

from bench.store import TENANT

__all__ = ["measure_rest", "serve"]

ROOT = Path(__file__).resolve().parents[1]
GOAL_P50_MS = 20.0
WARMUP = 30
SEQUENTIAL = {"hybrid": 300, "vector": 100, "keyword": 100}
CONCURRENT = ("vector", "hybrid")  # the REST layer's capacity, then the default mode's
PASSWORD = "bench-admin-password-0001"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int) -> None:
    """The server process: the gateway with the settings the parent passed, on loopback.

    uvicorn re-raises SIGTERM after its graceful shutdown; with this handler that ends the interpreter normally, so
    atexit runs and the process leaves the embedded server's list of users (killed by the default handler, or
    ended by multiprocessing's os._exit, it would stay listed and the embedded PostgreSQL outlive the benchmark)."""
    import uvicorn
    from pydantic import SecretStr

    from blocks.settings import Settings
    from blocks.webhooks import GitHubWebhook
    from deployments.gateway import create_app

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    settings = Settings.model_validate_json(os.environ["DEVMESH_BENCH_SETTINGS"])
    app = create_app(settings, webhook=GitHubWebhook(secrets=[SecretStr("bench-rest-webhook-secret-01")]))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _start_server(settings, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"from bench.rest import serve; serve({int(port)})"], cwd=ROOT,
                            env={**os.environ, "DEVMESH_BENCH_SETTINGS": settings.model_dump_json()})


def _percentiles(latencies_s: list[float]) -> dict:
    ms = np.asarray(latencies_s) * 1000
    if not len(ms):
        return {}
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


def _body(query: str, mode: str) -> bytes:
    return json.dumps({"query": query, "mode": mode, "limit": 10}).encode()


async def _credentials(port: int, invite: str) -> dict[str, str]:
    """Register the bench organization (slug = the bench tenant, which already holds the rows: only an operator's
    invite for that slug may hand it over) and make a key the limiter never stops."""
    conn = await HttpConnection.open(port)
    try:
        status, body = await conn.request("POST", "/api/v1/auth/register/organization",
                                          {"Content-Type": "application/json"}, json.dumps({
                                              "name": "bench", "slug": TENANT, "admin_email": "bench@example.org",
                                              "admin_name": "bench", "password": PASSWORD,
                                              "invite": invite}).encode())
        if status != 201:
            raise RuntimeError(f"registration answered {status}: {body[:300]!r}")
        admin = {"Authorization": f"Bearer {json.loads(body)['api_key']}", "Content-Type": "application/json"}
        status, body = await conn.request("POST", "/api/v1/keys", admin, json.dumps({
            "name": "bench-search", "scopes": ["read"], "rate_per_minute": 1_000_000, "burst": 1_000_000}).encode())
        if status != 201:
            raise RuntimeError(f"key creation answered {status}: {body[:300]!r}")
        return {"Authorization": f"Bearer {json.loads(body)['api_key']}", "Content-Type": "application/json"}
    finally:
        conn.close()


async def _sequential(port: int, headers: dict, queries: list[str], mode: str, n: int) -> dict:
    conn = await HttpConnection.open(port)
    latencies, statuses, hits = [], Counter(), []
    try:
        for i in range(n):
            body = _body(queries[i % len(queries)], mode)
            start = time.perf_counter()
            status, answer = await conn.request("POST", "/api/v1/search", headers, body)
            latencies.append(time.perf_counter() - start)
            statuses[status] += 1
            if status == 200:
                hits.append(json.loads(answer)["count"])
    finally:
        conn.close()
    return {"mode": mode, "requests": n, "statuses": dict(statuses), "mean_hits": round(float(np.mean(hits)), 2)
            if hits else 0, **_percentiles(latencies)}


async def _concurrent(port: int, headers: dict, queries: list[str], mode: str, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        i = k
        conn = None
        while time.perf_counter() < stop:
            try:
                conn = conn or await HttpConnection.open(port)
                start = time.perf_counter()
                status, _ = await conn.request("POST", "/api/v1/search", headers,
                                               _body(queries[i % len(queries)], mode))
                latencies.append(time.perf_counter() - start)
                statuses[status] += 1
                if status != 200:
                    errors[f"HTTP {status}"] += 1
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                errors[type(exc).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
            i += clients
        if conn is not None:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    return {"mode": mode, "clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies),
            "throughput_rps": round(len(latencies) / elapsed, 1), "statuses": dict(statuses),
            "errors": sum(errors.values()), "error_kinds": dict(errors), **_percentiles(latencies)}


def _direct(settings, queries: list[str], mode: str, n: int) -> dict:
    """The same searches through search_now in this process: what the REST layer adds is the difference."""
    from flows.search import search_now
    from tasks.search import SearchRequest

    latencies = []
    for i in range(n):
        request = SearchRequest(query=queries[i % len(queries)], mode=mode, limit=10, tenant=TENANT)
        start = time.perf_counter()
        search_now(request, settings)
        latencies.append(time.perf_counter() - start)
    return _percentiles(latencies)


def _prepare(settings, rows: int, log) -> tuple[list[str], dict, str]:
    """The bench rows in the bench tenant (loaded unless already there), the query texts, a clean org slot and the
    operator's invite for it."""
    from datetime import timedelta

    from blocks.embedders.local import MODEL_ID
    from blocks.postgres import PgVectorStore
    from bench.store import load_devmesh, make_data
    from tasks.claims import mint_invite
    from tasks.migrate import ensure_schema

    pool = PgVectorStore.from_settings(settings).pool()
    ensure_schema(pool)
    data = make_data(rows)
    with pool.connection() as conn:
        loaded = conn.execute("SELECT count(*) FROM embeddings e JOIN embedding_models m ON m.id = e.model_id"
                              " WHERE m.name = %s AND e.tenant_id = %s", [MODEL_ID, TENANT]).fetchone()[0]
        conn.execute("DELETE FROM organizations WHERE tenant_id = %s", [TENANT])  # its keys go with it
    setup: dict = {"rows": loaded, "origin": data.origin}
    if loaded < rows:
        log(f"rest: loading {rows:,} rows (bulk path)")
        setup = {**load_devmesh(pool, data), "origin": data.origin}
    _, invite = mint_invite(pool, slug=TENANT, expires_in=timedelta(hours=1), created_by={"via": "bench"})
    return data.query_texts, setup, invite


def measure_rest(settings, rows: int = 100_000, clients: int = 200, seconds: float = 30, log=print) -> dict:
    """REST search latency (sequential, per mode) and concurrent throughput through the real gateway process."""
    from blocks.postgres import PgVectorStore

    queries, setup, invite = _prepare(settings, rows, log)
    # search_now resolves the store per call; pinned to the resolved URL it finds the open pool, as the API does
    pinned = settings.model_copy(update={"database_url": PgVectorStore.from_settings(settings).resolve_url()})
    port = _free_port()
    server = _start_server(settings, port)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the gateway did not start") from None
                time.sleep(0.3)
        headers = asyncio.run(_credentials(port, invite))
        log(f"rest: gateway up on :{port}; warming the embedder with {WARMUP} searches")
        asyncio.run(_sequential(port, headers, queries[::-1], "hybrid", WARMUP))
        sequential = []
        for mode, n in SEQUENTIAL.items():
            log(f"rest: {n} sequential {mode} searches, then the same through search_now in-process")
            measured = asyncio.run(_sequential(port, headers, queries, mode, n))
            measured["direct"] = _direct(pinned, queries, mode, n)
            measured["rest_overhead_p50_ms"] = round(measured["p50_ms"] - measured["direct"]["p50_ms"], 2)
            measured["goal_met"] = measured["p50_ms"] <= GOAL_P50_MS
            sequential.append(measured)
        concurrent = []
        for mode in CONCURRENT:
            log(f"rest: {clients} concurrent clients for {seconds:.0f} s ({mode})")
            concurrent.append(asyncio.run(_concurrent(port, headers, queries, mode, clients, seconds)))
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return {"rows": rows, "setup": setup, "queries": len(queries), "sequential": sequential,
            "concurrent": concurrent, "errors": sum(c["errors"] for c in concurrent), "goal_p50_ms": GOAL_P50_MS,
            "goal_met": {m["mode"]: m["goal_met"] for m in sequential},
            "pool_max_size": settings.pool_max_size, "cores": os.cpu_count()}


if __name__ == "__main__":  # python -m bench.rest [rows] [clients] [seconds]
    from blocks.settings import Settings

    home = ROOT / "bench" / ".data" / "rest"
    args = [float(a) for a in sys.argv[1:4]]
    result = measure_rest(Settings(home=home, embedder="local"), int(args[0]) if args else 100_000,
                          int(args[1]) if len(args) > 1 else 200, args[2] if len(args) > 2 else 30)
    print(json.dumps(result, indent=2, default=str))

"""What the shared admission state (tasks/ratelimit.py: rate limits and lockouts in PostgreSQL) adds to a request.

1. In-process: `Admission.admit` (the one statement: lockout check, the key's bucket, the sighting) against
   `authenticate` (the key lookup every request already paid) and an in-memory token bucket (the state before
   issue 17, per process), `n` calls each, p50 / p99.
2. Through REST, old path against new in one run: two gateways (their own processes, loopback), one with the
   shared state and one with the in-memory stand-in below (bench only), answer `n` sequential
   `GET /api/v1/contexts?limit=1` each, alternating between them so that both see the same load; then
   `clients` concurrent clients for `seconds` on one key (one hot bucket row) and on a key each, against each.

    python -m bench.admission            # prints the JSON; `python -m bench.run --only admission` renders it
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.http import HttpConnection

__all__ = ["MemoryAdmission", "measure_admission", "serve"]

ROOT = Path(__file__).resolve().parents[1]
TENANT = "bench-admission"
PASSWORD = "bench-admission-password-01"


class MemoryAdmission:
    """The in-process state devmesh had before issue 17 (token buckets in a dict under a lock; nothing shared
    between processes), behind Admission's interface: the baseline of the comparison. Bench only."""

    def __init__(self, rate_per_minute: int = 1000, burst: int = 3000):
        self.rate, self.burst = rate_per_minute, burst
        self._buckets: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def take(self, bucket: str, rate_per_minute: int | None = None, burst: int | None = None) -> float:
        rate, capacity, now = (rate_per_minute or self.rate) / 60.0, burst or self.burst, time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(bucket, (capacity, now))
            tokens = min(capacity, tokens + (now - stamp) * rate)
            granted = tokens >= 1
            self._buckets[bucket] = [tokens - 1 if granted else tokens, now]
        return 0.0 if granted else (1 - tokens) / rate

    def admit(self, address: str, key_id: str, rate_per_minute: int | None = None, burst: int | None = None):
        from tasks.ratelimit import Verdict

        return Verdict(wait=self.take(f"key:{key_id}", rate_per_minute, burst))

    def failed(self, address: str) -> float:
        return 0.0

    def prune(self) -> int:
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int) -> None:
    """The server process: the gateway as `devmesh up` serves it; DEVMESH_BENCH_ADMISSION=memory swaps in the
    in-memory baseline."""
    import signal

    import uvicorn
    from pydantic import SecretStr

    from blocks.settings import Settings
    from blocks.webhooks import GitHubWebhook
    from deployments.gateway import create_app
    from deployments.gateway_server import uvicorn_config

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a normal exit leaves the embedded server's users
    settings = Settings.model_validate_json(os.environ["DEVMESH_BENCH_SETTINGS"])
    app = create_app(settings, webhook=GitHubWebhook(secrets=[SecretStr("bench-admission-webhook-01")]))
    if os.environ.get("DEVMESH_BENCH_ADMISSION") == "memory":
        app.state.devmesh["admission"] = MemoryAdmission()
    uvicorn.Server(uvicorn_config(settings, app=app, host="127.0.0.1", port=port, log_level="warning")).run()


def _percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def _timed(fn, n: int) -> dict:
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - start)
    return {"calls": n, **_percentiles(latencies)}


def _keys(pool, count: int) -> list[tuple[str, str]]:
    """(key, key id) of `count` fresh keys of the bench organization, with limits the bench never reaches."""
    from tasks.tenancy import OrganizationCreate, create_key, register_organization

    with pool.connection() as conn:
        conn.execute("DELETE FROM organizations WHERE tenant_id = %s", [TENANT])
    register_organization(pool, OrganizationCreate(name="bench", slug=TENANT, admin_email="bench@example.org",
                                                    admin_name="bench", password=PASSWORD))
    out = []
    for i in range(count):
        meta, key = create_key(pool, TENANT, f"bench-{i}", ["read"], rate_per_minute=1_000_000, burst=1_000_000)
        out.append((key, meta["id"]))
    return out


async def _concurrent(port: int, keys: list[str], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        conn = await HttpConnection.open(port)
        headers = {"Authorization": f"Bearer {keys[k % len(keys)]}"}
        try:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                status, _ = await conn.request("GET", "/api/v1/contexts?limit=1", headers)
                latencies.append(time.perf_counter() - start)
                statuses[status] += 1
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    return {"clients": clients, "keys": min(len(keys), clients), "requests": len(latencies),
            "throughput_rps": round(len(latencies) / elapsed, 1), "statuses": dict(statuses),
            **_percentiles(latencies)}


class _Server:
    """A gateway in its own process (serve above), the shared state or the in-memory stand-in."""

    def __init__(self, settings, variant: str):
        self.variant, self.port = variant, _free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from bench.admission import serve; serve({self.port})"], cwd=ROOT,
            env={**os.environ, "DEVMESH_BENCH_SETTINGS": settings.model_dump_json(), "DEVMESH_BENCH_ADMISSION": variant})

    def wait(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"the {self.variant} gateway did not start") from None
                time.sleep(0.3)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def _paired(servers: list[_Server], key: str, n: int) -> dict[str, dict]:
    """`n` sequential requests to each server, alternating (which goes first alternates too), so that both see
    the same load of a shared machine."""
    conns = [await HttpConnection.open(s.port) for s in servers]
    latencies: dict[str, list[float]] = {s.variant: [] for s in servers}
    statuses: dict[str, Counter] = {s.variant: Counter() for s in servers}
    headers = {"Authorization": f"Bearer {key}"}
    try:
        for i in range(n):
            for server, conn in (zip(servers, conns) if i % 2 else reversed(list(zip(servers, conns)))):
                start = time.perf_counter()
                status, _ = await conn.request("GET", "/api/v1/contexts?limit=1", headers)
                latencies[server.variant].append(time.perf_counter() - start)
                statuses[server.variant][status] += 1
    finally:
        for conn in conns:
            conn.close()
    return {v: {"requests": n, "statuses": dict(statuses[v]), **_percentiles(latencies[v])} for v in latencies}


def _through_rest(settings, keys: list[str], n: int, clients: int, seconds: float, log) -> dict:
    servers = [_Server(settings, variant) for variant in ("postgres", "memory")]
    try:
        for server in servers:
            server.wait()
        log(f"admission: {n} sequential requests to each gateway, alternating")
        asyncio.run(_paired(servers, keys[0], 50))  # warm-up
        out = {variant: {"sequential": measured} for variant, measured in
               asyncio.run(_paired(servers, keys[0], n)).items()}
        for server in servers:
            log(f"admission: {server.variant} state: {clients} clients for {seconds:.0f} s, one key then a key each")
            out[server.variant]["one_key"] = asyncio.run(_concurrent(server.port, keys[:1], clients, seconds))
            out[server.variant]["key_each"] = asyncio.run(_concurrent(server.port, keys, clients, seconds))
        return out
    finally:
        for server in servers:
            server.stop()


def measure_admission(settings, n: int = 2000, clients: int = 32, seconds: float = 10, log=print) -> dict:
    """The shared admission state's cost, in-process and through REST (see the module docstring)."""
    from blocks.postgres import PgVectorStore
    from tasks.migrate import ensure_schema
    from tasks.ratelimit import Admission
    from tasks.tenancy import authenticate

    pool = PgVectorStore.from_settings(settings).pool()
    ensure_schema(pool)
    keys = _keys(pool, clients)
    key, key_id = keys[0]
    shared, memory = Admission(lambda: pool, settings.admission), MemoryAdmission()
    log(f"admission: {n} in-process calls each of authenticate, Admission.admit and the in-memory bucket")
    in_process = {
        "authenticate": _timed(lambda: authenticate(pool, key), n),
        "shared_admit": _timed(lambda: shared.admit("127.0.0.1", key_id, 1_000_000, 1_000_000), n),
        "memory_take": _timed(lambda: memory.admit("127.0.0.1", key_id, 1_000_000, 1_000_000), n),
    }
    rest = _through_rest(settings, [k for k, _ in keys], n, clients, seconds, log)
    added = {p: round(rest["postgres"]["sequential"][p] - rest["memory"]["sequential"][p], 3)
             for p in ("p50_ms", "p99_ms")}
    return {"in_process": in_process, "rest": rest, "rest_added": added, "cores": os.cpu_count(),
            "load_average": os.getloadavg()}


if __name__ == "__main__":
    from blocks.settings import Settings

    result = measure_admission(Settings(home=ROOT / "bench" / ".data" / "admission", embedder="local"))
    print(json.dumps(result, indent=2))

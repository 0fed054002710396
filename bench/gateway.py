"""Gateway load: signed GitHub deliveries at a fixed rate (open loop) on loopback; acknowledgement latency, and
every accepted delivery persisted and emitted exactly once.

The gateway runs in its own process (uvicorn, one worker) on the bench's embedded PostgreSQL. The Prefect API it
emits to is a counting sink on loopback (POST /api/events) so that the figure is the gateway's: a Prefect server
on this machine turns ~15-25 events/s into flow runs, far below the delivery rate measured here (see the note).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from bench.http import HttpConnection

SECRET = "bench-webhook-secret-000000000001"
ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = ROOT.parent / "shared" / "testdata" / "github-webhooks" / "issues" / "opened.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """A stand-in Prefect API that counts the events POSTed to /api/events by id."""

    def __init__(self):
        self.ids: Counter[str] = Counter()
        self.posts = 0
        self.received = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while (size := int(self.rfile.readline().strip(), 16)):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") == "/api/events":
                    events = json.loads(body)
                    sink.posts += 1
                    sink.received += len(events)
                    sink.ids.update(e["payload"]["delivery_id"] for e in events)
                    self._send(204, b"")
                else:
                    self._send(404, b'{"detail": "Not Found"}')

            def do_GET(self):
                self._send(404, b'{"detail": "Not Found"}')

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"


def _serve(home: str, port: int, api_url: str) -> None:  # runs in the child process
    os.environ["PREFECT_API_URL"] = api_url
    import uvicorn
    from pydantic import SecretStr

    from blocks.settings import Settings
    from blocks.webhooks import GitHubWebhook
    from deployments.gateway import create_app

    app = create_app(Settings(home=home, embedder="local"), webhook=GitHubWebhook(secrets=[SecretStr(SECRET)]))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _payload() -> bytes:
    if PAYLOAD.exists():
        return json.dumps(json.loads(PAYLOAD.read_bytes()), separators=(",", ":")).encode()
    return json.dumps({"action": "opened", "issue": {"number": 1, "title": "t", "body": "b" * 2000},
                       "repository": {"full_name": "octo/hello"}}).encode()


async def _load(port: int, rate: float, seconds: float, redeliver_every: int, connections: int = 64) -> dict:
    body = _payload()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    sent_ids: list[str] = []
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await HttpConnection.open(port))

    async def one(delivery: str, due: float) -> None:
        conn = await idle.get()
        try:
            status, _ = await conn.request("POST", "/webhooks/github", {
                "Content-Type": "application/json", "X-GitHub-Event": "issues", "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": signature}, body)
            statuses[status] += 1
            latencies.append(time.perf_counter() - due)  # from when it was due: waiting for a connection counts
            idle.put_nowait(conn)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] += 1
            idle.put_nowait(await HttpConnection.open(port))

    total = int(rate * seconds)
    start = time.perf_counter()
    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if redeliver_every and i % redeliver_every == redeliver_every - 1 and sent_ids:
            delivery = sent_ids[-1]  # a redelivery: must be acknowledged and not run twice
        else:
            delivery = str(uuid.uuid4())
            sent_ids.append(delivery)
        tasks.append(asyncio.create_task(one(delivery, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not idle.empty():
        idle.get_nowait().close()
    lat = np.array(latencies) * 1000
    return {"sent": total, "unique": len(set(sent_ids)), "elapsed_s": round(elapsed, 2),
            "achieved_rate": round(total / elapsed, 1), "statuses": dict(statuses), "errors": dict(errors),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "max_ms": round(float(lat.max()), 2),
            "ids": sent_ids}


def measure_gateway(settings, rate: float = 500, seconds: float = 30, redeliver_every: int = 100, log=print) -> dict:
    from blocks.postgres import PgVectorStore
    from tasks.migrate import ensure_schema

    pool = PgVectorStore.from_settings(settings).pool()
    ensure_schema(pool)
    with pool.connection() as conn:
        conn.execute("TRUNCATE webhook_deliveries")
    sink = Sink()
    port = _free_port()
    # A plain subprocess stopped with SIGINT exits normally, so it leaves the embedded server's user list (a
    # multiprocessing child ends with os._exit and would keep the server running after the bench).
    child = subprocess.Popen([sys.executable, "-c", f"from bench.gateway import _serve; _serve({str(settings.home)!r}, "
                              f"{port}, {sink.url!r})"], cwd=ROOT)
    try:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        log(f"gateway up on :{port}; {rate:.0f} deliveries/s for {seconds:.0f} s")
        # warm-up: a second of load, not counted
        asyncio.run(_load(port, rate, 1, 0))
        with pool.connection() as conn:
            conn.execute("TRUNCATE webhook_deliveries")
        sink.ids.clear()
        result = asyncio.run(_load(port, rate, seconds, redeliver_every))
        ids = set(result.pop("ids"))
        drain_start = time.perf_counter()
        while time.perf_counter() - drain_start < 120 and not ids <= set(sink.ids):
            time.sleep(0.2)
        result["drain_s"] = round(time.perf_counter() - drain_start, 2)
        with pool.connection() as conn:
            stored = conn.execute("SELECT count(*), count(*) FILTER (WHERE status = 'emitted')"
                                  " FROM webhook_deliveries").fetchone()
        emitted = set(sink.ids)
        result.update({"stored": stored[0], "stored_emitted": stored[1], "emitted_unique": len(emitted & ids),
                       "lost": len(ids - emitted), "emitted_twice": sum(1 for c in sink.ids.values() if c > 1),
                       "event_posts": sink.posts, "events_received": sink.received, "rate": rate, "seconds": seconds,
                       "redeliveries": result["sent"] - result["unique"], "cores": os.cpu_count()})
        return result
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
        sink.server.shutdown()


if __name__ == "__main__":  # python -m bench.gateway [rate] [seconds]
    import sys

    from blocks.settings import Settings

    home = ROOT / "bench" / ".data" / "gateway"
    r = measure_gateway(Settings(home=home, embedder="local"), *(float(a) for a in sys.argv[1:3]))
    print(json.dumps(r, indent=2))

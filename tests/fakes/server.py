"""The shared base of the fakes: a threaded stdlib HTTP server on 127.0.0.1, a fault script, a request log."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

__all__ = ["Chaos", "FakeAPI", "Fault", "Seen", "vector", "json_response"]

Response = tuple[int, dict[str, str], bytes]


def vector(text: str, dims: int, scale: float = 1.0) -> list[float]:
    """A deterministic vector for `text`: unit length times `scale`, seeded by the text's hash."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(dims)
    return (v / np.linalg.norm(v) * scale).astype(np.float32).tolist()


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


@dataclass
class Fault:
    """One scripted misbehaviour, consumed by the next request."""

    kind: str  # error | after | slow | malformed | fewer | wrong_dim | missing
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "scripted failure"
    seconds: float = 0.0
    dims: int = 0
    code: str | None = None  # vendor error code (Bedrock's x-amzn-ErrorType)

    @classmethod
    def error(cls, status: int, message: str = "scripted failure", headers: dict[str, str] | None = None,
              code: str | None = None) -> Fault:
        return cls("error", status=status, message=message, headers=headers or {}, code=code)

    @classmethod
    def after(cls, status: int = 502, message: str = "Bad Gateway") -> Fault:
        """Do the work (state changes), then answer `status` as if a proxy lost the response."""
        return cls("after", status=status, message=message)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally, but only after `seconds` (longer than the client's timeout)."""
        return cls("slow", seconds=seconds)

    @classmethod
    def malformed(cls) -> Fault:
        """200 with a truncated JSON body."""
        return cls("malformed")

    @classmethod
    def fewer(cls) -> Fault:
        """200 with one vector less than texts."""
        return cls("fewer")

    @classmethod
    def wrong_dim(cls, dims: int) -> Fault:
        """200 with vectors of `dims` dimensions."""
        return cls("wrong_dim", dims=dims)

    @classmethod
    def missing(cls) -> Fault:
        """200 with valid JSON that lacks the vectors."""
        return cls("missing")


@dataclass
class Chaos:
    """Random faults: each request (with no scripted fault) fails with probability `rate`, as one of `kinds` drawn
    evenly: "429" (rate limited, Retry-After of `retry_after_ms`), "500", or "hang" (answers only after `hang_s`,
    past the client's timeout). Seeded, so requests arriving in the same order meet the same faults."""

    rate: float
    seed: int = 0
    kinds: tuple[str, ...] = ("429", "500", "hang")
    retry_after_ms: int = 50
    hang_s: float = 2.0
    counts: Counter = field(default_factory=Counter)  # faults served, by kind, and "ok"

    def __post_init__(self) -> None:
        if not 0 <= self.rate < 1 or not self.kinds or set(self.kinds) - {"429", "500", "hang"}:
            raise ValueError(f"Chaos: rate must be in [0, 1) and kinds among 429, 500, hang (got {self.rate}, "
                             f"{self.kinds})")
        self._rng = random.Random(self.seed)

    def draw(self) -> Fault | None:
        """The next request's fault (callers hold the fake's lock)."""
        if self._rng.random() >= self.rate:
            self.counts["ok"] += 1
            return None
        kind = self._rng.choice(self.kinds)
        self.counts[kind] += 1
        if kind == "429":
            # OpenAI sends retry-after-ms beside the standard whole-second Retry-After; clients prefer the former.
            return Fault.error(429, "Rate limit reached (chaos)",
                               headers={"retry-after-ms": str(self.retry_after_ms), "Retry-After": "1"})
        if kind == "500":
            return Fault.error(500, "The server had an error while processing your request (chaos)")
        return Fault.slow(self.hang_s)


@dataclass
class Seen:
    """A request the fake received."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or the raw bytes when not JSON


class FakeAPI:
    """Subclasses implement answer(); errors render through error(). Use as a context manager."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.faults: deque[Fault] = deque()
        self.latency = 0.0  # seconds added to every answer (to observe concurrency)
        self.in_flight = 0
        self.max_in_flight = 0
        self.chaos: Chaos | None = None  # random faults (set by the test), after any scripted ones
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def answer(self, seen: Seen, fault: Fault | None) -> Response:  # pragma: no cover - overridden
        raise NotImplementedError

    def error(self, fault: Fault) -> Response:  # pragma: no cover - overridden
        raise NotImplementedError

    def reset(self) -> None:
        """Forget requests, faults and latency (a fake shared by several tests)."""
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            self.latency = 0.0
            self.max_in_flight = 0
            self.chaos = None

    def script(self, *faults: Fault) -> None:
        """Queue faults; each request takes the next one, then requests succeed again."""
        with self._lock:
            self.faults.extend(faults)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeAPI:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real clients expect
            disable_nagle_algorithm = True  # else headers and body wait ~40 ms for a delayed ACK on loopback

            def do_POST(self) -> None:
                api._handle(self)

            do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False  # do not wait for a scripted slow answer or an idle keep-alive connection

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and hung up is expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        seen = Seen(handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}, body)
        with self._lock:
            self.requests.append(seen)
            fault = self.faults.popleft() if self.faults else (self.chaos.draw() if self.chaos else None)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.latency + (fault.seconds if fault and fault.kind == "slow" else 0.0))
            if fault and fault.kind == "error":
                status, headers, payload = self.error(fault)
            elif fault and fault.kind == "after":
                self.answer(seen, None)
                status, headers, payload = self.error(fault)
            elif fault and fault.kind == "malformed":
                status, headers, payload = 200, {"Content-Type": "application/json"}, b'{"data": [{"embedding": [0.1,'
            else:
                status, headers, payload = self.answer(seen, fault)
        finally:
            with self._lock:
                self.in_flight -= 1
        try:
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout test)

"""Per-key token buckets and failed-authentication lockout, in this process's memory.

One gateway process owns its counters; with several gateway processes each enforces its share (run one, or put
the limit in front of them). Written by hand because it is 40 lines with no I/O; the libraries that do this
(slowapi/limits) bring storage backends we do not need.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

__all__ = ["AuthLockout", "RateLimiter"]


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token bucket per key: `rate_per_minute` refill, `burst` capacity (defaults 1,000/min, 3,000)."""

    def __init__(self, rate_per_minute: int = 1000, burst: int = 3000, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate_per_minute, burst, clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rate_per_minute: int | None = None, burst: int | None = None) -> float:
        """0 when allowed (a token is taken), else the seconds until the next token."""
        rate = (rate_per_minute or self.rate) / 60.0
        capacity = burst or self.burst
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(capacity, now)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / rate


class AuthLockout:
    """After `max_failures` failed authentications from one client within `window_s`, refuse it for `lock_s`."""

    def __init__(self, max_failures: int = 10, window_s: float = 60, lock_s: float = 300, clock=time.monotonic):
        self.max_failures, self.window_s, self.lock_s, self.clock = max_failures, window_s, lock_s, clock
        self._failures: dict[str, list[float]] = {}
        self._locked: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked_for(self, client: str) -> float:
        """Seconds this client stays locked out (0: not locked)."""
        with self._lock:
            until = self._locked.get(client, 0.0)
            left = until - self.clock()
            if left <= 0 and client in self._locked:
                del self._locked[client]
            return max(0.0, left)

    def failed(self, client: str) -> None:
        now = self.clock()
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if now - t < self.window_s] + [now]
            if len(recent) >= self.max_failures:
                self._locked[client] = now + self.lock_s
                recent = []
            self._failures[client] = recent

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

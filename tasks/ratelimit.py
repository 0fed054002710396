"""Admission state in PostgreSQL, shared by every gateway process: token buckets, failed-authentication lockouts,
and which keys authenticated from which address (migration 015).

Each request costs one statement, atomic under the bucket's row lock (INSERT ... ON CONFLICT DO UPDATE ...
RETURNING), timed by the database's clock, so two replicas grant a key its quota once and hold a lockout
together. Why PostgreSQL rather than Redis: it is already the one store every replica reaches; a request already
pays a round trip to it for the key; an UNLOGGED table writes no WAL. (slowapi/limits have a Redis or memcached
backend, none for PostgreSQL; the three statements below are the whole algorithm.) Its cost, measured by
`bench/admission.py` (docs/benchmarks.md, "admission"): about 0.2 ms per `admit` at p50, a p50 of +0.1 to +0.5 ms
per REST request against the in-memory stand-in, on the shared 2-core machine under load.

The lockout: `max_failures` failed authentications from one client address in quick succession lock that address
for `lockout_s` (a score: +1 a failure, decaying at max_failures per `failure_window_s`; the failure that brings
it above max_failures - 1 locks). A locked address still admits the keys that authenticated
from it within `trusted_for_s` — so one client behind a proxy's shared address cannot lock out the proxy's known
users — and answers every other key, valid or not, the same 429: a locked address learns nothing from its guesses.
A success never lowers the score (a valid key cannot launder guesses).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from psycopg_pool import ConnectionPool

from blocks.settings import AdmissionSettings

__all__ = ["Admission", "Verdict"]

log = logging.getLogger("devmesh.admission")
_NOW = "coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp()))"
_REFILLED = "least(%(burst)s::float8, b.tokens + greatest(EXCLUDED.stamp - b.stamp, 0) * %(rate)s)"
_UPSERT_BUCKET = f"""
    ON CONFLICT (bucket) DO UPDATE SET
        tokens = CASE WHEN {_REFILLED} >= 1 THEN {_REFILLED} - 1 ELSE {_REFILLED} END,
        granted = {_REFILLED} >= 1,
        full_at = greatest(b.stamp, EXCLUDED.stamp) + (%(burst)s - ({_REFILLED} - CASE WHEN {_REFILLED} >= 1
                  THEN 1 ELSE 0 END)) / %(rate)s,
        stamp = greatest(b.stamp, EXCLUDED.stamp)
    RETURNING b.granted, b.tokens"""

TAKE = f"""
    INSERT INTO admission_buckets AS b (bucket, tokens, stamp, full_at, granted)
    SELECT %(bucket)s, %(burst)s - 1, t.now, t.now + 1 / %(rate)s, true FROM (SELECT {_NOW} AS now) t
    {_UPSERT_BUCKET}"""

ADMIT = f"""
    WITH t AS (SELECT {_NOW} AS now),
    gate AS (
        SELECT t.now, greatest(coalesce(f.locked_until, 0) - t.now, 0) AS locked_for,
               coalesce(f.locked_until, 0) <= t.now OR EXISTS (
                   SELECT 1 FROM admission_seen s WHERE s.address = %(address)s AND s.key_id = %(key_id)s
                   AND s.seen_at > t.now - %(trusted_for)s) AS open
        FROM t LEFT JOIN admission_failures f ON f.address = %(address)s),
    take AS (
        INSERT INTO admission_buckets AS b (bucket, tokens, stamp, full_at, granted)
        SELECT %(bucket)s, %(burst)s - 1, gate.now, gate.now + 1 / %(rate)s, true FROM gate WHERE gate.open
        {_UPSERT_BUCKET}),
    mark AS (
        INSERT INTO admission_seen AS s (address, key_id, seen_at)
        SELECT %(address)s, %(key_id)s, gate.now FROM gate WHERE gate.open
        ON CONFLICT (address, key_id) DO UPDATE SET seen_at = EXCLUDED.seen_at
        WHERE s.seen_at < EXCLUDED.seen_at - 60)
    SELECT gate.open, gate.locked_for, take.granted, take.tokens FROM gate LEFT JOIN take ON true"""

_DECAYED = "greatest(f.score - greatest(EXCLUDED.stamp - f.stamp, 0) * %(decay)s, 0) + 1"
FAIL = f"""
    WITH t AS (SELECT {_NOW} AS now),
    before AS (SELECT coalesce(max(locked_until), 0) AS until FROM admission_failures WHERE address = %(address)s),
    up AS (
        INSERT INTO admission_failures AS f (address, score, stamp, locked_until)
        SELECT %(address)s, 1, t.now, CASE WHEN 1 > %(max)s - 1 THEN t.now + %(lock)s ELSE 0 END FROM t
        ON CONFLICT (address) DO UPDATE SET
            score = CASE WHEN f.locked_until > EXCLUDED.stamp THEN f.score
                         WHEN {_DECAYED} > %(max)s - 1 THEN 0 ELSE {_DECAYED} END,
            locked_until = CASE WHEN f.locked_until > EXCLUDED.stamp THEN f.locked_until
                                WHEN {_DECAYED} > %(max)s - 1 THEN EXCLUDED.stamp + %(lock)s ELSE f.locked_until END,
            stamp = CASE WHEN f.locked_until > EXCLUDED.stamp THEN f.stamp ELSE greatest(f.stamp, EXCLUDED.stamp) END
        RETURNING f.locked_until)
    SELECT greatest(before.until - t.now, 0), greatest(up.locked_until - t.now, 0) FROM t, before, up"""

PRUNE = f"""
    WITH t AS (SELECT {_NOW} AS now),
    buckets AS (DELETE FROM admission_buckets b USING t WHERE b.full_at < t.now RETURNING 1),
    failures AS (DELETE FROM admission_failures f USING t WHERE f.locked_until < t.now
                 AND f.score - (t.now - f.stamp) * %(decay)s <= 0 RETURNING 1),
    seen AS (DELETE FROM admission_seen s USING t WHERE s.seen_at < t.now - %(trusted_for)s RETURNING 1)
    SELECT (SELECT count(*) FROM buckets) + (SELECT count(*) FROM failures) + (SELECT count(*) FROM seen)"""


@dataclass(frozen=True)
class Verdict:
    """What the admission state says of an authenticated key: `locked_for` > 0 when its address is locked out and
    the key did not authenticate from there recently; `wait` > 0 when its bucket is empty (seconds to a token)."""

    locked_for: float = 0.0
    wait: float = 0.0


class Admission:
    """The shared admission state. `pool` returns the store's pool (found again on each call, so an embedded
    server that restarted is joined again); `clock` (epoch seconds) replaces the database's clock in tests."""

    def __init__(self, pool: Callable[[], ConnectionPool], settings: AdmissionSettings | None = None,
                 clock: Callable[[], float] | None = None):
        self.pool, self.settings, self.clock = pool, settings or AdmissionSettings(), clock

    def _params(self, **extra) -> dict:
        s = self.settings
        return {"now": self.clock() if self.clock else None, "decay": s.max_failures / s.failure_window_s,
                "trusted_for": s.trusted_for_s, **extra}

    def _rate(self, rate_per_minute: int | None, burst: int | None) -> dict:
        return {"rate": (rate_per_minute or self.settings.rate_per_minute) / 60.0,
                "burst": burst or self.settings.burst}

    def admit(self, address: str, key_id: str, rate_per_minute: int | None = None,
              burst: int | None = None) -> Verdict:
        """Check the address's lockout and take a token from the key's bucket (`key:<id>`), in one statement."""
        params = self._params(address=address, key_id=key_id, bucket=f"key:{key_id}",
                              **self._rate(rate_per_minute, burst))
        with self.pool().connection() as conn:
            is_open, locked_for, granted, tokens = conn.execute(ADMIT, params).fetchone()
        if not is_open:
            return Verdict(locked_for=max(locked_for, 0.001))
        return Verdict(wait=0.0 if granted else (1 - tokens) / params["rate"])

    def take(self, bucket: str, rate_per_minute: int | None = None, burst: int | None = None) -> float:
        """0 when a token was taken from `bucket`, else the seconds until the next one."""
        params = self._params(bucket=bucket, **self._rate(rate_per_minute, burst))
        with self.pool().connection() as conn:
            granted, tokens = conn.execute(TAKE, params).fetchone()
        return 0.0 if granted else (1 - tokens) / params["rate"]

    def failed(self, address: str) -> float:
        """Count a failed authentication from `address`; the seconds it was already locked for (0: it was not, and
        this failure is answered as a plain 401 even when it locks the address from now on)."""
        params = self._params(address=address, max=self.settings.max_failures, lock=self.settings.lockout_s)
        with self.pool().connection() as conn:
            already, locked = conn.execute(FAIL, params).fetchone()
        if locked and not already:
            log.warning("client address %s locked out for %.0f s: %s failed authentications in quick succession",
                        address, locked, self.settings.max_failures)
        return already

    def prune(self) -> int:
        """Forget full buckets, spent failures and old sightings; returns the rows deleted."""
        with self.pool().connection() as conn:
            return conn.execute(PRUNE, self._params()).fetchone()[0]


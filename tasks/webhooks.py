"""Webhook deliveries (the outbox between the gateway and Prefect): record once, emit later, process once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from blocks.errors import AppError, InputError

__all__ = ["CLAIM_LEASE", "RETENTION", "BatchLease", "ClaimLost", "Lease", "claim_batch", "claim_processing",
           "UnstorablePayload", "delivery_ids", "get_delivery",
           "mark_emitted", "mark_emit_failed", "pending_count", "pending_deliveries", "prune_deliveries",
           "stale_deliveries",
           "record_delivery"]

RETENTION = timedelta(days=7)  # redeliveries within this window are recognised
CLAIM_LEASE = timedelta(minutes=10)  # a claimed delivery no other run may take over before this
INSERT = """
INSERT INTO webhook_deliveries (delivery_id, source, event, action, repository, tenant_id, payload, route, status)
SELECT d, %(source)s, %(event)s, %(action)s, %(repository)s, t, %(payload)s::jsonb, %(route)s, %(status)s
FROM unnest(%(ids)s::text[], %(tenants)s::text[]) AS r(d, t)
ON CONFLICT (delivery_id) DO NOTHING"""


class UnstorablePayload(InputError):
    """A delivery's JSON that PostgreSQL's jsonb cannot hold (an escaped NUL); `reason` says why, `item` where."""

    def __init__(self, reason: str, *, item: str) -> None:
        self.reason = reason
        super().__init__(reason, item=item)


def delivery_ids(delivery_id: str, tenants: list[str]) -> list[str]:
    """One row per tenant a delivery reaches: its own id for one tenant, '<id>:<tenant>' for each of several."""
    return [delivery_id] if len(tenants) == 1 else [f"{delivery_id}:{t}" for t in tenants]


async def record_delivery(pool: AsyncConnectionPool, *, delivery_id: str, event: str, action: str | None,
                          repository: str | None, tenants: list[str], payload_json: str, route: str | None,
                          source: str = "github", unbound: bool = False) -> bool:
    """Persist a delivery (its body as received, already checked to be JSON) once per tenant it reaches; False when
    it was seen before (a redelivery: acknowledge, do not run again). `unbound`: verified, but for no tenant it may
    reach (recorded in `tenants[0]`, the operator's, and never run). Concurrent requests commit on separate pooled
    connections, and PostgreSQL flushes their WAL together; an explicit group-commit queue measured slower here."""
    status = "unbound" if unbound else "received" if route else "ignored"
    try:
        async with pool.connection() as conn:
            cur = await conn.execute(INSERT, {
                "ids": delivery_ids(delivery_id, tenants), "tenants": tenants, "source": source, "event": event,
                "action": action, "repository": repository, "payload": payload_json,
                "route": None if unbound else route, "status": status})
            return cur.rowcount > 0
    except psycopg.errors.UntranslatableCharacter:  # jsonb cannot hold \u0000: nothing was written
        raise UnstorablePayload("the payload contains \\u0000, which cannot be stored", item="body") from None


async def pending_count(pool: AsyncConnectionPool) -> int:
    """Deliveries recorded and not yet emitted as Prefect events."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM webhook_deliveries WHERE status = 'received'")
        return (await cur.fetchone())[0]


async def pending_deliveries(pool: AsyncConnectionPool, limit: int = 100, max_payload: int = 256 * 1024
                             ) -> list[dict[str, Any]]:
    """Accepted deliveries not yet emitted to Prefect, oldest first; payloads over `max_payload` bytes are left
    out (the flow reads them from the table)."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT delivery_id, event, action, repository, tenant_id, route, received_at,"
                          " pg_column_size(payload) AS payload_bytes, CASE WHEN pg_column_size(payload) <= %s"
                          " THEN payload END AS payload FROM webhook_deliveries WHERE status = 'received'"
                          " ORDER BY received_at LIMIT %s", [max_payload, limit])
        return await cur.fetchall()


async def mark_emitted(pool: AsyncConnectionPool, delivery_ids: list[str]) -> None:
    async with pool.connection() as conn:
        await conn.execute("UPDATE webhook_deliveries SET status = 'emitted', emitted_at = now(),"
                           " attempts = attempts + 1 WHERE delivery_id = ANY(%s) AND status = 'received'",
                           [delivery_ids])


async def mark_emit_failed(pool: AsyncConnectionPool, delivery_ids: list[str], error: str) -> None:
    async with pool.connection() as conn:
        await conn.execute("UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = %s"
                           " WHERE delivery_id = ANY(%s)", [error[:1000], delivery_ids])


def get_delivery(pool: ConnectionPool, delivery_id: str) -> dict[str, Any] | None:
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM webhook_deliveries WHERE delivery_id = %s", [delivery_id]).fetchone()


def claim_processing(pool: ConnectionPool, delivery_id: str, flow_run_id: str | None,
                     lease: timedelta = CLAIM_LEASE) -> dict[str, Any] | None:
    """The delivery, claimed by this run; None when it was already processed (an event emitted twice) or another
    run claimed it less than `lease` ago (two runs of one delivery at once, a failed one re-run twice included). The
    same flow run may claim again (Prefect retried it). A run holds its claim by renewing it (Lease.renew) and
    gives it up when it finishes, so a failed delivery can be re-run at once."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("UPDATE webhook_deliveries SET flow_run_id = %s, claimed_at = clock_timestamp()"
                    " WHERE delivery_id = %s AND status IN ('received', 'emitted', 'failed') AND (claimed_at IS NULL"
                    " OR claimed_at < now() - %s OR flow_run_id = %s) RETURNING *",
                    [flow_run_id, delivery_id, lease, flow_run_id])
        return cur.fetchone()


class ClaimLost(AppError):
    """Another run took over a delivery this run had claimed (the lease passed without renewal): this run stops
    writing; the other one processes the delivery."""


# Fenced by the claim itself: the flow run (None outside one) and the claimed_at this run last set.
_FENCE = "delivery_id = %(id)s AND flow_run_id IS NOT DISTINCT FROM %(run)s AND claimed_at = %(at)s"


@dataclass
class Lease:
    """This run's claim on a delivery (from claim_processing): renewed while the run progresses; every renewal and
    the finish succeed only while the claim is still this run's, else ClaimLost."""

    pool: ConnectionPool
    delivery_id: str
    flow_run_id: Any
    claimed_at: datetime
    lease: timedelta = CLAIM_LEASE

    @classmethod
    def of(cls, pool: ConnectionPool, claimed: dict[str, Any], lease: timedelta = CLAIM_LEASE) -> "Lease":
        return cls(pool, claimed["delivery_id"], claimed["flow_run_id"], claimed["claimed_at"], lease)

    def _params(self, **more) -> dict:
        return {"id": self.delivery_id, "run": self.flow_run_id, "at": self.claimed_at, **more}

    def renew(self) -> None:
        """Restart the lease; ClaimLost when another run claimed the delivery meanwhile."""
        with self.pool.connection() as conn:
            row = conn.execute(f"UPDATE webhook_deliveries SET claimed_at = clock_timestamp() WHERE {_FENCE}"
                               " RETURNING claimed_at", self._params()).fetchone()
        if row is None:
            raise self._lost()
        self.claimed_at = row[0]

    def finish(self, error: str | None = None) -> None:
        """Mark the delivery processed (or failed with `error`) and give up the claim; ClaimLost, with nothing
        marked, when another run holds it now."""
        with self.pool.connection() as conn:
            done = conn.execute(f"UPDATE webhook_deliveries SET status = %(status)s, processed_at = now(),"
                                f" last_error = %(error)s, claimed_at = NULL, handled = handled + 1 WHERE {_FENCE}",
                                self._params(status="failed" if error else "processed", error=error)).rowcount
        if not done:
            raise self._lost()

    def _lost(self) -> ClaimLost:
        row = get_delivery(self.pool, self.delivery_id) or {}
        holder = row.get("flow_run_id")
        return ClaimLost(f"webhook delivery {self.delivery_id}: this run's claim passed to "
                         f"{f'flow run {holder}' if holder else 'another run'} (status {row.get('status')}) after "
                         f"more than {self.lease} without renewal; this run stopped writing")


CLAIM_BATCH = """
WITH batch AS (
  SELECT delivery_id FROM webhook_deliveries
  WHERE route = %(route)s AND status = 'emitted'
    AND (claimed_at IS NULL OR claimed_at < now() - %(lease)s OR flow_run_id = %(run)s)
  ORDER BY received_at, delivery_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
UPDATE webhook_deliveries w SET flow_run_id = %(run)s, claimed_at = statement_timestamp()
FROM batch WHERE w.delivery_id = batch.delivery_id RETURNING w.*"""


def claim_batch(pool: ConnectionPool, route: str, claimer: str, limit: int = 100,
                lease: timedelta = CLAIM_LEASE) -> "BatchLease | None":
    """Up to `limit` deliveries of `route` nobody holds (emitted to Prefect, oldest first), claimed at once by
    `claimer` (the flow run's id, or any uuid outside a flow run); None when there are none. Rows another run is
    claiming right now are skipped (FOR UPDATE SKIP LOCKED), so concurrent handlers never share a delivery; a
    claim whose lease passed without renewal (its run crashed) is taken over."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(CLAIM_BATCH, {"route": route, "lease": lease, "limit": limit, "run": claimer}).fetchall()
    if not rows:
        return None
    rows.sort(key=lambda r: (r["received_at"], r["delivery_id"]))
    return BatchLease(pool, rows, claimer, rows[0]["claimed_at"], lease)


def claimable(pool: ConnectionPool, route: str, lease: timedelta = CLAIM_LEASE) -> int:
    """How many deliveries of `route` a handler run could claim now (emitted, nobody holds them)."""
    with pool.connection() as conn:
        return conn.execute("SELECT count(*) FROM webhook_deliveries WHERE route = %s AND status = 'emitted'"
                            " AND (claimed_at IS NULL OR claimed_at < now() - %s)", [route, lease]).fetchone()[0]


_BATCH_FENCE = "delivery_id = ANY(%(ids)s) AND flow_run_id = %(run)s AND claimed_at = %(at)s"


@dataclass
class BatchLease:
    """A handler run's claim on a batch of deliveries (claim_batch): renewed together; each delivery is finished
    (processed or failed) once, fenced by the claim, so a run that lost its claim marks nothing."""

    pool: ConnectionPool
    deliveries: list[dict[str, Any]]
    flow_run_id: Any
    claimed_at: datetime
    lease: timedelta = CLAIM_LEASE

    @property
    def ids(self) -> list[str]:
        return [d["delivery_id"] for d in self.deliveries]

    def _params(self, ids: list[str], **more) -> dict:
        return {"ids": ids, "run": self.flow_run_id, "at": self.claimed_at, **more}

    def renew(self) -> None:
        """Restart the lease of the deliveries not yet finished; ClaimLost when any of them was taken over."""
        ids = [d["delivery_id"] for d in self.deliveries if not d.get("_done")]
        if not ids:
            return
        with self.pool.connection() as conn:
            rows = conn.execute(f"UPDATE webhook_deliveries SET claimed_at = statement_timestamp() WHERE "
                                f"{_BATCH_FENCE} RETURNING claimed_at", self._params(ids)).fetchall()
        if len(rows) != len(ids):
            raise ClaimLost(f"webhook deliveries: {len(ids) - len(rows)} of the {len(ids)} this run claimed passed "
                            f"to another run after more than {self.lease} without renewal; this run stopped writing")
        self.claimed_at = rows[0][0]

    def finish(self, delivery_ids: list[str], error: str | None = None) -> None:
        """Mark these deliveries processed (or failed with `error`) and release them; ClaimLost, with nothing
        marked, when any of them is another run's now."""
        if not delivery_ids:
            return
        with self.pool.connection() as conn, conn.transaction():
            done = conn.execute(f"UPDATE webhook_deliveries SET status = %(status)s, processed_at = now(),"
                                f" last_error = %(error)s, claimed_at = NULL, handled = handled + 1"
                                f" WHERE {_BATCH_FENCE}",
                                self._params(delivery_ids, status="failed" if error else "processed",
                                             error=error)).rowcount
            if done != len(set(delivery_ids)):
                raise ClaimLost(f"webhook deliveries: {len(set(delivery_ids)) - done} of {len(delivery_ids)} passed "
                                "to another run before this run finished them; none marked")
        finishing = set(delivery_ids)
        for d in self.deliveries:
            if d["delivery_id"] in finishing:
                d["_done"] = True

    def release(self, delivery_ids: list[str]) -> None:
        """Give up the claim on those of these deliveries not finished yet (nothing was done with them): the next
        handler claims them at once instead of after the lease."""
        wanted = set(delivery_ids)
        ids = [d["delivery_id"] for d in self.deliveries if d["delivery_id"] in wanted and not d.get("_done")]
        if ids:
            with self.pool.connection() as conn:
                conn.execute(f"UPDATE webhook_deliveries SET claimed_at = NULL WHERE {_BATCH_FENCE}", self._params(ids))
            for d in self.deliveries:
                if d["delivery_id"] in wanted:
                    d["_done"] = True


def stale_deliveries(pool: ConnectionPool, older_than: timedelta, limit: int = 500) -> list[str]:
    """Deliveries emitted more than `older_than` ago that no run has finished (a trigger missed the event, or the
    run crashed): the redrive flow processes them directly."""
    with pool.connection() as conn:
        rows = conn.execute("SELECT delivery_id FROM webhook_deliveries WHERE status = 'emitted' AND route IS NOT NULL"
                            " AND emitted_at < now() - %s ORDER BY received_at LIMIT %s", [older_than, limit])
        return [r[0] for r in rows]


def prune_deliveries(pool: ConnectionPool, older_than: timedelta = RETENTION) -> int:
    """Forget deliveries older than the retention window (they can no longer be redelivered by GitHub)."""
    with pool.connection() as conn:
        return conn.execute("DELETE FROM webhook_deliveries WHERE received_at < now() - %s"
                            " AND status IN ('processed', 'ignored', 'failed', 'unbound')", [older_than]).rowcount

"""Switching a tenant's default embedding model: backfilling the new one, then an atomic switch (the registry of
models is tasks/registry.py)."""

from __future__ import annotations

import contextvars

import numpy as np
from prefect import task
from prefect.cache_policies import NONE
from psycopg import Connection
from psycopg_pool import ConnectionPool

from blocks.embedders.base import Embedder
from blocks.errors import ConfigError
from blocks.postgres import PgVectorStore
from tasks.embed import embed_texts

__all__ = [
    "start_switch", "missing_chunks", "store_backfill",
    "finish_switch", "fail_switch", "embed_missing_wave",
]

RUNNING_SWITCH = "SELECT id, model_id, cursor FROM model_switches WHERE tenant_id = %(tenant)s AND status = 'running'"
START_SWITCH = """
INSERT INTO model_switches (tenant_id, model_id, status) VALUES (%(tenant)s, %(model_id)s, 'running') RETURNING id, cursor"""
# Keyset over the primary key: each batch reads from the cursor on, so cost does not grow with progress.
MISSING_CHUNKS = """
SELECT c.id, c.content FROM chunks c
WHERE c.tenant_id = %(tenant)s AND c.id > %(after)s
  AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.chunk_id = c.id AND e.model_id = %(model_id)s)
ORDER BY c.id LIMIT %(limit)s"""
ADVANCE_SWITCH = "UPDATE model_switches SET cursor = %(cursor)s, embedded = embedded + %(n)s WHERE id = %(switch_id)s"
# The switch happens only if nothing is missing at that instant (an ingest may have added chunks meanwhile).
SWITCH_DEFAULT = """
WITH ready AS (
  SELECT NOT EXISTS (
    SELECT 1 FROM chunks c WHERE c.tenant_id = %(tenant)s
      AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.chunk_id = c.id AND e.model_id = %(model_id)s)) AS ok),
switched AS (
  INSERT INTO tenant_models (tenant_id, default_model_id) SELECT %(tenant)s, %(model_id)s FROM ready WHERE ok
  ON CONFLICT (tenant_id) DO UPDATE SET default_model_id = excluded.default_model_id, updated_at = now()
  RETURNING 1)
UPDATE model_switches SET status = 'completed', finished_at = now()
WHERE id = %(switch_id)s AND EXISTS (SELECT 1 FROM switched) RETURNING id"""
FAIL_SWITCH = "UPDATE model_switches SET status = 'failed', finished_at = now(), error = %(error)s WHERE id = %(switch_id)s"
COPY_EMBEDDINGS = "COPY embeddings (chunk_id, model_id, tenant_id, embedding) FROM STDIN WITH (FORMAT BINARY)"


def start_switch(pool: ConnectionPool, tenant: str, model_id: int) -> tuple[int, int]:
    """(switch id, cursor): resume the tenant's running switch to this model, or start one."""
    with pool.connection() as conn:
        row = conn.execute(RUNNING_SWITCH, {"tenant": tenant}).fetchone()
        if row is not None:
            if row[1] != model_id:
                raise ConfigError(f"tenant {tenant!r} is already switching to model id {row[1]}; finish or fail it first")
            return row[0], row[2]
        return tuple(conn.execute(START_SWITCH, {"tenant": tenant, "model_id": model_id}).fetchone())


def missing_chunks(conn: Connection, tenant: str, model_id: int, after: int, limit: int) -> list[tuple[int, str]]:
    """Up to `limit` (chunk id, text) after `after` that have no embedding in the model."""
    return conn.execute(MISSING_CHUNKS, {"tenant": tenant, "model_id": model_id, "after": after, "limit": limit}).fetchall()


def store_backfill(conn: Connection, tenant: str, model_id: int, switch_id: int, ids: list[int], vectors: np.ndarray) -> None:
    """COPY one wave of vectors and advance the switch's cursor, in one transaction."""
    with conn.transaction():
        with conn.cursor().copy(COPY_EMBEDDINGS) as copy:
            copy.set_types(["int8", "int4", "text", "vector"])
            for chunk_id, vector in zip(ids, vectors):
                copy.write_row((chunk_id, model_id, tenant, vector))
        conn.execute(ADVANCE_SWITCH, {"cursor": max(ids), "n": len(ids), "switch_id": switch_id})


def finish_switch(pool: ConnectionPool, tenant: str, model_id: int, switch_id: int) -> bool:
    """Make the model the tenant's default iff every chunk has an embedding in it; True when switched."""
    with pool.connection() as conn:
        return conn.execute(SWITCH_DEFAULT, {"tenant": tenant, "model_id": model_id, "switch_id": switch_id}).fetchone() is not None


def fail_switch(pool: ConnectionPool, switch_id: int, error: str) -> None:
    """Mark a switch failed (the default model stays as it was)."""
    with pool.connection() as conn:
        conn.execute(FAIL_SWITCH, {"switch_id": switch_id, "error": error[:2000]})


@task(name="embed-missing", task_run_name="backfill-{switch_id}-after-{after}", cache_policy=NONE)
def embed_missing_wave(store: PgVectorStore, embedder: Embedder, tenant: str, model_id: int, switch_id: int,
                       after: int, batch: int, concurrency: int, calls_per_slot: int = 8) -> tuple[int, int]:
    """Embed up to batch × concurrency × calls_per_slot missing chunks with `concurrency` provider calls in flight.

    Several calls per slot keep the provider busy while the pool refills; one COPY per task run keeps the
    database's share (and Prefect's ~20 ms per task run) small against the provider's latency.
    """
    from concurrent.futures import ThreadPoolExecutor

    pool = store.pool()
    with pool.connection() as conn:
        rows = missing_chunks(conn, tenant, model_id, after, batch * concurrency * calls_per_slot)
        if not rows:
            return 0, after
        groups = [rows[i : i + batch] for i in range(0, len(rows), batch)]
        with ThreadPoolExecutor(max_workers=concurrency) as executor:
            # Each call runs in a copy of this context, so usage collectors (ContextVars) see the calls.
            futures = [executor.submit(contextvars.copy_context().run, embed_texts, embedder, [t for _, t in g])
                       for g in groups]
            arrays = [f.result() for f in futures]
        store_backfill(conn, tenant, model_id, switch_id, [cid for cid, _ in rows], np.concatenate(arrays))
    return len(rows), rows[-1][0]

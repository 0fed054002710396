"""Switch a tenant's embedding model: backfill what is missing in batches, then switch atomically."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from blocks.embedders import load_embedder
from blocks.embedders.hosted import collect_usage
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from tasks.migrate import ensure_schema
from tasks.registry import ensure_model, set_embedder_name, tenant_model
from tasks.usage import record_usage
from tasks.models import embed_missing_wave, fail_switch, finish_switch, start_switch
from tasks.runtime import call, in_flow_run
from tasks.indexes import (
    analyze, build_model_index, count_model_rows, drop_model_index, index_lock, index_memory_cap_mb, model_index_exists,
)

__all__ = ["SwitchModelRequest", "switch_model", "run_switch"]


class SwitchModelRequest(BaseModel):
    """Which tenant moves to which embedder, and how hard to drive the provider."""

    model_config = ConfigDict(extra="forbid")
    tenant: str = Field("default", min_length=1, max_length=128)
    embedder: str = Field(..., description="'local' or an embedder block slug; its model becomes the default.")
    batch: int = Field(128, ge=1, le=4096, description="Texts per provider call (capped at the embedder's max).")
    concurrency: int = Field(4, ge=1, le=64, description="Provider calls in flight at once.")


def run_switch(request: SwitchModelRequest, settings: Settings | None = None) -> dict:
    """Backfill the new model from the switch's cursor (resumable), then make it the default when complete."""
    settings = settings or Settings()
    store = PgVectorStore.from_settings(settings)
    pool = store.pool()
    ensure_schema(pool)
    embedder = load_embedder(request.embedder)
    model_id = ensure_model(pool, embedder.model_id, embedder.dimensions)
    set_embedder_name(pool, model_id, request.embedder)
    current = tenant_model(pool, request.tenant)
    if current is not None and current.id == model_id:
        return {"tenant": request.tenant, "model": embedder.model_id, "switched": False, "embedded": 0,
                "reason": "already the default"}
    switch_id, cursor = start_switch(pool, request.tenant, model_id)
    batch = min(request.batch, embedder.max_batch)
    # Nobody searches a model before its switch completes, so an unused model loads without its index
    # (pgvector builds an index far faster than it inserts into one) and gets it before the switch. The model's
    # index lock is held from the drop to the build, so that an ingest of this model meanwhile does not build it
    # (tasks.indexes.bulk_load). Not getting it: a bulk load of the model is under way and builds the index itself.
    lock = index_lock(pool, model_id, keyword=False)
    if lock is not None:
        if model_index_exists(lock.conn, model_id) and count_model_rows(lock.conn, model_id) == 0:
            drop_model_index(lock.conn, model_id)
        if model_index_exists(lock.conn, model_id):
            lock.close()
            lock = None
    cap = index_memory_cap_mb(store, settings.ingest.index_memory_mb)
    try:
        with collect_usage() as usages:
            try:
                embedded, index_seconds = _backfill(store, pool, embedder, request, model_id, switch_id, cursor,
                                                    batch, lock, cap)
            finally:
                record_usage(pool, request.tenant, usages)
    except BaseException as exc:
        fail_switch(pool, switch_id, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if lock is not None:
            lock.close()
    if in_flow_run():
        get_run_logger().info("tenant %s now searches %s (%s chunks backfilled)", request.tenant, embedder.model_id, embedded)
    return {"tenant": request.tenant, "model": embedder.model_id, "switched": True, "embedded": embedded,
            "previous": current.name if current else None, "index_seconds": round(index_seconds, 3)}


def _backfill(store, pool, embedder, request, model_id, switch_id, cursor, batch, lock, cap) -> tuple[int, float]:
    """Waves of provider calls until nothing is missing, the index (re)built, and the switch made."""
    embedded, index_seconds, built = 0, 0.0, lock is None
    while True:
        n, cursor = call(embed_missing_wave, store, embedder, request.tenant, model_id, switch_id, cursor, batch,
                         request.concurrency)
        embedded += n
        if n:
            continue
        if not built:
            started = time.perf_counter()
            build_model_index(lock.conn, model_id, embedder.dimensions, memory_cap_mb=cap)
            index_seconds, built = time.perf_counter() - started, True
        if embedded:
            with pool.connection() as conn:
                analyze(conn)  # fresh statistics keep the switch's completeness check an index anti-join
        if finish_switch(pool, request.tenant, model_id, switch_id):
            return embedded, index_seconds
        cursor = 0  # chunks committed behind the cursor meanwhile: sweep again from the start


@flow(name="switch-model", task_runner=ThreadPoolTaskRunner(max_workers=2))
def switch_model(request: SwitchModelRequest) -> dict:
    """Embed every chunk of a tenant in a new model, then make it the tenant's default in one step."""
    return run_switch(request)

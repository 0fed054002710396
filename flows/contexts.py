"""The expire-contexts flow: delete expired conversation contexts with their chunks, in batches."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from blocks.settings import Settings
from tasks.context_models import ExpireResult
from tasks.contexts import expire_batch
from tasks.runtime import Runtime, call, in_flow_run

__all__ = ["ExpireContextsRequest", "expire_contexts", "run_expire"]


class ExpireContextsRequest(BaseModel):
    """Which tenant's expired contexts to delete (all tenants by default), and how many per transaction."""

    model_config = ConfigDict(extra="forbid")
    tenant: str | None = Field(None, min_length=1, max_length=128, description="One tenant; default: all.")
    batch_size: int = Field(500, ge=1, le=10_000, description="Contexts deleted per transaction (task run).")
    max_batches: int = Field(1000, ge=1, description="Stop after this many batches; the next run continues.")


def run_expire(request: ExpireContextsRequest, settings: Settings | None = None) -> dict:
    """Delete expired contexts batch by batch until none is left (or max_batches); returns the counts."""
    settings = settings or Settings()
    runtime = Runtime(settings)
    store = runtime.store
    runtime.pool()  # the schema, before the first batch
    total, batches = ExpireResult(), 0
    while batches < request.max_batches:
        done = call(expire_batch, store, request.tenant, request.batch_size, label=str(batches))
        batches += 1
        total = ExpireResult(contexts=total.contexts + done.contexts, messages=total.messages + done.messages,
                             chunks=total.chunks + done.chunks)
        if done.contexts < request.batch_size:
            break
    summary = {"tenant": request.tenant, "batches": batches, **total.model_dump()}
    if in_flow_run():
        get_run_logger().info("expired %s contexts (%s messages, %s chunks) in %s batches", total.contexts,
                              total.messages, total.chunks, batches)
    return summary


@flow(name="expire-contexts")
def expire_contexts(request: ExpireContextsRequest = ExpireContextsRequest()) -> dict:
    """Delete expired conversation contexts with their messages, chunks and embeddings, in batches."""
    return run_expire(request)

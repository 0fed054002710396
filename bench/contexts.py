"""Latency of appending one message to a context (atomic append + incremental index) versus its length."""

from __future__ import annotations

import random
import statistics
import time
import uuid

import numpy as np

__all__ = ["measure_append"]

_VOCAB = (
    "the deploy of payments failed because readiness probe timed out after rollout so we rolled back and "
    "checked logs in grafana while the on call engineer paged database team about replica lag vacuum index "
    "kubernetes node pool autoscaler scaled to twelve nodes then cost alert fired budget exceeded for staging "
    "github action pipeline retried flaky test terraform plan showed drift in security group ingress rule"
).split()

_LAST_CHUNK = "SELECT content FROM chunks WHERE tenant_id = %s AND document_id = %s ORDER BY seq DESC LIMIT 1"


class _FastLocalShape:
    """Setup-only embedder: random unit vectors under the local model's id and dimensions, real token counts."""

    def __init__(self, local):
        self.model_id, self.dimensions, self.max_batch = local.model_id, local.dimensions, 4096
        self._local, self._rng = local, np.random.default_rng(0)

    def embed(self, texts: list[str]) -> np.ndarray:
        v = self._rng.normal(size=(len(texts), self.dimensions)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def count_tokens(self, text: str) -> int:
        return self._local.count_tokens(text)


def _message(rng: random.Random, i: int) -> dict:
    words = [rng.choice(_VOCAB) for _ in range(rng.randint(30, 60))]
    return {"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(words) + "."}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_append(messages_before: list[int] = [100, 1000, 10000], *, appends: int = 30, settings=None,  # noqa: B006
                   setup_batch: int = 1000, threads: int | None = None) -> dict:
    """p50/p95 milliseconds of appending ONE 30-60 word message (LocalEmbedder) after N stored messages.

    `threads` sets onnxruntime's intra-op threads (default: one per CPU); on a busy 2-core machine one thread
    embeds a single short text faster than two that compete with the database and other processes.
    """
    from blocks.embedders.local import LocalEmbedder
    from blocks.postgres import PgVectorStore
    from blocks.settings import Settings
    from tasks.context_index import append_messages
    from tasks.contexts import create_context, delete_context
    from tasks.migrate import ensure_schema
    from tasks.registry import ensure_model

    settings = settings or Settings()
    pool = PgVectorStore.from_settings(settings).pool()
    ensure_schema(pool)
    local = LocalEmbedder(threads=threads) if threads else LocalEmbedder()
    local.load()
    fast = _FastLocalShape(local)
    model_id = ensure_model(pool, local.model_id, local.dimensions)
    tenant, rng = f"bench-contexts-{uuid.uuid4().hex[:8]}", random.Random(0)
    local.embed([_message(rng, 0)["content"]] * 4)  # warm the session
    report: dict = {"tenant": tenant, "chunk": settings.chunk.model_dump(), "appends": appends,
                    "embedder_threads": local.threads, "lengths": {}}
    made = []
    try:
        for n in messages_before:
            ctx = create_context(pool, tenant, {"user_id": "bench"})
            made.append(ctx.id)
            started = time.perf_counter()
            for start in range(0, n, setup_batch):
                batch = [_message(rng, i) for i in range(start, min(n, start + setup_batch))]
                append_messages(pool, tenant, ctx.id, batch, embedder=fast, chunk=settings.chunk, model_id=model_id)
            setup = time.perf_counter() - started
            for i in range(3):  # warm-up appends, not measured
                append_messages(pool, tenant, ctx.id, [_message(rng, n + i)], embedder=local, chunk=settings.chunk,
                                model_id=model_id)
            times, embeds, embedded = [], [], 0
            for i in range(appends):
                message = _message(rng, n + 3 + i)
                t0 = time.perf_counter()
                result = append_messages(pool, tenant, ctx.id, [message], embedder=local, chunk=settings.chunk,
                                         model_id=model_id)
                times.append((time.perf_counter() - t0) * 1000)
                embedded += result.texts_embedded
                with pool.connection() as conn:  # the chunk just stored: what embedding alone costs for it
                    text = conn.execute(_LAST_CHUNK, [tenant, f"context:{ctx.id}"]).fetchone()[0]
                t1 = time.perf_counter()
                local.embed([text])
                embeds.append((time.perf_counter() - t1) * 1000)
            fast_times = []  # the same appends with a zero-cost embedder: the database and chunking share alone
            for i in range(appends):
                t0 = time.perf_counter()
                append_messages(pool, tenant, ctx.id, [_message(rng, n + 3 + appends + i)], embedder=fast,
                                chunk=settings.chunk, model_id=model_id)
                fast_times.append((time.perf_counter() - t0) * 1000)
            report["lengths"][n] = {
                "setup_s": round(setup, 2),
                "append_p50_ms": round(_percentile(times, 50), 1),
                "append_p95_ms": round(_percentile(times, 95), 1),
                "append_mean_ms": round(statistics.fmean(times), 1),
                "embed_only_p50_ms": round(_percentile(embeds, 50), 1),
                "append_without_model_p50_ms": round(_percentile(fast_times, 50), 1),
                "append_without_model_p95_ms": round(_percentile(fast_times, 95), 1),
                "texts_embedded_per_append": embedded / appends,
            }
    finally:
        for cid in made:
            delete_context(pool, tenant, cid)
    return report


if __name__ == "__main__":
    import json
    import sys
    import tempfile
    from pathlib import Path

    from blocks.settings import Settings

    # A private embedded server, so that other benchmarks' data and load on a shared one do not mix in.
    home = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="devmesh-bench-contexts-"))
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(measure_append(settings=Settings(home=home), threads=threads), indent=2))

"""Backfill throughput against a fake provider with a fixed latency and a documented concurrency limit."""

from __future__ import annotations

import threading
import time

import numpy as np


class FixedLatencyEmbedder:
    """A provider that answers each call after `latency` seconds and allows `limit` calls in flight."""

    def __init__(self, latency: float, max_batch: int, limit: int, dimensions: int = 64):
        self.model_id, self.dimensions, self.max_batch = f"fixed-latency-{dimensions}", dimensions, max_batch
        self.latency, self._slots = latency, threading.BoundedSemaphore(limit)
        self.limit = limit
        self.texts = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        if not self._slots.acquire(blocking=False):
            raise RuntimeError("more concurrent calls than the provider allows")
        try:
            time.sleep(self.latency)
            self.texts += len(texts)
            rng = np.random.default_rng(len(texts))
            v = rng.normal(size=(len(texts), self.dimensions)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)
        finally:
            self._slots.release()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    @property
    def ceiling(self) -> float:
        """Texts per second the provider can give at most."""
        return self.limit * self.max_batch / self.latency


def measure_backfill(settings, tenant: str, chunks: int = 20_000, latency: float = 0.2, batch: int = 128,
                     concurrency: int = 4) -> dict:
    """Store `chunks` one-chunk documents with a cheap embedder, then time switching them to the fake provider."""
    from blocks.embedders import register_embedder
    from flows.backfill import SwitchModelRequest, run_switch
    from flows.ingest import DocumentSpec, IngestRequest, ingest_documents

    class Cheap(FixedLatencyEmbedder):
        pass

    cheap = Cheap(0.0, 2048, 64, dimensions=32)
    cheap.model_id = "bench-cheap-32"
    register_embedder("bench-cheap", cheap)
    docs = [DocumentSpec(document_id=f"doc-{i}", text=f"backfill benchmark chunk {i} with some words {i % 97}")
            for i in range(chunks)]
    ingest_documents(IngestRequest(tenant=tenant, documents=docs, embedder="bench-cheap"), settings)
    provider = FixedLatencyEmbedder(latency, batch, concurrency)
    register_embedder("bench-fixed", provider)
    started = time.perf_counter()
    result = run_switch(SwitchModelRequest(tenant=tenant, embedder="bench-fixed", batch=batch, concurrency=concurrency),
                        settings)
    seconds = time.perf_counter() - started
    rate = result["embedded"] / (seconds - result["index_seconds"])
    return {"chunks": result["embedded"], "seconds": round(seconds, 2), "texts_per_s": round(rate, 1),
            "provider_ceiling_texts_per_s": round(provider.ceiling, 1), "fraction_of_ceiling": round(rate / provider.ceiling, 3),
            "index_build_s": round(result["index_seconds"], 2), "latency_s": latency, "batch": batch, "concurrency": concurrency, "switched": result["switched"]}


if __name__ == "__main__":  # pragma: no cover
    import tempfile
    from pathlib import Path

    from blocks.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="devmesh-bench-backfill-"))
    print(measure_backfill(Settings(home=home), "bench"))

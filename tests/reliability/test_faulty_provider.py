"""An embedding provider that answers 429, 500 or nothing at all 30% of the time: ingest still completes, stores
exactly what a fault-free run stores, and pays a bounded extra time. The real OpenAI SDK talks to the loopback
fake (tests/fakes/openai_server.py) with its seeded random-fault mode; retries are blocks/retry.py's one loop."""

from __future__ import annotations

import logging
import re
import time

import numpy as np

from blocks.embedders import register_embedder
from blocks.embedders.openai import OpenAIEmbedder
from blocks.retry import BACKOFF_CAP
from flows.ingest import DocumentSpec, IngestRequest, IngestResult, ingest_documents
from tests.fakes import FakeOpenAI
from tests.fakes.server import Chaos

DIMS = 64
TIMEOUT = 1.0  # the block's request timeout: a "hang" costs this much, then a retry
HANG = 3.0  # the fake's hang, well past the timeout
STORE_BATCH = 10  # chunks per store batch = texts per provider call: many calls


def corpus(n: int) -> list[DocumentSpec]:
    """n one-chunk documents with distinct texts."""
    return [DocumentSpec(document_id=f"doc-{i:04d}",
                         text=f"runbook {i}: when queue {i % 17} backs up, drain worker {i} and restart shard {i % 5}")
            for i in range(n)]


def stored(pool, tenant: str) -> dict[tuple[str, int], np.ndarray]:
    """(document id, chunk seq) -> stored vector, failing on any duplicate row."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT c.document_id, c.seq, e.embedding::real[] FROM chunks c JOIN embeddings e ON e.chunk_id = c.id "
            "WHERE c.tenant_id = %s", (tenant,)).fetchall()
    out = {(doc, seq): np.asarray(vec, dtype=np.float32) for doc, seq, vec in rows}
    assert len(out) == len(rows), "a chunk was stored twice"
    return out


def ingest(api: FakeOpenAI, tenant: str, settings, docs: list[DocumentSpec], name: str) -> tuple[IngestResult, float]:
    embedder = OpenAIEmbedder(api_key="sk-test-chaos", base_url=f"{api.url}/v1", model="text-embedding-3-small",
                              output_dimensions=DIMS, timeout=TIMEOUT, max_retries=8)
    register_embedder(name, embedder)
    started = time.perf_counter()
    summary = ingest_documents(IngestRequest(tenant=tenant, documents=docs, embedder=name), settings)
    return summary, time.perf_counter() - started


def test_ingest_through_a_30_percent_faulty_provider_stores_the_fault_free_data(settings, pool, caplog):
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"store_batch": STORE_BATCH})})
    docs = corpus(300)
    with FakeOpenAI(api_key="sk-test-chaos") as api:
        clean, clean_s = ingest(api, "chaos-clean", settings, docs, "openai-clean")
        clean_requests = len(api.requests)

        api.reset()
        api.chaos = chaos = Chaos(rate=0.3, seed=7, hang_s=HANG)
        with caplog.at_level(logging.WARNING, logger="devmesh.retry"):
            faulty, faulty_s = ingest(api, "chaos-faulty", settings, docs, "openai-faulty")
        requests = len(api.requests)

    # It completed, with every chunk, once.
    for summary in (clean, faulty):
        assert summary.errors == [] and summary.chunks_inserted == 300 and summary.texts_embedded == 300
    assert clean_requests == clean.embedding_calls >= 300 // STORE_BATCH  # many calls, not one

    # The same data: every stored vector equals the fault-free run's (and the fake's deterministic vector).
    want, got = stored(pool, "chaos-clean"), stored(pool, "chaos-faulty")
    assert sorted(got) == sorted(want) == [(d.document_id, 0) for d in docs]
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6)

    # Retries match the faults served: each fault was retried once, each call succeeded once.
    faults = {kind: chaos.counts[kind] for kind in ("429", "500", "hang")}
    retries = [r.getMessage() for r in caplog.records if r.name == "devmesh.retry"]
    assert all(faults.values()), f"an even mix of kinds was drawn: {faults}"
    assert chaos.counts["ok"] == clean_requests  # one successful answer per provider call
    assert requests == clean_requests + sum(faults.values())
    # A request answered late by a loaded machine would also time out and be retried: never fewer retries.
    assert sum(faults.values()) <= len(retries) <= sum(faults.values()) + 2, (faults, len(retries))
    assert 0.15 <= sum(faults.values()) / requests <= 0.45  # the configured 30%, within binomial spread
    # 429s waited their Retry-After (retry-after-ms 50), not a backoff.
    rate_limited = [m for m in retries if "HTTP 429" in m]
    assert len(rate_limited) == faults["429"]
    assert all(re.search(r"in 0\.05 s$", m) for m in rate_limited), rate_limited[:3]
    assert sum("no answer within the timeout" in m for m in retries) >= faults["hang"]

    # Bounded extra time: each fault costs at most the timeout plus one capped backoff.
    extra = faulty_s - clean_s
    assert extra <= sum(faults.values()) * (TIMEOUT + BACKOFF_CAP / 4) + 5, (extra, faults)

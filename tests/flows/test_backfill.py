"""Switching a tenant's embedding model: backfill, resume after a crash, atomic switch."""

from __future__ import annotations

import pytest

from blocks.embedders import register_embedder
from flows.backfill import SwitchModelRequest, run_switch
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from flows.search import search_now
from tasks.registry import tenant_model
from tasks.search import SearchRequest
from tests.factories import FakeEmbedder, paragraphs


class CrashingEmbedder:
    """The 32-d fake that dies on its n-th call (a provider outage or a killed worker)."""

    def __init__(self, inner: FakeEmbedder, crash_on_call: int):
        self.inner, self.crash_on_call, self.calls = inner, crash_on_call, 0
        self.model_id, self.dimensions, self.max_batch = inner.model_id, inner.dimensions, inner.max_batch

    def embed(self, texts):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise RuntimeError("worker killed")
        return self.inner.embed(texts)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)


@pytest.fixture
def fake32():
    embedder = FakeEmbedder(dims=32, model_name="fake-words-32", batch=8)
    register_embedder("fake32", embedder)
    return embedder


@pytest.fixture
def corpus(settings, tenant):
    docs = [DocumentSpec(document_id=f"d{i}", text=paragraphs(6, f"svc{i}")) for i in range(30)]
    summary = ingest_documents(IngestRequest(tenant=tenant, documents=docs, chunk_size=30, chunk_overlap=0), settings)
    return summary.chunks


def _similarity_dims_model(settings, tenant):
    hits = search_now(SearchRequest(query="svc3 service node", mode="vector", tenant=tenant, limit=1), settings)
    return hits[0]


def test_switch_backfills_everything_then_search_uses_new_model(settings, tenant, corpus, fake32, pool):
    assert tenant_model(pool, tenant) is None
    result = run_switch(SwitchModelRequest(tenant=tenant, embedder="fake32", batch=8, concurrency=3), settings)
    assert result["switched"] and result["embedded"] == corpus
    assert tenant_model(pool, tenant).name == "fake-words-32"
    with pool.connection() as conn:
        per_model = dict(conn.execute(
            "SELECT m.name, count(*) FROM embeddings e JOIN embedding_models m ON m.id = e.model_id "
            "WHERE e.tenant_id = %s GROUP BY m.name", [tenant]).fetchall())
    assert per_model == {"fake-words-64": corpus, "fake-words-32": corpus}
    hit = _similarity_dims_model(settings, tenant)
    expected = float(fake32.embed(["svc3 service node"])[0] @ fake32.embed([hit.text])[0])
    assert hit.similarity == pytest.approx(expected, abs=1e-4)  # scored in the new model's 32-d space
    # new ingests of the tenant now embed with the tenant's default model
    ingest_documents(IngestRequest(tenant=tenant, documents=[DocumentSpec(document_id="new", text="fresh text")]), settings)
    with pool.connection() as conn:
        models = {r[0] for r in conn.execute(
            "SELECT m.name FROM embeddings e JOIN embedding_models m ON m.id = e.model_id JOIN chunks c ON c.id = e.chunk_id "
            "WHERE c.document_id = 'new' AND c.tenant_id = %s", [tenant])}
    assert models == {"fake-words-32"}


def test_crashed_switch_keeps_old_model_and_resumes_without_redoing_work(settings, tenant, corpus, fake32, pool):
    crashing = CrashingEmbedder(fake32, crash_on_call=10)
    register_embedder("crashing32", crashing)
    with pytest.raises(RuntimeError, match="worker killed"):
        run_switch(SwitchModelRequest(tenant=tenant, embedder="crashing32", batch=8, concurrency=1), settings)
    assert tenant_model(pool, tenant) is None  # still answering from the old model
    assert _similarity_dims_model(settings, tenant).document_id.startswith("d")
    with pool.connection() as conn:
        done = conn.execute("SELECT count(*) FROM embeddings e JOIN embedding_models m ON m.id = e.model_id "
                            "WHERE m.name = 'fake-words-32' AND e.tenant_id = %s", [tenant]).fetchone()[0]
        status = conn.execute("SELECT status FROM model_switches WHERE tenant_id = %s", [tenant]).fetchone()[0]
    assert done == 64 and status == "failed"  # the first task run (8 calls of 8) landed whole, the second not at all
    result = run_switch(SwitchModelRequest(tenant=tenant, embedder="fake32", batch=8, concurrency=1), settings)
    assert result["switched"] and result["embedded"] == corpus - done


def test_chunks_ingested_during_the_backfill_are_caught_before_the_switch(settings, tenant, corpus, fake32, pool):
    class IngestingMidway(CrashingEmbedder):
        def embed(self, texts):
            self.calls += 1
            if self.calls == 2:  # another agent stores a document while the backfill runs (old model only)
                ingest_documents(IngestRequest(tenant=tenant, documents=[DocumentSpec(document_id="late", text="late arrival")]),
                           settings)
            return self.inner.embed(texts)

    register_embedder("midway32", IngestingMidway(fake32, crash_on_call=0))
    result = run_switch(SwitchModelRequest(tenant=tenant, embedder="midway32", batch=8, concurrency=1), settings)
    assert result["switched"] and result["embedded"] == corpus + 1

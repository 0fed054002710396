"""Claim before embedding (tasks/embedding_claims.py): two ingests of one tenant running at once embed each text
once, shown by the embedding calls a recording embedder receives; a dead run's claim is taken over, a live run's
published vector is used without embedding again."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tasks.ingest as ingest_tasks
from blocks.embedders import register_embedder
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from tasks.registry import ensure_model
from tests.factories import FakeEmbedder, paragraphs


class RecordingEmbedder:
    """The fake embedder, recording every text it is asked to embed (from any thread)."""

    def __init__(self, inner: FakeEmbedder):
        self.inner, self._lock, self._texts = inner, threading.Lock(), []
        self.model_id, self.dimensions, self.max_batch = inner.model_id, inner.dimensions, inner.max_batch

    def embed(self, texts):
        with self._lock:
            self._texts += texts
        return self.inner.embed(texts)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)

    @property
    def texts(self) -> list[str]:
        with self._lock:
            return list(self._texts)


@pytest.fixture
def recording(settings):
    embedder = RecordingEmbedder(FakeEmbedder(model_name="fake-recording-64", batch=4))
    register_embedder("recording", embedder)
    return embedder, settings.model_copy(update={
        "embedder": "recording", "ingest": settings.ingest.model_copy(update={"embed_batch": 8})})


def _request(tenant: str, prefix: str) -> IngestRequest:
    # the same 12 texts under other document ids: a batch of runbooks ingested twice by two schedules at once
    return IngestRequest(tenant=tenant, chunk_size=30, chunk_overlap=0, documents=[
        DocumentSpec(document_id=f"{prefix}{i}", text=paragraphs(6, f"svc{i}")) for i in range(12)])


def test_two_concurrent_ingests_of_one_tenant_embed_each_text_once(recording, pool, tenant, monkeypatch):
    embedder, settings = recording
    both_planned = threading.Barrier(2, timeout=120)
    real = ingest_tasks.hashes_needing_embedding

    def planned_together(*args):  # both runs decide what they need before either embeds: the race of the issue
        needed = real(*args)
        both_planned.wait()
        return needed

    monkeypatch.setattr(ingest_tasks, "hashes_needing_embedding", planned_together)
    with ThreadPoolExecutor(2) as runs:
        summaries = list(runs.map(lambda prefix: ingest_documents(_request(tenant, prefix), settings), ["a-", "b-"]))
    assert all(s.errors == [] for s in summaries), summaries
    embedded = Counter(embedder.texts)
    with pool.connection() as conn:
        stored = conn.execute("SELECT count(DISTINCT c.content_hash), count(*), count(e.chunk_id) FROM chunks c"
                              " LEFT JOIN embeddings e ON e.chunk_id = c.id WHERE c.tenant_id = %s",
                              [tenant]).fetchone()
        left = conn.execute("SELECT count(*) FROM embedding_claims WHERE tenant_id = %s", [tenant]).fetchone()[0]
    unique_texts, chunks, with_vectors = stored
    assert max(embedded.values()) == 1, [t for t, n in embedded.items() if n > 1][:3]
    assert len(embedded) == unique_texts and chunks == 2 * unique_texts == with_vectors
    assert sum(s.texts_embedded for s in summaries) == unique_texts
    assert left == 0  # each run dropped its claims


def test_an_expired_claim_is_taken_over_and_a_published_vector_is_used(recording, pool, tenant):
    embedder, settings = recording
    request = IngestRequest(tenant=tenant, chunk_size=20, chunk_overlap=0, documents=[
        DocumentSpec(document_id="d", text=paragraphs(2, "gateway"))])
    from tasks.prepare import prepare_batch
    from tasks.read import SourceDoc

    spec = request.documents[0]
    docs, _ = prepare_batch.fn([SourceDoc("d", spec.text, spec.kind, None, {})], request.kind, 20, 0, embedder)
    assert len(docs[0].chunks) == 2
    first, second = docs[0].chunks[0], docs[0].chunks[1]
    model_id = ensure_model(pool, embedder.model_id, embedder.dimensions)
    published = np.eye(embedder.dimensions, dtype=np.float32)[3]  # unlike anything the embedder would make
    with pool.connection() as conn:
        conn.execute("INSERT INTO embedding_claims VALUES (%s, %s, %s, %s, now() + interval '5 minutes', %s),"
                     " (%s, %s, %s, %s, now() - interval '1 second', NULL)",
                     [tenant, model_id, first.content_hash, uuid.uuid4(), published,
                      tenant, model_id, second.content_hash, uuid.uuid4()])
    summary = ingest_documents(request, settings)
    assert summary.errors == [] and summary.texts_embedded == 1
    assert embedder.texts == [second.text]  # the dead run's text; the live run's vector was taken as published
    with pool.connection() as conn:
        vector = conn.execute("SELECT e.embedding FROM chunks c JOIN embeddings e ON e.chunk_id = c.id"
                              " WHERE c.tenant_id = %s AND c.content_hash = %s", [tenant, first.content_hash]
                              ).fetchone()[0]
    assert np.allclose(np.asarray(vector), published)


WORKER = """
import json, sys, time
from pathlib import Path
import tasks.ingest as ingest_tasks
from blocks.embedders import register_embedder
from blocks.embedders.openai import OpenAIEmbedder
from blocks.settings import Settings
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from tests.factories import paragraphs

url, tenant, prefix, marks = sys.argv[1:5]
register_embedder("openai-workers", OpenAIEmbedder(api_key="sk-test-workers", base_url=url,
                                                   model="text-embedding-3-small", output_dimensions=64))
real = ingest_tasks.hashes_needing_embedding

def planned_together(*args):  # both processes decide what they need before either embeds
    needed = real(*args)
    Path(marks, prefix).touch()
    deadline = time.monotonic() + 120
    while len(list(Path(marks).iterdir())) < 2:
        if time.monotonic() > deadline:
            raise SystemExit("the other worker never planned")
        time.sleep(0.05)
    return needed

ingest_tasks.hashes_needing_embedding = planned_together
docs = [DocumentSpec(document_id=f"{prefix}{i}", text=paragraphs(6, f"svc{i}")) for i in range(12)]
result = ingest_documents(IngestRequest(tenant=tenant, documents=docs, embedder="openai-workers", chunk_size=30,
                                   chunk_overlap=0), Settings())
print(json.dumps({"texts_embedded": result.texts_embedded, "errors": result.summary()["errors"]}))
"""


def test_two_worker_processes_send_each_text_to_the_provider_once(settings, pool, pg_home, tenant, tmp_path):
    """Two processes (as two workers on one work pool would run them) ingest the same texts at once against the
    real OpenAI SDK and the loopback fake: the fake's requests show each text sent once, in all."""
    import json
    import os
    import subprocess
    import sys

    from tests.rest import ROOT
    from tests.fakes import FakeOpenAI

    marks = tmp_path / "planned"
    marks.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVMESH_")}
    env |= {"DEVMESH_HOME": str(pg_home), "DEVMESH_INGEST__EMBED_BATCH": "8"}
    with FakeOpenAI(api_key="sk-test-workers") as api:
        workers = [subprocess.Popen([sys.executable, "-c", WORKER, f"{api.url}/v1", tenant, prefix, str(marks)],
                                    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for prefix in ("a-", "b-")]
        outputs = [w.communicate(timeout=600) for w in workers]
        sent = Counter(text for request in api.requests for text in request.body["input"])
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert all(r["errors"] == [] for r in results), results
    with pool.connection() as conn:
        unique_texts, chunks, with_vectors = conn.execute(
            "SELECT count(DISTINCT c.content_hash), count(*), count(e.chunk_id) FROM chunks c"
            " LEFT JOIN embeddings e ON e.chunk_id = c.id WHERE c.tenant_id = %s", [tenant]).fetchone()
    assert max(sent.values()) == 1, [t for t, n in sent.items() if n > 1][:3]
    assert len(sent) == unique_texts == sum(r["texts_embedded"] for r in results)
    assert chunks == with_vectors == 2 * unique_texts

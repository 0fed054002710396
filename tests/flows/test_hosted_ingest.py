"""Ingest and search with a hosted provider (the real OpenAI SDK against the loopback fake)."""

from __future__ import annotations

from blocks.embedders import register_embedder
from blocks.embedders.openai import OpenAIEmbedder
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from flows.search import search_now
from tasks.search import SearchRequest
from tasks.usage import usage_summary
from tests.fakes import FakeOpenAI


def test_ingest_with_openai_records_tokens_and_cost_and_search_embeds_queries(settings, tenant, pool):
    with FakeOpenAI(api_key="sk-test-ingest") as api:
        embedder = OpenAIEmbedder(api_key="sk-test-ingest", base_url=f"{api.url}/v1", model="text-embedding-3-small",
                                  output_dimensions=256)
        register_embedder("openai-test", embedder)
        docs = [DocumentSpec(document_id=f"n{i}", text=f"note {i}: restart the queue worker {i}") for i in range(5)]
        summary = ingest_documents(IngestRequest(tenant=tenant, documents=docs, embedder="openai-test"), settings)
        assert summary.model == "openai/text-embedding-3-small@256" and summary.texts_embedded == 5
        assert len(api.requests) == 1 and api.requests[0].body["dimensions"] == 256  # one batched request
        [row] = usage_summary(pool, tenant)
        assert row["model"] == "text-embedding-3-small" and row["texts"] == 5 and row["tokens"] > 0
        assert float(row["cost_usd"]) > 0
        hits = search_now(SearchRequest(query="restart the queue worker 3", tenant=tenant,
                                        model="openai/text-embedding-3-small@256"), settings.model_copy(
                                            update={"embedder": "openai-test"}))
        assert hits and hits[0].similarity is not None
        assert len(api.requests) == 2  # the query was embedded by the same provider

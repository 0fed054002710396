"""Prometheus metrics move when the work happens: chunks stored, searches timed, operations by outcome."""

from __future__ import annotations

from prometheus_client import REGISTRY

from blocks.metrics import exposition
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from flows.search import search_now
from tasks.search import SearchRequest


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_ingest_and_search_are_counted(settings, tenant):
    before = value("devmesh_chunks_stored_total", tenant=tenant)
    searches = value("devmesh_search_seconds_count", mode="hybrid")
    summary = ingest_documents(IngestRequest(tenant=tenant, documents=[
        DocumentSpec(document_id="runbook", text="Restart the payments pod when the queue backs up.")]), settings)
    search_now(SearchRequest(query="payments queue", tenant=tenant), settings)
    assert value("devmesh_chunks_stored_total", tenant=tenant) - before == summary.chunks_inserted > 0
    assert value("devmesh_search_seconds_count", mode="hybrid") == searches + 1
    body, content_type = exposition()
    assert b"devmesh_search_seconds_bucket" in body and content_type.startswith("text/plain")

"""The `search` flow's hits are visible in the Prefect UI: a table artifact (rank, document, score, text excerpt) and
the run's persisted result, readable from the API after the run."""

from __future__ import annotations

import json

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.ingest import DocumentSpec, IngestRequest, ingest
from flows.search import search
from tasks.search import SearchRequest


def test_search_run_shows_its_hits_as_a_table_and_keeps_its_result(prefect_harness, settings, tenant):
    ingest(IngestRequest(tenant=tenant, documents=[
        DocumentSpec(document_id="tls", text="# TLS\n\nRotate the TLS certificates of the ingress every 60 days."),
        DocumentSpec(document_id="db", text="Vacuum the payments database weekly.")]))
    state = search(SearchRequest(query="rotate TLS certificates", tenant=tenant, limit=5), return_state=True)
    assert state.is_completed()
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        [table] = [a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))) if a.key == "search-hits"]
        stored = client.read_flow_run(run_id).state
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert table.type == "table" and rows[0]["rank"] == 1 and rows[0]["document"] == "tls#0"
    assert rows[0]["text"].startswith("TLS Rotate the TLS certificates") and rows[0]["score"] > 0  # no "# " heading
    assert {"rank", "document", "score", "similarity", "relevance", "text"} == set(rows[0])
    assert "rotate TLS certificates" in table.description
    hits = stored.result()  # read back from result storage, not from this process's memory
    assert [h["document_id"] for h in hits][:1] == ["tls"] and "Rotate the TLS" in hits[0]["text"]

"""The ingest and search flows as real Prefect flow runs (one test server for the session)."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client

from flows.ingest import DocumentSpec, IngestRequest, ingest
from flows.search import search
from tasks.search import SearchRequest


@pytest.fixture
def flow_env(prefect_harness, settings):
    return settings


def test_ingest_flow_run_completes_with_task_runs_and_artifact(flow_env, tenant):
    docs = [DocumentSpec(document_id=f"runbook-{i}", text=f"Runbook {i}: restart service {i} with kubectl.")
            for i in range(5)]
    state = ingest(IngestRequest(tenant=tenant, documents=docs), return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["chunks_inserted"] == 5 and summary["errors"] == []

    async def _inspect():
        async with get_client() as client:
            runs = await client.read_task_runs()
            names = {r.name.split("-")[0] + "-" + r.name.split("-")[1] for r in runs if r.flow_run_id == state.state_details.flow_run_id}
            artifacts = await client.read_artifacts()
            return names, [a for a in artifacts if a.key == "ingest-summary"]

    import asyncio

    names, artifacts = asyncio.run(_inspect())
    assert {"chunk-0", "embed-0", "write-0"} <= names
    assert artifacts and tenant in artifacts[0].data


def test_search_flow_returns_hits(flow_env, tenant):
    ingest(IngestRequest(tenant=tenant, documents=[DocumentSpec(document_id="a", text="rotate the TLS certificates")]))
    hits = search(SearchRequest(query="TLS certificates", tenant=tenant))
    assert hits[0]["document_id"] == "a"


def test_failed_item_is_reported_not_fatal(flow_env, tenant):
    docs = [DocumentSpec(document_id="ok", text="fine text"), DocumentSpec(document_id="nul", text="bad\x00text")]
    summary = ingest(IngestRequest(tenant=tenant, documents=docs))
    assert [e["item"] for e in summary["errors"]] == ["nul"]
    assert summary["chunks_inserted"] == 1

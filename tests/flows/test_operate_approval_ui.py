"""What a Prefect user sees of an approval: the Resume form says what is being approved and how to approve it (the
operation id filled in), Resume without a recorded decision ends the run "Rejected" with one line (no traceback),
and the audit artifact shows the actor as JSON."""

from __future__ import annotations

import json
import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from tests.approvals import awaiting, guarded, resume_without_decision, start  # noqa: F401 - guarded is the fixture


def _read_input(flow_run_id, key: str):
    with get_client(sync_client=True) as client:
        return client.read_flow_run_input(flow_run_id=flow_run_id, key=key)


def test_the_resume_form_explains_and_a_resume_without_decision_is_a_rejected_run(guarded, pool, tenant):
    executor, future = start(tenant)
    row = awaiting(pool, tenant)
    deadline = time.monotonic() + 30
    while True:  # the row is marked a moment before the run pauses and saves its form
        try:
            with get_client(sync_client=True) as client:
                keyset = client.read_flow_run(row["flow_run_id"]).state.state_details.run_input_keyset
            description = json.loads(_read_input(row["flow_run_id"], keyset["description"]))
            schema = json.loads(_read_input(row["flow_run_id"], keyset["schema"]))
            break
        except Exception:
            assert time.monotonic() < deadline, "the paused run never saved its Resume form"
            time.sleep(0.2)
    assert f"devmesh approve {row['id']}" in description and "aws.s3_put_object" in description
    assert row["target"] in description and "This form does not approve" in description
    assert '"Bucket": "acme-data"' in description and '"call": "s3.put_object"' in description  # the request
    assert schema["properties"]["operation_id"]["default"] == str(row["id"])
    assert "devmesh approve" in schema["properties"]["note"]["description"]
    resume_without_decision(row)
    assert future.result(timeout=120)["status"] == "rejected"
    executor.shutdown()
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(row["flow_run_id"]).state
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[str(row["flow_run_id"])])))
    # named for the refusal, of type Completed: Prefect logs a traceback for a deployment run ending otherwise
    assert state.type.value == "COMPLETED" and state.name == "Rejected"
    assert state.message.startswith("resumed without a decision") and "\n" not in state.message
    audits = [a.data for a in artifacts if a.key == "devmesh-audit"]
    assert any('actor: `{"agent": "pytest"}`' in text for text in audits), audits

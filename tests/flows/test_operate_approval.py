"""Approvals through a real Prefect flow run: the run pauses, an authenticated approver decides from outside,
the run re-checks the decision against the plan; timeouts and unauthenticated resumes execute nothing."""

from __future__ import annotations

import time

import pytest

from blocks.errors import ApprovalRejected, AuthFailed
from flows.operate import OperateRequest, decide, operate
from tasks.approvals import add_approver, revoke_approver
from tasks.audit import read_audit, verify_audit
from tasks.operation_log import get_operation_row
from tests.approvals import PUT, awaiting, guarded, resume_without_decision, start

def test_approved_from_outside_executes_once_and_records_the_approver(guarded, pool, tenant):
    s3, _ = guarded
    token = add_approver(pool, tenant, "alice")
    executor, future = start(tenant)
    row = awaiting(pool, tenant)
    assert s3.list_objects_v2(Bucket="acme-data").get("KeyCount") == 0  # nothing before approval
    with pytest.raises(AuthFailed):
        decide(str(row["id"]), "dmapprove_wrong", "approved", tenant=tenant)
    decided = decide(str(row["id"]), token, "approved", tenant=tenant, comment="ship it")
    assert decided["approver"] == "alice" and decided["approver_kind"] == "approver" and decided["approver_id"]
    out = future.result(timeout=120)
    executor.shutdown()
    assert out["status"] == "succeeded" and out["approval"]["approver"] == "alice"
    assert out["approval"]["approver_id"] == decided["approver_id"]
    assert out["approval"]["plan_hash"] == out["plan_hash"] == row["plan_hash"]
    assert s3.get_object(Bucket="acme-data", Key="deploy/notes.txt")["Body"].read() == b"release 1.2"
    records = [r for r in read_audit(pool, tenant=tenant) if r["operation"] == "aws.s3_put_object"]
    assert [r["status"] for r in records] == ["awaiting_approval", "approval_approved", "succeeded"]
    assert records[1]["actor"] == {"tenant": tenant, "approver_id": decided["approver_id"], "approver": "alice"}
    assert verify_audit(pool).ok
    # the plan and each audit record of the run are artifacts in the Prefect UI, without the secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[out["flow_run_id"]])))
    keys = sorted(a.key for a in artifacts)
    assert keys == ["devmesh-audit", "devmesh-audit", "devmesh-plan"]  # the plan; audit: pending, succeeded
    assert all("test-secret-value" not in str(a.data) for a in artifacts)


def test_resume_without_devmesh_approval_is_refused(guarded, pool, tenant):
    s3, _ = guarded
    executor, future = start(tenant)
    row = awaiting(pool, tenant)
    resume_without_decision(row)
    refused = future.result(timeout=120)  # the run ends "Rejected", its summary the result
    assert refused["status"] == "rejected" and "without a decision" in refused["error"]
    executor.shutdown()
    assert s3.list_objects_v2(Bucket="acme-data").get("KeyCount") == 0
    assert get_operation_row(pool, row["id"])["status"] == "rejected"


def test_unanswered_approval_expires_into_rejection(guarded, pool, tenant):
    s3, policy = guarded
    policy(timeout=2)
    token = add_approver(pool, tenant, "bob")
    executor, future = start(tenant)
    row = awaiting(pool, tenant)
    with pytest.raises(ApprovalRejected, match="expired"):
        future.result(timeout=120)
    executor.shutdown()
    assert s3.list_objects_v2(Bucket="acme-data").get("KeyCount") == 0
    assert get_operation_row(pool, row["id"])["status"] == "rejected"
    with pytest.raises(Exception, match="not awaiting approval|closed"):
        decide(str(row["id"]), token, "approved", tenant=tenant)
    assert revoke_approver(pool, tenant, "bob")
    with pytest.raises(AuthFailed):
        decide(str(row["id"]), token, "approved", tenant=tenant)


def test_submit_runs_what_needs_no_approval_and_refuses_without_a_served_deployment(guarded, pool, tenant):
    from flows.operate import submit_operation

    s3, policy = guarded
    request = OperateRequest(operation="aws.s3_list", arguments={"bucket": "acme-data"}, tenant=tenant,
                             dry_run=False)
    assert submit_operation(request)["status"] == "succeeded"
    put = OperateRequest(operation="aws.s3_put_object", arguments=PUT, tenant=tenant, dry_run=False)
    with pytest.raises(ApprovalRejected, match="no 'operate/operate' deployment"):
        submit_operation(put)
    assert s3.list_objects_v2(Bucket="acme-data").get("KeyCount") == 0

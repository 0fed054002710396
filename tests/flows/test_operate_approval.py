"""Approvals through a real Prefect flow run: the run pauses, an authenticated approver decides from outside,
the run re-checks the decision against the plan; timeouts and unauthenticated resumes execute nothing."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from moto import mock_aws
from prefect.exceptions import NotPausedError
from prefect.flow_runs import resume_flow_run
from prefect_aws import AwsCredentials

from blocks.errors import ApprovalRejected, AuthFailed
from blocks.policy import OperationPolicy
from flows.operate import OperateRequest, decide, operate
from tasks.approvals import add_approver, revoke_approver
from tasks.audit import read_audit, verify_audit
from tasks.grants import set_grant
from tasks.operation_log import get_operation_row

REGION = "eu-west-1"
PUT = {"bucket": "acme-data", "key": "deploy/notes.txt", "body": "release 1.2"}


@pytest.fixture
def guarded(prefect_harness, settings, monkeypatch, pool, tenant):
    """The blocks saved under the settings' names, granted to `tenant` (tasks.grants): its operations use them."""
    monkeypatch.setenv("DEVMESH_OPS__APPROVAL_POLL_S", "1")
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="acme-data", CreateBucketConfiguration={"LocationConstraint": REGION})
        AwsCredentials(aws_access_key_id="AKIATEST", aws_secret_access_key="test-secret-value",
                       region_name=REGION).save("devmesh-aws", overwrite=True)

        def policy(timeout: int = 60) -> None:
            OperationPolicy(operations=["aws.*"], aws_regions=[REGION], aws_buckets=["acme-*"],
                            require_approval=["aws.s3_put_object"], approval_timeout_s=timeout
                            ).save("devmesh-policy", overwrite=True)

        policy()
        set_grant(pool, tenant, actor={"via": "pytest"}, policy_block="devmesh-policy", aws_block="devmesh-aws")
        yield s3, policy


def _awaiting(pool, tenant, timeout=60.0):
    """The operation row once the run is paused for approval."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with pool.connection() as conn:
            row = conn.execute("SELECT id FROM operations WHERE tenant_id = %s AND status = 'awaiting_approval'",
                               [tenant]).fetchone()
        if row:
            return get_operation_row(pool, row[0])
        time.sleep(0.2)
    raise AssertionError("the run never paused for approval")


def resume_without_decision(row) -> None:
    """Press Resume as anyone who reaches the Prefect UI could, with no decision recorded in devmesh."""
    deadline = time.monotonic() + 20
    while True:  # the row is marked just before the run proposes its Paused state: only that is waited out
        try:
            resume_flow_run(row["flow_run_id"], run_input={"operation_id": str(row["id"]), "note": "via UI"})
            return
        except NotPausedError:
            assert time.monotonic() < deadline, "the run did not pause within 20 s of marking its operation"
            time.sleep(0.2)


def _start(tenant):
    pool = ThreadPoolExecutor(1)
    request = OperateRequest(operation="aws.s3_put_object", arguments=PUT, tenant=tenant, dry_run=False,
                             actor={"agent": "pytest"})
    return pool, pool.submit(operate, request)


def test_approved_from_outside_executes_once_and_records_the_approver(guarded, pool, tenant):
    s3, _ = guarded
    token = add_approver(pool, tenant, "alice")
    executor, future = _start(tenant)
    row = _awaiting(pool, tenant)
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
    executor, future = _start(tenant)
    row = _awaiting(pool, tenant)
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
    executor, future = _start(tenant)
    row = _awaiting(pool, tenant)
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

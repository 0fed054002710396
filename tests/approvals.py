"""Approvals through a real Prefect flow run, for the tests that drive one: the blocks an operation needing
approval uses (moto-backed S3), starting `operate` in a thread, waiting for its pause, and pressing Resume as anyone
who reaches the Prefect UI could."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from moto import mock_aws
from prefect.exceptions import NotPausedError
from prefect.flow_runs import resume_flow_run
from prefect_aws import AwsCredentials

from blocks.policy import OperationPolicy
from flows.operate import OperateRequest, operate
from tasks.grants import set_grant
from tasks.operation_log import get_operation_row

__all__ = ["PUT", "REGION", "awaiting", "guarded", "resume_without_decision", "start"]

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


def awaiting(pool, tenant, timeout=60.0):
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


def start(tenant):
    pool = ThreadPoolExecutor(1)
    request = OperateRequest(operation="aws.s3_put_object", arguments=PUT, tenant=tenant, dry_run=False,
                             actor={"agent": "pytest"})
    return pool, pool.submit(operate, request)

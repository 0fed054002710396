"""The guard end to end on AWS operations (moto): plan, policy, execute, verify, audit, idempotency, canaries."""

from __future__ import annotations

import logging

import boto3
import pytest
from moto import mock_aws
from prefect_aws import AwsCredentials

from blocks.errors import InputError, OperationDenied
from blocks.policy import OperationPolicy
from flows.operate import OperateRequest, run_operation
from tasks.audit import read_audit, verify_audit
from tasks.ops.base import Connections

CANARY_KEY = "AKIACANARY0000000001"
CANARY_SECRET = "canary-secret-9f8e7d6c5b4a39281706"
REGION = "eu-west-1"


@pytest.fixture
def aws():
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="acme-data", CreateBucketConfiguration={"LocationConstraint": REGION})
        ecs = boto3.client("ecs", region_name=REGION)
        ecs.create_cluster(clusterName="prod")
        ecs.register_task_definition(family="api", containerDefinitions=[
            {"name": "api", "image": "ghcr.io/acme/api:1", "memory": 128}])
        ecs.create_service(cluster="prod", serviceName="api", taskDefinition="api", desiredCount=2)
        creds = AwsCredentials(aws_access_key_id=CANARY_KEY, aws_secret_access_key=CANARY_SECRET,
                               region_name=REGION)
        yield Connections(aws=creds), s3, ecs


POLICY = OperationPolicy(operations=["aws.*"], aws_regions=[REGION], aws_buckets=["acme-*"], aws_services=["prod/*"],
                         max_replicas=8, max_scale_step=3)


def run(settings, aws, operation, arguments, **kw):
    conns, _, _ = aws
    return run_operation(OperateRequest(operation=operation, arguments=arguments, actor={"agent": "pytest"}, **kw),
                         settings, connections=conns, policy=POLICY)


PUT = {"bucket": "acme-data", "key": "reports/today.txt", "body": "all green"}


def test_dry_run_plans_and_changes_nothing(settings, aws, tenant):
    out = run(settings, aws, "aws.s3_put_object", PUT, tenant=tenant)
    assert out["status"] == "planned" and out["plan"]["summary"].startswith("create s3://acme-data/reports/today.txt")
    assert out["plan"]["request"]["params"]["ContentLength"] == len("all green")
    assert aws[1].list_objects_v2(Bucket="acme-data").get("KeyCount") == 0
    assert [r["status"] for r in read_audit(settings_pool(settings), tenant=tenant)] == ["planned"]


def settings_pool(settings):
    from blocks.postgres import PgVectorStore
    return PgVectorStore.from_settings(settings).pool()


def test_execute_verify_audit_and_idempotent_replay(settings, aws, tenant):
    first = run(settings, aws, "aws.s3_put_object", PUT, tenant=tenant, dry_run=False, idempotency_key="k-1")
    assert first["status"] == "succeeded" and first["result"]["verified"]["size"] == len("all green")
    body = aws[1].get_object(Bucket="acme-data", Key="reports/today.txt")["Body"].read()
    assert body == b"all green"
    again = run(settings, aws, "aws.s3_put_object", PUT, tenant=tenant, dry_run=False, idempotency_key="k-1")
    assert again["replayed"] and again["operation_id"] == first["operation_id"]
    with pytest.raises(InputError, match="idempotency key"):
        run(settings, aws, "aws.s3_put_object", {**PUT, "body": "other"}, tenant=tenant, dry_run=False,
            idempotency_key="k-1")
    audit = read_audit(settings_pool(settings), tenant=tenant)
    assert [r["status"] for r in audit] == ["succeeded"]
    assert audit[0]["actor"] == {"agent": "pytest"} and audit[0]["plan_hash"] == first["plan_hash"]
    assert verify_audit(settings_pool(settings)).ok


def test_denials_name_the_rule_and_write_nothing(settings, aws, tenant):
    with pytest.raises(OperationDenied, match="aws_buckets"):
        run(settings, aws, "aws.s3_put_object", {**PUT, "bucket": "other-bucket"}, tenant=tenant, dry_run=False)
    with pytest.raises(OperationDenied, match="max_scale_step"):
        run(settings, aws, "aws.ecs_update_service", {"cluster": "prod", "service": "api", "desired_count": 7},
            tenant=tenant, dry_run=False)
    svc = aws[2].describe_services(cluster="prod", services=["api"])["services"][0]
    assert svc["desiredCount"] == 2
    assert [r["status"] for r in read_audit(settings_pool(settings), tenant=tenant)] == ["denied", "denied"]


def test_ecs_update_within_policy(settings, aws, tenant):
    out = run(settings, aws, "aws.ecs_update_service", {"cluster": "prod", "service": "api", "desired_count": 4},
              tenant=tenant, dry_run=False)
    assert out["status"] == "succeeded" and out["plan"]["facts"]["current_replicas"] == 2
    assert "-desiredCount: 2\n+desiredCount: 4" in out["plan"]["diff"]
    assert aws[2].describe_services(cluster="prod", services=["api"])["services"][0]["desiredCount"] == 4


def test_read_only_calls_run_without_dry_run_off_and_writes_are_refused(settings, aws, tenant):
    run(settings, aws, "aws.s3_put_object", PUT, tenant=tenant, dry_run=False)
    listed = run(settings, aws, "aws.s3_list", {"bucket": "acme-data", "prefix": "reports/"}, tenant=tenant)
    assert [o["key"] for o in listed["result"]["objects"]] == ["reports/today.txt"]
    described = run(settings, aws, "aws.describe", {"service": "ecs", "call": "list_clusters"}, tenant=tenant)
    assert described["result"]["clusterArns"]
    with pytest.raises(InputError, match="read-only"):
        run(settings, aws, "aws.describe", {"service": "s3", "call": "delete_bucket",
                                            "params": {"Bucket": "acme-data"}}, tenant=tenant)
    with pytest.raises(InputError, match="key"):
        run(settings, aws, "aws.s3_put_object", {**PUT, "key": "../../etc/passwd"}, tenant=tenant)


def test_canary_credentials_reach_no_sink(settings, aws, tenant, caplog):
    caplog.set_level(logging.DEBUG)
    run(settings, aws, "aws.s3_put_object", PUT, tenant=tenant, dry_run=False)
    with pytest.raises(Exception) as failed:
        run(settings, aws, "aws.s3_list", {"bucket": "no-such-bucket"}, tenant=tenant)
    with settings_pool(settings).connection() as conn:
        dumped = conn.execute("SELECT string_agg(t::text, '\n') FROM (SELECT * FROM audit_log UNION ALL"
                              " SELECT * FROM audit_log WHERE false) t").fetchone()[0]
        ops = conn.execute("SELECT string_agg(o::text, '\n') FROM operations o").fetchone()[0]
    for sink in (dumped, ops, str(failed.value), caplog.text):
        assert CANARY_SECRET not in sink and CANARY_KEY not in sink

"""Tools, operations and the audit trail over REST, with AWS mocked by moto.

How the tests reach the guard without Prefect blocks: the app's shared state takes `ops_policy` (an
OperationPolicy) and `ops_connections` (a Connections holding the moto-backed AwsCredentials), each a mapping from
the test's tenant (an override is per tenant: tasks.grants.override_for); the routes pass them to `run_operation`
(see deployments/api/state.py). Approval hand-off uses the session's Prefect test server.
"""

from __future__ import annotations

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws
from prefect_aws import AwsCredentials

from blocks.policy import OperationPolicy
from tasks.operation_log import update_operation
from tasks.ops.base import Connections
from tests.rest import API, POLICY, PUT, REGION, Org, assert_error, make_app, new_key, register

SECRET = "moto-secret-value-0000000001"
NEEDS_APPROVAL = OperationPolicy(operations=["aws.*"], aws_regions=[REGION], aws_buckets=["acme-*"],
                                 require_approval=["aws.s3_put_object"])


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket="acme-data", CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client


def _client(settings, policy, tenant):
    creds = AwsCredentials(aws_access_key_id="AKIAAPITEST0000000001", aws_secret_access_key=SECRET,
                           region_name=REGION)
    return TestClient(make_app(settings, ops_policy={tenant: policy},
                               ops_connections={tenant: Connections(aws=creds)}))


@pytest.fixture
def ops(settings, s3, tenant):
    with _client(settings, POLICY, tenant) as client:
        yield client, register(client, tenant), s3


def execute(client, org: Org, name: str, **body):
    return client.post(f"{API}/tools/{name}/execute", json=body, headers=org.headers)


def test_tools_list_the_shared_catalog(ops):
    client, org, _ = ops
    reader = new_key(client, org, ["read"])
    items = {t["name"]: t for t in client.get(f"{API}/tools", headers=reader.headers).json()["items"]}
    assert {"github.create_issue", "kubernetes.apply", "aws.s3_put_object", "aws.describe", "memory.search"} <= set(items)
    put = items["aws.s3_put_object"]
    assert put["read_only"] is False and put["input_schema"]["required"] == ["bucket", "key", "body"]
    assert items["aws.s3_list"]["read_only"] is True and items["kubernetes.rollback"]["description"]


def test_execute_dry_run_then_for_real_then_replay(ops, pool):
    client, org, s3 = ops
    planned = execute(client, org, "aws.s3_put_object", arguments=PUT)
    assert planned.status_code == 200, planned.text
    assert planned.json()["status"] == "planned" and planned.json()["plan"]["target"].startswith("aws:s3:acme-data")
    assert s3.list_objects_v2(Bucket="acme-data").get("KeyCount") == 0
    done = execute(client, org, "aws.s3_put_object", arguments=PUT, dry_run=False, idempotency_key="api-k1")
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded" and done.json()["result"]["verified"]["size"] == len("all green")
    assert s3.get_object(Bucket="acme-data", Key="reports/today.txt")["Body"].read() == b"all green"
    again = execute(client, org, "aws.s3_put_object", arguments=PUT, dry_run=False, idempotency_key="api-k1").json()
    assert again["replayed"] and again["operation_id"] == done.json()["operation_id"]
    conflict = execute(client, org, "aws.s3_put_object", arguments={**PUT, "body": "other"}, dry_run=False,
                       idempotency_key="api-k1")
    assert_error(conflict, 422, "invalid_input")

    op = client.get(f"{API}/operations/{done.json()['operation_id']}", headers=org.headers).json()
    assert op["status"] == "succeeded" and op["actor"]["api_key_id"] == org.key_id
    audit = client.get(f"{API}/audit", headers=org.headers).json()["items"]
    assert [r["status"] for r in audit] == ["planned", "planned", "succeeded"]
    assert all(r["actor"] == {"tenant": org.slug, "api_key_id": org.key_id, "api_key_name": "admin"} for r in audit)
    page = client.get(f"{API}/audit", params={"limit": 2}, headers=org.headers).json()
    rest = client.get(f"{API}/audit", params={"after_seq": page["next_after_seq"]}, headers=org.headers).json()
    assert [r["seq"] for r in page["items"] + rest["items"]] == [r["seq"] for r in audit]
    by_op = client.get(f"{API}/audit", params={"operation_id": done.json()["operation_id"]}, headers=org.headers)
    assert [r["status"] for r in by_op.json()["items"]] == ["planned", "succeeded"]
    assert SECRET not in client.get(f"{API}/audit", headers=org.headers).text


def test_denial_unknown_tool_bad_arguments_and_scope(ops):
    client, org, s3 = ops
    denied = assert_error(execute(client, org, "aws.s3_put_object", arguments={**PUT, "bucket": "evil-data"},
                                  dry_run=False), 403, "policy_denied")
    assert "aws_buckets" in denied["message"]
    assert_error(execute(client, org, "aws.s3_explode", arguments={}), 404, "unknown_tool")
    bad = assert_error(execute(client, org, "aws.s3_put_object", arguments={"bucket": "acme-data", "colour": "red"}),
                       422, "invalid_arguments")
    assert "key" in bad["message"] and "colour" in bad["message"] and "body" in bad["message"]
    assert_error(execute(client, org, "aws.s3_put_object", arguments=PUT, dry_run="maybe"), 422, "validation_error")
    reader = new_key(client, org, ["read"])
    assert assert_error(execute(client, reader, "aws.s3_put_object", arguments=PUT), 403, "missing_scope")["item"] \
        == "operate"
    assert s3.list_objects_v2(Bucket="acme-data").get("KeyCount") == 0


def test_memory_tool_runs_within_the_tenant(ops):
    client, org, _ = ops
    client.post(f"{API}/embeddings", json={"id": "runbook/oom", "text": "When a pod is OOMKilled raise the limit."},
                headers=org.headers)
    out = execute(client, new_key(client, org, ["read"]), "memory.search",
                  arguments={"query": "pod OOMKilled", "scope": "all"})
    assert out.status_code == 200, out.text
    assert out.json()["result"]["hits"][0]["source"] == "runbook/oom"
    assert_error(execute(client, org, "memory.search", arguments={"query": "x", "scope": "user"}), 422)


def test_approve_and_reject_need_admin_and_an_operation_awaiting_approval(ops, pool):
    client, org, _ = ops
    planned = execute(client, org, "aws.s3_put_object", arguments=PUT, idempotency_key="approve-1").json()
    op_id = planned["operation_id"]
    operator = new_key(client, org, ["operate", "read"])
    assert_error(client.post(f"{API}/operations/{op_id}/approve", headers=operator.headers), 403, "missing_scope")
    assert_error(client.post(f"{API}/operations/{op_id}/approve", headers=org.headers), 409, "conflict")
    update_operation(pool, op_id, status="awaiting_approval")  # as a paused run of the operate flow leaves it
    in_flight = execute(client, org, "aws.s3_put_object", arguments=PUT, dry_run=False, idempotency_key="approve-1")
    assert assert_error(in_flight, 409, "in_progress")["operation_id"] == op_id  # not re-planned, not reset
    # the key that requested the operation cannot approve it; another admin key of the tenant can
    assert_error(client.post(f"{API}/operations/{op_id}/approve", headers=org.headers), 403, "self_approval")
    other = new_key(client, org, ["admin"])
    decided = client.post(f"{API}/operations/{op_id}/approve", json={"comment": "ship it"}, headers=other.headers)
    assert decided.status_code == 200, decided.text
    assert decided.json() == {"operation_id": op_id, "decision": "approved", "approver": "admin",
                              "approver_id": other.key_id, "approver_kind": "api_key", "flow_run_id": None}
    assert_error(client.post(f"{API}/operations/{op_id}/reject", headers=org.headers), 409, "conflict")
    audit = client.get(f"{API}/audit", headers=org.headers).json()["items"]
    assert [r["status"] for r in audit] == ["planned", "approval_approved"]
    assert audit[1]["actor"] == {"tenant": org.slug, "api_key_id": other.key_id, "api_key_name": "admin"}
    assert audit[1]["approval"]["approver_id"] == other.key_id


def test_approval_required_without_a_deployment_is_409_with_the_plan(prefect_harness, settings, s3, tenant):
    with _client(settings, NEEDS_APPROVAL, tenant) as client:
        org = register(client, tenant)
        refused = execute(client, org, "aws.s3_put_object", arguments=PUT, dry_run=False)
        error = assert_error(refused, 409, "approval_required")
        assert error["plan"]["operation"] == "aws.s3_put_object" and error["operation_id"]
        assert s3.list_objects_v2(Bucket="acme-data").get("KeyCount") == 0
        # a dry run is still a plain plan, and says an approval will be needed
        dry = execute(client, org, "aws.s3_put_object", arguments=PUT).json()
        assert dry["status"] == "planned" and dry["result"]["decision"]["needs_approval"] is True


def test_approval_required_hands_the_operation_to_the_operate_deployment(prefect_harness, settings, s3, tenant):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        deployment_id = prefect.create_deployment(flow_id=prefect.create_flow_from_name("operate"), name="operate")
        try:
            with _client(settings, NEEDS_APPROVAL, tenant) as client:
                org = register(client, tenant)
                submitted = execute(client, org, "aws.s3_put_object", arguments=PUT, dry_run=False,
                                    idempotency_key="handoff-1")
                assert submitted.status_code == 202, submitted.text
                body = submitted.json()
                assert body["status"] == "awaiting_approval" and body["plan"]["target"].startswith("aws:s3:")
                run = prefect.read_flow_run(body["flow_run_id"])
                request = run.parameters["request"]
                assert request["tenant"] == org.slug and request["dry_run"] is False
                assert request["idempotency_key"] == "handoff-1" and request["actor"]["api_key_id"] == org.key_id
                assert s3.list_objects_v2(Bucket="acme-data").get("KeyCount") == 0
        finally:
            prefect.delete_deployment(deployment_id)

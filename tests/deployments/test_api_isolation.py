"""Tenant isolation through every route: organization A cannot read, list, search, append to, change, delete or
operate on organization B's contexts, documents, keys, operations or audit records (404 for B's ids, never 403);
SQL-looking strings in ids and filters are refused or match nothing."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws
from prefect_aws import AwsCredentials

from tasks.ops.base import Connections
from tests.rest import API, assert_error, make_app, new_key, register
from tests.rest import POLICY, PUT, REGION

INJECTIONS = ["' OR '1'='1", "1; DROP TABLE contexts; --", "x' UNION SELECT key_hash FROM api_keys --",
              "%' OR tenant_id LIKE '%", "\\'; SELECT pg_sleep(5); --"]


@pytest.fixture
def two_orgs(settings, tenant):
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket="acme-data", CreateBucketConfiguration={"LocationConstraint": REGION})
        creds = AwsCredentials(aws_access_key_id="AKIAISOLATION0000001", aws_secret_access_key="isolation-secret-01",
                               region_name=REGION)
        slugs = (f"{tenant}-a", f"{tenant}-b")
        with TestClient(make_app(settings, ops_policy=dict.fromkeys(slugs, POLICY),
                                 ops_connections=dict.fromkeys(slugs, Connections(aws=creds)))) as client:
            a, b = register(client, f"{tenant}-a"), register(client, f"{tenant}-b")
            yield client, a, b


def test_tenant_a_cannot_reach_tenant_b(two_orgs):
    client, a, b = two_orgs
    hb, ha = b.headers, a.headers
    ctx = client.post(f"{API}/contexts", json={"user_id": "bea", "metadata": {"secret": "b-only"}}, headers=hb).json()
    cid = ctx["id"]
    client.post(f"{API}/contexts/{cid}/messages", json={"messages": [
        {"role": "user", "content": "zebra launch codes are kept in vault seven"}]}, headers=hb)
    client.post(f"{API}/embeddings", json={"id": "b/plan", "text": "zebra merger plan for the quarter"}, headers=hb)
    op_id = client.post(f"{API}/tools/aws.s3_put_object/execute", json={"arguments": PUT}, headers=hb).json()[
        "operation_id"]
    b_reader = new_key(client, b, ["read"])

    # contexts: every route answers 404 for B's id, as for an unknown one
    msg = {"messages": [{"role": "user", "content": "injected"}]}
    for response in (
        client.get(f"{API}/contexts/{cid}", headers=ha),
        client.patch(f"{API}/contexts/{cid}", json={"metadata": {"x": 1}}, headers=ha),
        client.post(f"{API}/contexts/{cid}/messages", json=msg, headers=ha),
        client.post(f"{API}/contexts/{cid}/search", json={"query": "zebra"}, headers=ha),
        client.get(f"{API}/contexts/{cid}/summary", headers=ha),
        client.get(f"{API}/contexts/{cid}/similar", headers=ha),
        client.get(f"{API}/contexts/{cid}/embeddings", headers=ha),
        client.delete(f"{API}/contexts/{cid}", headers=ha),
        client.post(f"{API}/search", json={"query": "zebra", "context_id": cid}, headers=ha),
        client.post(f"{API}/tools/memory.search/execute", json={"arguments": {"query": "zebra", "scope": "context"},
                                                                "context_id": cid}, headers=ha),
        # operations, keys
        client.get(f"{API}/operations/{op_id}", headers=ha),
        client.post(f"{API}/operations/{op_id}/approve", headers=ha),
        client.post(f"{API}/operations/{op_id}/reject", headers=ha),
        client.get(f"{API}/audit", params={"operation_id": op_id}, headers=ha),
        client.delete(f"{API}/keys/{b_reader.key_id}", headers=ha),
        client.post(f"{API}/keys/{b_reader.key_id}/rotate", headers=ha),
    ):
        assert_error(response, 404)
    # lists and searches simply do not contain B's data
    assert client.get(f"{API}/contexts", headers=ha).json()["items"] == []
    assert client.get(f"{API}/contexts", params={"user_id": "bea"}, headers=ha).json()["total"] == 0
    for body in ({"query": "zebra"}, {"query": "zebra", "mode": "keyword"}, {"query": "zebra", "user_id": "bea"},
                 {"query": "zebra", "document_ids": ["b/plan", f"context:{cid}"]}):
        assert client.post(f"{API}/search", json=body, headers=ha).json()["hits"] == []
    vector = client.get(f"{API}/contexts/{cid}/embeddings", params={"include_vectors": True}, headers=hb).json()[
        "items"][0]["vector"]
    assert client.post(f"{API}/search/vector", json={"vector": vector, "model": "fake-words-64"},
                       headers=ha).json()["hits"] == []
    memory = client.post(f"{API}/tools/memory.search/execute", json={"arguments": {"query": "zebra", "scope": "all"}},
                         headers=ha).json()
    assert memory["result"]["hits"] == []
    assert client.get(f"{API}/audit", headers=ha).json()["items"] == []
    assert {k["id"] for k in client.get(f"{API}/keys", headers=ha).json()["items"]} == {a.key_id}
    # A storing a document with B's id makes A's own document
    client.post(f"{API}/embeddings", json={"id": "b/plan", "text": "apples"}, headers=ha)

    # B still has everything, untouched
    page = client.get(f"{API}/contexts/{cid}", headers=hb).json()
    assert [m["content"] for m in page["messages"]] == ["zebra launch codes are kept in vault seven"]
    assert page["context"]["metadata"] == {"secret": "b-only"}
    hits = client.post(f"{API}/search", json={"query": "zebra merger", "mode": "keyword"}, headers=hb).json()["hits"]
    assert "b/plan" in {h["document_id"] for h in hits} and "apples" not in str(hits)
    assert client.get(f"{API}/operations/{op_id}", headers=hb).status_code == 200
    assert client.get(f"{API}/contexts", headers=b_reader.headers).status_code == 200


def test_sql_looking_strings_are_refused_or_match_nothing(two_orgs, pool):
    client, a, b = two_orgs
    ha = a.headers
    cid = client.post(f"{API}/contexts", json={"user_id": "ana"}, headers=ha).json()["id"]
    client.post(f"{API}/embeddings", json={"id": "doc-1", "text": "rotate the webhook secret"}, headers=b.headers)
    for evil in INJECTIONS:
        for path in (f"/contexts/{evil}", f"/contexts/{evil}/summary", f"/operations/{evil}"):
            assert_error(client.get(f"{API}{path}", headers=ha), 404)
        assert_error(client.delete(f"{API}/keys/{evil}", headers=ha), 404)
        assert_error(client.post(f"{API}/tools/{evil}/execute", json={}, headers=ha), 404)
        assert client.get(f"{API}/contexts", params={"user_id": evil, "type": evil}, headers=ha).json()["total"] == 0
        assert client.get(f"{API}/contexts", params={"metadata": json.dumps({"k": evil})}, headers=ha).json()["total"] == 0
        assert client.get(f"{API}/contexts", params={"cursor": evil}, headers=ha).status_code == 422
        for body in ({"query": evil}, {"query": evil, "mode": "keyword"}, {"query": "webhook", "filters": {evil: evil}},
                     {"query": "webhook", "document_ids": [evil]}, {"query": "webhook", "user_id": evil}):
            response = client.post(f"{API}/search", json=body, headers=ha)
            assert response.status_code == 200 and response.json()["hits"] == [], (body, response.text)
        assert client.post(f"{API}/search/vector", json={"vector": [1.0] * 64, "model": evil}, headers=ha).status_code \
            == 422
        created = client.post(f"{API}/contexts", json={"user_id": evil, "metadata": {evil: evil}}, headers=ha)
        assert created.status_code == 201 and created.json()["user_id"] == evil  # stored as data, verbatim
    with pool.connection() as conn:  # everything still there
        assert conn.execute("SELECT count(*) FROM contexts WHERE tenant_id = %s", [a.slug]).fetchone()[0] == \
            1 + len(INJECTIONS)
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 2
    assert client.get(f"{API}/contexts/{cid}", headers=ha).status_code == 200
    assert client.get(f"{API}/contexts/{uuid.uuid4()}", headers=ha).status_code == 404

"""The MCP server through the official SDK's clients: in process, over real stdio, over streamable HTTP."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from moto import mock_aws
from prefect_aws import AwsCredentials

from blocks.policy import OperationPolicy
from deployments.memory import Memory
from deployments.mcp_server import _stdio_resolver, build_server, mcp_http_app, mount
from tasks.audit import read_audit
from tasks.ops.base import Connections, operations
from tasks.tenancy import authenticate, create_key, revoke_key
from tests.mcp_clients import client, org, text
from tests.serving import serve

ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
POLICY = OperationPolicy(operations=["aws.*"], aws_regions=[REGION], aws_buckets=["acme-*"])
PUT = {"bucket": "acme-data", "key": "reports/today.txt", "body": "all green"}
OOM = [{"role": "user", "content": "The payments deploy failed with OOMKilled"},
       {"role": "assistant", "content": "Raise the payments pod memory limit to 1Gi"}]


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, their causes and contexts."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in leaves(e)]
    chained = exc.__cause__ or exc.__context__
    return [exc] + (leaves(chained) if chained is not None else [])


async def register_key(pool, tenant: str) -> str:
    """Another key of `tenant` (never used yet)."""
    return create_key(pool, tenant, "second", ["read"])[1]


@pytest.fixture
def acme(pool, tenant):
    return tenant, org(pool, tenant)


@pytest.fixture
def aws():
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="acme-data", CreateBucketConfiguration={"LocationConstraint": REGION})
        yield Connections(aws=AwsCredentials(aws_access_key_id="AKIATEST0000000001",
                                             aws_secret_access_key="test-secret-0123456789", region_name=REGION)), s3


async def test_tools_are_listed_with_schemas_and_annotations(settings, pool, acme):
    tenant, admin = acme
    async with client(settings, pool, admin, mode="legacy") as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    memory = {"context_create", "context_append", "context_get", "search", "find_similar"}
    assert set(tools) == memory | {op.name for op in operations()}
    create_issue, get_file = tools["github.create_issue"], tools["github.get_file"]
    assert create_issue.input_schema["required"] == ["repo", "title"]
    assert create_issue.input_schema["properties"]["dry_run"]["default"] is True
    assert "idempotency_key" in create_issue.input_schema["properties"]
    assert create_issue.annotations.read_only_hint is False and create_issue.annotations.destructive_hint is False
    assert get_file.annotations.read_only_hint is True and get_file.annotations.idempotent_hint is True
    assert "dry_run" not in get_file.input_schema["properties"]
    assert tools["search"].annotations.read_only_hint is True
    assert set(tools["search"].input_schema["properties"]) == {"query", "context_id", "user_id", "mode", "limit",
                                                                    "created_after", "created_before"}
    assert "tenant" not in str({n: t.input_schema for n, t in tools.items()})
    assert "key_name" not in tools["context_create"].input_schema["properties"]

    reader = create_key(pool, tenant, "reader", ["read"])[1]
    async with client(settings, pool, reader) as c:
        assert {t.name for t in (await c.list_tools()).tools} == {"context_get", "search", "find_similar"}


async def test_context_round_trip_and_search(settings, pool, acme):
    _, admin = acme
    async with client(settings, pool, admin) as c:
        created = await c.call_tool("context_create", {"user_id": "ana", "agent_id": "copilot"})
        assert not created.is_error, text(created)
        cid = created.structured_content["id"]
        appended = await c.call_tool("context_append", {"context_id": cid, "messages": OOM})
        assert appended.structured_content["message_count"] == 2 and appended.structured_content["chunks_added"]
        page = (await c.call_tool("context_get", {"context_id": cid, "offset": -1})).structured_content
        assert [m["content"] for m in page["messages"]] == [OOM[1]["content"]]
        for scope in ({"context_id": cid}, {"user_id": "ana"}, {}):
            found = await c.call_tool("search", {"query": "OOMKilled payments", "mode": "keyword", **scope})
            assert found.structured_content["hits"][0]["document_id"] == f"context:{cid}", scope
        other = (await c.call_tool("context_create", {"user_id": "bob"})).structured_content["id"]
        await c.call_tool("context_append", {"context_id": other, "messages": OOM[:1]})
        similar = await c.call_tool("find_similar", {"context_id": cid})
        assert [s["context_id"] for s in similar.structured_content["similar"]] == [other]
        both = await c.call_tool("search", {"query": "x", "context_id": cid, "user_id": "ana"})
        assert both.is_error and "not both" in text(both)


async def test_search_bounds_the_time_of_what_was_said(settings, pool, acme):
    _, admin = acme
    said = [{**m, "created_at": f"2024-05-0{i + 1}T10:00:00Z"} for i, m in enumerate(OOM)]
    async with client(settings, pool, admin) as c:
        cid = (await c.call_tool("context_create", {"user_id": "ana"})).structured_content["id"]
        await c.call_tool("context_append", {"context_id": cid, "messages": said})
        late = await c.call_tool("search", {"query": "OOMKilled payments memory", "context_id": cid,
                                            "created_after": "2024-05-02T00:00:00Z"})
        assert [h["metadata"]["message_range"] for h in late.structured_content["hits"]] == [[1, 1]]
        naive = await c.call_tool("search", {"query": "x", "created_before": "2024-05-02T00:00:00"})
        assert naive.is_error and "created_before" in text(naive)


async def test_aws_operation_dry_run_then_execute_within_policy(settings, pool, acme, aws):
    tenant, admin = acme
    conns, s3 = aws
    async with client(settings, pool, admin, connections={tenant: conns}, policy={tenant: POLICY}) as c:
        planned = await c.call_tool("aws.s3_put_object", PUT)
        assert not planned.is_error, text(planned)
        assert planned.structured_content["status"] == "planned"
        assert s3.list_objects_v2(Bucket="acme-data").get("KeyCount") == 0
        done = await c.call_tool("aws.s3_put_object", {**PUT, "dry_run": False, "idempotency_key": "mcp-1"})
        assert done.structured_content["status"] == "succeeded", text(done)
        listed = await c.call_tool("aws.s3_list", {"bucket": "acme-data"})
    assert s3.get_object(Bucket="acme-data", Key="reports/today.txt")["Body"].read() == b"all green"
    assert [o["key"] for o in listed.structured_content["result"]["objects"]] == ["reports/today.txt"]
    audit = read_audit(pool, tenant=tenant)
    assert [r["status"] for r in audit] == ["planned", "succeeded", "succeeded"]
    assert audit[1]["actor"]["via"] == "mcp" and audit[1]["actor"]["tenant"] == tenant
    assert audit[1]["actor"]["api_key_name"] == "admin"


async def test_denials_and_bad_arguments_are_tool_errors(settings, pool, acme, aws):
    tenant, admin = acme
    conns, s3 = aws
    async with client(settings, pool, admin, connections={tenant: conns}, policy={tenant: POLICY}) as c:
        denied = await c.call_tool("aws.s3_put_object", {**PUT, "bucket": "evil-bucket", "dry_run": False})
        assert denied.is_error and "OperationDenied" in text(denied) and "aws_buckets" in text(denied)
        missing = await c.call_tool("aws.s3_put_object", {"bucket": "acme-data", "body": "x"})
        assert missing.is_error and "key: Field required" in text(missing)
        extra = await c.call_tool("aws.s3_put_object", {**PUT, "colour": "red"})
        assert extra.is_error and "colour" in text(extra)
        flag = await c.call_tool("aws.s3_put_object", {**PUT, "dry_run": "no"})
        assert flag.is_error and "dry_run" in text(flag)
        role = await c.call_tool("context_append", {"context_id": "x", "messages": [{"role": "boss", "content": "hi"}]})
        assert role.is_error and "messages.0.role" in text(role)
        with pytest.raises(MCPError, match="unknown tool"):
            await c.call_tool("aws.s3_delete_everything", {})
    gated = POLICY.model_copy(update={"require_approval": ["aws.s3_put_object"]})
    async with client(settings, pool, admin, connections={tenant: conns}, policy={tenant: gated}) as c:
        waiting = await c.call_tool("aws.s3_put_object", {**PUT, "dry_run": False})
        assert waiting.is_error and "ApprovalRejected" in text(waiting) and "needs approval" in text(waiting)
    assert s3.list_objects_v2(Bucket="acme-data").get("KeyCount") == 0


async def test_scopes_are_enforced(settings, pool, acme, aws):
    tenant, _ = acme
    reader = create_key(pool, tenant, "reader", ["read"])[1]
    async with client(settings, pool, reader, connections=aws[0], policy=POLICY) as c:
        write = await c.call_tool("context_create", {"user_id": "ana"})
        assert write.is_error and "lacks the 'write' scope" in text(write)
        op = await c.call_tool("aws.s3_list", {"bucket": "acme-data"})
        assert op.is_error and "lacks the 'operate' scope" in text(op)
    assert Memory(tenant, settings).search("ana", mode="keyword") == []
    assert read_audit(pool, tenant=tenant) == []

    writer_id, writer = create_key(pool, tenant, "writer", ["write"])
    async with Client(build_server(_stdio_resolver(pool, writer), settings)) as c:  # stdio re-checks the key
        assert not (await c.call_tool("context_create", {})).is_error
        revoke_key(pool, tenant, writer_id["id"])
        revoked = await c.call_tool("context_create", {})
        assert revoked.is_error and "invalid or revoked API key" in text(revoked)


async def test_a_key_reads_only_its_own_tenant(settings, pool, tenant):
    key_a, key_b = org(pool, tenant + "-a"), org(pool, tenant + "-b")
    async with client(settings, pool, key_b) as c:
        cid = (await c.call_tool("context_create", {"user_id": "ana"})).structured_content["id"]
        await c.call_tool("context_append", {"context_id": cid, "messages": OOM})
    async with client(settings, pool, key_a) as c:
        got = await c.call_tool("context_get", {"context_id": cid})
        assert got.is_error and "ContextNotFound" in text(got)
        for args in ({"context_id": cid}, {"user_id": "ana"}, {}):
            found = await c.call_tool("search", {"query": "OOMKilled", "mode": "keyword", **args})
            assert found.is_error or found.structured_content["hits"] == [], args
        appended = await c.call_tool("context_append", {"context_id": cid, "messages": OOM})
        assert appended.is_error and "ContextNotFound" in text(appended)
        assert (await c.call_tool("find_similar", {"context_id": cid})).is_error
    assert Memory(tenant + "-b", settings).get(cid).context.message_count == 2


async def test_stdio_subprocess(settings, pool, acme):
    """Real stdio: `python -m deployments.mcp_server --stdio`. DEVMESH_EMBEDDER=local, but no tool called here loads
    a model: context_create/context_get and a keyword `search` (over a document stored in-process)."""
    tenant, admin = acme
    Memory(tenant, settings).remember("runbook/oom", "When a pod is OOMKilled, raise its memory limit.")
    env = {k: v for k, v in os.environ.items() if k.startswith(("PREFECT_", "PYTHON"))}
    env |= {"DEVMESH_HOME": str(settings.home), "DEVMESH_EMBEDDER": "local", "DEVMESH_API_KEY": admin}
    params = StdioServerParameters(command=sys.executable, args=["-m", "deployments.mcp_server", "--stdio"],
                                   env=env, cwd=str(ROOT))
    async with Client(params, read_timeout_seconds=60) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"search", "context_create", "aws.s3_put_object"} <= names
        found = await c.call_tool("search", {"query": "pod OOMKilled", "mode": "keyword"})
        assert found.structured_content["hits"][0]["document_id"] == "runbook/oom", text(found)
        cid = (await c.call_tool("context_create", {"user_id": "ana"})).structured_content["id"]
        got = await c.call_tool("context_get", {"context_id": cid})
        assert got.structured_content["context"]["tenant"] == tenant


@pytest.fixture
def http_server(settings):
    """The test-only mount: a FastAPI app with the MCP endpoint at /mcp, served by uvicorn on loopback."""
    app = FastAPI()
    mount(app, mcp_http_app(settings))
    with serve(app) as url:
        yield f"{url}/mcp"


async def test_streamable_http_with_and_without_key(settings, pool, acme, http_server):
    tenant, admin = acme
    headers = {"Authorization": f"Bearer {admin}"}
    async with Client(streamable_http_client(http_server, http_client=create_mcp_http_client(headers=headers))) as c:
        assert "context_create" in {t.name for t in (await c.list_tools()).tools}
        cid = (await c.call_tool("context_create", {"user_id": "ana"})).structured_content["id"]
        got = await c.call_tool("context_get", {"context_id": cid})
        assert got.structured_content["context"]["tenant"] == tenant
    with pytest.raises(BaseException) as refused:  # the SDK raises MCPError inside its task groups
        async with Client(http_server) as c:
            await c.list_tools()
    assert any(isinstance(e, MCPError) for e in leaves(refused.value))
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "curl", "version": "0"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient() as raw:
        refused = await raw.post(http_server, json=init, headers={**accept, "X-API-Key": "devmesh_" + "x" * 43})
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        error = refused.json()["error"]  # the REST API's error body
        assert error["code"] == "unauthorized" and "invalid or revoked API key" in error["message"]
        assert error["request_id"]
        ok = await raw.post(http_server, json=init, headers={**accept, "X-API-Key": admin})
        assert ok.status_code == 200 and "devmesh" in ok.text


async def test_http_rate_limit_and_failed_auth_lockout(settings, pool, acme):
    _, admin = acme
    limits = settings.admission.model_copy(update={"rate_per_minute": 1, "burst": 1, "max_failures": 2})
    app = mcp_http_app(settings.model_copy(update={"admission": limits}))
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with app.run(), httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8787") as http:
        assert (await http.post("/mcp", json=init, headers={**accept, "X-API-Key": admin})).status_code == 200
        limited = await http.post("/mcp", json=init, headers={**accept, "X-API-Key": admin})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        for _ in range(2):
            assert (await http.post("/mcp", json=init, headers={**accept, "X-API-Key": "nope"})).status_code == 401
        other = (await register_key(pool, acme[0]))
        locked = await http.post("/mcp", json=init, headers={**accept, "Authorization": f"Bearer {other}"})
        assert locked.status_code == 429 and "failed authentications" in locked.json()["error"]["message"]
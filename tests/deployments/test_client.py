"""The Python client (deployments/client.py) against the real gateway app served by uvicorn on 127.0.0.1, and its
retry and error rules against httpx.MockTransport answers."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

import httpx
import pytest
from moto import mock_aws
from prefect_aws import AwsCredentials
from pydantic import SecretStr

import deployments.client as client_module
from blocks.errors import (
    AuthFailed, ConfigError, ContextLimitExceeded, InputError, InvalidRequest, MalformedResponse, NotFound,
    OperationDenied, ProviderTimeout, RateLimited, TransientError,
)
from deployments.client import ApprovalRequired, AsyncMesh, Forbidden, Mesh
from deployments.client_models import Context, SearchHits, Tool, Tools
from tasks.ops.base import Connections
from blocks.postgres import PgVectorStore
from tasks.ratelimit import Admission
from tests.rest import PASSWORD, POLICY, PUT, REGION, make_app
from tests.serving import serve

OPENAI_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
AWS_SECRET = "moto-client-secret-000000001"


class Clock:
    """The rate limiter's clock; the client's patched sleep moves it instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(settings, clock, tenant):
    """The gateway app (REST API included, webhook block given in code) on a random local port, with an AWS
    policy and moto-backed credentials for `tenant` so that its operations can be planned."""
    creds = AwsCredentials(aws_access_key_id="AKIACLIENTTEST000001", aws_secret_access_key=AWS_SECRET,
                           region_name=REGION)
    admission = Admission(PgVectorStore.from_settings(settings).pool, settings.admission, clock=clock)
    app = make_app(settings, admission=admission, ops_policy={tenant: POLICY},
                   ops_connections={tenant: Connections(aws=creds)})
    with mock_aws():
        import boto3

        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket="acme-data", CreateBucketConfiguration={"LocationConstraint": REGION})
        with serve(app) as url:
            yield url


def register(base_url: str, slug: str, **options) -> tuple:
    return Mesh.register_organization(base_url, name=f"Org {slug}", slug=slug, admin_email=f"admin@{slug}.example",
                                      admin_name="Ana", password=PASSWORD, **options)


@pytest.fixture
def mesh(server, tenant):
    org, client = register(server, tenant)
    with client:
        yield client


# -- against the served app --------------------------------------------------------------------------------------

def test_register_then_contexts_keys_embeddings_and_search(server, tenant, fake_embedder):
    org, mesh = register(server, tenant)
    with mesh:
        key = org.api_key.get_secret_value()
        assert org.organization.tenant == tenant and key.startswith("devmesh_") and org.key.scopes == ["admin"]
        assert key not in repr(org) and key not in repr(mesh) and key not in str(org.model_dump())

        ctx = mesh.create_context(user_id="ana", agent_id="copilot", metadata={"team": "payments"})
        assert isinstance(ctx, Context) and ctx.tenant == tenant and ctx.metadata == {"team": "payments"}
        others = [mesh.create_context(user_id=u).id for u in ("ana", "bo")]
        appended = mesh.append(ctx.id, [{"role": "user", "content": "The payments deploy failed with OOMKilled"},
                                        {"role": "assistant", "content": "Raise the payments pod memory to 1Gi"}])
        assert (appended.first_idx, appended.last_idx, appended.message_count) == (0, 1, 2)
        page = mesh.get_context(ctx.id, offset=-1, limit=5)
        assert [m.content for m in page.messages] == ["Raise the payments pod memory to 1Gi"]
        assert page.context.message_count == 2
        assert {c.id for c in mesh.iter_contexts(page_size=2)} == {ctx.id, *others}
        assert [c.id for c in mesh.iter_contexts(agent_id="copilot")] == [ctx.id]
        assert mesh.list_contexts(limit=1).total == 3
        assert mesh.update_context(ctx.id, {"sev": 2}).metadata == {"team": "payments", "sev": 2}
        hits = mesh.search_context(ctx.id, "OOMKilled memory")
        assert isinstance(hits, SearchHits) and hits.count >= 1
        assert all(h.document_id == f"context:{ctx.id}" for h in hits.hits)
        assert mesh.context_summary(ctx.id).roles == {"user": 1, "assistant": 1}
        assert isinstance(mesh.similar_contexts(ctx.id, limit=2), list)
        chunks = mesh.context_embeddings(ctx.id, include_vectors=True, limit=1)
        assert chunks.items[0].model == "fake-words-64" and len(chunks.items[0].vector) == 64

        stored = mesh.remember("runbook/oom", "When a pod is OOMKilled, raise its memory limit.",
                               metadata={"team": "sre"})
        assert [(d.id, d.chunks) for d in stored.documents] == [("runbook/oom", 1)]
        batch = mesh.remember_many([{"id": "runbook/disk", "text": "When a disk is full, rotate the logs."},
                                    {"id": "bad/nul", "text": "nul \u0000 byte"}])
        assert [d.id for d in batch.documents] == ["runbook/disk"] and [e.item for e in batch.errors] == ["bad/nul"]
        found = mesh.search("pod OOMKilled memory", filters={"team": "sre"})
        assert found.hits[0].document_id == "runbook/oom"
        vector = fake_embedder.embed(["disk full: rotate the logs"])[0]
        assert mesh.search_vector(vector, "fake-words-64", limit=1).hits[0].document_id == "runbook/disk"

        reader = mesh.create_key("reader", ["read"])
        assert {k.id for k in mesh.list_keys()} == {org.key.id, reader.key.id}
        rotated = mesh.rotate_key(reader.key.id)
        listed = {k.id: k for k in mesh.list_keys()}
        assert listed[rotated.key.id].rotated_from == reader.key.id and listed[reader.key.id].revoked_at
        with mesh.with_key(rotated.api_key) as successor:
            assert successor.list_contexts(limit=1).items
        mesh.revoke_key(rotated.key.id)
        with mesh.with_key(rotated.api_key) as revoked, pytest.raises(AuthFailed):
            revoked.list_contexts()

        mesh.delete_context(ctx.id)
        with pytest.raises(NotFound):
            mesh.get_context(ctx.id)


async def test_async_client_round_trip(server, tenant):
    org, mesh = await AsyncMesh.register_organization(
        server, name="Async org", slug=tenant, admin_email=f"a@{tenant}.example", admin_name="Bo", password=PASSWORD)
    async with mesh:
        ctx = await mesh.create_context(user_id="bo")
        await mesh.append(ctx.id, [{"role": "user", "content": "the disk on db-1 is full again"}])
        page = await mesh.get_context(ctx.id)
        assert [m.content for m in page.messages] == ["the disk on db-1 is full again"]
        hits = await mesh.search_context(ctx.id, "disk full")
        assert hits.count >= 1
        await mesh.remember("runbook/disk", "When a disk is full, rotate the logs and grow the volume.")
        assert (await mesh.search("disk full rotate logs")).hits
        assert [c.id async for c in mesh.aiter_contexts(page_size=1)] == [ctx.id]
        tools = await mesh.list_tools()
        assert "memory.search" in tools.names
        with pytest.raises(NotFound):
            await mesh.get_context(str(uuid.uuid4()))


def test_tools_convert_to_openai_and_anthropic_and_execute(mesh):
    tools = mesh.list_tools()
    assert isinstance(tools, Tools) and all(isinstance(t, Tool) for t in tools)
    assert {"memory.search", "aws.s3_put_object", "github.create_issue"} <= set(tools.names)
    openai, anthropic = tools.to_openai(), tools.to_anthropic()
    assert len(openai) == len(anthropic) == len(tools)
    for spec, claude, tool in zip(openai, anthropic, tools):
        name = spec["function"]["name"]
        assert spec["type"] == "function" and OPENAI_NAME.match(name) and claude["name"] == name
        assert tools.get(name) is tool and spec["function"]["parameters"] == claude["input_schema"]
    json.dumps(openai), json.dumps(anthropic)  # ready to send as they are

    planned = mesh.execute_tool("aws__s3_put_object", PUT)  # a model's wire name is accepted
    assert planned.status == "planned" and planned.plan["target"].startswith("aws:s3:acme-data")
    assert mesh.get_operation(planned.operation_id).status == "planned"
    assert [r.status for r in mesh.iter_audit(page_size=1)] == ["planned"]
    mesh.remember("runbook/oom", "When a pod is OOMKilled raise the limit.")
    searched = mesh.execute_tool("memory.search", {"query": "pod OOMKilled", "scope": "all"})
    assert searched.status == "done" and searched.result["hits"][0]["source"] == "runbook/oom"

    with pytest.raises(InputError) as bad:
        mesh.execute_tool("aws.s3_put_object", {"bucket": "acme-data", "colour": "red"})
    assert bad.value.item == "aws.s3_put_object" and "colour" in str(bad.value) and bad.value.code == \
        "invalid_arguments"
    with pytest.raises(OperationDenied, match="aws_buckets"):
        mesh.execute_tool("aws.s3_put_object", {**PUT, "bucket": "evil-data"}, dry_run=False)
    with pytest.raises(NotFound):
        mesh.execute_tool("aws.s3_explode", {})


def test_typed_errors_name_the_item_and_the_request_id(server, mesh, tenant):
    bad_key = "devmesh_" + "A" * 43
    with Mesh(server, bad_key) as intruder, pytest.raises(AuthFailed) as denied:
        intruder.list_contexts()
    assert bad_key not in str(denied.value) and bad_key not in repr(intruder)
    assert denied.value.status == 401 and denied.value.request_id in str(denied.value)

    with pytest.raises(NotFound) as missing:
        mesh.get_context(str(uuid.uuid4()))
    assert missing.value.code == "not_found" and f"request id {missing.value.request_id}" in str(missing.value)
    with pytest.raises(NotFound):
        mesh.get_context("../keys")  # quoted into one path segment, never another route

    with pytest.raises(InputError) as invalid:
        mesh.search("x", mode="psychic", limit=10_000)
    assert invalid.value.item in ("body.mode", "body.limit")
    assert {f["field"] for f in invalid.value.fields} == {"body.mode", "body.limit"}

    small = mesh.create_context(max_messages=1)
    mesh.append(small.id, [{"role": "user", "content": "hello"}])
    with pytest.raises(ContextLimitExceeded):
        mesh.append(small.id, [{"role": "user", "content": "again"}])

    with mesh.with_key(mesh.create_key("reader", ["read"]).api_key) as reader, pytest.raises(Forbidden) as scope:
        reader.create_context()
    assert isinstance(scope.value, AuthFailed) and scope.value.scope == "write"

    with pytest.raises(InputError) as taken:
        register(server, tenant)
    assert taken.value.code == "slug_taken" and taken.value.item == tenant


def test_429_waits_for_retry_after_then_succeeds(mesh, clock, monkeypatch):
    tiny = mesh.create_key("tiny", ["read"], rate_per_minute=6, burst=1)
    waits: list[float] = []

    def advance(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds

    monkeypatch.setattr(client_module, "sleep", advance)
    with mesh.with_key(tiny.api_key) as limited:
        limited.list_contexts()
        assert limited.list_contexts().items == []  # 429, Retry-After: 10, waited, then 200
        assert waits == [10.0]
    monkeypatch.setattr(client_module, "sleep", waits.append)  # time stands still: every retry is refused
    with Mesh(mesh.base_url, tiny.api_key, max_retries=2) as stuck, pytest.raises(RateLimited) as exhausted:
        stuck.list_contexts()
    assert exhausted.value.retry_after == 10.0 and waits == [10.0, 10.0, 10.0]
    with Mesh(mesh.base_url, tiny.api_key, max_retry_after=5) as impatient, pytest.raises(RateLimited):
        impatient.list_contexts()  # the server asks for longer than we will wait: at once
    assert len(waits) == 3


# -- retry and error rules, against canned answers ---------------------------------------------------------------

class Script:
    """An httpx handler answering from a list (responses or exceptions to raise), recording the requests."""

    def __init__(self, *answers) -> None:
        self.answers, self.requests = list(answers), []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)  # a fresh copy


def error(status: int, code: str, message: str = "nope", **extra) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "item": extra.pop("item", None),
                                                  "request_id": "req-1", **extra}})


LIST = httpx.Response(200, json={"items": [], "total": 0, "next_cursor": None})
KEY = "devmesh_mocksecretvalue0001"


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(client_module, "sleep", recorded.append)
    return recorded


def mocked(script: Script, **options) -> Mesh:
    return Mesh("http://devmesh.test", KEY, transport=httpx.MockTransport(script), **options)


def test_503_and_connection_errors_are_retried_with_growing_jittered_backoff(waits):
    script = Script(error(503, "store_unavailable"), httpx.ConnectError("refused"), error(502, "provider_error"),
                    LIST)
    assert mocked(script).list_contexts().total == 0
    assert len(script.requests) == 4 and len(waits) == 3
    for attempt, wait in enumerate(waits):
        assert 0.25 * 2**attempt <= wait <= 0.5 * 2**attempt
    assert len({r.headers["x-request-id"] for r in script.requests}) == 1  # one logical call, one request id
    assert script.requests[0].headers["authorization"] == f"Bearer {KEY}"

    down = Script(error(504, "gateway_timeout"))
    with pytest.raises(TransientError, match="request id req-1"):
        mocked(down, max_retries=2).list_contexts()
    assert len(down.requests) == 3


def test_creating_posts_are_retried_only_when_safe(waits):
    created = httpx.Response(201, json={"id": "c1", "tenant": "t", "type": "conversation",
                                        "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"})
    once = Script(error(503, "store_unavailable"), created)
    with pytest.raises(TransientError):
        mocked(once).create_context()
    assert len(once.requests) == 1 and waits == []
    read_timeout = Script(httpx.ReadTimeout("slow"), created)
    with pytest.raises(ProviderTimeout):
        mocked(read_timeout).create_context()
    assert len(read_timeout.requests) == 1
    not_sent = Script(httpx.ConnectError("refused"), created)
    assert mocked(not_sent).create_context().id == "c1" and len(not_sent.requests) == 2
    limited = Script(httpx.Response(429, headers={"Retry-After": "2"}, json={"error": {"code": "rate_limited"}}),
                     created)
    assert mocked(limited).create_context().id == "c1" and waits[-1] == 2.0

    done = httpx.Response(200, json={"operation_id": "op-1", "status": "succeeded", "replayed": True})
    keyed = Script(error(503, "provider_unavailable"), done)
    result = mocked(keyed).execute_tool("aws.s3_put_object", PUT, dry_run=False, idempotency_key="k-1")
    assert result.status == "succeeded" and result.replayed is True and len(keyed.requests) == 2
    assert json.loads(keyed.requests[1].content)["idempotency_key"] == "k-1"
    unkeyed = Script(error(503, "provider_unavailable"), done)
    with pytest.raises(TransientError):
        mocked(unkeyed).execute_tool("aws.s3_put_object", PUT, dry_run=False)
    assert len(unkeyed.requests) == 1

    gone = Script(error(503, "store_unavailable"), error(404, "not_found"))
    assert mocked(gone).delete_context("c1") is None  # the first attempt may have deleted it


def test_other_4xx_are_never_retried_and_map_to_the_error_tree(waits):
    cases = [
        (error(400, "malformed_json", item="body"), InputError),
        (error(422, "validation_error", item="body.limit", fields=[{"field": "body.limit", "message": "x"}]),
         InputError),
        (error(404, "not_found"), NotFound),
        (error(403, "policy_denied", "rule aws_buckets"), OperationDenied),
        (error(403, "missing_scope", item="admin"), Forbidden),
        (error(409, "approval_required", item="aws.s3_put_object", operation_id="op-9", plan={"target": "x"}),
         ApprovalRequired),
        (error(503, "not_configured"), ConfigError),
        (error(405, "method_not_allowed"), InvalidRequest),
        (httpx.Response(200, text="<html>"), MalformedResponse),
    ]
    for answer, kind in cases:
        script = Script(answer)
        with pytest.raises(kind):
            mocked(script).list_contexts()
        assert len(script.requests) == 1, kind
    assert waits == []
    approval = raised_for(error(409, "approval_required", operation_id="op-9", plan={"target": "x"}))
    assert approval.operation_id == "op-9" and approval.plan == {"target": "x"}
    invalid = raised_for(error(422, "validation_error", item="body.limit", fields=[{"field": "body.limit"}]))
    assert invalid.item == "body.limit" and invalid.fields == [{"field": "body.limit"}]


def raised_for(answer: httpx.Response) -> Exception:
    with pytest.raises(Exception) as raised:
        mocked(Script(answer)).list_contexts()
    return raised.value


def test_the_key_never_leaks_into_errors_reprs_or_logs(waits, caplog):
    echo = Script(httpx.Response(503, json={"error": {"code": "unavailable", "message": f"bad header Bearer {KEY}"}}),
                  httpx.ReadTimeout(f"timeout for {KEY}"))
    caplog.set_level(logging.DEBUG)
    with mocked(echo, max_retries=1) as mesh, pytest.raises(ProviderTimeout) as raised:
        mesh.list_contexts()
    assert KEY not in str(raised.value) and KEY not in repr(raised.value) and KEY not in repr(mesh)
    assert raised.value.__cause__ is None and raised.value.__context__ is None
    assert caplog.records and KEY not in caplog.text
    assert KEY not in repr(Mesh("http://x", SecretStr(KEY)))


async def test_async_client_retries_too(monkeypatch):
    waited: list[float] = []

    async def record(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(client_module, "async_sleep", record)
    script = Script(error(503, "store_unavailable"), httpx.Response(
        429, headers={"Retry-After": "3"}, json={"error": {"code": "rate_limited"}}), LIST)
    async with AsyncMesh("http://devmesh.test", KEY, transport=httpx.MockTransport(script)) as mesh:
        assert (await mesh.list_contexts()).total == 0
        assert len(waited) == 2 and waited[1] == 3.0
    refused = Script(error(401, "unauthorized"))
    async with AsyncMesh("http://devmesh.test", KEY, transport=httpx.MockTransport(refused)) as mesh:
        with pytest.raises(AuthFailed):
            await mesh.list_contexts()
    assert len(refused.requests) == 1

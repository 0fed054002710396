"""Tenant isolation for every table and every surface; API keys stored hashed; brute-force lockout.

- Every table of the schema (read from information_schema at test time) is classified here: tenant-scoped (how its
  rows name their tenant) or global (why). An unclassified table fails, so a new table must be classified.
- Tenant A gets rows in every tenant-scoped table through the product (REST ingest, contexts, operations and
  approvals, a signed webhook delivery, usage, model switch, repository sync cursor, approvers, keys).
- Tenant B then acts through every surface against A's ids: every route of the gateway app (a route without a case
  fails), every MCP tool over streamable HTTP (a tool without a case fails), every public method of the Python
  client `Mesh` (a method without a case fails), and the tenant-scoped CLI commands. Nothing of A comes back; B's
  writes aimed at A's ids are 404-style refusals; a digest of A's rows in every table is unchanged afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import time
import uuid
from decimal import Decimal

import anyio
import numpy as np
import boto3
import httpx
import pytest
from fastapi.routing import APIRoute
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from moto import mock_aws
from prefect_aws import AwsCredentials
from prefect.blocks.system import Secret
from typer.testing import CliRunner

from blocks.embedders.pricing import Usage
from blocks.errors import NotFound
from blocks.llm import ChatTurn, TokenUsage
from blocks.webhooks import GitHubWebhook
from deployments.cli import app as cli_app
from deployments.client import Mesh
from tasks.repository_sync import save_cursor
from tasks.approvals import add_approver
from tasks.embedding_claims import claim, publish
from tasks.grants import set_grant
from tasks.webhook_bindings import bind_repository
from tasks.llm_usage import record_llm_usage
from tasks.models import finish_switch, start_switch
from tasks.ops.base import Connections
from blocks.postgres import PgVectorStore
from tasks.ratelimit import Admission
from tasks.postings import defer_postings
from tasks.registry import resolve_model
from tasks.tenancy import authenticate
from tasks.usage import record_usage
from tests.cleanup import dump_all
from tests.rest import API, GATEWAY_WEBHOOK_SECRET, PASSWORD, gateway, new_key, register
from tests.serving import serve
from tests.rest import POLICY, PUT, REGION

WEBHOOK_SECRET = GATEWAY_WEBHOOK_SECRET  # what the operator's webhook block of `gateway` holds
A_WEBHOOK_SECRET = "isolation-webhook-secret-of-a"  # A's own binding (tasks.webhook_bindings)
MARK = "zebraquokka"  # a word only tenant A's data holds
A_USER = "ana-of-a"
A_KEY = "a-shared-idem-key"

# -- the schema's tables ---------------------------------------------------------------------------------------
# tenant-scoped: how a row names its tenant (a SQL condition on %(tenant)s)
TENANT_TABLES = {
    "documents": "tenant_id = %(tenant)s",
    "chunks": "tenant_id = %(tenant)s",
    "embeddings": "tenant_id = %(tenant)s",
    "term_stats": "tenant_id = %(tenant)s",
    "chunk_postings": "tenant_id = %(tenant)s",
    "postings_deferred": "tenant_id = %(tenant)s",
    "tenant_stats": "tenant_id = %(tenant)s",
    "contexts": "tenant_id = %(tenant)s",
    "context_messages": "tenant_id = %(tenant)s",
    "embedding_usage": "tenant_id = %(tenant)s",
    "tenant_models": "tenant_id = %(tenant)s",
    "model_switches": "tenant_id = %(tenant)s",
    "operations": "tenant_id = %(tenant)s",
    "approvers": "tenant_id = %(tenant)s",
    # an approval belongs to its operation's tenant (no column of its own; reached only through the operation)
    "approvals": "operation_id IN (SELECT id FROM operations WHERE tenant_id = %(tenant)s)",
    "audit_log": "tenant_id = %(tenant)s",
    "webhook_deliveries": "tenant_id = %(tenant)s",
    "repository_sync": "tenant_id = %(tenant)s",
    "organizations": "tenant_id = %(tenant)s",
    "api_keys": "tenant_id = %(tenant)s",
    "llm_usage": "tenant_id = %(tenant)s",
    "tenant_grants": "tenant_id = %(tenant)s",
    "webhook_bindings": "tenant_id = %(tenant)s",
    "embedding_claims": "tenant_id = %(tenant)s",
}
GLOBAL_TABLES = {
    "admission_buckets": "token buckets of the admission gate, named by API key id or client address (tasks/"
                         "ratelimit.py): counters, no tenant data; a key's tenant is api_keys'",
    "admission_failures": "failed authentications per client address: counters and lock times, no tenant data",
    "admission_seen": "which key id authenticated from which client address, and when: no tenant data",
    "embedding_models": "the registry of embedding models (name, dimensions, embedder block name): configuration "
                        "shared by every tenant, no tenant data; a tenant's choice is tenant_models",
    "schema_migrations": "applied migration versions and checksums of the one schema",
    "registration_invites": "the operator's one-time registration tokens (hashed): minted before any tenant exists; "
                            "the slug an invite is for and the tenant that used it are recorded, no tenant data",
}


def _tables(pool) -> dict[str, set[str]]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT c.table_name, c.column_name FROM information_schema.columns c JOIN "
                            "information_schema.tables t USING (table_schema, table_name) WHERE "
                            "t.table_schema = 'public' AND t.table_type = 'BASE TABLE'").fetchall()
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return out


def test_every_table_is_classified(pool):
    tables = _tables(pool)
    unclassified = sorted(set(tables) - set(TENANT_TABLES) - set(GLOBAL_TABLES))
    assert not unclassified, f"classify these tables in TENANT_TABLES or GLOBAL_TABLES: {unclassified}"
    assert not set(TENANT_TABLES) & set(GLOBAL_TABLES)
    assert set(TENANT_TABLES) | set(GLOBAL_TABLES) == set(tables), "a classified table no longer exists"
    for table, condition in TENANT_TABLES.items():
        if condition.startswith("tenant_id"):
            assert "tenant_id" in tables[table], table
    for table in GLOBAL_TABLES:
        assert "tenant_id" not in tables[table], f"{table} has a tenant_id: is it really global?"


def _digest(pool, tenant: str) -> dict[str, tuple[int, str]]:
    """Per tenant-scoped table: (row count, md5 of the rows) of `tenant`."""
    out = {}
    with pool.connection() as conn:
        for table, condition in TENANT_TABLES.items():
            out[table] = tuple(conn.execute(
                f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t "
                f"WHERE {condition}", {"tenant": tenant}).fetchone())
    return out


def _sign(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class World:
    """Tenants A and B on one served gateway; A has rows in every tenant-scoped table."""

    def __init__(self, url, http, pool, a, b, ids):
        self.url, self.http, self.pool, self.a, self.b, self.ids = url, http, pool, a, b, ids

    def b_get(self, path, **kw):
        return self.http.get(f"{API}{path}", headers=self.b.headers, **kw)

    def b_post(self, path, **kw):
        return self.http.post(f"{API}{path}", headers=self.b.headers, **kw)


@pytest.fixture
def world(prefect_harness, settings, pool, tenant):
    creds = AwsCredentials(aws_access_key_id="AKIAISOLATIONWORLD01", aws_secret_access_key="isolation-world-01",
                           region_name=REGION)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket="acme-data", CreateBucketConfiguration={"LocationConstraint": REGION})
        slug_a, slug_b = f"{tenant}-a", f"{tenant}-b"
        app, hook = gateway(settings, ops_policy={slug_a: POLICY, slug_b: POLICY},
                            ops_connections={slug_a: Connections(aws=creds), slug_b: Connections(aws=creds)})
        with serve(app) as url:
            with httpx.Client(base_url=url, timeout=60) as http:
                a, b = register(http, slug_a), register(http, slug_b)
                ids = _populate_a(http, pool, a)
                http.post(f"{API}/contexts", json={"user_id": "bea"}, headers=b.headers)  # B has data too
                yield World(url, http, pool, a, b, ids)


def _populate_a(http, pool, a) -> dict:
    h = a.headers
    ids: dict = {"slug": a.slug, "admin_key_id": a.key_id}
    r = http.post(f"{API}/embeddings", json={"id": "a/plan", "text": f"{MARK} merger plan for the quarter",
                                             "metadata": {"owner": A_USER}}, headers=h)
    assert r.status_code == 201, r.text
    ctx = http.post(f"{API}/contexts", json={"user_id": A_USER, "metadata": {"secret": MARK}}, headers=h).json()
    ids["context_id"] = ctx["id"]
    r = http.post(f"{API}/contexts/{ctx['id']}/messages", json={"messages": [
        {"role": "user", "content": f"{MARK} launch codes are kept in vault seven"},
        {"role": "assistant", "content": f"noted: {MARK} vault seven"}]}, headers=h)
    assert r.status_code == 201, r.text
    ids["vector"] = http.get(f"{API}/contexts/{ctx['id']}/embeddings", params={"include_vectors": True},
                             headers=h).json()["items"][0]["vector"]
    done = http.post(f"{API}/tools/aws.s3_put_object/execute", json={"arguments": PUT, "dry_run": False,
                                                                     "idempotency_key": A_KEY}, headers=h).json()
    assert done["status"] == "succeeded", done
    ids["operation_id"] = done["operation_id"]
    planned = http.post(f"{API}/tools/aws.s3_put_object/execute", json={
        "arguments": {**PUT, "key": "reports/other.txt"}, "idempotency_key": "a-approve-me"}, headers=h).json()
    ids["approved_operation_id"] = planned["operation_id"]
    with pool.connection() as conn:  # as a paused run of the operate flow leaves it
        conn.execute("UPDATE operations SET status = 'awaiting_approval' WHERE id = %s", [planned["operation_id"]])
    second_admin = new_key(http, a, ["admin"])  # the requesting key may not approve its own operation
    r = http.post(f"{API}/operations/{planned['operation_id']}/approve", json={"comment": MARK},
                  headers=second_admin.headers)
    assert r.status_code == 200, r.text
    ids["second_admin_key_id"] = second_admin.key_id
    set_grant(pool, a.slug, actor={"via": "pytest"}, policy_block="a-policy", aws_block="a-aws")
    ids["reader_key_id"] = new_key(http, a, ["read"]).key_id
    ids["approver_token"] = add_approver(pool, a.slug, "carol-a")
    Secret(value=A_WEBHOOK_SECRET).save("isolation-a-webhook", overwrite=True)
    ids["binding_id"] = bind_repository(pool, "acme-a/*", a.slug, "secret/isolation-a-webhook",
                                        actor={"via": "pytest"}).id
    payload = json.dumps({"action": "opened", "repository": {"full_name": "acme-a/app"},
                          "issue": {"number": 1, "title": MARK, "body": MARK}}).encode()
    ids["delivery_id"] = f"deliv-{uuid.uuid4()}"
    r = http.post("/webhooks/github", content=payload, headers={
        "X-Hub-Signature-256": _sign(payload, A_WEBHOOK_SECRET), "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": ids["delivery_id"],
        "Content-Type": "application/json"})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 30  # the outbox emits it in the background: let it settle before any digest
    while True:
        with pool.connection() as conn:
            status = conn.execute("SELECT status FROM webhook_deliveries WHERE delivery_id = %s",
                                  [ids["delivery_id"]]).fetchone()[0]
        if status != "received":
            break
        assert time.monotonic() < deadline, "the outbox did not emit the delivery"
        time.sleep(0.05)
    record_usage(pool, a.slug, [Usage("openai", "text-embedding-3-small", 10, 1, Decimal("0.0002"))])
    record_llm_usage(pool, a.slug, "openai", [ChatTurn(text=MARK, tool_calls=[], stop_reason="end_turn",
                                                       usage=TokenUsage(input_tokens=5, output_tokens=3),
                                                       model="gpt-4o-mini")])
    model_id, _ = resolve_model(pool, "fake-words-64")
    switch_id, _ = start_switch(pool, a.slug, model_id)
    assert finish_switch(pool, a.slug, model_id, switch_id)
    save_cursor(pool, a.slug, "acme-a/app", ref="main", sha="0" * 40)
    owner = uuid.uuid4()  # an ingest of A's in flight: its claim on a text, the vector already published
    assert claim(pool, a.slug, model_id, ["0" * 64], owner) == {"0" * 64}
    publish(pool, a.slug, model_id, owner, {"0" * 64: np.ones(64, dtype=np.float32)})
    defer_postings(pool, a.slug)  # a bulk load of A's under way: A's keyword searches take the GIN path
    empty = [t for t, (n, _) in _digest(pool, a.slug).items() if n == 0]
    assert not empty, f"the set-up made no row of tenant A in {empty}"
    return ids


def _a_ids(w: World) -> set[str]:
    return {str(v) for k, v in w.ids.items() if k not in ("vector", "slug")} | {w.a.slug, w.a.key[:14]}


def _assert_clean(w: World, response_text: str, sent: str = "") -> None:
    """Nothing of A in a response to B: not A's marker word, nor an id of A that B did not send itself."""
    assert MARK not in response_text, response_text[:500]
    for value in _a_ids(w):
        if value not in sent:
            assert value not in response_text, (value, response_text[:500])


# -- REST: every route of the app -----------------------------------------------------------------------------------

def _404(w, response, sent=""):
    assert response.status_code == 404, (response.request.url, response.text)
    assert response.json()["error"]["code"] in ("not_found", "unknown_tool"), response.text
    _assert_clean(w, response.text, sent or str(response.request.url) + response.request.content.decode())


def _ok(w, response, sent=""):
    assert response.is_success, (response.request.url, response.text)
    _assert_clean(w, response.text, sent)


def _contexts_case(w):
    cid = w.ids["context_id"]
    listing = w.b_get("/contexts")
    _ok(w, listing)
    assert [c["user_id"] for c in listing.json()["items"]] == ["bea"]
    filtered = w.b_get("/contexts", params={"user_id": A_USER, "metadata": json.dumps({"secret": MARK})})
    _ok(w, filtered)
    assert filtered.json()["total"] == 0
    created = w.b_post("/contexts", json={"user_id": A_USER, "metadata": {"id": cid}})
    assert created.status_code == 201 and created.json()["tenant"] == w.b.slug


ROUTE_CASES = {
    ("POST", "/api/v1/auth/register/organization"): lambda w: _slug_taken(w),
    ("POST", "/api/v1/keys"): lambda w: _new_key_is_bs(w),
    ("GET", "/api/v1/keys"): lambda w: _keys_are_bs(w),
    ("DELETE", "/api/v1/keys/{key_id}"): lambda w: [
        _404(w, w.http.delete(f"{API}/keys/{w.ids[k]}", headers=w.b.headers)) for k in ("admin_key_id", "reader_key_id")],
    ("POST", "/api/v1/keys/{key_id}/rotate"): lambda w: [
        _404(w, w.b_post(f"/keys/{w.ids[k]}/rotate")) for k in ("admin_key_id", "reader_key_id")],
    ("POST", "/api/v1/contexts"): _contexts_case,
    ("GET", "/api/v1/contexts"): _contexts_case,
    ("GET", "/api/v1/contexts/{context_id}"): lambda w: _404(w, w.b_get(f"/contexts/{w.ids['context_id']}")),
    ("PATCH", "/api/v1/contexts/{context_id}"): lambda w: _404(w, w.http.patch(
        f"{API}/contexts/{w.ids['context_id']}", json={"metadata": {"x": 1}, "replace": True}, headers=w.b.headers)),
    ("DELETE", "/api/v1/contexts/{context_id}"): lambda w: _404(w, w.http.delete(
        f"{API}/contexts/{w.ids['context_id']}", headers=w.b.headers)),
    ("POST", "/api/v1/contexts/{context_id}/messages"): lambda w: _404(w, w.b_post(
        f"/contexts/{w.ids['context_id']}/messages", json={"messages": [{"role": "user", "content": "injected"}]})),
    ("POST", "/api/v1/contexts/{context_id}/search"): lambda w: _404(w, w.b_post(
        f"/contexts/{w.ids['context_id']}/search", json={"query": MARK})),
    ("GET", "/api/v1/contexts/{context_id}/summary"): lambda w: _404(w, w.b_get(
        f"/contexts/{w.ids['context_id']}/summary")),
    ("GET", "/api/v1/contexts/{context_id}/similar"): lambda w: _404(w, w.b_get(
        f"/contexts/{w.ids['context_id']}/similar")),
    ("POST", "/api/v1/contexts/{context_id}/embeddings"): lambda w: _404(w, w.b_post(
        f"/contexts/{w.ids['context_id']}/embeddings", json={"content_index": 0, "text": "injected"})),
    ("GET", "/api/v1/contexts/{context_id}/embeddings"): lambda w: _404(w, w.b_get(
        f"/contexts/{w.ids['context_id']}/embeddings", params={"include_vectors": True})),
    ("POST", "/api/v1/embeddings"): lambda w: _embeddings_case(w),
    ("POST", "/api/v1/search"): lambda w: _search_case(w),
    ("POST", "/api/v1/search/vector"): lambda w: _vector_case(w),
    ("GET", "/api/v1/tools"): lambda w: _ok(w, w.b_get("/tools")),
    ("POST", "/api/v1/tools/{name}/execute"): lambda w: _execute_case(w),
    ("GET", "/api/v1/operations/{operation_id}"): lambda w: [
        _404(w, w.b_get(f"/operations/{w.ids[k]}")) for k in ("operation_id", "approved_operation_id")],
    ("POST", "/api/v1/operations/{operation_id}/approve"): lambda w: [
        _404(w, w.b_post(f"/operations/{w.ids[k]}/approve")) for k in ("operation_id", "approved_operation_id")],
    ("POST", "/api/v1/operations/{operation_id}/reject"): lambda w: [
        _404(w, w.b_post(f"/operations/{w.ids[k]}/reject")) for k in ("operation_id", "approved_operation_id")],
    ("GET", "/api/v1/audit"): lambda w: _audit_case(w),
    ("POST", "/api/v1/operator/dry-run"): lambda w: _operator_case(w),
    ("POST", "/webhooks/github"): lambda w: _webhook_case(w),
    # not tenant surfaces: liveness (a global count of pending deliveries), Prometheus text for the operator
    # (labels carry tenant slugs: serve /metrics on an internal address only), the static OpenAPI documents
    ("GET", "/healthz"): lambda w: _healthz_case(w),
    ("GET", "/metrics"): None,
    ("GET", "/openapi.json"): lambda w: _ok(w, w.http.get("/openapi.json")),
    ("GET", "/docs"): lambda w: _ok(w, w.http.get("/docs")),  # its assets: a static mount (deployments/docs.py)
    # MCP: every tool is driven by test_mcp_every_tool below (streamable HTTP through this very route)
    ("POST", "/mcp"): None, ("GET", "/mcp"): None, ("DELETE", "/mcp"): None,
}


def _slug_taken(w):
    r = w.http.post(f"{API}/auth/register/organization", json={
        "name": "hijack", "slug": w.a.slug, "admin_email": "x@evil.example", "admin_name": "Eve", "password": PASSWORD})
    assert r.status_code == 409 and r.json()["error"]["code"] == "slug_taken", r.text
    assert "api_key" not in r.text


def _new_key_is_bs(w):
    r = w.b_post("/keys", json={"name": "b-extra", "scopes": ["read"]})
    assert r.status_code == 201, r.text
    assert authenticate(w.pool, r.json()["api_key"]).tenant == w.b.slug


def _keys_are_bs(w):
    r = w.b_get("/keys")
    _ok(w, r)
    with w.pool.connection() as conn:
        mine = {row[0] for row in conn.execute("SELECT id::text FROM api_keys WHERE tenant_id = %s", [w.b.slug])}
    assert {k["id"] for k in r.json()["items"]} == mine


def _embeddings_case(w):
    same_id = w.b_post("/embeddings", json={"id": "a/plan", "text": "apples and pears"})
    assert same_id.status_code == 201, same_id.text  # B's own document of that name
    _assert_clean(w, same_id.text, "a/plan")
    reserved = w.b_post("/embeddings", json={"id": f"context:{w.ids['context_id']}", "text": "hijack"})
    assert reserved.status_code == 422, reserved.text


def _search_case(w):
    cid = w.ids["context_id"]
    for body in ({"query": MARK}, {"query": MARK, "mode": "keyword"}, {"query": MARK, "mode": "vector"},
                 {"query": MARK, "user_id": A_USER}, {"query": MARK, "filters": {"owner": A_USER}},
                 {"query": MARK, "document_ids": ["a/plan", f"context:{cid}"]}):
        r = w.b_post("/search", json=body)
        _ok(w, r, json.dumps(body))
        assert r.json()["hits"] == [] or all(h["document_id"] == "a/plan" and MARK not in h["text"]
                                             for h in r.json()["hits"]), r.text  # B's own "a/plan" only
    _404(w, w.b_post("/search", json={"query": MARK, "context_id": cid}))


def _vector_case(w):
    r = w.b_post("/search/vector", json={"vector": w.ids["vector"], "model": "fake-words-64", "limit": 50})
    _ok(w, r)
    assert all(MARK not in h["text"] for h in r.json()["hits"])


def _execute_case(w):
    cid = w.ids["context_id"]
    _404(w, w.b_post("/tools/memory.search/execute", json={"arguments": {"query": MARK, "scope": "context"},
                                                            "context_id": cid}))
    for scope in ({"scope": "all"}, {"scope": "user"}):
        r = w.b_post("/tools/memory.search/execute", json={"arguments": {"query": MARK, **scope}, "user_id": A_USER})
        _ok(w, r)
        assert all(h["text"] == "apples and pears" for h in r.json()["result"]["hits"]), r.text  # B's own "a/plan"
    # A's idempotency key in B's tenant is B's own operation: no replay of A's result, A's row untouched
    r = w.b_post("/tools/aws.s3_put_object/execute", json={"arguments": PUT, "idempotency_key": A_KEY})
    _ok(w, r, A_KEY)
    assert r.json()["status"] == "planned" and r.json()["operation_id"] != w.ids["operation_id"]
    assert not r.json().get("replayed")


def _audit_case(w):
    r = w.b_get("/audit")
    _ok(w, r)
    assert {rec["actor"].get("tenant") for rec in r.json()["items"]} <= {w.b.slug}
    for k in ("operation_id", "approved_operation_id"):
        _404(w, w.b_get("/audit", params={"operation_id": w.ids[k]}))


def _webhook_case(w):
    payload = json.dumps({"action": "deleted", "repository": {"full_name": "acme-a/app"}}).encode()
    headers = {"X-GitHub-Event": "issues", "X-GitHub-Delivery": w.ids["delivery_id"], "Content-Type": "application/json"}
    unsigned = w.http.post("/webhooks/github", content=payload, headers={**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert unsigned.status_code == 401, unsigned.text
    replay = w.http.post("/webhooks/github", content=payload, headers={**headers, "X-Hub-Signature-256": _sign(payload)})
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate", replay.text  # A's row kept as is
    _assert_clean(w, unsigned.text + replay.text, w.ids["delivery_id"])


def _operator_case(w):
    """The operator's dry-run route (deployments/api/operator.py) names its tenant in the body: B's key, as a key or
    as the operator header, does not open it (401; 404 where the gateway has no operator credential)."""
    body = {"operation": "aws.describe", "arguments": {}, "tenant": w.a.slug, "user": "b"}
    for headers in (w.b.headers, {"X-Devmesh-Operator": w.b.key}):
        r = w.http.post(f"{API}/operator/dry-run", json=body, headers=headers)
        assert r.status_code in (401, 404), r.text
        _assert_clean(w, r.text, json.dumps(body))


def _healthz_case(w):
    r = w.http.get("/healthz")
    _ok(w, r)
    assert set(r.json()) == {"ok", "pending_events", "emitted"}


def _route_keys(app) -> set[tuple[str, str]]:
    """(method, path) of every route: the app's own, those of included routers (FastAPI >= 0.150 keeps them behind
    an _IncludedRouter with its prefix), and every operation of the OpenAPI document as a cross-check."""
    keys = set()

    def walk(routes, prefix: str) -> None:
        for route in routes:
            included = getattr(route, "original_router", None)
            if included is not None:
                walk(included.routes, prefix + route.include_context.prefix)
                continue
            for method in getattr(route, "methods", None) or ():
                if method != "HEAD":
                    keys.add((method, prefix + route.path))

    walk(app.routes, "")
    documented = {(m.upper(), path) for path, item in app.openapi()["paths"].items() for m in item}
    assert documented <= keys, documented - keys
    return keys


def test_rest_every_route_refuses_b_on_a(world, settings):
    w = world
    app, _ = gateway(settings)
    routes = _route_keys(app)
    missing = sorted(routes - set(ROUTE_CASES))
    assert not missing, f"add a tenant-isolation case for these routes: {missing}"
    assert not set(ROUTE_CASES) - routes, f"cases for routes that no longer exist: {set(ROUTE_CASES) - routes}"
    assert any(isinstance(r, APIRoute) for r in app.routes)
    before = _digest(w.pool, w.a.slug)
    done = set()
    for key, case in ROUTE_CASES.items():
        if case is not None and case not in done:
            case(w)
            done.add(case)
    assert _digest(w.pool, w.a.slug) == before, "a request of tenant B changed a row of tenant A"
    # A still reaches its own data
    page = w.http.get(f"{API}/contexts/{w.ids['context_id']}", headers=w.a.headers).json()
    assert [m["content"] for m in page["messages"]][0].startswith(MARK)


# -- MCP: every tool, over streamable HTTP at /mcp of the same gateway -------------------------------------------

MEMORY_TOOLS = {"context_create", "context_append", "context_get", "search", "find_similar"}
# inputs that could name tenant data; an operation tool taking one of these needs its own isolation case
TENANT_INPUTS = {"tenant", "tenant_id", "context_id", "operation_id", "document_id", "document_ids", "user_id",
                 "key_id", "api_key", "org", "organization"}


async def _mcp_matrix(w: World) -> None:
    cid = w.ids["context_id"]
    headers = {"Authorization": f"Bearer {w.b.key}"}
    async with Client(streamable_http_client(f"{w.url}/mcp",
                                             http_client=create_mcp_http_client(headers=headers))) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert MEMORY_TOOLS <= set(tools)
        texts = []

        async def refused(name, args):
            result = await c.call_tool(name, args)
            assert result.is_error and "ContextNotFound" in result.content[0].text, (name, result)
            texts.append(result.content[0].text.replace(cid, ""))

        await refused("context_get", {"context_id": cid})
        await refused("context_append", {"context_id": cid, "messages": [{"role": "user", "content": "injected"}]})
        await refused("find_similar", {"context_id": cid})
        for args in ({"context_id": cid}, {}, {"user_id": A_USER}, {"mode": "keyword"}):
            found = await c.call_tool("search", {"query": MARK, **args})
            assert not found.is_error and found.structured_content["hits"] == [], (args, found)
            texts.append(found.content[0].text)
        created = await c.call_tool("context_create", {"user_id": A_USER})
        assert created.structured_content["tenant"] == w.b.slug
        for name, tool in tools.items():
            if name in MEMORY_TOOLS:
                continue
            taken = TENANT_INPUTS & set(tool.input_schema.get("properties", {}))
            assert not taken, f"MCP tool {name} takes {taken}: add a tenant-isolation case for it"
        planned = await c.call_tool("aws.s3_put_object", {**PUT, "idempotency_key": A_KEY})
        assert not planned.is_error, planned
        assert planned.structured_content["operation_id"] != w.ids["operation_id"]
        assert planned.structured_content["status"] == "planned"
        texts.append(planned.content[0].text.replace(A_KEY, ""))
    for text in texts:
        _assert_clean(w, text)


def test_mcp_every_tool_refuses_b_on_a(world):
    before = _digest(world.pool, world.a.slug)
    anyio.run(_mcp_matrix, world)
    assert _digest(world.pool, world.a.slug) == before


# -- the Python client ---------------------------------------------------------------------------------------------

def _mesh_cases(w: World, mesh: Mesh, not_found) -> dict:
    """Mesh method -> a call of B against A (`not_found(fn, *args)` asserts NotFound), or None with the reason."""
    cid, op, ap = w.ids["context_id"], w.ids["operation_id"], w.ids["approved_operation_id"]
    return {
        "create_key": lambda: mesh.create_key("b-x", ["read"]),
        "list_keys": lambda: mesh.list_keys(),
        "revoke_key": lambda: not_found(mesh.revoke_key, w.ids["reader_key_id"]),
        "rotate_key": lambda: not_found(mesh.rotate_key, w.ids["admin_key_id"]),
        "create_context": lambda: mesh.create_context(user_id=A_USER),
        "get_context": lambda: not_found(mesh.get_context, cid),
        "list_contexts": lambda: mesh.list_contexts(user_id=A_USER),
        "iter_contexts": lambda: list(mesh.iter_contexts()),
        "update_context": lambda: not_found(mesh.update_context, cid, {"x": 1}),
        "append": lambda: not_found(mesh.append, cid, [{"role": "user", "content": "x"}]),
        "delete_context": lambda: not_found(mesh.delete_context, cid),
        "search_context": lambda: not_found(mesh.search_context, cid, MARK),
        "context_summary": lambda: not_found(mesh.context_summary, cid),
        "similar_contexts": lambda: not_found(mesh.similar_contexts, cid),
        "context_embeddings": lambda: not_found(mesh.context_embeddings, cid),
        "store_text": lambda: not_found(mesh.store_text, cid, 0, "injected"),
        "remember": lambda: mesh.remember("a/plan", "b's own text"),
        "remember_many": lambda: mesh.remember_many([{"id": "a/other", "text": "b's own"}]),
        "search": lambda: mesh.search(MARK, user_id=A_USER),
        "search_vector": lambda: mesh.search_vector(w.ids["vector"], "fake-words-64"),
        "list_tools": lambda: mesh.list_tools(),
        "execute_tool": lambda: mesh.execute_tool("aws.s3_put_object", PUT, idempotency_key=A_KEY),
        "get_operation": lambda: not_found(mesh.get_operation, op),
        "approve": lambda: not_found(mesh.approve, ap),
        "reject": lambda: not_found(mesh.reject, ap),
        "audit": lambda: (mesh.audit(), not_found(mesh.audit, operation_id=op)),
        "iter_audit": lambda: list(mesh.iter_audit()),
        "with_key": lambda: mesh.with_key(w.b.key),  # no data call
        "close": None,  # lifecycle
        "register_organization": None,  # covered by the REST registration case (slug_taken)
    }


def test_python_client_every_method_refuses_b_on_a(world):
    w = world
    seen: list[str] = []

    def not_found(fn, *args, **kw):
        with pytest.raises(NotFound) as raised:
            fn(*args, **kw)
        seen.append(str(raised.value))

    before = _digest(w.pool, w.a.slug)
    with Mesh(w.url, w.b.key, max_retries=0) as mesh:
        cases = _mesh_cases(w, mesh, not_found)
        public = {name for name, _ in inspect.getmembers(Mesh, callable) if not name.startswith("_")}
        missing = sorted(public - set(cases))
        assert not missing, f"add a tenant-isolation case for Mesh methods {missing}"
        for name, case in cases.items():
            if case is None:
                continue
            result = case()
            text = json.dumps(result, default=lambda o: o.model_dump(mode="json") if hasattr(o, "model_dump")
                              else str(o))
            _assert_clean(w, text, A_KEY if name == "execute_tool" else "")
    sent = "".join(w.ids[k] for k in ("context_id", "operation_id", "approved_operation_id", "reader_key_id",
                                      "admin_key_id"))
    assert len(seen) == 15  # every not_found case ran
    for message in seen:
        _assert_clean(w, message, sent)
    assert _digest(w.pool, w.a.slug) == before


# -- the CLI (tenant given by --tenant / DEVMESH_TENANT; no key: an operator tool on the database) -------------------

def test_cli_tenant_scoped_commands_see_only_their_tenant(world, settings):
    w = world
    runner = CliRunner()
    found = runner.invoke(cli_app, ["search", MARK, "--tenant", w.b.slug, "--mode", "keyword", "--json"])
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout) == []
    shown = runner.invoke(cli_app, ["audit", "show", "--tenant", w.b.slug, "--limit", "1000"])
    assert shown.exit_code == 0, shown.output
    _assert_clean(w, shown.stdout)
    b_token = add_approver(w.pool, w.b.slug, "bob-b")
    before = _digest(w.pool, w.a.slug)
    for verb in ("approve", "reject"):
        out = runner.invoke(cli_app, [verb, w.ids["approved_operation_id"], "--token", b_token, "--tenant", w.b.slug])
        assert out.exit_code == 2 and "no such operation" in out.output, out.output
        # B's approver token is not a token of A either
        out = runner.invoke(cli_app, [verb, w.ids["approved_operation_id"], "--token", b_token, "--tenant", w.a.slug])
        assert out.exit_code == 2 and "not recognised" in out.output and b_token not in out.output, out.output
    assert _digest(w.pool, w.a.slug) == before


# -- API keys hashed, constant-time comparison, lockout ----------------------------------------------------------

def test_no_table_holds_a_plaintext_key_token_or_password(world):
    w = world
    rotated = w.http.post(f"{API}/keys/{w.ids['reader_key_id']}/rotate", headers=w.a.headers).json()["api_key"]
    extra = new_key(w.http, w.b, ["operate", "read"])
    secrets = [w.a.key, w.b.key, rotated, extra.key, w.ids["approver_token"], PASSWORD]
    dumped = dump_all(w.pool)
    for secret in secrets:
        assert secret not in dumped
        tail = secret.split("_", 1)[-1]
        assert tail[-24:] not in dumped  # not even the random part, in any column of any table
    with w.pool.connection() as conn:
        stored = {r[0] for r in conn.execute("SELECT key_hash FROM api_keys")}
    for key in (w.a.key, w.b.key, rotated, extra.key):
        assert hashlib.sha256(key.encode()).hexdigest() in stored


def test_key_comparisons_are_hash_lookups_and_constant_time():
    """Read the code paths (no timing measurement): the presented key is hashed, looked up by its hash, and the
    stored hash is compared with hmac.compare_digest; the same holds for approver tokens and webhook signatures."""
    from tasks import approvals, tenancy

    auth = inspect.getsource(tenancy.authenticate)
    assert "_hash(key)" in auth and "WHERE key_hash = %s" in auth and "hmac.compare_digest" in auth
    assert "key_hash = %s" in auth and "== digest" not in auth and "== key" not in auth
    approver = inspect.getsource(approvals.authenticate_approver)
    assert "token_hash = %s" in approver and "hmac.compare_digest" in approver
    verify = inspect.getsource(GitHubWebhook.verify)
    assert "hmac.compare_digest" in verify and "break" not in verify and "return True" not in verify
    # the plaintext is not what the database is asked for
    assert "_hash(" in inspect.getsource(tenancy._insert_key) and "key_hash" in inspect.getsource(tenancy._insert_key)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _init(accept=True):
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}


def test_brute_force_lockout_rest_and_mcp(settings, pool, tenant):
    """3 bad keys from one address lock it out (429 + Retry-After) on REST and MCP alike for every key that has not
    authenticated from that address before — a right key too, so a guess that hits learns nothing — while the keys
    that did keep working (the innocent users behind a shared proxy address); other addresses are unaffected; a
    success in between does not reset the count; the lock expires."""
    clock = Clock()
    app, _ = gateway(settings)
    app.state.devmesh["admission"] = Admission(
        PgVectorStore.from_settings(settings).pool,
        settings.admission.model_copy(update={"max_failures": 3, "failure_window_s": 60, "lockout_s": 30}), clock)
    accept = {"Accept": "application/json, text/event-stream"}
    bad = {"Authorization": "Bearer devmesh_" + "x" * 43}
    with serve(app) as url:
        one = httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address="127.0.0.1"))
        two = httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with one, two:
            org = register(one, tenant)
            good = org.headers
            fresh = new_key(one, org, ["read"]).headers  # a right key, never used from here before the lock

            def rest(client, headers):
                return client.get(f"{API}/contexts", headers=headers)

            def mcp_call(client, headers):
                return client.post("/mcp", json=_init(), headers={**accept, **headers})

            # a success does not launder guesses, on either surface: fail, succeed, fail, succeed, fail -> locked
            assert rest(one, bad).status_code == 401
            assert rest(one, good).status_code == 200
            assert mcp_call(one, bad).status_code == 401
            assert mcp_call(one, good).status_code == 200
            assert rest(one, bad).status_code == 401  # the third failure
            for call in (rest, mcp_call):
                for headers in (fresh, bad):  # a right guess and a wrong one get the same answer
                    locked = call(one, headers)
                    assert locked.status_code == 429, (call.__name__, locked.text)
                    assert int(locked.headers["retry-after"]) >= 1
                    assert locked.json()["error"]["code"] == "locked_out" and org.key not in locked.text
                assert call(one, good).status_code == 200  # known here before the lock: still admitted
            # another client address is not affected
            assert rest(two, fresh).status_code == 200 and mcp_call(two, fresh).status_code == 200
            # the lock expires
            clock.now += 31
            assert rest(one, fresh).status_code == 200 and mcp_call(one, fresh).status_code == 200

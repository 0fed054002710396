"""Helpers and fixtures for tests of the gateway's REST API: the app with a webhook block given in code,
registering an organization, minting keys, the one error shape; the AWS operation the tool tests plan. Test modules
import from here (never from each other)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from blocks.policy import OperationPolicy
from blocks.webhooks import GitHubWebhook
from deployments.gateway import create_app
from deployments.mcp_server import _scope_principal, build_server
from tasks.webhook_events import Routes

__all__ = ["API", "PASSWORD", "ROOT", "Org", "admitting", "assert_error", "client", "make_app", "new_key",
           "no_emit", "org", "register", "POLICY", "PUT", "REGION", "GATEWAY_WEBHOOK_SECRET", "gateway",
           "mcp_endpoint"]

ROOT = Path(__file__).resolve().parents[1]
API = "/api/v1"
PASSWORD = "correct horse battery staple"


async def no_emit(events):  # the gateway's outbox has nothing to send in these tests
    pass


def admitting(settings, **limits):
    """`settings` with these admission limits (AdmissionSettings fields)."""
    return settings.model_copy(update={"admission": settings.admission.model_copy(update=limits)})


def make_app(settings, **state):
    """The gateway app (REST API included) with a webhook block given in code; `state` entries override the
    API's shared objects (admission, ops_policy, ops_connections)."""
    app = create_app(settings, webhook=GitHubWebhook(secrets=[SecretStr("api-test-webhook-secret")]),
                     emit=no_emit, routes=Routes.from_prefect_yaml(ROOT / "prefect.yaml"))
    app.state.devmesh.update(state)
    return app


@dataclass
class Org:
    slug: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def register(client: TestClient, slug: str) -> Org:
    r = client.post(f"{API}/auth/register/organization", json={
        "name": f"Org {slug}", "slug": slug, "admin_email": f"admin@{slug}.example", "admin_name": "Ana",
        "password": PASSWORD})
    assert r.status_code == 201, r.text
    body = r.json()
    return Org(slug, body["api_key"], body["key"]["id"])


def new_key(client: TestClient, org: Org, scopes: list[str], **limits) -> Org:
    r = client.post(f"{API}/keys", json={"name": "-".join(scopes), "scopes": scopes, **limits}, headers=org.headers)
    assert r.status_code == 201, r.text
    return Org(org.slug, r.json()["api_key"], r.json()["key"]["id"])


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The one error shape, with the request id of the response header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message", "item", "request_id"} <= set(error), error
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "devmesh_" not in error["message"]
    if code:
        assert error["code"] == code, error
    return error


@pytest.fixture
def client(settings):
    with TestClient(make_app(settings)) as c:
        yield c


@pytest.fixture
def org(client, tenant) -> Org:
    return register(client, tenant)


# The AWS operation the tool tests plan (tests/deployments/test_api_tools.py) and their policy.
REGION = "eu-west-1"
PUT = {"bucket": "acme-data", "key": "reports/today.txt", "body": "all green"}
POLICY = OperationPolicy(operations=["aws.*"], aws_regions=[REGION], aws_buckets=["acme-*"])


# -- the gateway with the operator's webhook block, REST and MCP sharing the tests' policy and connections --------

GATEWAY_WEBHOOK_SECRET = "isolation-webhook-secret-0001"


def gateway(settings, hook: GitHubWebhook | None = None, **state):
    """The gateway app with the operator's webhook block `hook` (default: one with GATEWAY_WEBHOOK_SECRET) and
    `state` overriding the API's shared objects (ops_policy, ops_connections: mappings per tenant); (app, hook)."""
    hook = hook or GitHubWebhook(secrets=[SecretStr(GATEWAY_WEBHOOK_SECRET)])
    app = create_app(settings, webhook=hook, emit=no_emit, routes=Routes.from_prefect_yaml(ROOT / "prefect.yaml"))
    app.state.devmesh.update(state)
    if "ops_policy" in state:  # the gateway's MCP endpoint takes the same policy and connections as REST
        mcp = mcp_endpoint(app)
        mcp.server = build_server(_scope_principal, settings, state.get("ops_connections"), state["ops_policy"])
    return app, hook


def mcp_endpoint(app):
    """The McpHttpApp routed at /mcp of a gateway app."""
    return next(r.endpoint for r in app.router.routes if getattr(r, "path", None) == "/mcp")

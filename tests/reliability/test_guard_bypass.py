"""Guard bypass attempts: an operation outside the policy (a repository not in github_repos) submitted through REST
(tools execute, then approving it), MCP, the Python client, the CLI, the `operate` flow, `run_operation`, and the
guard's own steps called directly. Each is denied naming the rule, audited as `denied`, and the fake GitHub (driven
by PyGithub over loopback) sees no mutating request. The steps and provider functions cannot act without the guard:
the execute/verify steps refuse outside it, and no production code but the guard calls an operation's run."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client
from prefect import flow
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from typer.testing import CliRunner

from blocks.errors import GuardError, OperationDenied
from blocks.policy import OperationPolicy
from deployments.cli import app as cli_app
from deployments.client import Mesh
from flows.operate import OperateRequest, operate, run_operation
from tasks.grants import set_grant
from tasks.guard import execute_step, guarded, plan_step, verify_step
from tasks.ops.base import get_operation, parse_input
from tests.rest import API, register
from tests.fakes.fixtures import github_connection, github_connections
from tests.rest import gateway
from tests.serving import serve

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ghp_GUARDBYPASS0123456789abcdefghij"
POLICY = OperationPolicy(operations=["github.*"], github_repos=["octo/*"])
EVIL = {"repo": "evil/app", "title": "exfiltrate", "body": "outside the policy"}


@pytest.fixture
def github_token() -> str:
    return TOKEN  # the shared fake GitHub (tests.fakes.fixtures) with this module's token


conns = github_connections


def denied_rows(pool, tenant: str) -> list[dict]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT status, error, actor FROM audit_log WHERE tenant_id = %s AND operation = "
                            "'github.create_issue' ORDER BY seq", [tenant]).fetchall()
    return [{"status": s, "error": e, "actor": a} for s, e, a in rows]


def assert_denied_and_audited(pool, tenant: str, github, count: int) -> None:
    rows = denied_rows(pool, tenant)
    assert len(rows) == count, rows
    assert all(r["status"] == "denied" and "github_repos" in r["error"] and "evil/app" in r["error"]
               for r in rows), rows
    # nothing reached the provider, not even a read: the policy judged the input before planning
    assert github.requests == [], [(r.method, r.path) for r in github.requests]
    assert github.issues("evil/app") == []
    with pool.connection() as conn:
        statuses = {s for (s,) in conn.execute("SELECT status FROM operations WHERE tenant_id = %s", [tenant])}
    assert statuses <= {"denied"}, statuses


def test_rest_mcp_client_deny_audit_and_reach_nothing(settings, pool, tenant, github):
    app, _ = gateway(settings, ops_policy={tenant: POLICY}, ops_connections={tenant: conns(github)})
    with serve(app) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            org = register(http, tenant)
            n = 0
            # REST: dry run and for real, with and without an idempotency key
            for body in ({"arguments": EVIL}, {"arguments": EVIL, "dry_run": False},
                         {"arguments": EVIL, "dry_run": False, "idempotency_key": "rest-evil"}):
                r = http.post(f"{API}/tools/github.create_issue/execute", json=body, headers=org.headers)
                assert r.status_code == 403 and r.json()["error"]["code"] == "policy_denied", r.text
                assert "github_repos" in r.json()["error"]["message"]
                n += 1
            assert_denied_and_audited(pool, tenant, github, n)
            # the operations routes cannot push a denied operation through
            with pool.connection() as conn:
                op_id = conn.execute("SELECT id::text FROM operations WHERE tenant_id = %s AND idempotency_key = "
                                     "'rest-evil'", [tenant]).fetchone()[0]
            for verb in ("approve", "reject"):
                r = http.post(f"{API}/operations/{op_id}/{verb}", headers=org.headers)
                assert r.status_code == 409, r.text
            assert http.get(f"{API}/operations/{op_id}", headers=org.headers).json()["status"] == "denied"
            # the same key again is not a replay of anything: denied again
            r = http.post(f"{API}/tools/github.create_issue/execute", headers=org.headers,
                          json={"arguments": EVIL, "dry_run": False, "idempotency_key": "rest-evil"})
            assert r.status_code == 403, r.text
            n += 1

            # MCP over streamable HTTP on the same gateway
            async def mcp_attempts():
                headers = {"Authorization": f"Bearer {org.key}"}
                async with Client(streamable_http_client(f"{url}/mcp",
                                                         http_client=create_mcp_http_client(headers=headers))) as c:
                    for extra in ({}, {"dry_run": False}, {"dry_run": False, "idempotency_key": "mcp-evil"}):
                        result = await c.call_tool("github.create_issue", {**EVIL, **extra})
                        assert result.is_error, result
                        assert "OperationDenied" in result.content[0].text
                        assert "github_repos" in result.content[0].text

            anyio.run(mcp_attempts)
            n += 3
            # the Python client
            with Mesh(url, org.key, max_retries=0) as mesh:
                for kw in ({}, {"dry_run": False}, {"dry_run": False, "idempotency_key": "mesh-evil"}):
                    with pytest.raises(OperationDenied, match="github_repos"):
                        mesh.execute_tool("github.create_issue", EVIL, **kw)
                    n += 1
            assert_denied_and_audited(pool, tenant, github, n)
    actors = {json.dumps(r["actor"], sort_keys=True) for r in denied_rows(pool, tenant)}
    assert any('"via": "mcp"' in a for a in actors) and all(org.key_id in a for a in actors)


def test_direct_calls_deny_audit_and_reach_nothing(settings, pool, tenant, github):
    n = 0
    for dry_run in (True, False):
        request = OperateRequest(operation="github.create_issue", arguments=EVIL, tenant=tenant,
                                 actor={"agent": "direct"}, dry_run=dry_run)
        with pytest.raises(OperationDenied, match="github_repos"):
            run_operation(request, settings, connections=conns(github), policy=POLICY)
        n += 1
    assert_denied_and_audited(pool, tenant, github, n)


def test_guard_steps_refuse_outside_the_guard(github):
    """The execute and verify steps are Prefect tasks anyone can import: outside the guard their functions refuse
    (as a task run inside a flow: the flow test below); with another operation's key they refuse too. Planning is
    read-only."""
    c = conns(github)
    op = get_operation("github.create_issue")
    inp = parse_input(op, EVIL)
    assert plan_step.fn("github.create_issue", c, inp, 0).facts["repo"] == "evil/app"  # a dry run reads only
    with pytest.raises(GuardError, match="only through the guard"):
        execute_step.fn("github.create_issue", c, inp, "direct-key", 0)
    with guarded("another-operation-key"), pytest.raises(GuardError, match="only through the guard"):
        execute_step.fn("github.create_issue", c, inp, "direct-key", 0)
    with pytest.raises(GuardError, match="only through the guard"):
        verify_step.fn("github.create_issue", c, inp, {"number": 1}, 0)
    assert github.posts() == [] and github.issues("evil/app") == []


def _calls(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                names.add(func.attr)
            elif isinstance(func, ast.Name):
                names.add(func.id)
    return names


def test_only_the_guard_runs_operations_and_no_surface_takes_credentials():
    """Static proof for the provider functions (`Operation.run`/`verify`, the `run_*` functions of tasks/ops): no
    production module but tasks/guard.py calls them, every surface builds an OperateRequest (which has no field for
    credentials or a policy) and hands it to run_operation/submit_operation, and no deployment serves a step."""
    step_names = {"execute_step", "verify_step"}
    provider_runs = set()
    for path in (ROOT / "tasks" / "ops").rglob("*.py"):  # the provider packages too
        tree = ast.parse(path.read_text(encoding="utf-8"))
        provider_runs |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)
                          and n.name.startswith(("run_", "_", "verify_")) and ("run" in n.name or "verify" in n.name)}
    offenders = []
    for folder in ("blocks", "tasks", "flows", "deployments"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ("tasks/guard.py",) or rel.startswith("tasks/ops/"):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            called = _calls(tree)
            if rel != "flows/operate.py" and called & step_names:
                offenders.append((rel, sorted(called & step_names)))
            if called & provider_runs:
                offenders.append((rel, sorted(called & provider_runs)))
            source = path.read_text(encoding="utf-8")
            for pattern in ("op.run(", ".run(conns", "op.verify(", "REGISTRY["):
                if pattern in source:
                    offenders.append((rel, pattern))
    assert not offenders, offenders
    assert set(OperateRequest.model_fields) == {"operation", "arguments", "tenant", "actor", "dry_run",
                                                "idempotency_key"}
    from deployments.api.schemas import ExecuteBody

    assert not {"connections", "policy", "credentials", "token"} & set(ExecuteBody.model_fields)
    spec = (ROOT / "prefect.yaml").read_text(encoding="utf-8")
    assert "guard.py" not in spec and "tasks/ops" not in spec


def test_operate_flow_and_cli_deny_audit_and_reach_nothing(prefect_harness, settings, pool, tenant, github):
    """The operate flow (what the `operate/operate` deployment runs) and `devmesh op run`, with the policy and the
    credentials loaded from the blocks the operator granted the tenant, as in production."""
    github_connection(github).save("guard-bypass-github", overwrite=True)
    POLICY.save("guard-bypass-policy", overwrite=True)
    set_grant(pool, tenant, actor={"via": "pytest"}, policy_block="guard-bypass-policy",
              github_block="guard-bypass-github")
    request = OperateRequest(operation="github.create_issue", arguments=EVIL, tenant=tenant,
                             actor={"agent": "flow"}, dry_run=False)
    denied = operate(request)  # the run ends "Denied", its summary the result
    assert denied["status"] == "denied" and "github_repos" in denied["error"]
    runner = CliRunner()
    for flags in (["--direct", "--execute"], ["--execute"]):
        out = runner.invoke(cli_app, ["op", "run", "github.create_issue", "--args", json.dumps(EVIL),
                                      "--tenant", tenant, *flags])
        assert out.exit_code == 3 and "github_repos" in out.output, out.output
    assert_denied_and_audited(pool, tenant, github, 3)

    @flow(name="rogue")
    def rogue() -> dict:  # a flow of someone's own that calls the execute step as a task run, skipping the guard
        op = get_operation("github.create_issue")
        return execute_step("github.create_issue", conns(github), parse_input(op, EVIL), "rogue-key", 0)

    with pytest.raises(GuardError, match="only through the guard"):
        rogue()
    assert github.posts() == [] and github.issues("evil/app") == []

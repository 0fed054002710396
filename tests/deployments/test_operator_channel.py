"""`devmesh op run` (a dry run) by the running stack's gateway (deployments/operator_channel.py,
deployments/api/operator.py): the same plan, the same refusals and the same audit record as the dry run in the CLI's
own process; the route opens to the operator token on loopback only; without a stack the CLI does it itself.

The gateway is the real app under uvicorn on 127.0.0.1 (tests.serving), the stack file is the one `devmesh up`
writes, AWS is moto (in this process, so the gateway's thread sees it too)."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws
from typer.testing import CliRunner

from deployments.cli import app
from deployments.operator_channel import HEADER, OPERATOR_PATH, operator_token
from deployments.stack import STACK_FILE
from tasks.audit import read_audit
from tests.factories import save_s3_put_blocks
from tests.rest import gateway
from tests.serving import serve

runner = CliRunner()
REGION = "eu-west-1"
AUTH = "devmesh:operator-channel-test-secret"
ARGS = {"bucket": "acme-data", "key": "a.txt", "body": "hello"}


@pytest.fixture
def granted(prefect_harness, settings, tenant):
    with mock_aws():
        save_s3_put_blocks(REGION)
        out = runner.invoke(app, ["tenants", "grant", tenant, "--policy", "devmesh-policy", "--aws-block",
                                  "devmesh-aws"])
        assert out.exit_code == 0, out.output
        yield


@pytest.fixture
def stack(settings, monkeypatch):
    """The gateway served on loopback with the stack's credential in its environment, and the stack file naming it
    (removed after; a stale one would only name a closed port, which the CLI treats as "not up")."""
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)
    gateway_app, _ = gateway(settings)
    path = settings.home / STACK_FILE
    with serve(gateway_app) as url:
        path.write_text(json.dumps({"gateway": url, "pids": {}}), encoding="utf-8")
        try:
            yield url
        finally:
            path.unlink(missing_ok=True)


def _no_run_here(monkeypatch):
    """The CLI's in-process guard fails the test if called: what answers comes from the gateway."""
    import flows.operate

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run ran in the CLI's process, not by the stack")

    monkeypatch.setattr(flows.operate, "run_operation", refuse)


def _op_run(tenant, args, *more):
    return runner.invoke(app, ["op", "run", "aws.s3_put_object", "--args", json.dumps(args), "--tenant", tenant,
                               *more])


def test_the_same_plan_and_audit_by_the_stack_as_in_this_process(granted, stack, settings, pool, tenant,
                                                                  monkeypatch):
    with monkeypatch.context() as patched:
        _no_run_here(patched)
        by_stack = _op_run(tenant, ARGS)
    assert by_stack.exit_code == 0, by_stack.output
    here = _op_run(tenant, ARGS, "--direct")
    assert here.exit_code == 0, here.output
    a, b = json.loads(by_stack.stdout), json.loads(here.stdout)
    assert a["status"] == b["status"] == "planned"
    assert a["plan"] == b["plan"] and a["plan_hash"] == b["plan_hash"] and a["target"] == b["target"]
    assert a["flow_run_id"] is None and a["operation_id"] != b["operation_id"]
    assert a["result"] == b["result"]
    records = read_audit(pool, tenant=tenant, limit=2, newest_first=True)
    assert [str(r["operation_id"]) for r in records] == [b["operation_id"], a["operation_id"]]
    fields = ("operation", "status", "target", "plan_hash", "actor", "approval", "error")
    assert [{k: r[k] for k in fields} for r in records][0] == [{k: r[k] for k in fields} for r in records][1]
    assert records[0]["actor"]["via"] == "cli"


def test_refusals_by_the_stack_keep_their_exit_codes_and_messages(granted, stack, settings, tenant, monkeypatch):
    outside = {"bucket": "other-x", "key": "a", "body": "x"}
    bad = {"bucket": "acme-data", "body": "x", "colour": "red"}
    with monkeypatch.context() as patched:
        _no_run_here(patched)
        denied = _op_run(tenant, outside)
        invalid = _op_run(tenant, bad)
        unknown = runner.invoke(app, ["op", "run", "no.such[op]", "--tenant", tenant])
        ungranted = _op_run(tenant + "x", ARGS)
    assert denied.exit_code == 3 and "error: denied by policy rule aws_buckets" in denied.output, denied.output
    assert invalid.exit_code == 2 and "key" in invalid.output and "colour" in invalid.output, invalid.output
    assert unknown.exit_code == 2 and "no.such[op]" in unknown.output, unknown.output
    assert ungranted.exit_code == 3 and "has no operations grant" in ungranted.output, ungranted.output
    # the same words as in this process
    here = _op_run(tenant, outside, "--direct")
    assert here.exit_code == 3 and here.output.strip() == denied.output.strip()


def test_the_operator_route_opens_to_the_operator_token_on_loopback_only(stack, settings, tenant, monkeypatch):
    body = {"operation": "aws.s3_put_object", "arguments": ARGS, "tenant": tenant, "user": "mallory"}
    url = stack + OPERATOR_PATH
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    wrong = httpx.post(url, json=body, headers={HEADER: operator_token("devmesh:another-secret")}, timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    as_key = httpx.post(url, json=body, headers={"Authorization": f"Bearer {AUTH}", HEADER: AUTH}, timeout=30)
    assert as_key.status_code == 401  # the credential itself is not the token
    # the right token from an address that is not loopback (the test client's peer is "testclient")
    gateway_app, _ = gateway(settings)
    with TestClient(gateway_app) as client:
        remote = client.post(OPERATOR_PATH, json=body, headers={HEADER: operator_token(AUTH)})
    assert remote.status_code == 403 and remote.json()["error"]["code"] == "operator_only"
    # nor is it an agent's route
    assert OPERATOR_PATH not in httpx.get(f"{stack}/openapi.json", timeout=30).json()["paths"]
    # a gateway without the stack's credential has no operator route
    monkeypatch.delenv("PREFECT_API_AUTH_STRING")
    gone = httpx.post(url, json=body, headers={HEADER: operator_token(AUTH)}, timeout=30)
    assert gone.status_code == 404


def test_without_a_stack_the_cli_runs_the_dry_run_itself(granted, settings, tenant, monkeypatch):
    """A stack file naming a closed port, or a gateway that refuses the token: the dry run in this process."""
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    path = settings.home / STACK_FILE
    path.write_text(json.dumps({"gateway": f"http://127.0.0.1:{closed}"}), encoding="utf-8")
    try:
        out = _op_run(tenant, ARGS)
    finally:
        path.unlink(missing_ok=True)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["status"] == "planned"

"""`devmesh op|approvers|audit` with exit codes: dry run, execute, denial, bad arguments, audit verification."""

from __future__ import annotations

import json

import pytest
from moto import mock_aws
from typer.testing import CliRunner

from deployments.cli import app
from tests.factories import save_s3_put_blocks

runner = CliRunner()
REGION = "eu-west-1"


@pytest.fixture
def aws_blocks(prefect_harness, settings):
    with mock_aws():
        save_s3_put_blocks(REGION)
        yield


def test_op_list_and_schema():
    result = runner.invoke(app, ["op", "list", "--json"])
    assert result.exit_code == 0, result.output
    names = {o["name"] for o in json.loads(result.stdout)}
    assert {"github.create_issue", "kubernetes.apply", "aws.s3_put_object", "aws.describe"} <= names
    result = runner.invoke(app, ["op", "list", "--schema", "aws.s3_put_object"])
    assert json.loads(result.stdout)["required"] == ["bucket", "key", "body"]
    assert runner.invoke(app, ["op", "list", "--schema", "nope.nothing"]).exit_code == 2


def test_run_dry_then_execute_then_denied_and_bad_args(aws_blocks, tenant):
    args = json.dumps({"bucket": "acme-data", "key": "a.txt", "body": "hello"})
    ungranted = runner.invoke(app, ["op", "run", "aws.s3_put_object", "--args", args, "--tenant", tenant, "--direct"])
    assert ungranted.exit_code == 3 and "has no operations grant" in ungranted.output, ungranted.output
    granted = runner.invoke(app, ["tenants", "grant", tenant, "--policy", "devmesh-policy", "--aws-block",
                                  "devmesh-aws"])
    assert granted.exit_code == 0 and json.loads(granted.stdout)["aws_block"] == "devmesh-aws", granted.output
    dry = runner.invoke(app, ["op", "run", "aws.s3_put_object", "--args", args, "--tenant", tenant, "--direct"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["status"] == "planned"
    done = runner.invoke(app, ["op", "run", "aws.s3_put_object", "--args", args, "--tenant", tenant, "--direct",
                               "--execute", "--key", "cli-1"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["status"] == "succeeded"
    denied = runner.invoke(app, ["op", "run", "aws.s3_put_object", "--tenant", tenant, "--direct", "--execute",
                                 "--args", json.dumps({"bucket": "other-x", "key": "a", "body": "x"})])
    assert denied.exit_code == 3 and "aws_buckets" in denied.output
    bad = runner.invoke(app, ["op", "run", "aws.s3_put_object", "--tenant", tenant, "--direct",
                              "--args", json.dumps({"bucket": "acme-data", "body": "x", "colour": "red"})])
    assert bad.exit_code == 2 and "key" in bad.output and "colour" in bad.output
    shown = runner.invoke(app, ["audit", "show", "--tenant", tenant])  # the newest first
    assert [json.loads(line)["status"] for line in shown.stdout.splitlines()] == \
        ["denied", "succeeded", "planned", "granted", "denied"]
    shown = runner.invoke(app, ["audit", "show", "--tenant", tenant, "--oldest", "--limit", "2"])
    assert [json.loads(line)["status"] for line in shown.stdout.splitlines()] == ["denied", "granted"]
    verified = runner.invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"]


def test_approvers_and_approve_errors(settings, tenant):
    added = runner.invoke(app, ["approvers", "add", "carol", "--tenant", tenant])
    assert added.exit_code == 0 and added.stdout.startswith("dmapprove_")
    token = added.stdout.strip()
    missing = runner.invoke(app, ["approve", "00000000-0000-0000-0000-000000000000", "--token", token,
                                  "--tenant", tenant])
    assert missing.exit_code == 2 and "no such operation" in missing.output
    wrong = runner.invoke(app, ["approve", "00000000-0000-0000-0000-000000000000", "--token", "dmapprove_x",
                                "--tenant", tenant])
    assert wrong.exit_code == 2 and "not recognised" in wrong.output and token not in wrong.output
    assert runner.invoke(app, ["approvers", "revoke", "carol", "--tenant", tenant]).exit_code == 0


def test_refusals_through_a_flow_run_print_one_error_line_and_no_traceback(aws_blocks, tenant, tmp_path):
    """The default (flow-run) path: a denial ends the run "Denied" and the CLI prints `error: ...`; bad input is
    refused before any flow run; no literal markup, no traceback."""
    granted = runner.invoke(app, ["tenants", "grant", tenant, "--policy", "devmesh-policy", "--aws-block",
                                  "devmesh-aws"])
    assert granted.exit_code == 0, granted.output
    denied = runner.invoke(app, ["op", "run", "aws.s3_put_object", "--tenant", tenant, "--execute",
                                 "--args", json.dumps({"bucket": "other-x", "key": "a", "body": "x"})])
    assert denied.exit_code == 3, denied.output
    assert "error: denied by policy rule aws_buckets" in denied.output
    assert "Traceback" not in denied.output and "[red]" not in denied.output
    bad = runner.invoke(app, ["op", "run", "aws.s3_put_object", "--tenant", tenant,
                              "--args", json.dumps({"bucket": "acme-data", "colour": "red"})])
    assert bad.exit_code == 2 and "error: aws.s3_put_object: invalid arguments" in bad.output
    assert "Traceback" not in bad.output and "Beginning flow run" not in bad.output
    brackets = runner.invoke(app, ["op", "run", "no.such[op]"])
    assert brackets.exit_code == 2 and "no.such[op]" in brackets.output and "[red]" not in brackets.output


def test_args_file_for_kubernetes_apply_takes_a_plain_manifest(tmp_path):
    from deployments.cli_ops import _arguments

    manifest = tmp_path / "deploy.yaml"
    manifest.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: staging}\n")
    assert _arguments(None, manifest, wraps_manifest=True)["manifest"]["metadata"]["name"] == "web"
    wrapped = tmp_path / "args.yaml"
    wrapped.write_text("manifest:\n  apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\nwait: false\n")
    assert _arguments(None, wrapped, wraps_manifest=True)["wait"] is False
    assert _arguments(None, manifest)["kind"] == "Deployment"  # another operation's arguments stay as they are


def test_a_dry_run_runs_in_this_process_by_default_and_an_execute_as_a_flow_run(aws_blocks, tenant):
    """`devmesh op run` answers a dry run without a flow run (it never waits for an approval); --execute is a flow
    run (it may have to pause for one)."""
    args = json.dumps({"bucket": "acme-data", "key": "b.txt", "body": "hello"})
    assert runner.invoke(app, ["tenants", "grant", tenant, "--policy", "devmesh-policy", "--aws-block",
                               "devmesh-aws"]).exit_code == 0
    dry = runner.invoke(app, ["op", "run", "aws.s3_put_object", "--args", args, "--tenant", tenant])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["status"] == "planned" and json.loads(dry.stdout)["flow_run_id"] is None
    done = runner.invoke(app, ["op", "run", "aws.s3_put_object", "--args", args, "--tenant", tenant, "--execute",
                               "--key", "cli-default-1"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["status"] == "succeeded" and json.loads(done.stdout)["flow_run_id"]


def test_an_operation_loads_only_its_provider_and_no_embedding_model():
    import subprocess
    import sys

    code = ("import sys\n"
            "from deployments.cli import app\n"
            "from flows.operate import run_operation\n"
            "from tasks.ops.base import get_operation\n"
            "get_operation('github.create_issue')\n"
            "print(sorted(m for m in ('onnxruntime', 'tokenizers', 'kubernetes', 'boto3', 'tasks.ops.github',"
            " 'tasks.ops.kubernetes', 'tasks.ops.aws') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['tasks.ops.github']"

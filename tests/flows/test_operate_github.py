"""The guard on GitHub operations: a lost answer after a successful create never makes a second issue, rate limits
are waited out, 422s are not retried, and the token never reaches the audit trail, errors or logs."""

from __future__ import annotations

import logging

import pytest

from blocks.errors import AuthFailed, InvalidRequest, OperationDenied
from blocks.policy import OperationPolicy
from blocks.postgres import PgVectorStore
from flows.operate import OperateRequest, run_operation
from tasks.audit import read_audit
from tests.fakes import Fault
from tests.fakes.fixtures import GITHUB_TOKEN as CANARY, github_connections

POLICY = OperationPolicy(operations=["github.*"], github_repos=["octo/*"], max_issues_per_hour=3)
ISSUE = {"repo": "octo/app", "title": "Disk full on db-1", "body": "df shows 100% on /var/lib/postgresql"}


def run(settings, fake, tenant, arguments=ISSUE, token=CANARY, **kw):
    request = OperateRequest(operation="github.create_issue", arguments=arguments, tenant=tenant,
                             actor={"api_key_id": "key-1", "agent": "pytest"}, dry_run=False, **kw)
    return run_operation(request, settings, connections=github_connections(fake, token), policy=POLICY)


def test_a_502_after_the_create_is_retried_without_a_second_issue(settings, github, tenant, slept):
    github.script_writes(Fault.after(502))
    out = run(settings, github, tenant)
    assert out["status"] == "succeeded"
    assert len(github.issues("octo/app")) == 1 and len(github.posts()) == 1
    assert out["result"]["number"] == github.issues("octo/app")[0]["number"]
    assert len(slept) == 1  # one transient failure, one retry


def test_secondary_rate_limit_waits_for_retry_after(settings, github, tenant, slept):
    github.script_writes(Fault.error(403, "You have exceeded a secondary rate limit", headers={"retry-after": "7"}))
    out = run(settings, github, tenant)
    assert out["status"] == "succeeded" and slept == [7.0]
    assert len(github.issues("octo/app")) == 1


def test_validation_errors_are_not_retried_and_are_audited(settings, github, tenant, slept):
    github.script_writes(Fault.error(422, "Validation Failed"))
    with pytest.raises(InvalidRequest):
        run(settings, github, tenant)
    assert slept == [] and github.issues("octo/app") == []
    assert [r["status"] for r in read_audit(PgVectorStore.from_settings(settings).pool(), tenant=tenant)] == ["failed"]


def test_hourly_issue_cap_and_repo_allowlist(settings, github, tenant, slept):
    for i in range(3):
        run(settings, github, tenant, arguments={**ISSUE, "title": f"issue {i}"})
    with pytest.raises(OperationDenied, match="max_issues_per_hour"):
        run(settings, github, tenant, arguments={**ISSUE, "title": "one too many"})
    with pytest.raises(OperationDenied, match="github_repos"):
        run(settings, github, tenant, arguments={**ISSUE, "repo": "evil/app"})
    assert len(github.issues("octo/app")) == 3


def test_canary_token_reaches_no_sink(settings, github, tenant, caplog, slept):
    caplog.set_level(logging.DEBUG)
    run(settings, github, tenant)
    github.token = "rotated-token-the-canary-no-longer-works"
    with pytest.raises(AuthFailed) as failed:
        run(settings, github, tenant, arguments={**ISSUE, "title": "second"})
    with PgVectorStore.from_settings(settings).pool().connection() as conn:
        audit = conn.execute("SELECT coalesce(string_agg(a::text, ' '), '') FROM audit_log a").fetchone()[0]
        ops = conn.execute("SELECT coalesce(string_agg(o::text, ' '), '') FROM operations o").fetchone()[0]
    for sink in (audit, ops, str(failed.value), caplog.text):
        assert CANARY not in sink

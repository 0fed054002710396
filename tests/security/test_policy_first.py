"""Policy before any credentialed call (issue 18, attack 5): the policy's static rules are judged on the typed input
(`Operation.facts`, `OperationPolicy.precheck`) before planning, so an operation on a target the policy denies sends
no request at all with the tenant's credential — before this, `github.create_issue` on `evil/app` first sent
`GET /repos/evil/app` with the operator's token. Tried through run_operation, REST, MCP and the Python client against
the fake GitHub (driven by PyGithub), the fake Kubernetes API server (driven by the official client) and an AWS
endpoint on loopback that counts connections. What passes the precheck is planned and judged again with its live
facts; the facts the precheck sees are the plan's own."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest
from mcp import Client
from prefect_aws import AwsClientParameters, AwsCredentials

from blocks.errors import OperationDenied
from blocks.policy import OperationPolicy
from deployments.client import Mesh
from flows.operate import OperateRequest, run_operation
from tasks.ops.base import Connections, get_operation, operations, parse_input
from tests.rest import API, register
from tests.fakes.fixtures import github_connections, kubernetes_connections
from tests.reliability.hostile import table_counts
from tests.rest import gateway
from tests.mcp_clients import mcp_call
from tests.serving import serve

TOKEN = "ghp_POLICYFIRST0123456789abcdefghijk"
POLICY = OperationPolicy(operations=["github.*", "kubernetes.*", "aws.*"], github_repos=["octo/*"],
                         kubernetes_namespaces=["staging"], kubernetes_kinds=["Deployment"],
                         images=["ghcr.io/octo/*"], max_replicas=5, aws_regions=["eu-west-1"],
                         aws_buckets=["octo-*"], aws_services=["prod/web"])
EVIL_ISSUE = {"repo": "evil/app", "title": "exfiltrate", "body": "outside the policy"}


@pytest.fixture
def github_token() -> str:
    return TOKEN


@pytest.fixture
def github(github):
    """The shared fake GitHub (tests.fakes.fixtures) with this module's token and an issue in evil/app."""
    github.add_issue("evil/app", "an issue", "of someone else")
    return github


gh = github_connections


def run(settings, tenant, conns, operation, arguments, dry_run=True):
    request = OperateRequest(operation=operation, arguments=arguments, tenant=tenant, dry_run=dry_run,
                             actor={"agent": "pytest"})
    return run_operation(request, settings, connections=conns, policy=POLICY)


def audited_denials(pool, tenant) -> list[tuple[str, str, str]]:
    with pool.connection() as conn:
        return conn.execute("SELECT operation, target, error FROM audit_log WHERE tenant_id = %s AND status = "
                            "'denied' ORDER BY seq", [tenant]).fetchall()


@pytest.mark.parametrize("operation, arguments, rule", [
    ("github.create_issue", EVIL_ISSUE, "github_repos"),
    ("github.comment_issue", {"repo": "evil/app", "issue_number": 1, "body": "hi"}, "github_repos"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_denied_github_target_sees_no_request_at_all(settings, pool, tenant, github, operation, arguments, rule,
                                                       dry_run):
    with pytest.raises(OperationDenied, match=rule):
        run(settings, tenant, gh(github), operation, arguments, dry_run)
    assert github.requests == [], [(s.method, s.path) for s in github.requests]  # not even GET /repos/evil/app
    [(op, target, error)] = audited_denials(pool, tenant)
    assert op == operation and target.startswith("github:evil/app") and "evil/app" in error


def test_what_the_policy_allows_is_planned_with_the_credential(settings, tenant, github):
    planned = run(settings, tenant, gh(github), "github.create_issue", {**EVIL_ISSUE, "repo": "octo/app"})
    assert planned["status"] == "planned"
    assert [(s.method, s.path) for s in github.requests] == [("GET", "/repos/octo/app")]


def test_rest_mcp_and_the_client_reach_no_provider_for_a_denied_target(settings, pool, tenant, github):
    app, _ = gateway(settings, ops_policy={tenant: POLICY}, ops_connections={tenant: gh(github)})
    with serve(app) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            org = register(http, tenant)
            r = http.post(f"{API}/tools/github.create_issue/execute", json={"arguments": EVIL_ISSUE},
                          headers=org.headers)
            assert r.status_code == 403 and "github_repos" in r.json()["error"]["message"], r.text

            result = mcp_call(url, org.key, "github.create_issue", {**EVIL_ISSUE, "dry_run": False})
            assert result.is_error and "github_repos" in result.content[0].text
            with Mesh(url, org.key, max_retries=0) as mesh, pytest.raises(OperationDenied, match="github_repos"):
                mesh.execute_tool("github.create_issue", EVIL_ISSUE, dry_run=False)
    assert github.requests == []
    assert len(audited_denials(pool, tenant)) == 3


def deployment(namespace="staging", image="ghcr.io/octo/web:1", replicas=2, kind="Deployment"):
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "web", "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": image}]}}}}


@pytest.fixture
def cluster(cluster):
    """The shared fake Kubernetes (tests.fakes.fixtures) with the staging namespace."""
    cluster.load({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "staging"}})
    cluster.requests.clear()
    return cluster


kube = kubernetes_connections


@pytest.mark.parametrize("operation, arguments, rule", [
    ("kubernetes.apply", {"manifest": deployment(namespace="kube-system")}, "kubernetes_namespaces"),
    ("kubernetes.apply", {"manifest": deployment(image="evil.io/miner:1")}, "images"),
    ("kubernetes.apply", {"manifest": deployment(replicas=50)}, "max_replicas"),
    ("kubernetes.apply", {"manifest": {"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": "c", "namespace": "staging"}}}, "kubernetes_kinds"),
    ("kubernetes.scale", {"namespace": "staging", "name": "web", "replicas": 40}, "max_replicas"),
    ("kubernetes.scale", {"namespace": "prod", "name": "web", "replicas": 1}, "kubernetes_namespaces"),
    ("kubernetes.rollback", {"namespace": "prod", "name": "web"}, "kubernetes_namespaces"),
])
def test_a_denied_kubernetes_target_sees_no_request(settings, pool, tenant, cluster, operation, arguments, rule):
    with pytest.raises(OperationDenied, match=rule):
        run(settings, tenant, kube(cluster), operation, arguments, dry_run=False)
    assert cluster.requests == [], [(s.method, s.path) for s in cluster.requests]
    assert len(audited_denials(pool, tenant)) == 1


class CountingEndpoint:
    """A TCP listener on loopback that counts connections (and answers none): an AWS endpoint that must stay
    untouched."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def endpoint():
    counting = CountingEndpoint()
    yield counting
    counting.close()


@pytest.mark.parametrize("operation, arguments, rule", [
    ("aws.s3_put_object", {"bucket": "evil-loot", "key": "k", "body": "x"}, "aws_buckets"),
    ("aws.s3_put_object", {"bucket": "octo-data", "key": "k", "body": "x", "region": "us-east-1"}, "aws_regions"),
    ("aws.ecs_update_service", {"cluster": "prod", "service": "db", "desired_count": 1}, "aws_services"),
    ("aws.ecs_update_service", {"cluster": "prod", "service": "web", "desired_count": 9}, "max_replicas"),
])
def test_a_denied_aws_target_opens_no_connection(settings, pool, tenant, endpoint, operation, arguments, rule):
    creds = AwsCredentials(aws_access_key_id="AKIAPOLICYFIRST00001", aws_secret_access_key="not-used-0123456789",
                           region_name="eu-west-1",
                           aws_client_parameters=AwsClientParameters(endpoint_url=endpoint.url))
    with pytest.raises(OperationDenied, match=rule):
        run(settings, tenant, Connections(aws=creds), operation, arguments, dry_run=False)
    assert endpoint.accepted == 0
    assert len(audited_denials(pool, tenant)) == 1


def test_a_denial_before_planning_changes_only_what_it_records(settings, pool, tenant, github):
    before = table_counts(pool)
    with pytest.raises(OperationDenied):
        run(settings, tenant, gh(github), "github.create_issue", EVIL_ISSUE, dry_run=False)
    after = table_counts(pool)
    assert {t: after[t] - before[t] for t in after if after[t] != before[t]} == {"operations": 1, "audit_log": 1}


# -- the contract: every operation states its facts, and they are the plan's ------------------------------------

SAMPLES = {
    "github.create_issue": {"repo": "octo/app", "title": "t"},
    "github.comment_issue": {"repo": "octo/app", "issue_number": 1, "body": "b"},
    "github.search_code": {"query": "oom", "repo": "octo/app"},
    "github.search_issues": {"query": "oom"},
    "github.get_file": {"repo": "octo/app", "path": "README.md"},
    "kubernetes.apply": {"manifest": deployment()},
    "kubernetes.scale": {"namespace": "staging", "name": "web", "replicas": 3},
    "kubernetes.rollout_status": {"namespace": "staging", "name": "web"},
    "kubernetes.rollback": {"namespace": "staging", "name": "web"},
    "kubernetes.get": {"api_version": "apps/v1", "kind": "Deployment", "namespace": "staging", "name": "web"},
    "aws.s3_put_object": {"bucket": "octo-data", "key": "k", "body": "x"},
    "aws.s3_list": {"bucket": "octo-data"},
    "aws.ecs_update_service": {"cluster": "prod", "service": "web", "desired_count": 2},
    "aws.describe": {"service": "ecs", "call": "list_clusters"},
}


def test_every_operation_states_its_facts_without_a_provider():
    """facts() reads the input (and the AWS block's default region), never a client: Connections whose blocks
    would fail on any use give the same facts."""
    assert {op.name for op in operations()} == set(SAMPLES)
    conns = Connections(aws=AwsCredentials(region_name="eu-west-1"))
    for op in operations():
        assert op.facts is not None, op.name
        facts = op.facts(conns, parse_input(op, SAMPLES[op.name]))
        assert facts["target"].startswith(op.provider + ":"), (op.name, facts)
        assert conns._cache == {}, op.name  # no client was built


def test_the_precheck_sees_the_facts_the_plan_will_have(settings, tenant, github, cluster):
    """For planned operations the input's facts equal the plan's: precheck and evaluate judge the same values."""
    github.add_issue("octo/app", "one", "two")
    cluster_conns = kube(cluster)
    run(settings, tenant, cluster_conns, "kubernetes.apply", {"manifest": deployment()}, dry_run=False)
    cases = [("github.create_issue", gh(github)), ("github.comment_issue", gh(github)),
             ("github.get_file", gh(github)), ("kubernetes.apply", cluster_conns),
             ("kubernetes.scale", cluster_conns), ("kubernetes.get", cluster_conns)]
    for name, conns in cases:
        op = get_operation(name)
        inp = parse_input(op, SAMPLES[name])
        facts = op.facts(conns, inp)
        plan = op.plan(conns, inp)
        assert facts["target"] == plan.target, name
        shared = {k: v for k, v in facts.items() if k != "target" and k in plan.facts}
        assert shared and shared == {k: plan.facts[k] for k in shared}, (name, facts, plan.facts)

"""The policy engine: default deny, each rule names itself, caps hold; property-based over random plans."""

from __future__ import annotations

from hypothesis import given, settings as hsettings, strategies as st

from blocks.policy import OperationPolicy
from tasks.ops.base import Plan


def plan(op: str, mutating: bool = True, **facts) -> Plan:
    return Plan(operation=op, target="t", summary="s", facts=facts, mutating=mutating)


OPEN = OperationPolicy(operations=["github.*", "kubernetes.*", "aws.*"], github_repos=["acme/*"],
                       kubernetes_namespaces=["staging"], kubernetes_kinds=["Deployment"],
                       images=["ghcr.io/acme/*"], aws_regions=["eu-west-1"], aws_buckets=["acme-*"],
                       aws_services=["prod/*"], max_replicas=10, max_scale_step=3, max_issues_per_hour=2,
                       require_approval=["kubernetes.*"])


def test_default_policy_denies_every_mutation_and_allows_reads():
    policy = OperationPolicy()
    denied = policy.evaluate(plan("github.create_issue", repo="acme/app"))
    assert not denied.allowed and denied.rule == "operations"
    assert policy.evaluate(plan("github.search_code", mutating=False)).allowed
    assert not OperationPolicy(allow_read_only=False).evaluate(plan("github.search_code", mutating=False)).allowed


def test_each_denial_names_its_rule():
    cases = {
        "github_repos": plan("github.create_issue", repo="evil/app"),
        "kubernetes_namespaces": plan("kubernetes.apply", namespace="prod", kind="Deployment"),
        "kubernetes_kinds": plan("kubernetes.apply", namespace="staging", kind="ClusterRole"),
        "images": plan("kubernetes.apply", namespace="staging", kind="Deployment", images=["docker.io/x:1"]),
        "max_replicas": plan("kubernetes.scale", namespace="staging", kind="Deployment", replicas=11,
                             current_replicas=10),
        "max_scale_step": plan("kubernetes.scale", namespace="staging", kind="Deployment", replicas=9,
                               current_replicas=2),
        "aws_regions": plan("aws.s3_put_object", region="us-east-1", bucket="acme-x"),
        "aws_buckets": plan("aws.s3_put_object", region="eu-west-1", bucket="other"),
        "aws_services": plan("aws.ecs_update_service", region="eu-west-1", service="dev/api", replicas=1),
    }
    for rule, p in cases.items():
        decision = OPEN.evaluate(p)
        assert not decision.allowed and decision.rule == rule, (rule, decision)
        assert decision.reason


def test_issue_rate_cap_and_approval():
    p = plan("github.create_issue", repo="ACME/app")  # owner/repo match ignores case, like GitHub
    assert OPEN.evaluate(p, recent={"github.create_issue": 1}).allowed
    capped = OPEN.evaluate(p, recent={"github.create_issue": 2})
    assert not capped.allowed and capped.rule == "max_issues_per_hour"
    ok = OPEN.evaluate(plan("kubernetes.scale", namespace="staging", kind="Deployment", replicas=4,
                            current_replicas=2))
    assert ok.allowed and ok.needs_approval


@hsettings(max_examples=300, deadline=None)
@given(op=st.sampled_from(["github.create_issue", "kubernetes.scale", "aws.ecs_update_service", "x.y"]),
       repo=st.text(max_size=20), namespace=st.text(max_size=12), replicas=st.integers(-5, 50),
       current=st.one_of(st.none(), st.integers(0, 50)), region=st.sampled_from(["eu-west-1", "us-east-1", ""]))
def test_property_an_allowed_plan_satisfies_every_rule(op, repo, namespace, replicas, current, region):
    facts = {"repo": repo, "namespace": namespace, "kind": "Deployment", "replicas": replicas,
             "current_replicas": current, "region": region, "service": "prod/api"}
    decision = OPEN.evaluate(plan(op, **facts))
    if decision.allowed:
        assert replicas <= OPEN.max_replicas
        assert current is None or abs(replicas - current) <= OPEN.max_scale_step
        if op.startswith("github"):
            assert repo.lower().startswith("acme/")
        if op.startswith("kubernetes"):
            assert namespace == "staging"
        if op.startswith("aws"):
            assert region == "eu-west-1"
        assert op != "x.y"
    else:
        assert decision.rule and decision.reason
    # the empty policy never allows a mutation
    assert not OperationPolicy().evaluate(plan(op, **facts)).allowed


_maybe = st.one_of(st.none(), st.sampled_from(["acme/app", "evil/app", "staging", "prod", "Deployment", "Secret",
                                               "eu-west-1", "us-east-1", "acme-data", "loot", "prod/api", "db/x"]))


@hsettings(max_examples=400, deadline=None)
@given(op=st.sampled_from(["github.create_issue", "github.get_file", "kubernetes.apply", "kubernetes.scale",
                           "aws.s3_put_object", "aws.ecs_update_service", "x.y"]),
       mutating=st.booleans(), known=st.dictionaries(
           st.sampled_from(["repo", "namespace", "kind", "region", "bucket", "service"]), _maybe, max_size=6),
       live=st.dictionaries(st.sampled_from(["repo", "namespace", "kind", "region", "bucket", "service"]),
                            _maybe.filter(lambda v: v is not None), max_size=6),
       images=st.lists(st.sampled_from(["ghcr.io/acme/web:1", "evil.io/miner:1"]), max_size=2),
       replicas=st.one_of(st.none(), st.integers(0, 20)), current=st.one_of(st.none(), st.integers(0, 20)))
def test_property_a_precheck_denial_is_also_an_evaluation_denial(op, mutating, known, live, images, replicas,
                                                                 current):
    """precheck judges what the input fixes (a fact it does not know is None); the plan then knows at least as
    much, with the same values for what the input fixed. Whatever precheck denies, evaluate denies (by that rule,
    or by an earlier one on a fact only the plan knows) — so the precheck never refuses what the policy would
    allow."""
    facts = {**known, "images": images, "replicas": replicas}
    planned = {**{k: v for k, v in live.items() if known.get(k) is None}, **{k: v for k, v in known.items()
                                                                             if v is not None},
               "images": images, "replicas": replicas, "current_replicas": current}
    first = OPEN.precheck(op, mutating, facts)
    final = OPEN.evaluate(plan(op, mutating, **planned))
    if not first.allowed:
        assert not final.allowed, (first, final)
        assert final.rule == first.rule or any(planned.get(k) is None or known.get(k) is None
                                               for k in ("repo", "namespace", "kind", "region")), (first, final)


def test_precheck_leaves_unknown_facts_to_evaluate_and_names_the_rule():
    assert OPEN.precheck("kubernetes.apply", True, {"kind": "Deployment", "namespace": None}).allowed
    denied = OPEN.precheck("github.create_issue", True, {"repo": "evil/app", "target": "github:evil/app"})
    assert (denied.allowed, denied.rule) == (False, "github_repos")
    assert not OPEN.precheck("kubernetes.scale", True, {"namespace": "staging", "kind": "Deployment",
                                                        "replicas": 11}).allowed
    assert OPEN.precheck("github.get_file", False, {"repo": "evil/app"}).allowed  # reads: allow_read_only

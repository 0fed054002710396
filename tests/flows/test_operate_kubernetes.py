"""The guard on a Kubernetes deploy: policy on namespace, kind, images and replica caps; a stalled rollout is rolled
back and the run fails saying so; audit records it; the cluster token never reaches a sink."""

from __future__ import annotations

import logging

import pytest

from blocks.errors import OperationDenied, RolledBack
from blocks.policy import OperationPolicy
from flows.operate import OperateRequest, run_operation
from tasks.audit import read_audit
from tests.fakes.fixtures import kubernetes_connections

POLICY = OperationPolicy(operations=["kubernetes.*"], kubernetes_namespaces=["default"],
                         kubernetes_kinds=["Deployment"], images=["ghcr.io/acme/*"], max_replicas=6, max_scale_step=2)


def deployment(image="ghcr.io/acme/web:1.0", replicas=2):
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": image}]}}}}


@pytest.fixture
def cluster(cluster):
    """The shared fake Kubernetes (tests.fakes.fixtures) with a canary token."""
    cluster.token = "k8s-CANARY-token-0123456789abcdef"
    return cluster


def run(settings, fake, tenant, operation, arguments, dry_run=False):
    conns = kubernetes_connections(fake)
    request = OperateRequest(operation=operation, arguments=arguments, tenant=tenant, dry_run=dry_run,
                             actor={"agent": "pytest"})
    return run_operation(request, settings, connections=conns, policy=POLICY)


def pool_of(settings):
    from blocks.postgres import PgVectorStore
    return PgVectorStore.from_settings(settings).pool()


def test_deploy_then_stalled_upgrade_rolls_back_and_says_so(settings, cluster, tenant, caplog):
    caplog.set_level(logging.DEBUG)
    args = {"manifest": deployment(), "rollout_timeout_s": 5}
    planned = run(settings, cluster, tenant, "kubernetes.apply", args, dry_run=True)
    assert planned["status"] == "planned" and cluster.get("deployments", "default", "web") is None
    first = run(settings, cluster, tenant, "kubernetes.apply", args)
    assert first["status"] == "succeeded"
    cluster.rollout = "stall"
    upgrade = {"manifest": deployment(image="ghcr.io/acme/web:2.0"), "rollout_timeout_s": 3}
    preview = run(settings, cluster, tenant, "kubernetes.apply", upgrade, dry_run=True)
    assert "ghcr.io/acme/web:2.0" in preview["plan"]["diff"]
    with pytest.raises(RolledBack, match="roll"):
        run(settings, cluster, tenant, "kubernetes.apply", upgrade)
    image = cluster.get("deployments", "default", "web")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/acme/web:1.0"
    audit = read_audit(pool_of(settings), tenant=tenant)
    assert [r["status"] for r in audit] == ["planned", "succeeded", "planned", "failed"]
    assert "RolledBack" in audit[-1]["error"]
    with pool_of(settings).connection() as conn:
        dumped = conn.execute("SELECT string_agg(a::text, ' ') FROM audit_log a").fetchone()[0]
    assert cluster.token not in dumped and cluster.token not in caplog.text


def test_policy_on_images_namespaces_and_scale_steps(settings, cluster, tenant):
    with pytest.raises(OperationDenied, match="images"):
        run(settings, cluster, tenant, "kubernetes.apply", {"manifest": deployment(image="docker.io/evil:1")})
    other = deployment()
    other["metadata"]["namespace"] = "kube-system"
    with pytest.raises(OperationDenied, match="kubernetes_namespaces"):
        run(settings, cluster, tenant, "kubernetes.apply", {"manifest": other})
    run(settings, cluster, tenant, "kubernetes.apply", {"manifest": deployment(), "rollout_timeout_s": 5})
    with pytest.raises(OperationDenied, match="max_scale_step"):
        run(settings, cluster, tenant, "kubernetes.scale", {"namespace": "default", "name": "web", "replicas": 5})
    scaled = run(settings, cluster, tenant, "kubernetes.scale", {"namespace": "default", "name": "web", "replicas": 4})
    assert scaled["status"] == "succeeded"
    assert cluster.get("deployments", "default", "web")["spec"]["replicas"] == 4

"""Kubernetes operations: the real `kubernetes` client (and kubectl) against FakeKubernetes on loopback."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from blocks.errors import (
    AuthFailed,
    ConfigError,
    Conflict,
    InputError,
    InvalidRequest,
    NotFound,
    ProviderTimeout,
    RateLimited,
    RolledBack,
    TransientError,
)
from blocks.kubernetes import KubernetesConnection
from tasks.ops.base import REGISTRY, Connections, parse_input
from tasks.ops.kubernetes import KEY_ANNOTATION, SCALE_ATTEMPTS  # importing it registers kubernetes.*
from tests.conftest import shared_testdata
from tests.fakes import Fault, FakeKubernetes

STALE = ('Operation cannot be fulfilled on deployments.apps "web": the object has been modified; please apply '
         "your changes to the latest version and try again")


@pytest.fixture(scope="module")
def server():
    with FakeKubernetes() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    return server


@pytest.fixture
def conns(fake):
    return Connections(kubernetes=KubernetesConnection(kubeconfig=fake.kubeconfig(), request_timeout=5))


def deployment(image="nginx:1.25.3", replicas=2, name="web"):
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": name, "image": image,
                                                           "ports": [{"containerPort": 80}]}]}}}}


def op_input(operation, /, **arguments):
    op = REGISTRY[f"kubernetes.{operation}"]
    return op, parse_input(op, arguments)


def plan(conns, operation, /, **arguments):
    op, inp = op_input(operation, **arguments)
    return op.plan(conns, inp)


def run(conns, operation, /, key="key-1", verify=True, **arguments):
    op, inp = op_input(operation, **arguments)
    result = op.run(conns, inp, key)
    return result, (op.verify(conns, inp, result) if verify and op.verify else None)


def live(fake, name="web", plural="deployments"):
    return fake.get(plural, "default", name)


def test_apply_creates_and_the_same_apply_again_changes_nothing(fake, conns):
    p = plan(conns, "apply", manifest=deployment())
    assert p.facts == {"namespace": "default", "kind": "Deployment", "name": "web", "api_version": "apps/v1",
                       "images": ["nginx:1.25.3"], "replicas": 2, "current_replicas": None, "exists": False}
    assert fake.count("deployments") == 0 and "+      - image: nginx:1.25.3" in p.diff
    result, status = run(conns, "apply", manifest=deployment())
    assert result["created"] and result["revision"] == 1
    assert status["ready"] and status["reason"] == "Ready"
    obj = live(fake)
    assert obj["metadata"]["annotations"][KEY_ANNOTATION] == "key-1"
    assert [e["manager"] for e in obj["metadata"]["managedFields"] if e["operation"] == "Apply"] == ["devmesh"]
    rv = obj["metadata"]["resourceVersion"]

    again, _ = run(conns, "apply", verify=False, manifest=deployment())
    assert not again["changed"] and live(fake)["metadata"]["resourceVersion"] == rv
    patches = [s for s in fake.requests if s.method == "PATCH"]
    assert {s.headers["content-type"] for s in patches} == {"application/apply-patch+yaml"}
    assert all("fieldManager=devmesh" in s.path for s in patches)


def test_plan_is_a_dry_run_that_diffs_the_image(fake, conns):
    run(conns, "apply", manifest=deployment())
    before, count = live(fake)["metadata"]["resourceVersion"], fake.count()
    p = plan(conns, "apply", manifest=deployment(image="nginx:1.26.0"))
    assert fake.count() == count and live(fake)["metadata"]["resourceVersion"] == before
    assert "dryRun=All" in [s for s in fake.requests if s.method == "PATCH"][-1].path
    assert "-      - image: nginx:1.25.3\n+      - image: nginx:1.26.0\n" in p.diff
    for noise in ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "status:",
                  KEY_ANNOTATION):
        assert noise not in p.diff
    assert p.facts["images"] == ["nginx:1.26.0"] and p.facts["exists"] and p.facts["current_replicas"] == 2
    assert p.mutating and p.request["query"] == {"fieldManager": "devmesh"}


def test_apply_of_the_real_apply_body(fake, conns):
    text = shared_testdata("kubernetes", "deployment.apply-body.yaml").read_text()
    p = plan(conns, "apply", manifest=text)  # YAML text is accepted too
    assert p.facts["images"] == ["nginx:1.23.1"] and p.facts["replicas"] == 2
    result, _ = run(conns, "apply", verify=False, manifest=text)
    obj = fake.get("deployments", "default", "nginx-deployment")
    intent = yaml.safe_load(text)
    container = obj["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"] == intent["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    assert container["terminationMessagePath"] == "/dev/termination-log"  # defaulted, as a server does
    real = json.loads(shared_testdata("kubernetes", "deployment.live-ssa.json").read_text())
    mine = next(e for e in obj["metadata"]["managedFields"] if e["manager"] == "devmesh")
    theirs = next(e for e in real["metadata"]["managedFields"] if e["operation"] == "Apply")
    assert mine.keys() == theirs.keys()
    spec = mine["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert spec.keys() == theirs["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"].keys()


def test_a_field_owned_by_another_manager_is_an_invalid_request_naming_it(fake, conns):
    run(conns, "apply", verify=False, manifest=deployment(), field_manager="helm")
    with pytest.raises(InvalidRequest) as caught:
        run(conns, "apply", verify=False, manifest=deployment(image="nginx:1.26.0"))
    assert '"helm"' in str(caught.value) and '.spec.template.spec.containers[name="web"].image' in str(caught.value)
    assert "force_conflicts" in str(caught.value)
    run(conns, "apply", verify=False, manifest=deployment(image="nginx:1.26.0"), force_conflicts=True)
    assert live(fake)["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.26.0"


def test_conflict_with_a_manager_of_a_real_live_object(fake, conns):
    real = json.loads(shared_testdata("kubernetes", "deployment.live-three-managers.json").read_text())
    fake.load(real)
    manifest = {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": real["metadata"]["name"], "namespace": "default"},
                "spec": {"template": {"spec": {"containers": [{"name": "main-container", "image": "nginx:1.27"}]}}}}
    with pytest.raises(InvalidRequest, match='"argocd-controller"'):
        plan(conns, "apply", manifest=manifest)


def test_status_bodies_have_the_shape_of_real_ones(fake, conns):
    api = conns.client("kubernetes", conns.kubernetes.api_client)
    deployments = "/apis/apps/v1/namespaces/default/deployments"
    run(conns, "apply", verify=False, manifest=deployment(), field_manager="helm")

    def status_of(method, path, body=None, content_type="application/json"):
        with pytest.raises(ApiException) as caught:
            api.call_api(path, method, header_params={"Content-Type": content_type}, body=body,
                         auth_settings=["BearerToken"], response_types_map={200: "object"})
        return json.loads(caught.value.body)

    invalid = {**deployment(name="bad"), "spec": {**deployment()["spec"], "replicas": -1}}
    cases = {
        "status-404-notfound.json": ("GET", f"{deployments}/none", None, None),
        "status-422-invalid.json": ("PATCH", f"{deployments}/bad?fieldManager=x", invalid, "apply-patch+yaml"),
        "status-409-conflict-stale-resourceversion.json": (
            "PATCH", f"{deployments}/web", {"metadata": {"resourceVersion": "1"}}, "merge-patch+json"),
        "status-409-apply-conflict.json": (
            "PATCH", f"{deployments}/web?fieldManager=devmesh", deployment(image="nginx:2"), "apply-patch+yaml"),
    }
    for name, (method, path, body, kind) in cases.items():
        real = json.loads(shared_testdata("kubernetes", name).read_text())
        real = real.get("body") or real["structure"]
        got = status_of(method, path, body, f"application/{kind}" if kind else "application/json")
        assert got.keys() == real.keys(), name
        assert (got["reason"], got["code"], got["status"]) == (real["reason"], real["code"], real["status"]), name
        assert got["details"].keys() - {"group"} <= real["details"].keys(), name
        if "causes" in real["details"]:
            assert {c["reason"] for c in got["details"]["causes"]} == {c["reason"] for c in real["details"]["causes"]}
    assert status_of("PATCH", f"{deployments}/web", {"metadata": {"resourceVersion": "1"}},
                     "application/merge-patch+json")["message"] == STALE


def test_stale_scale_write_is_read_again_and_retried(fake, conns):
    run(conns, "apply", manifest=deployment())
    fake.script(Fault("pass"), Fault.error(409, STALE))  # the GET of the scale passes, its PATCH is stale
    result, checked = run(conns, "scale", namespace="default", name="web", replicas=3)
    assert result["changed"] and checked == {"replicas": 3}
    scale_writes = [s for s in fake.requests if s.method == "PATCH" and "/scale?" in s.path]
    assert len(scale_writes) == 2 and live(fake)["spec"]["replicas"] == 3
    p = plan(conns, "scale", namespace="default", name="web", replicas=5)
    assert p.facts == {"namespace": "default", "kind": "Deployment", "name": "web", "replicas": 5,
                       "current_replicas": 3}
    again, _ = run(conns, "scale", verify=False, namespace="default", name="web", replicas=3)
    assert not again["changed"]


def test_scale_that_never_settles_raises_conflict(fake, conns):
    run(conns, "apply", verify=False, manifest=deployment())
    fake.stale_writes(SCALE_ATTEMPTS)  # another writer wins every time
    with pytest.raises(Conflict, match="stale"):
        run(conns, "scale", namespace="default", name="web", replicas=4)
    assert live(fake)["spec"]["replicas"] == 2


def test_invalid_object_is_an_invalid_request_with_its_causes(fake, conns):
    manifest = deployment()
    manifest["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    with pytest.raises(InvalidRequest) as caught:
        plan(conns, "apply", manifest=manifest)
    assert "HTTP 422" in str(caught.value) and "spec.template.metadata.labels" in str(caught.value)
    assert fake.count("deployments") == 0


def test_stalled_rollout_rolls_back_to_the_previous_revision(fake, conns):
    run(conns, "apply", manifest=deployment(image="nginx:1.25.3"))
    fake.rollout = "stall"
    with pytest.raises(RolledBack) as caught:
        run(conns, "apply", key="key-2", manifest=deployment(image="nginx:broken"))
    message = str(caught.value)
    assert "ProgressDeadlineExceeded" in message and "rolled back to revision 1 (nginx:1.25.3)" in message
    obj = live(fake)
    assert obj["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25.3"
    assert obj["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"  # revision 1 came back as 3
    fake.rollout = "succeed"
    again, status = run(conns, "apply", key="key-3", manifest=deployment(image="nginx:1.26.0"))  # no conflict
    assert status["ready"] and status["images"] == ["nginx:1.26.0"]


def test_first_deploy_that_stalls_says_there_is_nothing_to_roll_back_to(fake, conns):
    fake.rollout = "stall"
    with pytest.raises(RolledBack, match="no previous revision"):
        run(conns, "apply", manifest=deployment())
    assert live(fake) is not None  # not deleted


def test_rollout_that_times_out_rolls_back(fake, conns):
    run(conns, "apply", manifest=deployment())
    fake.ready_after_gets = 10_000
    with pytest.raises(RolledBack, match=r"\(Timeout: not ready after 0.3 s: .*\); rolled back to revision 1 "):
        run(conns, "apply", key="key-2", manifest=deployment(image="nginx:1.26.0"), rollout_timeout_s=0.3)


def test_rollback_operation(fake, conns):
    run(conns, "apply", manifest=deployment(image="nginx:1.25.3"))
    run(conns, "apply", key="key-2", manifest=deployment(image="nginx:1.26.0"))
    p = plan(conns, "rollback", namespace="default", name="web")
    assert (p.facts["revision"], p.facts["to_revision"], p.facts["images"]) == (2, 1, ["nginx:1.25.3"])
    assert "-      - image: nginx:1.26.0\n+      - image: nginx:1.25.3\n" in p.diff
    assert REGISTRY["kubernetes.rollback"].mutating and not REGISTRY["kubernetes.rollback"].destructive
    result, checked = run(conns, "rollback", key="undo-1", namespace="default", name="web")
    assert result["rolled_back_to"] == 1 and checked["images"] == ["nginx:1.25.3"]
    again, _ = run(conns, "rollback", key="undo-1", namespace="default", name="web")  # a retry does not flip back
    assert not again["changed"] and live(fake)["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25.3"
    with pytest.raises(InputError, match="not in the rollout history"):
        plan(conns, "rollback", namespace="default", name="web", to_revision=99)


def test_rollout_status_ready_stalled_and_timed_out(fake, conns):
    run(conns, "apply", verify=False, manifest=deployment())
    status, _ = run(conns, "rollout_status", namespace="default", name="web", timeout_s=5)
    assert status["ready"] and status["revision"] == 1 and status["available_replicas"] == 2
    fake.rollout = "stall"
    run(conns, "apply", verify=False, key="key-2", manifest=deployment(image="nginx:1.26.0"))
    status, _ = run(conns, "rollout_status", namespace="default", name="web", timeout_s=5)
    assert not status["ready"] and status["reason"] == "ProgressDeadlineExceeded"
    assert "has timed out progressing" in status["message"]
    fake.rollout, fake.ready_after_gets = "succeed", 10_000
    run(conns, "apply", verify=False, key="key-3", manifest=deployment(image="nginx:1.27.0"))
    status, _ = run(conns, "rollout_status", namespace="default", name="web", timeout_s=0.2)
    assert not status["ready"] and status["reason"] == "Timeout"
    fake.ready_after_s = 0.3  # or settled by time
    status, _ = run(conns, "rollout_status", namespace="default", name="web", timeout_s=5)
    assert status["ready"] and status["images"] == ["nginx:1.27.0"]
    assert plan(conns, "rollout_status", namespace="default", name="web").mutating is False


def test_get_and_kinds(fake, conns):
    run(conns, "apply", verify=False, manifest={"apiVersion": "v1", "kind": "ConfigMap",
                                                "metadata": {"name": "cfg"}, "data": {"a": "1"}})
    got, _ = run(conns, "get", api_version="v1", kind="ConfigMap", namespace="default", name="cfg")
    assert got["object"]["data"] == {"a": "1"} and "managedFields" not in got["object"]["metadata"]
    with pytest.raises(NotFound):
        run(conns, "get", api_version="v1", kind="ConfigMap", namespace="default", name="missing")
    with pytest.raises(InputError, match="not served"):
        plan(conns, "apply", manifest={"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}})
    with pytest.raises(InputError, match="Secrets"):
        plan(conns, "apply", manifest={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})
    # a kind outside the built-in three, found through discovery
    p = plan(conns, "get", api_version="apps/v1", kind="ReplicaSet", namespace="default", name="x")
    assert p.request["path"] == "/apis/apps/v1/namespaces/default/replicasets/x"
    with pytest.raises(InputError, match="one object"):
        op_input("apply", manifest="a: 1\n---\nb: 2\n")


def test_bad_token_is_auth_failed_and_no_token_is_ever_shown(fake, conns):
    config = fake.kubeconfig()
    config["users"][0]["user"]["token"] = "wrong-token-0123456789"
    bad = Connections(kubernetes=KubernetesConnection(kubeconfig=config))
    with pytest.raises(AuthFailed) as caught:
        run(bad, "get", api_version="v1", kind="ConfigMap", namespace="default", name="x")
    assert "wrong-token-0123456789" not in str(caught.value) and "401" in str(caught.value)
    fake.script(Fault.error(403, f"token {fake.token} may not get configmaps"))  # a webhook that echoes it
    with pytest.raises(AuthFailed) as caught:
        run(conns, "get", api_version="v1", kind="ConfigMap", namespace="default", name="x")
    assert fake.token not in str(caught.value) and "***" in str(caught.value)
    assert fake.token not in repr(conns.kubernetes) and fake.token not in str(conns.kubernetes)


def test_transient_failures(fake, conns):
    args = {"api_version": "v1", "kind": "ConfigMap", "namespace": "default", "name": "x"}
    fake.script(Fault.error(429, "slow down", headers={"Retry-After": "3"}))
    with pytest.raises(RateLimited) as caught:
        run(conns, "get", **args)
    assert caught.value.retry_after == 3
    fake.script(Fault.error(503, "etcd leader changed"))
    with pytest.raises(TransientError):
        run(conns, "get", **args)
    slow = Connections(kubernetes=KubernetesConnection(kubeconfig=fake.kubeconfig(), request_timeout=0.2))
    fake.script(Fault.slow(1.0))
    with pytest.raises(ProviderTimeout):
        run(slow, "get", **args)


def test_connection_block(fake, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="nothing to connect to"):
        KubernetesConnection().api_client()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="Service host/port is not set"):
        KubernetesConnection(in_cluster=True).api_client()
    config = fake.kubeconfig()
    ca = base64.b64decode(config["clusters"][0]["cluster"].pop("certificate-authority-data"))
    (tmp_path / "ca.crt").write_bytes(ca)
    config["clusters"][0]["cluster"]["certificate-authority"] = "ca.crt"  # relative to the file, as kubectl reads it
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    conn = KubernetesConnection.from_kubeconfig_file(path)
    assert conn.kubeconfig.get_secret_value()["clusters"][0]["cluster"]["certificate-authority-data"]
    got, _ = run(Connections(kubernetes=conn), "get", api_version="v1", kind="Namespace", name="default")
    assert got["object"]["metadata"]["name"] == "default"
    with pytest.raises(ConfigError, match="either kubeconfig or in_cluster"):
        KubernetesConnection(kubeconfig=fake.kubeconfig(), in_cluster=True).api_client()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed on this machine")
def test_kubectl_apply_get_scale_and_rollout_status_against_the_fake(fake, conns, tmp_path):
    config = fake.kubeconfig_file(tmp_path / "kubeconfig")
    env = {**os.environ, "HOME": str(tmp_path)}  # kubectl's discovery cache goes under the test's directory

    def kubectl(*args):
        done = subprocess.run(["kubectl", "--kubeconfig", str(config), *args], capture_output=True, text=True,
                              env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    (tmp_path / "web.yaml").write_text(yaml.safe_dump(deployment()))
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", str(tmp_path / "web.yaml"))
    obj = json.loads(kubectl("get", "deployment", "web", "-o", "json", "--show-managed-fields"))
    assert obj["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25.3"
    assert [e["manager"] for e in obj["metadata"]["managedFields"] if e["operation"] == "Apply"] == ["kubectl"]
    assert "scaled" in kubectl("scale", "deployment/web", "--replicas=3")
    assert "successfully rolled out" in kubectl("rollout", "status", "deployment/web", "--timeout=20s")
    got, _ = run(conns, "get", api_version="apps/v1", kind="Deployment", namespace="default", name="web")
    assert got["object"]["spec"]["replicas"] == 3
    with pytest.raises(InvalidRequest, match='"kubectl"'):  # devmesh would change kubectl's image: a conflict
        plan(conns, "apply", manifest=deployment(image="nginx:1.26.0"))

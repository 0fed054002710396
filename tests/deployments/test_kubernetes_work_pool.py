"""deploy/kubernetes/work-pool.json, the base job template of a Kubernetes work pool: job variables validated by
its own JSON schema and rendered by Prefect's own job-template code (BaseJobConfiguration.from_template_and_values,
what a worker runs for each flow run), then read back as a Kubernetes Job by the kubernetes client's models. No
cluster runs here: the rendered manifest is what the test checks."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
from kubernetes.client import ApiClient, V1Job
from prefect.workers.base import BaseJobConfiguration

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TEMPLATE = ROOT / "deploy" / "kubernetes" / "work-pool.json"
IMAGE = "registry.example.com/devmesh:1.0.0"


class KubernetesJobConfiguration(BaseJobConfiguration):
    """The fields prefect-kubernetes' worker adds (its package is not a dependency here): enough to render."""

    namespace: str
    job_manifest: dict


class _Response:  # what ApiClient.deserialize reads
    def __init__(self, body: dict):
        self.data = json.dumps(body)


def _render(values: dict) -> KubernetesJobConfiguration:
    template = json.loads(TEMPLATE.read_text())
    jsonschema.validate(values, template["variables"])
    return asyncio.run(KubernetesJobConfiguration.from_template_and_values(template, values))


def test_the_job_runs_the_image_with_plain_env_and_secrets_from_kubernetes_secrets(prefect_harness):
    config = _render({"image": IMAGE, "name": "ingest-docs-1", "command": "prefect flow-run execute",
                      "env": {"DEVMESH_TENANT": "acme"}, "namespace": "agents"})
    manifest = config.job_manifest
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert manifest["metadata"]["namespace"] == config.namespace == "agents"
    assert manifest["metadata"]["generateName"] == "ingest-docs-1-"
    assert container["image"] == IMAGE and container["args"] == "prefect flow-run execute"
    assert config.env == {"DEVMESH_EMBEDDER": "local", "DEVMESH_HOME": "/tmp/devmesh", "HF_HUB_OFFLINE": "1",
                          "DEVMESH_TENANT": "acme"}
    assert container["envFrom"] == [{"secretRef": {"name": "devmesh-database"}},
                                    {"secretRef": {"name": "devmesh-prefect-api"}}]
    assert not any(k in config.env for k in ("DEVMESH_DATABASE_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"))
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 3600 and manifest["spec"]["backoffLimit"] == 0
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}

    # the worker turns the env mapping into the container's list (prefect-kubernetes does this at submission)
    container["env"] = [{"name": k, "value": v} for k, v in config.env.items()]
    job = ApiClient().deserialize(_Response(manifest), V1Job)
    pod = job.spec.template.spec
    assert job.kind == "Job" and pod.restart_policy == "Never" and pod.security_context.run_as_non_root
    assert [e.secret_ref.name for e in pod.containers[0].env_from] == ["devmesh-database", "devmesh-prefect-api"]
    assert {e.name: e.value for e in pod.containers[0].env}["DEVMESH_TENANT"] == "acme"


def test_job_variables_choose_the_secrets_and_the_image_is_required(prefect_harness):
    config = _render({"image": IMAGE, "database_secret": "prod-db", "prefect_api_secret": "prod-prefect",
                      "memory": "4Gi"})
    container = config.job_manifest["spec"]["template"]["spec"]["containers"][0]
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == ["prod-db", "prod-prefect"]
    assert container["resources"]["limits"]["memory"] == "4Gi"
    with pytest.raises(jsonschema.ValidationError, match="'image' is a required property"):
        _render({"namespace": "agents"})

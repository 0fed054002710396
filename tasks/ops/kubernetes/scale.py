"""kubernetes.scale: a Deployment's replicas, set through its scale subresource.

plan    reads the scale: from how many to how many
run     writes the replicas under the resourceVersion read (a stale write is read again, SCALE_ATTEMPTS times);
        already at the count: nothing is written, so a repeated run changes nothing
verify  reads the replicas back (another writer, such as an autoscaler, is a Conflict)
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field

from blocks.errors import Conflict
from tasks.ops.base import Connections, OpInput, Operation, Plan, register
from tasks.ops.kubernetes.client import MERGE_PATCH, KubeClient
from tasks.ops.kubernetes.objects import Target, deployment_facts, locate_deployment

__all__ = ["SCALE", "SCALE_ATTEMPTS", "ScaleInput"]

SCALE_ATTEMPTS = 5


class ScaleInput(OpInput):
    """Replicas of a Deployment, set through its scale subresource."""

    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)
    replicas: int = Field(ge=0, le=10_000)
    kind: Literal["Deployment"] = "Deployment"


def _scale_path(kube: KubeClient, inp: ScaleInput) -> tuple[Target, str]:
    target = locate_deployment(kube, inp.namespace, inp.name)
    return target, f"{target.path}/scale"


def plan_scale(conns: Connections, inp: ScaleInput) -> Plan:
    kube = KubeClient(conns, "kubernetes.scale")
    target, path = _scale_path(kube, inp)
    current = kube.call("GET", path)["spec"].get("replicas", 0)
    return Plan(operation="kubernetes.scale", target=f"kubernetes:{target.label}",
                summary=f"scale {target.label} from {current} to {inp.replicas} replicas",
                request={"method": "PATCH", "path": path, "content_type": MERGE_PATCH,
                         "body": {"metadata": {"resourceVersion": "<as read>"}, "spec": {"replicas": inp.replicas}}},
                diff=None if current == inp.replicas else
                f"--- live/{target.label}\n+++ planned/{target.label}\n@@ -1 +1 @@\n"
                f"-spec.replicas: {current}\n+spec.replicas: {inp.replicas}\n",
                facts={"namespace": target.namespace, "kind": target.kind, "name": target.name,
                       "replicas": inp.replicas, "current_replicas": current})


def run_scale(conns: Connections, inp: ScaleInput, key: str) -> dict[str, Any]:
    """Read the scale, write it back with the new replicas under that resourceVersion; on a stale 409 read again
    (up to SCALE_ATTEMPTS times). Already at the count: nothing is written."""
    kube = KubeClient(conns, "kubernetes.scale")
    target, path = _scale_path(kube, inp)
    for attempt in range(SCALE_ATTEMPTS):
        scale = kube.call("GET", path)
        current = scale["spec"].get("replicas", 0)
        result = {"namespace": target.namespace, "kind": target.kind, "name": target.name,
                  "replicas": inp.replicas, "previous_replicas": current}
        if current == inp.replicas:
            return {**result, "changed": False}
        body = {"metadata": {"resourceVersion": scale["metadata"]["resourceVersion"]},
                "spec": {"replicas": inp.replicas}}
        try:
            done = kube.call("PATCH", path, {"fieldManager": "devmesh"}, body, MERGE_PATCH)
        except Conflict:
            time.sleep(0.02 * 2**attempt)
            continue
        return {**result, "changed": True, "resource_version": done["metadata"].get("resourceVersion")}
    raise kube.fail(Conflict, f"{target.label} kept changing: {SCALE_ATTEMPTS} writes of its scale were stale")


def verify_scale(conns: Connections, inp: ScaleInput, result: dict[str, Any]) -> dict[str, Any]:
    kube = KubeClient(conns, "kubernetes.scale")
    target, path = _scale_path(kube, inp)
    replicas = kube.call("GET", path)["spec"].get("replicas", 0)
    if replicas != inp.replicas:
        raise kube.fail(Conflict, f"{target.label} reads back {replicas} replicas, not {inp.replicas} "
                        "(another writer, e.g. an autoscaler?)")
    return {"replicas": replicas}


def scale_facts(conns: Connections, inp: ScaleInput) -> dict[str, Any]:
    return {**deployment_facts(conns, inp), "replicas": inp.replicas}


SCALE = register(Operation(
    "kubernetes.scale", "Set a Deployment's replicas through its scale subresource.", ScaleInput,
    plan=plan_scale, run=run_scale, verify=verify_scale, facts=scale_facts))

"""kubernetes.get: read one object (without managedFields); plan and run read only."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tasks.ops.base import Connections, OpInput, Operation, Plan, register
from tasks.ops.kubernetes.client import KubeClient
from tasks.ops.kubernetes.objects import locate, object_facts, read_plan

__all__ = ["GET", "GetInput"]


class GetInput(OpInput):
    """One object to read."""

    api_version: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    namespace: str | None = Field(None, description="For namespaced kinds; 'default' if empty.")
    name: str = Field(min_length=1)


def plan_get(conns: Connections, inp: GetInput) -> Plan:
    target = locate(KubeClient(conns, "kubernetes.get"), inp.api_version, inp.kind, inp.namespace, inp.name)
    return read_plan("kubernetes.get", target, f"read {target.label}")


def run_get(conns: Connections, inp: GetInput, key: str) -> dict[str, Any]:
    kube = KubeClient(conns, "kubernetes.get")
    obj = kube.call("GET", locate(kube, inp.api_version, inp.kind, inp.namespace, inp.name).path)
    obj.get("metadata", {}).pop("managedFields", None)
    return {"object": obj}


def get_facts(conns: Connections, inp: GetInput) -> dict[str, Any]:
    return object_facts(inp.api_version, inp.kind, inp.name, inp.namespace)


GET = register(Operation(
    "kubernetes.get", "Read one object (without managedFields).", GetInput,
    plan=plan_get, run=run_get, mutating=False, facts=get_facts))

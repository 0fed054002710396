"""Kubernetes objects as the operations see them: where an object lives (`Target`, found by `locate`), what it
holds (images, replicas, revision, the idempotency-key annotation), its diff as YAML, and the policy facts its
input fixes before anything is read (`object_facts`)."""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from typing import Any

import yaml

from blocks.errors import InputError
from tasks.ops.base import Plan
from tasks.ops.kubernetes.client import KubeClient

__all__ = ["KEY_ANNOTATION", "KNOWN_KINDS", "REVISION", "SERVER_SET", "Target", "annotation_of", "apply_query",
           "deployment_facts", "images_of", "known_namespace", "locate", "locate_deployment", "object_facts",
           "read_plan", "replicas_of", "revision_of", "without_server_fields", "yaml_diff"]

KEY_ANNOTATION = "devmesh.dev/idempotency-key"
REVISION = "deployment.kubernetes.io/revision"
KNOWN_KINDS = {("apps/v1", "Deployment"): ("deployments", True), ("v1", "ConfigMap"): ("configmaps", True),
               ("v1", "Service"): ("services", True)}
SERVER_SET = ("managedFields", "resourceVersion", "generation", "uid", "creationTimestamp")


@dataclass(frozen=True)
class Target:
    api_version: str
    kind: str
    name: str
    namespace: str | None  # None: cluster-scoped
    path: str

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    def facts(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "kind": self.kind, "name": self.name, "api_version": self.api_version}


def locate(kube: KubeClient, api_version: str, kind: str, namespace: str | None, name: str) -> Target:
    """Where the object lives: the known kinds directly, others from the server's discovery."""
    if kind == "Secret":
        raise InputError("Secrets are not handled by devmesh operations (their data would reach plans and audit)",
                         item=name)
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    known = KNOWN_KINDS.get((api_version, kind))
    if known is None:
        listing = kube.get(base) or {}
        found = [(r["name"], bool(r.get("namespaced"))) for r in listing.get("resources", [])
                 if r.get("kind") == kind and "/" not in r.get("name", "")]
        if not found:
            raise InputError(f"kind {kind} is not served under {api_version} (server discovery)", item=name)
        known = found[0]
    plural, namespaced = known
    namespace = (namespace or "default") if namespaced else None
    scope = f"/namespaces/{namespace}" if namespaced else ""
    return Target(api_version, kind, name, namespace, f"{base}{scope}/{plural}/{name}")


def locate_deployment(kube: KubeClient, namespace: str, name: str) -> Target:
    return locate(kube, "apps/v1", "Deployment", namespace, name)


def annotation_of(obj: dict | None, key: str) -> str | None:
    return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(key)


def revision_of(obj: dict | None) -> int | None:
    value = annotation_of(obj, REVISION)
    return int(value) if value and value.isdigit() else None


def images_of(obj: dict | None) -> list[str]:
    """Every container and initContainer image of the object's spec, in order, once each."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("containers", "initContainers") and isinstance(item, list):
                    found.extend(c["image"] for c in item if isinstance(c, dict) and c.get("image"))
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk((obj or {}).get("spec"))
    return list(dict.fromkeys(found))


def replicas_of(obj: dict | None) -> int | None:
    spec = (obj or {}).get("spec") or {}
    return spec.get("replicas") if isinstance(spec.get("replicas"), int) else None


def without_server_fields(obj: dict | None) -> dict | None:
    """The object without what the server keeps for itself: managedFields, resourceVersion, generation, uid,
    creationTimestamp and status."""
    if obj is None:
        return None
    out = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in out.get("metadata", {}).items() if k not in SERVER_SET}
    return out


def yaml_diff(before: dict | None, after: dict | None, label: str) -> str:
    def lines(obj: dict | None) -> list[str]:
        if obj is None:
            return []
        return yaml.safe_dump(without_server_fields(obj), sort_keys=True).splitlines(keepends=True)

    return "".join(difflib.unified_diff(lines(before), lines(after), f"live/{label}", f"applied/{label}"))


def apply_query(field_manager: str, force: bool) -> dict[str, str]:
    return {"fieldManager": field_manager, **({"force": "true"} if force else {})}


def read_plan(operation: str, target: Target, summary: str) -> Plan:
    return Plan(operation=operation, target=f"kubernetes:{target.label}", summary=summary, mutating=False,
                request={"method": "GET", "path": target.path}, facts=target.facts())


def known_namespace(api_version: str, kind: str, namespace: str | None) -> str | None:
    """The namespace an object will live in, when the input decides it: given, or 'default' for a known namespaced
    kind; None when the server's discovery decides (an unknown kind may be cluster-scoped)."""
    known = KNOWN_KINDS.get((api_version, kind))
    if known is not None:
        return (namespace or "default") if known[1] else None
    return namespace


def object_facts(api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any]:
    namespace = known_namespace(api_version, kind, namespace)
    label = f"{namespace}/{kind}/{name}" if namespace else f"{kind}/{name}"
    return {"api_version": api_version, "kind": kind, "name": name, "namespace": namespace,
            "target": f"kubernetes:{label}"}


def deployment_facts(conns, inp: Any) -> dict[str, Any]:
    """The facts of an operation on one Deployment (`inp.namespace`, `inp.name`)."""
    return object_facts("apps/v1", "Deployment", inp.name, inp.namespace)

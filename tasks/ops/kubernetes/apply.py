"""kubernetes.apply: server-side apply of one object (any kind the server serves, Secrets refused).

plan    a server-side dry run (dryRun=All) and its diff against the live object
run     the apply, with the idempotency key in the annotation; applying the same body again changes nothing
verify  a Deployment: wait for its rollout; when it fails, roll back to the previous revision and raise RolledBack
        (other kinds: read back)
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from blocks.errors import NotFound, RolledBack
from tasks.ops.base import Connections, OpInput, Operation, Plan, register
from tasks.ops.kubernetes.client import APPLY_PATCH, KubeClient
from tasks.ops.kubernetes.objects import (
    KEY_ANNOTATION, SERVER_SET, Target, annotation_of, apply_query, images_of, locate, object_facts, replicas_of,
    revision_of, yaml_diff,
)
from tasks.ops.kubernetes.rollout import revision_history, rollback_body, wait_rollout

__all__ = ["APPLY", "ApplyInput"]


class ApplyInput(OpInput):
    """One object to apply server-side."""

    manifest: dict[str, Any] = Field(description="One Kubernetes object, as a dict or YAML text.")
    namespace: str | None = Field(None, description="Defaults to the manifest's namespace, then 'default'.")
    field_manager: str = Field("devmesh", min_length=1, max_length=128)
    force_conflicts: bool = Field(False, description="Take over fields another field manager owns.")
    rollout_timeout_s: float = Field(120, gt=0, le=3600)
    wait: bool = Field(True, description="verify waits for the rollout (Deployments) and rolls back on failure.")

    @field_validator("manifest", mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                docs = [doc for doc in yaml.safe_load_all(value) if doc is not None]
            except yaml.YAMLError as exc:
                raise ValueError(f"manifest is not YAML: {str(exc)[:200]}") from None
            if len(docs) != 1:
                raise ValueError(f"manifest must hold one object, found {len(docs)}")
            return docs[0]
        return value

    @model_validator(mode="after")
    def _one_object(self) -> ApplyInput:
        meta = self.manifest.get("metadata")
        if not (self.manifest.get("apiVersion") and self.manifest.get("kind") and isinstance(meta, dict)
                and meta.get("name")):
            raise ValueError("manifest needs apiVersion, kind and metadata.name")
        if self.namespace and meta.get("namespace") and self.namespace != meta["namespace"]:
            raise ValueError(f"namespace {self.namespace!r} differs from the manifest's {meta['namespace']!r}")
        self.namespace = self.namespace or meta.get("namespace")
        return self


def _apply_target(kube: KubeClient, inp: ApplyInput) -> Target:
    m = inp.manifest
    return locate(kube, m["apiVersion"], m["kind"], inp.namespace, m["metadata"]["name"])


def _intent(inp: ApplyInput, target: Target, key: str | None) -> dict:
    """The apply body: the manifest without server-set fields, in its namespace, with the key annotation."""
    body = copy.deepcopy(inp.manifest)
    body.pop("status", None)
    meta = body["metadata"] = {k: v for k, v in body["metadata"].items() if k not in SERVER_SET}
    if target.namespace:
        meta["namespace"] = target.namespace
    if key:
        meta["annotations"] = {**(meta.get("annotations") or {}), KEY_ANNOTATION: key}
    return body


def plan_apply(conns: Connections, inp: ApplyInput) -> Plan:
    kube = KubeClient(conns, "kubernetes.apply")
    target = _apply_target(kube, inp)
    live = kube.get(target.path)
    query = apply_query(inp.field_manager, inp.force_conflicts)
    # the live key (if any) is sent back, so the dry run does not show its removal as a change
    dry = kube.call("PATCH", target.path, {**query, "dryRun": "All"},
                    _intent(inp, target, annotation_of(live, KEY_ANNOTATION)), APPLY_PATCH)
    diff = yaml_diff(live, dry, target.label)
    images = images_of(dry)
    verb = "create" if live is None else ("update" if diff else "no change to")
    detail = ", ".join(filter(None, [", ".join(images), f"{replicas_of(dry)} replicas" if replicas_of(dry) is not None
                                     else ""]))
    return Plan(operation="kubernetes.apply", target=f"kubernetes:{target.label}",
                summary=f"server-side apply: {verb} {target.label}" + (f" ({detail})" if detail else ""),
                request={"method": "PATCH", "path": target.path, "query": query, "content_type": APPLY_PATCH,
                         "body": _intent(inp, target, None),
                         "run_adds_annotation": {KEY_ANNOTATION: "<idempotency key>"}},
                diff=diff or None,
                facts={**target.facts(), "images": images, "replicas": replicas_of(dry),
                       "current_replicas": replicas_of(live), "exists": live is not None})


def run_apply(conns: Connections, inp: ApplyInput, key: str) -> dict[str, Any]:
    kube = KubeClient(conns, "kubernetes.apply")
    target = _apply_target(kube, inp)
    live = kube.get(target.path)
    applied = kube.call("PATCH", target.path, apply_query(inp.field_manager, inp.force_conflicts),
                        _intent(inp, target, key), APPLY_PATCH)
    rv = applied["metadata"].get("resourceVersion")
    return {**target.facts(), "key": key, "created": live is None,
            "changed": live is None or live["metadata"].get("resourceVersion") != rv, "resource_version": rv,
            "generation": applied["metadata"].get("generation"), "revision": revision_of(applied),
            "previous_revision": revision_of(live), "images": images_of(applied)}


def verify_apply(conns: Connections, inp: ApplyInput, result: dict[str, Any]) -> dict[str, Any] | None:
    """Deployments: wait for the rollout; when it fails, roll back to the previous revision and raise RolledBack."""
    if not inp.wait:
        return None
    kube = KubeClient(conns, "kubernetes.apply")
    target = _apply_target(kube, inp)
    if (target.api_version, target.kind) != ("apps/v1", "Deployment"):
        obj = kube.get(target.path)
        if obj is None:
            raise kube.fail(NotFound, f"{target.label} is gone after the apply")
        return {"exists": True, "resource_version": obj["metadata"].get("resourceVersion")}
    rollback_key = f"{result.get('key')}/rollback"
    if annotation_of(kube.get(target.path), KEY_ANNOTATION) == rollback_key:  # a retried verify: it happened
        raise kube.fail(RolledBack, f"{target.label} was rolled back by an earlier verify of this deploy")
    state = wait_rollout(kube, target, inp.rollout_timeout_s)
    if state["ready"]:
        return state
    why = f"{target.label} did not become ready ({state['reason']}: {state['message']})"
    dep = kube.get(target.path) or {}
    history = revision_history(kube, target, dep)
    current = revision_of(dep) or 0
    previous = max((r for r in history if r < current), default=None)
    if previous is None:
        raise kube.fail(RolledBack, f"{why}; revision {current} is its first: there is no previous revision to "
                        "roll back to, and it was left in place (not deleted)")
    body = rollback_body(dep, history[previous], inp.field_manager, rollback_key)
    kube.call("PATCH", target.path, apply_query(inp.field_manager, True), body, APPLY_PATCH)
    raise kube.fail(RolledBack, f"{why}; rolled back to revision {previous} "
                    f"({', '.join(images_of(history[previous]))})")


def apply_facts(conns: Connections, inp: ApplyInput) -> dict[str, Any]:
    m = inp.manifest
    return {**object_facts(m["apiVersion"], m["kind"], m["metadata"]["name"], inp.namespace),
            "images": images_of(m), "replicas": replicas_of(m)}


APPLY = register(Operation(
    "kubernetes.apply", "Server-side apply one object; verify waits for a Deployment's rollout and rolls back to "
    "the previous revision if it fails.", ApplyInput,
    plan=plan_apply, run=run_apply, verify=verify_apply, facts=apply_facts))

"""A Deployment's rollout: kubernetes.rollout_status (wait until ready, stalled or timed out) and
kubernetes.rollback (restore the pod template of an earlier revision, like `kubectl rollout undo`).

rollout_status  plan: the GET it makes; run: poll until ready, ProgressDeadlineExceeded or the timeout
rollback        plan: a server-side dry run of the restoring apply and its diff; run: the apply, once per key
                (a second "undo" under the same key would flip back); verify: the images read back
The rollout helpers (`wait_rollout`, `revision_history`, `rollback_body`) also serve kubernetes.apply's verify.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

from pydantic import Field

from blocks.errors import Conflict, InputError, NotFound
from tasks.ops.base import Connections, OpInput, Operation, Plan, register
from tasks.ops.kubernetes.client import APPLY_PATCH, KubeClient
from tasks.ops.kubernetes.objects import (
    KEY_ANNOTATION, Target, annotation_of, apply_query, deployment_facts, images_of, locate_deployment, read_plan,
    replicas_of, revision_of, yaml_diff,
)

__all__ = ["ROLLBACK", "ROLLOUT_STATUS", "RollbackInput", "RolloutStatusInput", "revision_history", "rollback_body",
           "rollout_state", "wait_rollout"]


# ---- rollout status ----

def rollout_state(dep: dict) -> dict[str, Any]:
    """The rollout as `kubectl rollout status` judges it."""
    meta, spec, status = dep["metadata"], dep.get("spec") or {}, dep.get("status") or {}
    want = spec.get("replicas", 1)
    updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    state = {"ready": False, "revision": revision_of(dep), "generation": meta.get("generation"),
             "observed_generation": status.get("observedGeneration"), "replicas": want,
             "updated_replicas": updated, "ready_replicas": status.get("readyReplicas", 0),
             "available_replicas": available, "images": images_of(dep)}
    progressing = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {})
    if (status.get("observedGeneration") or 0) < (meta.get("generation") or 0):
        return {**state, "reason": "Waiting", "message": "the spec update is not observed yet"}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return {**state, "reason": "ProgressDeadlineExceeded", "message": progressing.get("message", "")}
    if updated < want:
        return {**state, "reason": "Progressing", "message": f"{updated} of {want} new replicas updated"}
    if status.get("replicas", 0) > updated:
        return {**state, "reason": "Progressing",
                "message": f"{status['replicas'] - updated} old replicas pending termination"}
    if available < updated:
        return {**state, "reason": "Progressing", "message": f"{available} of {updated} updated replicas available"}
    return {**state, "ready": True, "reason": "Ready", "message": "successfully rolled out"}


def wait_rollout(kube: KubeClient, target: Target, timeout_s: float) -> dict[str, Any]:
    """Poll (0.1 s doubling to 2 s) until ready, ProgressDeadlineExceeded, or `timeout_s` (reason "Timeout")."""
    deadline, delay = time.monotonic() + timeout_s, 0.1
    while True:
        dep = kube.get(target.path)
        if dep is None:
            raise kube.fail(NotFound, f"deployment {target.label} not found")
        state = rollout_state(dep)
        left = deadline - time.monotonic()
        if state["ready"] or state["reason"] == "ProgressDeadlineExceeded":
            return state
        if left <= 0:
            return {**state, "reason": "Timeout", "message": f"not ready after {timeout_s:g} s: {state['message']}"}
        time.sleep(min(delay, left))
        delay = min(delay * 2, 2.0)


class RolloutStatusInput(OpInput):
    """A Deployment whose rollout to wait for."""

    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)
    timeout_s: float = Field(60, ge=0, le=3600)


def plan_rollout_status(conns: Connections, inp: RolloutStatusInput) -> Plan:
    target = locate_deployment(KubeClient(conns, "kubernetes.rollout_status"), inp.namespace, inp.name)
    return read_plan("kubernetes.rollout_status", target,
                      f"wait up to {inp.timeout_s:g} s for the rollout of {target.label}")


def run_rollout_status(conns: Connections, inp: RolloutStatusInput, key: str) -> dict[str, Any]:
    kube = KubeClient(conns, "kubernetes.rollout_status")
    return wait_rollout(kube, locate_deployment(kube, inp.namespace, inp.name), inp.timeout_s)


# ---- rollback ----

def revision_history(kube: KubeClient, target: Target, dep: dict) -> dict[int, dict]:
    """The Deployment's ReplicaSets (ownerReferences) by revision."""
    selector = ",".join(f"{k}={v}" for k, v in
                        ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels", {}).items())
    listing = kube.call("GET", f"/apis/apps/v1/namespaces/{target.namespace}/replicasets",
                        {"labelSelector": selector} if selector else None)
    uid = dep.get("metadata", {}).get("uid")
    owned = [rs for rs in listing.get("items", [])
             if any(ref.get("uid") == uid for ref in rs["metadata"].get("ownerReferences") or [])]
    return {rev: rs for rs in owned if (rev := revision_of(rs)) is not None}


def _project(value: Any, fields: dict) -> Any:
    """The part of `value` that a managedFields `fieldsV1` tree names."""
    nested = {k: v for k, v in fields.items() if k != "."}
    if not nested:
        return copy.deepcopy(value)
    if isinstance(value, dict):
        return {pe[2:]: _project(value[pe[2:]], sub) for pe, sub in nested.items()
                if pe.startswith("f:") and pe[2:] in value}
    if isinstance(value, list):
        out = []
        for item in value:
            for pe, sub in nested.items():
                key = json.loads(pe[2:]) if pe[:2] in ("k:", "v:") else None
                if (pe.startswith("k:") and isinstance(item, dict) and all(item.get(k) == v for k, v in key.items())
                        or pe.startswith("v:") and item == key):
                    out.append(_project(item, sub))
        return out
    return copy.deepcopy(value)


def rollback_body(dep: dict, rs: dict, manager: str, key: str | None) -> dict:
    """An apply body that restores `rs`'s pod template: the fields `manager` applied before (read back from
    managedFields, so none of them is dropped) with the template replaced."""
    entry = next((e for e in dep["metadata"].get("managedFields") or [] if e.get("manager") == manager
                  and e.get("operation") == "Apply" and not e.get("subresource")), None)
    body = _project(dep, entry.get("fieldsV1", {})) if entry else {}
    template = copy.deepcopy(rs["spec"]["template"])
    labels = (template.get("metadata") or {}).get("labels") or {}
    labels.pop("pod-template-hash", None)
    meta = body.get("metadata") or {}
    annotations = {**(meta.get("annotations") or {}), **({KEY_ANNOTATION: key} if key else {})}
    body.update(apiVersion="apps/v1", kind="Deployment",
                metadata={**meta, "name": dep["metadata"]["name"], "namespace": dep["metadata"]["namespace"],
                          **({"annotations": annotations} if annotations else {})})
    body.setdefault("spec", {})["template"] = template
    return body


class RollbackInput(OpInput):
    """A Deployment to roll back, like `kubectl rollout undo`."""

    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)
    to_revision: int | None = Field(None, ge=1, description="The revision to restore; the previous one if empty.")
    field_manager: str = Field("devmesh", min_length=1, max_length=128, description=(
        "The manager that applies this Deployment: its other fields are kept and it takes over the pod template "
        "(force), as `kubectl rollout undo` overwrites it."))


def _rollback_choice(kube: KubeClient, inp: RollbackInput) -> tuple[Target, dict, dict[int, dict], int, int]:
    target = locate_deployment(kube, inp.namespace, inp.name)
    dep = kube.get(target.path)
    if dep is None:
        raise kube.fail(NotFound, f"deployment {target.label} not found")
    history = revision_history(kube, target, dep)
    current = revision_of(dep) or 0
    wanted = inp.to_revision or max((r for r in history if r < current), default=None)
    if wanted is None:
        raise InputError(f"no revision before {current} in the rollout history", item=target.label)
    if wanted not in history:
        raise InputError(f"revision {wanted} is not in the rollout history ({sorted(history)})", item=target.label)
    return target, dep, history, current, wanted


def plan_rollback(conns: Connections, inp: RollbackInput) -> Plan:
    kube = KubeClient(conns, "kubernetes.rollback")
    target, dep, history, current, wanted = _rollback_choice(kube, inp)
    body = rollback_body(dep, history[wanted], inp.field_manager, annotation_of(dep, KEY_ANNOTATION))
    query = apply_query(inp.field_manager, True)
    dry = kube.call("PATCH", target.path, {**query, "dryRun": "All"}, body, APPLY_PATCH)
    diff = yaml_diff(dep, dry, target.label)
    return Plan(operation="kubernetes.rollback", target=f"kubernetes:{target.label}",
                summary=f"roll back {target.label} from revision {current} to revision {wanted} "
                        f"({', '.join(images_of(history[wanted]))})" if wanted != current else
                        f"{target.label} is already at revision {wanted}",
                request={"method": "PATCH", "path": target.path, "query": query, "content_type": APPLY_PATCH,
                         "body": rollback_body(dep, history[wanted], inp.field_manager, None)},
                diff=diff or None,
                facts={**target.facts(), "images": images_of(dry), "current_images": images_of(dep),
                       "replicas": replicas_of(dry), "current_replicas": replicas_of(dep),
                       "revision": current, "to_revision": wanted})


def run_rollback(conns: Connections, inp: RollbackInput, key: str) -> dict[str, Any]:
    kube = KubeClient(conns, "kubernetes.rollback")
    target = locate_deployment(kube, inp.namespace, inp.name)
    dep = kube.get(target.path)
    if dep is not None and annotation_of(dep, KEY_ANNOTATION) == key:  # done already under this key
        return {**target.facts(), "key": key, "changed": False, "revision": revision_of(dep), "images": images_of(dep)}
    target, dep, history, current, wanted = _rollback_choice(kube, inp)
    done = kube.call("PATCH", target.path, apply_query(inp.field_manager, True),
                     rollback_body(dep, history[wanted], inp.field_manager, key), APPLY_PATCH)
    return {**target.facts(), "key": key, "changed": wanted != current, "from_revision": current,
            "rolled_back_to": wanted, "revision": revision_of(done), "images": images_of(done)}


def verify_rollback(conns: Connections, inp: RollbackInput, result: dict[str, Any]) -> dict[str, Any]:
    kube = KubeClient(conns, "kubernetes.rollback")
    dep = kube.get(locate_deployment(kube, inp.namespace, inp.name).path)
    if dep is None or images_of(dep) != result["images"]:
        raise kube.fail(Conflict, f"deployment {inp.namespace}/{inp.name} changed after the rollback")
    return {"revision": revision_of(dep), "images": images_of(dep)}


ROLLOUT_STATUS = register(Operation(
    "kubernetes.rollout_status", "Wait for a Deployment's rollout: ready, stalled or timed out.", RolloutStatusInput,
    plan=plan_rollout_status, run=run_rollout_status, mutating=False, facts=deployment_facts))
ROLLBACK = register(Operation(
    "kubernetes.rollback", "Restore a Deployment's pod template from an earlier revision, like kubectl rollout "
    "undo.", RollbackInput,
    plan=plan_rollback, run=run_rollback, verify=verify_rollback, facts=deployment_facts))

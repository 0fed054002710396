"""Kubernetes operations through the official client: apply (server-side), scale, rollout_status, rollback, get.

Idempotency: server-side apply and setting replicas are idempotent by nature: the same request again leaves the
same object and changes nothing, not even its resourceVersion. Apply and rollback record the key in the
annotation `devmesh.dev/idempotency-key`; a rollback whose key is already recorded does not act again (a second
"undo" would otherwise flip back).

Kinds: Deployment (apps/v1), ConfigMap and Service (v1) are known; any other kind is accepted when the server's
discovery of its apiVersion lists it (custom resources included), else InputError. Secrets are refused: their
data would reach plans, diffs and the audit trail.
"""

from __future__ import annotations

import copy
import difflib
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from blocks.errors import (
    ConfigError,
    Conflict,
    InputError,
    NotFound,
    ProviderError,
    RolledBack,
)
from blocks.retry import scrub
from blocks.vendor_errors import map_kube_errors
from tasks.ops.base import Connections, OpInput, Operation, Plan, register

__all__ = ["ApplyInput", "GetInput", "KEY_ANNOTATION", "RollbackInput", "RolloutStatusInput", "ScaleInput"]

PROVIDER = "kubernetes"
KEY_ANNOTATION = "devmesh.dev/idempotency-key"
REVISION = "deployment.kubernetes.io/revision"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
SCALE_ATTEMPTS = 5
_KNOWN = {("apps/v1", "Deployment"): ("deployments", True), ("v1", "ConfigMap"): ("configmaps", True),
          ("v1", "Service"): ("services", True)}
_SERVER_SET = ("managedFields", "resourceVersion", "generation", "uid", "creationTimestamp")


# ---- the client, and its failures as blocks.errors ----

class _Kube:
    """The connection's ApiClient for one operation; every failure comes out as a blocks.errors error."""

    def __init__(self, conns: Connections, operation: str) -> None:
        if conns.kubernetes is None:
            raise ConfigError(f"{operation} needs a KubernetesConnection (Connections.kubernetes)")
        self.api = conns.client("kubernetes", conns.kubernetes.api_client)
        self.timeout = conns.kubernetes.request_timeout
        self.secrets = conns.secrets()
        self.operation = operation

    def call(self, method: str, path: str, query: dict[str, str] | None = None, body: Any = None,
             content_type: str | None = None) -> dict:
        headers = {"Accept": "application/json", **({"Content-Type": content_type} if content_type else {})}
        with map_kube_errors(self.operation, secrets=self.secrets, timeout=self.timeout):
            return self.api.call_api(path, method, query_params=list((query or {}).items()), header_params=headers,
                                     body=body, response_types_map={200: "object", 201: "object"},
                                     auth_settings=["BearerToken"], _return_http_data_only=True,
                                     _request_timeout=self.timeout)

    def get(self, path: str) -> dict | None:
        try:
            return self.call("GET", path)
        except NotFound:
            return None

    def fail(self, cls: type[ProviderError], message: str, **extra: Any) -> ProviderError:
        return cls(scrub(message, *self.secrets, limit=600), provider=PROVIDER, operation=self.operation, **extra)


# ---- objects ----

@dataclass(frozen=True)
class _Target:
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


def _target(kube: _Kube, api_version: str, kind: str, namespace: str | None, name: str) -> _Target:
    """Where the object lives: the known kinds directly, others from the server's discovery."""
    if kind == "Secret":
        raise InputError("Secrets are not handled by devmesh operations (their data would reach plans and audit)",
                         item=name)
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    known = _KNOWN.get((api_version, kind))
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
    return _Target(api_version, kind, name, namespace, f"{base}{scope}/{plural}/{name}")


def _deployment(kube: _Kube, namespace: str, name: str) -> _Target:
    return _target(kube, "apps/v1", "Deployment", namespace, name)


def _annotation(obj: dict | None, key: str) -> str | None:
    return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(key)


def _revision(obj: dict | None) -> int | None:
    value = _annotation(obj, REVISION)
    return int(value) if value and value.isdigit() else None


def _images(obj: dict | None) -> list[str]:
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


def _replicas(obj: dict | None) -> int | None:
    spec = (obj or {}).get("spec") or {}
    return spec.get("replicas") if isinstance(spec.get("replicas"), int) else None


def _clean(obj: dict | None) -> dict | None:
    """The object without what the server keeps for itself: managedFields, resourceVersion, generation, uid,
    creationTimestamp and status."""
    if obj is None:
        return None
    out = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in out.get("metadata", {}).items() if k not in _SERVER_SET}
    return out


def _diff(before: dict | None, after: dict | None, label: str) -> str:
    def lines(obj: dict | None) -> list[str]:
        return yaml.safe_dump(_clean(obj), sort_keys=True).splitlines(keepends=True) if obj is not None else []

    return "".join(difflib.unified_diff(lines(before), lines(after), f"live/{label}", f"applied/{label}"))


# ---- apply ----

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


def _apply_target(kube: _Kube, inp: ApplyInput) -> _Target:
    m = inp.manifest
    return _target(kube, m["apiVersion"], m["kind"], inp.namespace, m["metadata"]["name"])


def _intent(inp: ApplyInput, target: _Target, key: str | None) -> dict:
    """The apply body: the manifest without server-set fields, in its namespace, with the key annotation."""
    body = copy.deepcopy(inp.manifest)
    body.pop("status", None)
    meta = body["metadata"] = {k: v for k, v in body["metadata"].items() if k not in _SERVER_SET}
    if target.namespace:
        meta["namespace"] = target.namespace
    if key:
        meta["annotations"] = {**(meta.get("annotations") or {}), KEY_ANNOTATION: key}
    return body


def _apply_query(field_manager: str, force: bool) -> dict[str, str]:
    return {"fieldManager": field_manager, **({"force": "true"} if force else {})}


def _apply_plan(conns: Connections, inp: ApplyInput) -> Plan:
    kube = _Kube(conns, "kubernetes.apply")
    target = _apply_target(kube, inp)
    live = kube.get(target.path)
    query = _apply_query(inp.field_manager, inp.force_conflicts)
    # the live key (if any) is sent back, so the dry run does not show its removal as a change
    dry = kube.call("PATCH", target.path, {**query, "dryRun": "All"},
                    _intent(inp, target, _annotation(live, KEY_ANNOTATION)), APPLY_PATCH)
    diff = _diff(live, dry, target.label)
    images = _images(dry)
    verb = "create" if live is None else ("update" if diff else "no change to")
    detail = ", ".join(filter(None, [", ".join(images), f"{_replicas(dry)} replicas" if _replicas(dry) is not None
                                     else ""]))
    return Plan(operation="kubernetes.apply", target=f"kubernetes:{target.label}",
                summary=f"server-side apply: {verb} {target.label}" + (f" ({detail})" if detail else ""),
                request={"method": "PATCH", "path": target.path, "query": query, "content_type": APPLY_PATCH,
                         "body": _intent(inp, target, None),
                         "run_adds_annotation": {KEY_ANNOTATION: "<idempotency key>"}},
                diff=diff or None,
                facts={**target.facts(), "images": images, "replicas": _replicas(dry),
                       "current_replicas": _replicas(live), "exists": live is not None})


def _apply_run(conns: Connections, inp: ApplyInput, key: str) -> dict[str, Any]:
    kube = _Kube(conns, "kubernetes.apply")
    target = _apply_target(kube, inp)
    live = kube.get(target.path)
    applied = kube.call("PATCH", target.path, _apply_query(inp.field_manager, inp.force_conflicts),
                        _intent(inp, target, key), APPLY_PATCH)
    rv = applied["metadata"].get("resourceVersion")
    return {**target.facts(), "key": key, "created": live is None,
            "changed": live is None or live["metadata"].get("resourceVersion") != rv, "resource_version": rv,
            "generation": applied["metadata"].get("generation"), "revision": _revision(applied),
            "previous_revision": _revision(live), "images": _images(applied)}


def _apply_verify(conns: Connections, inp: ApplyInput, result: dict[str, Any]) -> dict[str, Any] | None:
    """Deployments: wait for the rollout; when it fails, roll back to the previous revision and raise RolledBack."""
    if not inp.wait:
        return None
    kube = _Kube(conns, "kubernetes.apply")
    target = _apply_target(kube, inp)
    if (target.api_version, target.kind) != ("apps/v1", "Deployment"):
        obj = kube.get(target.path)
        if obj is None:
            raise kube.fail(NotFound, f"{target.label} is gone after the apply")
        return {"exists": True, "resource_version": obj["metadata"].get("resourceVersion")}
    rollback_key = f"{result.get('key')}/rollback"
    if _annotation(kube.get(target.path), KEY_ANNOTATION) == rollback_key:  # a retried verify: it happened
        raise kube.fail(RolledBack, f"{target.label} was rolled back by an earlier verify of this deploy")
    state = _wait_rollout(kube, target, inp.rollout_timeout_s)
    if state["ready"]:
        return state
    why = f"{target.label} did not become ready ({state['reason']}: {state['message']})"
    dep = kube.get(target.path) or {}
    history = _history(kube, target, dep)
    current = _revision(dep) or 0
    previous = max((r for r in history if r < current), default=None)
    if previous is None:
        raise kube.fail(RolledBack, f"{why}; revision {current} is its first: there is no previous revision to "
                        "roll back to, and it was left in place (not deleted)")
    body = _rollback_body(dep, history[previous], inp.field_manager, rollback_key)
    kube.call("PATCH", target.path, _apply_query(inp.field_manager, True), body, APPLY_PATCH)
    raise kube.fail(RolledBack, f"{why}; rolled back to revision {previous} "
                    f"({', '.join(_images(history[previous]))})")


# ---- rollout status ----

def _rollout_state(dep: dict) -> dict[str, Any]:
    """The rollout as `kubectl rollout status` judges it."""
    meta, spec, status = dep["metadata"], dep.get("spec") or {}, dep.get("status") or {}
    want = spec.get("replicas", 1)
    updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    state = {"ready": False, "revision": _revision(dep), "generation": meta.get("generation"),
             "observed_generation": status.get("observedGeneration"), "replicas": want,
             "updated_replicas": updated, "ready_replicas": status.get("readyReplicas", 0),
             "available_replicas": available, "images": _images(dep)}
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


def _wait_rollout(kube: _Kube, target: _Target, timeout_s: float) -> dict[str, Any]:
    """Poll (0.1 s doubling to 2 s) until ready, ProgressDeadlineExceeded, or `timeout_s` (reason "Timeout")."""
    deadline, delay = time.monotonic() + timeout_s, 0.1
    while True:
        dep = kube.get(target.path)
        if dep is None:
            raise kube.fail(NotFound, f"deployment {target.label} not found")
        state = _rollout_state(dep)
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


def _read_plan(operation: str, target: _Target, summary: str) -> Plan:
    return Plan(operation=operation, target=f"kubernetes:{target.label}", summary=summary, mutating=False,
                request={"method": "GET", "path": target.path}, facts=target.facts())


def _status_plan(conns: Connections, inp: RolloutStatusInput) -> Plan:
    target = _deployment(_Kube(conns, "kubernetes.rollout_status"), inp.namespace, inp.name)
    return _read_plan("kubernetes.rollout_status", target,
                      f"wait up to {inp.timeout_s:g} s for the rollout of {target.label}")


def _status_run(conns: Connections, inp: RolloutStatusInput, key: str) -> dict[str, Any]:
    kube = _Kube(conns, "kubernetes.rollout_status")
    return _wait_rollout(kube, _deployment(kube, inp.namespace, inp.name), inp.timeout_s)


# ---- rollback ----

def _history(kube: _Kube, target: _Target, dep: dict) -> dict[int, dict]:
    """The Deployment's ReplicaSets (ownerReferences) by revision."""
    selector = ",".join(f"{k}={v}" for k, v in
                        ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels", {}).items())
    listing = kube.call("GET", f"/apis/apps/v1/namespaces/{target.namespace}/replicasets",
                        {"labelSelector": selector} if selector else None)
    uid = dep.get("metadata", {}).get("uid")
    owned = [rs for rs in listing.get("items", [])
             if any(ref.get("uid") == uid for ref in rs["metadata"].get("ownerReferences") or [])]
    return {rev: rs for rs in owned if (rev := _revision(rs)) is not None}


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


def _rollback_body(dep: dict, rs: dict, manager: str, key: str | None) -> dict:
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


def _rollback_choice(kube: _Kube, inp: RollbackInput) -> tuple[_Target, dict, dict[int, dict], int, int]:
    target = _deployment(kube, inp.namespace, inp.name)
    dep = kube.get(target.path)
    if dep is None:
        raise kube.fail(NotFound, f"deployment {target.label} not found")
    history = _history(kube, target, dep)
    current = _revision(dep) or 0
    wanted = inp.to_revision or max((r for r in history if r < current), default=None)
    if wanted is None:
        raise InputError(f"no revision before {current} in the rollout history", item=target.label)
    if wanted not in history:
        raise InputError(f"revision {wanted} is not in the rollout history ({sorted(history)})", item=target.label)
    return target, dep, history, current, wanted


def _rollback_plan(conns: Connections, inp: RollbackInput) -> Plan:
    kube = _Kube(conns, "kubernetes.rollback")
    target, dep, history, current, wanted = _rollback_choice(kube, inp)
    body = _rollback_body(dep, history[wanted], inp.field_manager, _annotation(dep, KEY_ANNOTATION))
    query = _apply_query(inp.field_manager, True)
    dry = kube.call("PATCH", target.path, {**query, "dryRun": "All"}, body, APPLY_PATCH)
    diff = _diff(dep, dry, target.label)
    return Plan(operation="kubernetes.rollback", target=f"kubernetes:{target.label}",
                summary=f"roll back {target.label} from revision {current} to revision {wanted} "
                        f"({', '.join(_images(history[wanted]))})" if wanted != current else
                        f"{target.label} is already at revision {wanted}",
                request={"method": "PATCH", "path": target.path, "query": query, "content_type": APPLY_PATCH,
                         "body": _rollback_body(dep, history[wanted], inp.field_manager, None)},
                diff=diff or None,
                facts={**target.facts(), "images": _images(dry), "current_images": _images(dep),
                       "replicas": _replicas(dry), "current_replicas": _replicas(dep),
                       "revision": current, "to_revision": wanted})


def _rollback_run(conns: Connections, inp: RollbackInput, key: str) -> dict[str, Any]:
    kube = _Kube(conns, "kubernetes.rollback")
    target = _deployment(kube, inp.namespace, inp.name)
    dep = kube.get(target.path)
    if dep is not None and _annotation(dep, KEY_ANNOTATION) == key:  # done already under this key
        return {**target.facts(), "key": key, "changed": False, "revision": _revision(dep), "images": _images(dep)}
    target, dep, history, current, wanted = _rollback_choice(kube, inp)
    done = kube.call("PATCH", target.path, _apply_query(inp.field_manager, True),
                     _rollback_body(dep, history[wanted], inp.field_manager, key), APPLY_PATCH)
    return {**target.facts(), "key": key, "changed": wanted != current, "from_revision": current,
            "rolled_back_to": wanted, "revision": _revision(done), "images": _images(done)}


def _rollback_verify(conns: Connections, inp: RollbackInput, result: dict[str, Any]) -> dict[str, Any]:
    kube = _Kube(conns, "kubernetes.rollback")
    dep = kube.get(_deployment(kube, inp.namespace, inp.name).path)
    if dep is None or _images(dep) != result["images"]:
        raise kube.fail(Conflict, f"deployment {inp.namespace}/{inp.name} changed after the rollback")
    return {"revision": _revision(dep), "images": _images(dep)}


# ---- scale ----

class ScaleInput(OpInput):
    """Replicas of a Deployment, set through its scale subresource."""

    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)
    replicas: int = Field(ge=0, le=10_000)
    kind: Literal["Deployment"] = "Deployment"


def _scale_path(kube: _Kube, inp: ScaleInput) -> tuple[_Target, str]:
    target = _deployment(kube, inp.namespace, inp.name)
    return target, f"{target.path}/scale"


def _scale_plan(conns: Connections, inp: ScaleInput) -> Plan:
    kube = _Kube(conns, "kubernetes.scale")
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


def _scale_run(conns: Connections, inp: ScaleInput, key: str) -> dict[str, Any]:
    """Read the scale, write it back with the new replicas under that resourceVersion; on a stale 409 read again
    (up to SCALE_ATTEMPTS times). Already at the count: nothing is written."""
    kube = _Kube(conns, "kubernetes.scale")
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


def _scale_verify(conns: Connections, inp: ScaleInput, result: dict[str, Any]) -> dict[str, Any]:
    kube = _Kube(conns, "kubernetes.scale")
    target, path = _scale_path(kube, inp)
    replicas = kube.call("GET", path)["spec"].get("replicas", 0)
    if replicas != inp.replicas:
        raise kube.fail(Conflict, f"{target.label} reads back {replicas} replicas, not {inp.replicas} "
                        "(another writer, e.g. an autoscaler?)")
    return {"replicas": replicas}


# ---- get ----

class GetInput(OpInput):
    """One object to read."""

    api_version: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    namespace: str | None = Field(None, description="For namespaced kinds; 'default' if empty.")
    name: str = Field(min_length=1)


def _get_plan(conns: Connections, inp: GetInput) -> Plan:
    target = _target(_Kube(conns, "kubernetes.get"), inp.api_version, inp.kind, inp.namespace, inp.name)
    return _read_plan("kubernetes.get", target, f"read {target.label}")


def _get_run(conns: Connections, inp: GetInput, key: str) -> dict[str, Any]:
    kube = _Kube(conns, "kubernetes.get")
    obj = kube.call("GET", _target(kube, inp.api_version, inp.kind, inp.namespace, inp.name).path)
    obj.get("metadata", {}).pop("managedFields", None)
    return {"object": obj}


# ---- facts: what the input fixes, judged before planning ----

def _known_namespace(api_version: str, kind: str, namespace: str | None) -> str | None:
    """The namespace an object will live in, when the input decides it: given, or 'default' for a known namespaced
    kind; None when the server's discovery decides (an unknown kind may be cluster-scoped)."""
    known = _KNOWN.get((api_version, kind))
    if known is not None:
        return (namespace or "default") if known[1] else None
    return namespace


def _object_facts(api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any]:
    namespace = _known_namespace(api_version, kind, namespace)
    label = f"{namespace}/{kind}/{name}" if namespace else f"{kind}/{name}"
    return {"api_version": api_version, "kind": kind, "name": name, "namespace": namespace,
            "target": f"kubernetes:{label}"}


def _apply_facts(conns: Connections, inp: ApplyInput) -> dict[str, Any]:
    m = inp.manifest
    return {**_object_facts(m["apiVersion"], m["kind"], m["metadata"]["name"], inp.namespace),
            "images": _images(m), "replicas": _replicas(m)}


def _deployment_facts(conns: Connections, inp: Any) -> dict[str, Any]:
    facts = _object_facts("apps/v1", "Deployment", inp.name, inp.namespace)
    return {**facts, "replicas": inp.replicas} if isinstance(inp, ScaleInput) else facts


def _get_facts(conns: Connections, inp: GetInput) -> dict[str, Any]:
    return _object_facts(inp.api_version, inp.kind, inp.name, inp.namespace)


register(Operation("kubernetes.apply", "Server-side apply one object; verify waits for a Deployment's rollout "
                   "and rolls back to the previous revision if it fails.", ApplyInput, _apply_plan, _apply_run,
                   _apply_verify, facts=_apply_facts))
register(Operation("kubernetes.scale", "Set a Deployment's replicas through its scale subresource.", ScaleInput,
                   _scale_plan, _scale_run, _scale_verify, facts=_deployment_facts))
register(Operation("kubernetes.rollout_status", "Wait for a Deployment's rollout: ready, stalled or timed out.",
                   RolloutStatusInput, _status_plan, _status_run, mutating=False, facts=_deployment_facts))
register(Operation("kubernetes.rollback", "Restore a Deployment's pod template from an earlier revision, like "
                   "kubectl rollout undo.", RollbackInput, _rollback_plan, _rollback_run, _rollback_verify,
                   facts=_deployment_facts))
register(Operation("kubernetes.get", "Read one object (without managedFields).", GetInput, _get_plan, _get_run,
                   mutating=False, facts=_get_facts))

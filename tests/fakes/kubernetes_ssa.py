"""Object semantics for the fake Kubernetes API server: field sets in the `FieldsV1` wire format, server-side
apply and the other patch types, defaulting and validation (a small, faithful subset of the apiserver's), and
what the deployment controller writes (rollout status, its managedFields entry, the scale subresource).

A field path is a tuple of path elements as they appear in `managedFields`: `f:spec`, `k:{"name":"web"}`
(an item of an associative list, keyed as the apiserver keys it), `v:"x"` (an item of a set).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any

__all__ = ["REVISION", "ApplyConflict", "apply_patch", "changed_leaves", "controller_fields", "default", "field_set",
           "fields_v1", "merge_patch", "now", "path_string", "paths_of", "record_update", "rollout_status", "scale_of",
           "strategic_merge", "template_hash", "validate"]

Path = tuple[str, ...]
MISSING = object()
REVISION = "deployment.kubernetes.io/revision"
_HASH_CHARS = "bcdfghjklmnpqrstvwxz2456789"

# Associative lists and their keys (keys missing from an item are keyed with their default, as the server does).
_LIST_KEYS = {"containers": ("name",), "initContainers": ("name",), "env": ("name",), "volumes": ("name",),
              "volumeMounts": ("mountPath",), "conditions": ("type",), "imagePullSecrets": ("name",),
              "ownerReferences": ("uid",)}
_KEY_DEFAULTS = {"protocol": "TCP"}
_SETS = {"finalizers"}
# map[string]... fields: the map itself is a member of the set ("." in FieldsV1), as in the real managedFields
_GRANULAR = {"labels", "annotations", "matchLabels", "data", "binaryData", "limits", "requests", "nodeSelector"}
_NOT_MANAGED = {("f:apiVersion",), ("f:kind",), ("f:status",)} | {
    ("f:metadata", f"f:{name}") for name in ("name", "namespace", "uid", "resourceVersion", "generation",
                                             "creationTimestamp", "managedFields", "selfLink", "deletionTimestamp")}


class ApplyConflict(Exception):
    """Fields another manager owns with a different value; `conflicts` is [(manager, api_version, path)]."""

    def __init__(self, conflicts: list[tuple[str, str, Path]]) -> None:
        self.conflicts = conflicts
        super().__init__(conflict_message(conflicts))


def _list_keys(keys: tuple[str, ...]) -> tuple[str, ...] | None:
    """The key fields of the list at `keys` (the plain field names leading to it), None for an atomic list."""
    name = keys[-1] if keys else ""
    if name == "ports":
        return ("containerPort", "protocol") if {"containers", "initContainers"} & set(keys) else ("port", "protocol")
    return _LIST_KEYS.get(name)


def _item_pe(item: dict, list_keys: tuple[str, ...]) -> str:
    key = {k: item.get(k, _KEY_DEFAULTS.get(k)) for k in list_keys if k in item or k in _KEY_DEFAULTS}
    return "k:" + json.dumps(key, sort_keys=True, separators=(",", ":"))


def field_set(obj: dict) -> set[Path]:
    """The members of `obj`'s field set: every leaf, every associative-list item and every granular map."""
    out: set[Path] = set()

    def walk(value: Any, path: Path, keys: tuple[str, ...]) -> None:
        if isinstance(value, dict) and value:
            if keys and keys[-1] in _GRANULAR:
                out.add(path)
            for name, child in value.items():
                walk(child, path + (f"f:{name}",), keys + (name,))
        elif isinstance(value, list) and value and (_list_keys(keys) or keys[-1:] == ("finalizers",)):
            list_keys = _list_keys(keys)
            for item in value:
                if list_keys and isinstance(item, dict):
                    pe = path + (_item_pe(item, list_keys),)
                    out.add(pe)
                    for name, child in item.items():
                        walk(child, pe + (f"f:{name}",), keys + (name,))
                else:
                    out.add(path + ("v:" + json.dumps(item, separators=(",", ":")),))
        else:
            out.add(path)

    walk(obj, (), ())
    return {p for p in out if p and not any(p[: len(n)] == n for n in _NOT_MANAGED)}


def leaves(paths: set[Path]) -> set[Path]:
    parents = {p[:i] for p in paths for i in range(1, len(p))}
    return paths - parents


def fields_v1(paths: set[Path]) -> dict:
    """A field set as the `fieldsV1` tree of a managedFields entry (keys sorted, "." first, as the server does)."""
    tree: dict = {}
    for path in paths:
        node = tree
        for pe in path:
            node = node.setdefault(pe, {})
    for path in paths:
        node = tree
        for pe in path:
            node = node[pe]
        if node:
            node["."] = {}

    def ordered(node: dict) -> dict:
        return {key: ordered(node[key]) for key in sorted(node)}

    return ordered(tree)


def paths_of(tree: dict, path: Path = ()) -> set[Path]:
    """The inverse of fields_v1."""
    out: set[Path] = set()
    for pe, child in tree.items():
        if pe == ".":
            out.add(path)
        elif child:
            out |= paths_of(child, path + (pe,))
        else:
            out.add(path + (pe,))
    return out


def _match(item: Any, pe: str) -> bool:
    if pe.startswith("k:") and isinstance(item, dict):
        return all(item.get(k, _KEY_DEFAULTS.get(k)) == v for k, v in json.loads(pe[2:]).items())
    return pe.startswith("v:") and item == json.loads(pe[2:])


def get_at(obj: Any, path: Path) -> Any:
    for pe in path:
        if pe.startswith("f:") and isinstance(obj, dict) and pe[2:] in obj:
            obj = obj[pe[2:]]
        elif pe[:2] in ("k:", "v:") and isinstance(obj, list):
            obj = next((item for item in obj if _match(item, pe)), MISSING)
        else:
            return MISSING
        if obj is MISSING:
            return MISSING
    return obj


def delete_at(obj: Any, path: Path) -> None:
    parent = get_at(obj, path[:-1])
    pe = path[-1]
    if pe.startswith("f:") and isinstance(parent, dict):
        parent.pop(pe[2:], None)
    elif isinstance(parent, list):
        parent[:] = [item for item in parent if not _match(item, pe)]


def path_string(path: Path) -> str:
    """`.spec.template.spec.containers[name="web"].image`, as the apiserver prints a field path."""
    out = ""
    for pe in path:
        if pe.startswith("f:"):
            out += "." + pe[2:]
        elif pe.startswith("k:"):
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(pe[2:]).items()) + "]"
        elif pe.startswith("v:"):
            out += f"[={pe[2:]}]"
    return out


def conflict_message(conflicts: list[tuple[str, str, Path]]) -> str:
    """The text of apimachinery's merge.Conflicts: one line when there is one, grouped by manager otherwise."""
    if len(conflicts) == 1:
        manager, version, path = conflicts[0]
        return f'Apply failed with 1 conflict: conflict with "{manager}" using {version}: {path_string(path)}'
    groups: dict[tuple[str, str], list[str]] = {}
    for manager, version, path in conflicts:
        groups.setdefault((manager, version), []).append(path_string(path))
    text = "\n".join(f'conflicts with "{m}" using {v}:\n' + "\n".join(f"- {p}" for p in paths)
                     for (m, v), paths in groups.items())
    return f"Apply failed with {len(conflicts)} conflicts: {text}"


def _merge(live: Any, patch: Any, keys: tuple[str, ...], delete_null: bool) -> Any:
    if isinstance(patch, dict) and isinstance(live, dict):
        out = copy.deepcopy(live)
        for name, value in patch.items():
            if value is None and delete_null:
                out.pop(name, None)
            else:
                out[name] = _merge(live.get(name, MISSING), value, keys + (name,), delete_null)
        return out
    list_keys = _list_keys(keys)
    if isinstance(patch, list) and isinstance(live, list) and list_keys:
        out = copy.deepcopy(live)
        for item in patch:
            pe = _item_pe(item, list_keys) if isinstance(item, dict) else None
            at = next((i for i, old in enumerate(out) if pe and _match(old, pe)), None)
            if at is None:
                out.append(copy.deepcopy(item))
            else:
                out[at] = _merge(out[at], item, keys, delete_null)
        return out
    if isinstance(patch, dict) and delete_null:
        return {k: copy.deepcopy(v) for k, v in patch.items() if v is not None}
    return copy.deepcopy(patch)


def merge_patch(live: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch (lists are replaced)."""
    def merge(old: Any, new: Any) -> Any:
        if not isinstance(new, dict):
            return copy.deepcopy(new)
        out = copy.deepcopy(old) if isinstance(old, dict) else {}
        for name, value in new.items():
            if value is None:
                out.pop(name, None)
            else:
                out[name] = merge(out.get(name), value)
        return out
    return merge(live, patch)


def strategic_merge(live: dict, patch: dict) -> dict:
    """Strategic merge patch: a merge patch whose associative lists merge item by item (no $patch directives)."""
    return _merge(live, patch, (), delete_null=True)


def changed_leaves(old: dict, new: dict) -> set[Path]:
    """Leaves of `new` whose value differs from `old`, and leaves of `old` gone from `new`."""
    new_leaves, old_leaves = leaves(field_set(new)), leaves(field_set(old))
    return {p for p in new_leaves if get_at(old, p) != get_at(new, p)} | (old_leaves - new_leaves)


def apply_patch(live: dict | None, applied: dict, manager: str, managed: list[dict], force: bool,
                kind_defaults: Callable[[dict], dict]) -> tuple[dict, list[dict]]:
    """Server-side apply of `applied` by `manager` over `live` (None: create).

    Returns the new object (defaulted, without managedFields) and the new managedFields entries (without
    times; the caller stamps changed ones). Raises ApplyConflict when another manager owns a field whose value
    the apply changes, unless `force`, which takes those fields over.
    """
    base = copy.deepcopy(live) if live is not None else {}
    merged = kind_defaults(_merge(base, applied, (), delete_null=False))
    new_set = field_set(applied)
    entries = [dict(e, _paths=paths_of(e.get("fieldsV1", {}))) for e in managed]
    mine = next((e for e in entries if e["manager"] == manager and e["operation"] == "Apply"), None)
    conflicts = []
    for entry in entries:
        if entry is mine or entry.get("subresource") == "status":
            continue
        for path in sorted(leaves(new_set) & entry["_paths"]):
            if live is not None and get_at(live, path) != get_at(merged, path):
                conflicts.append((entry, path))
    if conflicts and not force:
        raise ApplyConflict([(e["manager"], e["apiVersion"], p) for e, p in conflicts])
    for entry, path in conflicts:
        entry["_paths"].discard(path)
    others = [e for e in entries if e is not mine]
    for path in sorted((mine["_paths"] if mine else set()) - new_set, key=len, reverse=True):
        if not any(q[: len(path)] == path for e in others for q in e["_paths"]):
            delete_at(merged, path)  # this manager applied it before, nobody else owns it: removed
    merged = kind_defaults(merged)
    if mine is None:
        mine = {"manager": manager, "operation": "Apply", "apiVersion": applied.get("apiVersion", "v1"),
                "fieldsType": "FieldsV1"}
        entries.append(mine)
    mine["_paths"] = new_set
    return merged, _finish(entries)


def record_update(old: dict, new: dict, manager: str, managed: list[dict], api_version: str,
                  subresource: str | None = None) -> list[dict]:
    """managedFields after a non-apply write: the writer owns what it changed, the others lose it."""
    changed = changed_leaves(old, new)
    present = field_set(new)
    entries = [dict(e, _paths=paths_of(e.get("fieldsV1", {}))) for e in managed]
    mine = next((e for e in entries if e["manager"] == manager and e["operation"] == "Update"
                 and e.get("subresource") == subresource), None)
    if mine is None and changed:
        mine = {"manager": manager, "operation": "Update", "apiVersion": api_version, "fieldsType": "FieldsV1",
                **({"subresource": subresource} if subresource else {}), "_paths": set()}
        entries.append(mine)
    for entry in entries:
        if entry.get("subresource") == "status":
            continue
        entry["_paths"] = {p for p in entry["_paths"] - (changed if entry is not mine else set()) if p in present}
    if mine is not None:
        mine["_paths"] |= changed & present
    return _finish(entries)


def _finish(entries: list[dict]) -> list[dict]:
    out = []
    for entry in entries:
        paths = entry.pop("_paths")
        if paths or entry.get("subresource") == "status":
            out.append({**entry, "fieldsV1": fields_v1(paths) if paths else entry.get("fieldsV1", {})})
    return out


# ---- defaulting and validation (the few rules the operations and their tests meet) ----

def _pod_defaults(spec: dict) -> None:
    for name, value in (("restartPolicy", "Always"), ("dnsPolicy", "ClusterFirst"),
                        ("schedulerName", "default-scheduler"), ("securityContext", {}),
                        ("terminationGracePeriodSeconds", 30)):
        spec.setdefault(name, value)
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        if not isinstance(container, dict):
            continue
        image = str(container.get("image", ""))
        tag = image.rsplit("/", 1)[-1]
        latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        for port in container.get("ports", []):
            port.setdefault("protocol", "TCP")


def default(kind: str, obj: dict, cluster_ip: str = "10.96.0.10") -> dict:
    """`obj` with the apiserver's defaults filled in for `kind` (in place, also returned)."""
    spec = obj.setdefault("spec", {}) if kind in ("Deployment", "ReplicaSet", "Service", "Namespace") else None
    if kind in ("Deployment", "ReplicaSet"):
        spec.setdefault("replicas", 1)
        template = spec.setdefault("template", {})
        template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
        _pod_defaults(template.setdefault("spec", {}))
    if kind == "Deployment":
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy.setdefault("type", "RollingUpdate")
            strategy.setdefault("rollingUpdate", {}).update(
                {k: v for k, v in (("maxSurge", "25%"), ("maxUnavailable", "25%"))
                 if k not in strategy.get("rollingUpdate", {})})
    elif kind == "Service":
        spec.setdefault("type", "ClusterIP")
        if spec["type"] != "ExternalName":
            spec.setdefault("clusterIP", cluster_ip)
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports", []):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    elif kind == "Namespace":
        spec.setdefault("finalizers", ["kubernetes"])
        obj.setdefault("metadata", {}).setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"].get(
            "name")
    return obj


_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _go(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def validate(kind: str, obj: dict, old: dict | None) -> list[dict]:
    """The StatusCauses (`{reason, message, field}`) the apiserver would answer 422 with; [] when valid."""
    causes: list[dict] = []

    def invalid(field: str, value: Any, why: str) -> None:
        causes.append({"reason": "FieldValueInvalid", "message": f"Invalid value: {_go(value)}: {why}",
                       "field": field})

    def required(field: str) -> None:
        causes.append({"reason": "FieldValueRequired", "message": "Required value", "field": field})

    name = obj.get("metadata", {}).get("name")
    if not name:
        required("metadata.name")
    elif len(name) > 253 or not _NAME.fullmatch(name):
        invalid("metadata.name", name, "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character")
    spec = obj.get("spec") or {}
    if kind == "Deployment":
        replicas = spec.get("replicas", 1)
        if not isinstance(replicas, int) or replicas < 0:
            invalid("spec.replicas", replicas, "must be greater than or equal to 0")
        selector = (spec.get("selector") or {}).get("matchLabels")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not selector:
            required("spec.selector")
        elif any(labels.get(k) != v for k, v in selector.items()):
            invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`")
        if old is not None and (old.get("spec") or {}).get("selector") != spec.get("selector"):
            invalid("spec.selector", spec.get("selector"), "field is immutable")
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers")
        if not containers:
            required("spec.template.spec.containers")
        for i, container in enumerate(containers or []):
            for field in ("name", "image"):
                if not container.get(field):
                    required(f"spec.template.spec.containers[{i}].{field}")
    elif kind == "Service" and spec.get("type") != "ExternalName" and not spec.get("ports"):
        required("spec.ports")
    return causes


# ---- what the deployment controller writes ----

def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: dict) -> str:
    """A `pod-template-hash` label value for a pod template (10 characters of the apiserver's alphabet)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_HASH_CHARS[b % len(_HASH_CHARS)] for b in digest[:10])


def rollout_status(dep: dict, phase: str, rs_name: str) -> dict:
    """A Deployment's status in `phase` "progressing" | "ready" | "stalled", shaped like deployment.progressing.yaml
    and deployment.progress-deadline-exceeded.yaml (zero counts left out, as the server does)."""
    replicas = dep["spec"].get("replicas", 1)
    before = dep.get("status") or {}
    available = min(before.get("availableReplicas", 0), replicas)
    stamp = now()

    def condition(kind: str, status: str, reason: str, message: str) -> dict:
        old = next((c for c in before.get("conditions", []) if c.get("type") == kind), {})
        since = old.get("lastTransitionTime", stamp) if old.get("status") == status else stamp
        return {"lastTransitionTime": since, "lastUpdateTime": stamp, "message": message, "reason": reason,
                "status": status, "type": kind}

    if phase == "ready":
        available = replicas
        counts = {"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
                  "availableReplicas": replicas}
        progressing = condition("Progressing", "True", "NewReplicaSetAvailable",
                                f'ReplicaSet "{rs_name}" has successfully progressed.')
    elif phase == "stalled":
        counts = {"replicas": available + min(1, replicas), "updatedReplicas": min(1, replicas),
                  "readyReplicas": available, "availableReplicas": available, "unavailableReplicas": min(1, replicas)}
        progressing = condition("Progressing", "False", "ProgressDeadlineExceeded",
                                f'ReplicaSet "{rs_name}" has timed out progressing.')
    else:
        counts = {"replicas": max(available, replicas), "readyReplicas": available, "availableReplicas": available,
                  "unavailableReplicas": max(replicas - available, 0)}
        progressing = condition("Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
    ok = available > 0 or replicas == 0
    available_condition = condition("Available", "True", "MinimumReplicasAvailable",
                                    "Deployment has minimum availability.") if ok else \
        condition("Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
    return {"observedGeneration": dep["metadata"].get("generation", 1), **{k: v for k, v in counts.items() if v},
            "conditions": [available_condition, progressing]}


def controller_fields(dep: dict) -> None:
    """Record kube-controller-manager's managedFields entry (revision annotation and status), as in
    deployment.live-three-managers.json."""
    paths = {("f:metadata", "f:annotations", f"f:{REVISION}")} | {("f:status",) + p for p in field_set(dep["status"])}
    entries = [e for e in dep["metadata"].setdefault("managedFields", [])
               if (e.get("manager"), e.get("subresource")) != ("kube-controller-manager", "status")]
    entries.append({"apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": fields_v1(paths),
                    "manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
                    "time": now()})
    dep["metadata"]["managedFields"] = entries


def scale_of(obj: dict) -> dict:
    """The autoscaling/v1 Scale of a Deployment or ReplicaSet."""
    meta = obj["metadata"]
    selector = ",".join(f"{k}={v}" for k, v in obj["spec"].get("selector", {}).get("matchLabels", {}).items())
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in meta},
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {"replicas": obj.get("status", {}).get("replicas", 0), "selector": selector}}

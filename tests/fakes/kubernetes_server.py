"""A fake Kubernetes API server on loopback, speaking the real wire format to the official Python client and to
`kubectl`: legacy discovery, namespaces, Deployments, ReplicaSets, ConfigMaps and Services (CRUD, list, a short
watch), server-side apply with `managedFields` and conflicts, `dryRun=All`, optimistic concurrency on
`resourceVersion`, the `scale` subresource, ReplicaSet revisions and a simulated rollout. It serves HTTPS with
a throwaway self-signed certificate (kubectl sends no bearer token over plain HTTP); kubeconfig() trusts it.

    with FakeKubernetes() as fake:
        conn = KubernetesConnection(kubeconfig=fake.kubeconfig())
        fake.rollout = "stall"   # the next rollouts end in ProgressDeadlineExceeded

Status bodies follow ../shared/testdata/kubernetes/status-*.json; the rollout states follow
deployment.progressing.yaml and deployment.progress-deadline-exceeded.yaml. Discovery, the minimal OpenAPI v3
kubectl needs and the certificate are in kubernetes_discovery; object semantics (managedFields, apply, defaults,
validation) in kubernetes_ssa.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.fakes import kubernetes_ssa as ssa
from tests.fakes.kubernetes_discovery import RESOURCES, Resource, certificate, discovery, server_context
from tests.fakes.kubernetes_ssa import REVISION, now
from tests.fakes.server import FakeAPI, Fault, Response, Seen, json_response

__all__ = ["FakeKubernetes", "status_body"]

_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
            500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_DEPLOYMENTS = _BY_PATH[("apps", "v1", "deployments")]
_REPLICASETS = _BY_PATH[("apps", "v1", "replicasets")]
_NAMESPACES = _BY_PATH[("", "v1", "namespaces")]


class _Answer(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def status_body(code: int, message: str, reason: str | None = None, details: dict | None = None) -> dict:
    """A `kind: Status` failure body, as the apiserver sends it."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason or _REASONS.get(code, "Unknown")}
    if details:
        body["details"] = details
    return {**body, "code": code}


def _fail(code: int, message: str, reason: str | None = None, details: dict | None = None,
          headers: dict[str, str] | None = None) -> _Answer:
    return _Answer(json_response(code, status_body(code, message, reason, details), headers))


def _details(res: Resource, name: str, **extra: Any) -> dict:
    return {"name": name, **({"group": res.group} if res.group else {}), "kind": res.plural, **extra}


def _selector_matches(selector: str, labels: dict) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class FakeKubernetes(FakeAPI):
    """A stateful fake apiserver. Knobs: `token` (the bearer token it accepts), `rollout` ("succeed" | "stall",
    taken by each rollout when it starts), `ready_after_gets` / `ready_after_s` (a rollout settles on the Nth
    read of its Deployment, or after that many seconds)."""

    def __init__(self, token: str = "devmesh-fake-token-4f1c2a9b") -> None:
        super().__init__()
        self.token = token
        self._state = threading.RLock()
        self._init_state()

    def _init_state(self) -> None:
        self.rollout = "succeed"
        self.ready_after_gets = 2
        self.ready_after_s: float | None = None
        self.objects: dict[tuple[str, str | None, str], dict] = {}
        self._rv = 1000
        self._events: list[tuple[int, str, str, dict]] = []
        self._rollouts: dict[tuple[str, str], dict] = {}
        self._stale_writes = 0
        for name in ("default", "kube-system", "kube-public"):
            self._create_direct(_NAMESPACES, None, {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": name}})

    def __enter__(self) -> FakeKubernetes:
        super().__enter__()
        assert self._server is not None
        self._server.socket = server_context().wrap_socket(self._server.socket, server_side=True)
        return self

    @property
    def url(self) -> str:
        return super().url.replace("http://", "https://", 1)

    # ---- helpers for tests ----

    def reset(self) -> None:
        super().reset()
        with self._state:
            self._init_state()

    def kubeconfig(self, namespace: str = "default") -> dict:
        """A kubeconfig whose only context points at this fake with its bearer token."""
        return {"apiVersion": "v1", "kind": "Config", "preferences": {},
                "clusters": [{"name": "devmesh-fake", "cluster": {
                    "server": self.url, "certificate-authority-data": base64.b64encode(certificate()[0]).decode()}}],
                "users": [{"name": "devmesh-fake-user", "user": {"token": self.token}}],
                "contexts": [{"name": "devmesh-fake", "context": {"cluster": "devmesh-fake",
                                                                  "user": "devmesh-fake-user",
                                                                  "namespace": namespace}}],
                "current-context": "devmesh-fake"}

    def kubeconfig_file(self, path: str | Path, namespace: str = "default") -> Path:
        """Write kubeconfig() as YAML to `path` (for kubectl --kubeconfig) and return the path."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace)))
        return path

    def get(self, plural: str, namespace: str | None, name: str) -> dict | None:
        """A copy of a stored object, or None (no rollout progress: not a client read)."""
        with self._state:
            obj = self.objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def count(self, plural: str | None = None) -> int:
        with self._state:
            return sum(1 for key in self.objects if plural in (None, key[0]))

    def load(self, obj: dict) -> dict:
        """Store a live object verbatim (e.g. a testdata export with its managedFields), with a fresh
        resourceVersion; a Deployment also gets the ReplicaSet of its template. Returns the stored copy."""
        res = next(r for r in RESOURCES if r.kind == obj["kind"] and r.api_version == obj["apiVersion"])
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        namespace = meta.get("namespace", "default") if res.namespaced else None
        meta.pop("selfLink", None)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        with self._state:
            self._store(res, namespace, obj, "ADDED")
            if res is _DEPLOYMENTS:
                self._roll(namespace, obj, "succeed", start=False)
                self._store(res, namespace, obj, "MODIFIED")
            return copy.deepcopy(obj)

    def stale_writes(self, n: int = 1) -> None:
        """The next `n` writes that carry a resourceVersion find it stale, as if another client wrote first."""
        with self._state:
            self._stale_writes = n

    # ---- FakeAPI ----

    def error(self, fault: Fault) -> Response:
        details = None
        if fault.status == 429 and "Retry-After" in fault.headers:
            details = {"retryAfterSeconds": int(float(fault.headers["Retry-After"]))}
        return json_response(fault.status, status_body(fault.status, fault.message, details=details), fault.headers)

    def answer(self, seen: Seen, fault: Fault | None) -> Response:
        url = urlsplit(seen.path)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if seen.headers.get("authorization") != f"Bearer {self.token}":
            return json_response(401, status_body(401, "Unauthorized"))
        try:
            if seen.method == "GET" and (found := discovery(parts, self.url[len("https://"):])) is not None:
                return json_response(200, found)
            route = self._route(parts)
            if route is None:
                return 404, {"Content-Type": "text/plain; charset=utf-8"}, b"404 page not found\n"
            if seen.method == "GET" and query.get("watch") in ("true", "1"):
                return self._watch(route, query)
            with self._state:
                return self._dispatch(seen, route, query)
        except _Answer as answer:
            return answer.response
        except Exception as exc:  # a bug of the fake: say so instead of dropping the connection
            return json_response(500, status_body(500, f"fake apiserver failed: {exc!r}"))

    @staticmethod
    def _route(parts: list[str]) -> tuple[Resource, str | None, str | None, str | None] | None:
        """(resource, namespace, name, subresource) of a resource URL, or None."""
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        res = _BY_PATH.get((group, version, rest[0])) if rest else None
        if res is None or len(rest) > 3 or (namespace is not None and not res.namespaced):
            return None
        if namespace is None and res.namespaced and len(rest) > 1:
            return None
        return res, namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None

    # ---- requests ----

    def _dispatch(self, seen: Seen, route: tuple, query: dict[str, str]) -> Response:
        res, namespace, name, sub = route
        method, dry = seen.method, query.get("dryRun") == "All"
        manager = query.get("fieldManager") or seen.headers.get("user-agent", "unknown").split("/")[0]
        if sub not in (None, "scale") or (sub == "scale" and res.kind not in ("Deployment", "ReplicaSet")):
            raise _fail(404, "the server could not find the requested resource")
        if name is None:
            if method == "GET":
                return json_response(200, self._list(res, namespace, query))
            if method == "POST":
                return self._create(res, namespace, self._body(seen), manager, dry)
            raise _fail(405, f"method {method} not allowed on a collection", "MethodNotAllowed")
        live = self.objects.get((res.plural, namespace, name))
        if method == "PATCH" and seen.headers.get("content-type", "").startswith("application/apply-patch"):
            return self._apply(res, namespace, name, live, self._body(seen), query, dry)
        if live is None:
            raise _fail(404, f'{res.qualified} "{name}" not found', details=_details(res, name))
        if method == "GET":
            self._observe(res, namespace, name)
            return json_response(200, ssa.scale_of(live) if sub else live)
        if method == "DELETE":
            return self._delete(res, namespace, name, live, dry)
        if method not in ("PUT", "PATCH"):
            raise _fail(405, f"method {method} not allowed", "MethodNotAllowed")
        body = self._body(seen)
        current = ssa.scale_of(live) if sub else live
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and self._stale_writes:
            self._stale_writes -= 1
            self._store(res, namespace, live, "MODIFIED")  # "another client" wrote: the version moves on
        if wanted is not None and wanted != live["metadata"]["resourceVersion"]:
            raise _fail(409, f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been '
                             "modified; please apply your changes to the latest version and try again",
                        details=_details(res, name))
        if method == "PUT":
            new = copy.deepcopy(body)
        else:
            kind = seen.headers.get("content-type", "").split(";")[0]
            if kind == "application/merge-patch+json":
                new = ssa.merge_patch(current, body)
            elif kind == "application/strategic-merge-patch+json":
                new = ssa.strategic_merge(current, body)
            else:
                raise _fail(415, "the body of the request was in an unknown format - accepted media types include: "
                                 "application/merge-patch+json, application/strategic-merge-patch+json, "
                                 "application/apply-patch+yaml", "UnsupportedMediaType")
        if sub == "scale":
            replicas = (new.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise _fail(422, f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                                 f"{replicas}: must be greater than or equal to 0", "Invalid")
            new = copy.deepcopy(live)
            new["spec"]["replicas"] = replicas
        new.setdefault("metadata", {})["managedFields"] = ssa.record_update(
            live, new, manager, live["metadata"].get("managedFields", []), res.api_version, sub)
        code, stored = self._commit(res, namespace, name, live, new, dry)
        return json_response(code, ssa.scale_of(stored) if sub else stored)

    @staticmethod
    def _body(seen: Seen) -> dict:
        body = seen.body
        if isinstance(body, bytes):
            try:
                body = yaml.safe_load(body.decode())
            except (UnicodeDecodeError, yaml.YAMLError) as exc:
                raise _fail(400, f"error decoding YAML: {exc}") from None
        if not isinstance(body, dict):
            raise _fail(400, "the request body must be one object")
        return body

    def _list(self, res: Resource, namespace: str | None, query: dict[str, str]) -> dict:
        items = []
        for (plural, ns, name), obj in sorted(self.objects.items(), key=lambda kv: str(kv[0])):
            if plural != res.plural or (namespace is not None and ns != namespace):
                continue
            if not self._selected(obj, query):
                continue
            self._observe(res, ns, name)
            items.append({k: v for k, v in self.objects[(plural, ns, name)].items() if k not in ("kind",
                                                                                                   "apiVersion")})
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    @staticmethod
    def _selected(obj: dict, query: dict[str, str]) -> bool:
        meta = obj["metadata"]
        for term in filter(None, query.get("fieldSelector", "").split(",")):
            field, _, value = term.replace("==", "=").partition("=")
            if {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}.get(field) != value:
                return False
        return _selector_matches(query.get("labelSelector", ""), meta.get("labels") or {})

    def _watch(self, route: tuple, query: dict[str, str]) -> Response:
        """A short watch: the events after `resourceVersion` within ~1.5 s, then the stream ends (clients
        re-watch). Rollouts keep progressing while it waits, as they would on a cluster."""
        res, namespace, _, _ = route
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + min(float(query.get("timeoutSeconds") or 1.5), 1.5)
        while True:
            with self._state:
                for (plural, ns, name) in list(self.objects):
                    if plural == res.plural and namespace in (None, ns):
                        self._observe(res, ns, name)
                events = [(kind, obj) for rv, kind, plural, obj in self._events
                          if rv > since and plural == res.plural
                          and namespace in (None, obj["metadata"].get("namespace"))
                          and self._selected(obj, query)]
            if events or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        lines = b"".join(json.dumps({"type": kind, "object": obj}).encode() + b"\n" for kind, obj in events)
        return 200, {"Content-Type": "application/json"}, lines

    # ---- writes ----

    def _create(self, res: Resource, namespace: str | None, body: dict, manager: str, dry: bool) -> Response:
        name = (body.get("metadata") or {}).get("name") or ""
        if (res.plural, namespace, name) in self.objects:
            raise _fail(409, f'{res.qualified} "{name}" already exists', "AlreadyExists", _details(res, name))
        body = ssa.default(res.kind, copy.deepcopy(body))
        body.setdefault("metadata", {})["managedFields"] = ssa.record_update({}, body, manager, [], res.api_version)
        return json_response(*self._commit(res, namespace, name, None, body, dry))

    def _apply(self, res: Resource, namespace: str | None, name: str, live: dict | None, body: dict,
               query: dict[str, str], dry: bool) -> Response:
        manager = query.get("fieldManager")
        if not manager:
            raise _fail(400, "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests")
        if body.get("kind") != res.kind or body.get("apiVersion") != res.api_version:
            raise _fail(400, f"the API version in the data ({body.get('apiVersion')}) or the kind "
                             f"({body.get('kind')}) does not match the URL ({res.api_version}, {res.kind})")
        if (body.get("metadata") or {}).get("name") != name:
            raise _fail(400, f"the name of the object ({(body.get('metadata') or {}).get('name')}) does not match "
                             f"the name on the URL ({name})")
        if (body.get("metadata") or {}).get("managedFields") is not None:
            raise _fail(400, "metadata.managedFields must be nil")
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if live is not None and wanted is not None and wanted != live["metadata"]["resourceVersion"]:
            raise _fail(409, f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been '
                             "modified; please apply your changes to the latest version and try again",
                        details=_details(res, name))
        managed = (live or {}).get("metadata", {}).get("managedFields", [])
        try:
            new, entries = ssa.apply_patch(live, body, manager, managed, query.get("force") == "true",
                                           lambda obj: ssa.default(res.kind, obj))
        except ssa.ApplyConflict as exc:
            causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{m}" using {v}',
                       "field": ssa.path_string(p)} for m, v, p in exc.conflicts]
            raise _fail(409, str(exc), "Conflict", {"causes": causes}) from None
        new["metadata"]["managedFields"] = entries
        return json_response(*self._commit(res, namespace, name, live, new, dry))

    def _delete(self, res: Resource, namespace: str | None, name: str, live: dict, dry: bool) -> Response:
        if not dry:
            self._remove(res, namespace, name)
            if res is _DEPLOYMENTS:
                for rs in self._owned(namespace, live):
                    self._remove(_REPLICASETS, namespace, rs["metadata"]["name"])
        return json_response(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "details": {**_details(res, name), "uid": live["metadata"]["uid"]}})

    def _commit(self, res: Resource, namespace: str | None, name: str, old: dict | None, new: dict,
                dry: bool) -> tuple[int, dict]:
        """Validate, stamp and (unless dry) store a write; (201|200, the object as stored)."""
        if old is None and namespace is not None and ("namespaces", None, namespace) not in self.objects:
            raise _fail(404, f'namespaces "{namespace}" not found', details={"name": namespace, "kind": "namespaces"})
        causes = ssa.validate(res.kind, new, old)
        if causes:
            where = causes[0]["field"] + ": " + causes[0]["message"] if len(causes) == 1 else \
                "[" + ", ".join(f"{c['field']}: {c['message']}" for c in causes) + "]"
            qualified = f"{res.kind}.{res.group}" if res.group else res.kind
            raise _fail(422, f'{qualified} "{name}" is invalid: {where}', "Invalid",
                        {"name": name, **({"group": res.group} if res.group else {}), "kind": res.kind,
                         "causes": causes})
        new = copy.deepcopy(new)
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        meta = new.setdefault("metadata", {})
        meta["name"] = name
        if res.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        for key in ("uid", "creationTimestamp", "resourceVersion", "generation"):
            meta.pop(key, None)
            if old is not None and key in old["metadata"]:
                meta[key] = old["metadata"][key]
        if old is not None:
            new["status"] = copy.deepcopy(old.get("status", {}))
            old_times = {self._entry_id(e): e.get("time") for e in old["metadata"].get("managedFields", [])}
            old_entries = {self._entry_id(e): e for e in old["metadata"].get("managedFields", [])}
            for entry in meta.get("managedFields", []):
                previous = old_entries.get(self._entry_id(entry))
                same = previous is not None and previous.get("fieldsV1") == entry.get("fieldsV1")
                entry["time"] = old_times[self._entry_id(entry)] if same else now()
            if new == old:
                return 200, copy.deepcopy(old)
        else:
            meta["uid"], meta["creationTimestamp"] = str(uuid.uuid4()), now()
            for entry in meta.get("managedFields", []):
                entry["time"] = now()
            new["status"] = {"Service": {"loadBalancer": {}}, "Namespace": {"phase": "Active"}}.get(res.kind, {})
        if res.kind in ("Deployment", "ReplicaSet"):
            spec_changed = old is None or {k: v for k, v in new.items() if k not in ("metadata", "status")} != \
                {k: v for k, v in old.items() if k not in ("metadata", "status")}
            meta["generation"] = (old["metadata"].get("generation", 0) if old else 0) + (1 if spec_changed else 0)
        if res.kind == "Service" and old is None:
            ip = int(hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest(), 16)
            new["spec"]["clusterIP"] = new["spec"]["clusterIPs"][0] = f"10.96.{ip % 250 + 1}.{ip // 250 % 250 + 1}"
        if dry:
            return (201 if old is None else 200), new
        self._store(res, namespace, new, "ADDED" if old is None else "MODIFIED")
        if res is _DEPLOYMENTS:
            template_changed = old is None or old["spec"].get("template") != new["spec"].get("template")
            if template_changed or old["spec"].get("replicas") != new["spec"].get("replicas"):
                self._roll(namespace, new, self.rollout if template_changed else "succeed")
                self._store(res, namespace, new, "MODIFIED")
        return (201 if old is None else 200), copy.deepcopy(new)

    @staticmethod
    def _entry_id(entry: dict) -> tuple:
        return entry.get("manager"), entry.get("operation"), entry.get("subresource")

    def _store(self, res: Resource, namespace: str | None, obj: dict, event: str) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self.objects[(res.plural, namespace, obj["metadata"]["name"])] = obj
        self._events = self._events[-500:] + [(self._rv, event, res.plural, copy.deepcopy(obj))]

    def _remove(self, res: Resource, namespace: str | None, name: str) -> None:
        obj = self.objects.pop((res.plural, namespace, name))
        self._rv += 1
        self._events.append((self._rv, "DELETED", res.plural, copy.deepcopy(obj)))

    def _create_direct(self, res: Resource, namespace: str | None, obj: dict) -> None:
        obj = ssa.default(res.kind, obj)
        obj["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=now())
        obj["status"] = {"phase": "Active"} if res is _NAMESPACES else {}
        self._store(res, namespace, obj, "ADDED")

    # ---- the Deployment controller, simulated ----

    def _owned(self, namespace: str | None, deployment: dict) -> list[dict]:
        uid = deployment["metadata"]["uid"]
        return [obj for (plural, ns, _), obj in self.objects.items()
                if plural == "replicasets" and ns == namespace
                and any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences", []))]

    def _roll(self, namespace: str | None, dep: dict, mode: str, start: bool = True) -> None:
        """A new pod template gets a ReplicaSet with the next revision (an old one coming back is renumbered,
        as the deployment controller does); the rollout then settles on reads (see `_observe`)."""
        name, template = dep["metadata"]["name"], dep["spec"]["template"]
        pod_hash = ssa.template_hash(template)
        owned = self._owned(namespace, dep)
        top = max((int(rs["metadata"].get("annotations", {}).get(REVISION, 0)) for rs in owned), default=0)
        current = next((rs for rs in owned if rs["metadata"]["labels"].get("pod-template-hash") == pod_hash), None)
        replicas = dep["spec"].get("replicas", 1)
        if current is None:
            revision = top + 1 if start else int(dep["metadata"].get("annotations", {}).get(REVISION, top + 1))
            current = self._new_replicaset(dep, pod_hash, revision)
        else:
            annotations = current["metadata"].setdefault("annotations", {})
            if int(annotations.get(REVISION, 0)) != top:
                history = [h for h in annotations.get(f"{REVISION}-history", "").split(",") if h]
                annotations[f"{REVISION}-history"] = ",".join(history + [annotations.get(REVISION, "0")])
                annotations[REVISION] = str(top + 1)
        for rs in owned + ([current] if current not in owned else []):
            rs["spec"]["replicas"] = replicas if rs is current else 0
            rs["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] = str(replicas)
            self._store(_REPLICASETS, namespace, rs, "MODIFIED" if rs in owned else "ADDED")
        dep["metadata"].setdefault("annotations", {})[REVISION] = current["metadata"]["annotations"][REVISION]
        self._rollouts[(namespace, name)] = {"mode": mode, "started": time.monotonic(), "reads": 0,
                                             "rs": current["metadata"]["name"], "done": not start}
        if start:
            dep["status"] = ssa.rollout_status(dep, "progressing", current["metadata"]["name"])
            ssa.controller_fields(dep)

    @staticmethod
    def _new_replicaset(dep: dict, pod_hash: str, revision: int) -> dict:
        meta, spec = dep["metadata"], dep["spec"]
        template = copy.deepcopy(spec["template"])
        labels = template.setdefault("metadata", {})["labels"] = {**(template["metadata"].get("labels") or {}),
                                                                  "pod-template-hash": pod_hash}
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"], "uid": meta["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": f"{meta['name']}-{pod_hash}", "namespace": meta.get("namespace"),
                             "labels": dict(labels), "annotations": {REVISION: str(revision)},
                             "uid": str(uuid.uuid4()), "creationTimestamp": now(), "generation": 1,
                             "ownerReferences": [owner]},
                "spec": {"replicas": spec.get("replicas", 1), "template": template, "selector": {"matchLabels": {
                    **spec["selector"].get("matchLabels", {}), "pod-template-hash": pod_hash}}},
                "status": {"replicas": 0, "observedGeneration": 1}}

    def _observe(self, res: Resource, namespace: str | None, name: str) -> None:
        """A client read a Deployment: its rollout may now settle ("ready", or "stall": ProgressDeadlineExceeded)."""
        state = self._rollouts.get((namespace, name))
        if res is not _DEPLOYMENTS or state is None or state["done"]:
            return
        state["reads"] += 1
        elapsed = time.monotonic() - state["started"]
        if state["reads"] < self.ready_after_gets and (self.ready_after_s is None or elapsed < self.ready_after_s):
            return
        state["done"] = True
        dep = self.objects[("deployments", namespace, name)]
        dep["status"] = ssa.rollout_status(dep, "ready" if state["mode"] == "succeed" else "stalled", state["rs"])
        ssa.controller_fields(dep)
        self._store(res, namespace, dep, "MODIFIED")

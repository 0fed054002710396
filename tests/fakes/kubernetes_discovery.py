"""What the fake Kubernetes API server serves besides objects: its resources, legacy discovery, a minimal OpenAPI
v3 and its throwaway TLS certificate.

kubectl 1.32 (measured against this fake): with /openapi/v3 and /openapi/v2 both 404, `apply` fails with
"failed to download openapi" unless --validate=false. Given the v3 root and one document per group-version
whose PATCH operations list the `fieldValidation` query parameter, it sends `fieldValidation=Strict` and does no
client-side schema check, so no schemas are needed. Discovery is the legacy format: kubectl asks for aggregated
discovery (APIGroupDiscoveryList) first and falls back to it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = ["RESOURCES", "Resource", "certificate", "discovery", "server_context"]

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:  # "deployments.apps", as Status messages name a resource
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def base(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


RESOURCES = [Resource("", "v1", "namespaces", "Namespace", False, ("ns",)),
             Resource("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
             Resource("", "v1", "services", "Service", True, ("svc",)),
             Resource("apps", "v1", "deployments", "Deployment", True, ("deploy",)),
             Resource("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",))]


def discovery(parts: list[str], server_address: str) -> dict | None:
    """The body of a discovery or OpenAPI GET (`parts`: the URL path split on "/"), or None if not one."""
    groups = sorted({r.group for r in RESOURCES if r.group})
    if parts == ["version"]:
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "devmesh-fake",
                "gitTreeState": "clean", "buildDate": "2024-12-11T00:00:00Z", "goVersion": "go1.23.3",
                "compiler": "gc", "platform": "linux/amd64"}
    if parts == ["openapi", "v3"]:
        return {"paths": {r.base[1:]: {"serverRelativeURL": f"/openapi/v3{r.base}"} for r in RESOURCES}}
    if parts[:2] == ["openapi", "v3"]:
        return _openapi("/".join(parts[3:]))
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}
    if parts == ["apis"]:
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(g) for g in groups]}
    if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
        return {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[1])}
    if parts == ["api", "v1"] or (len(parts) == 3 and parts[0] == "apis" and parts[1] in groups):
        api_version = "/".join(parts[1:]) if parts[0] == "apis" else "v1"
        resources = []
        for r in (r for r in RESOURCES if r.api_version == api_version):
            resources.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                              "kind": r.kind, "verbs": _VERBS, "shortNames": list(r.short)})
            if r.kind in ("Deployment", "ReplicaSet"):
                resources.append({"name": f"{r.plural}/scale", "singularName": "", "namespaced": True,
                                  "group": "autoscaling", "version": "v1", "kind": "Scale",
                                  "verbs": ["get", "patch", "update"]})
        if resources:
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version,
                    "resources": resources}
    return None


def _group(name: str) -> dict:
    version = {"groupVersion": f"{name}/v1", "version": "v1"}
    return {"name": name, "versions": [version], "preferredVersion": version}


def _openapi(api_version: str) -> dict | None:
    """The OpenAPI v3 document of one group-version, reduced to its PATCH operations and their query parameters."""
    params = [{"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
              for name in ("dryRun", "fieldManager", "fieldValidation", "force")]
    paths = {}
    for r in (r for r in RESOURCES if r.api_version == api_version):
        scope = "/namespaces/{namespace}" if r.namespaced else ""
        paths[f"{r.base}{scope}/{r.plural}/{{name}}"] = {"parameters": params, "patch": {
            "operationId": f"patch{r.kind}", "parameters": params, "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
            "responses": {"200": {"description": "OK"}}}}
    if not paths:
        return None
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
            "components": {"schemas": {}}}


@functools.cache
def certificate() -> tuple[bytes, bytes]:
    """A self-signed P-256 certificate for 127.0.0.1 (PEM cert, PEM key), made once per process."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "devmesh-fake-apiserver")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def server_context() -> ssl.SSLContext:
    """A TLS server context with certificate()."""
    cert, key = certificate()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:  # load_cert_chain reads files; they go right away
        for name, data in (("tls.crt", cert), ("tls.key", key)):
            with open(os.path.join(tmp, name), "wb") as fh:
                fh.write(data)
        context.load_cert_chain(os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key"))
    return context

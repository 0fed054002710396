"""The Kubernetes API client of one operation: the connection's ApiClient, each call's failure mapped once onto
devmesh's error tree (blocks.vendor_errors.map_kube_errors), and a way to raise a provider error with the
connection's secrets scrubbed."""

from __future__ import annotations

from typing import Any

from blocks.errors import ConfigError, NotFound, ProviderError
from blocks.retry import scrub
from blocks.vendor_errors import map_kube_errors
from tasks.ops.base import Connections

__all__ = ["APPLY_PATCH", "KubeClient", "MERGE_PATCH", "PROVIDER"]

PROVIDER = "kubernetes"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"


class KubeClient:
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

"""The cluster our Kubernetes operations act on: API server and credentials, as a Prefect block.

Why not prefect-kubernetes: its blocks configure a Kubernetes *work pool* (where flow runs execute), not the
clusters our operations act on, and it would bring a second client-configuration path next to this one. Here a
kubeconfig (as a dict, kept secret) or the pod's in-cluster service account becomes one official
`kubernetes.client.ApiClient`.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException
from prefect.blocks.core import Block
from prefect.blocks.fields import SecretDict
from pydantic import Field

from blocks.errors import ConfigError
from blocks.redact import secret_values
from blocks.retry import scrub

__all__ = ["KubernetesConnection"]

_FILE_FIELDS = (("cluster", "certificate-authority"), ("user", "client-certificate"), ("user", "client-key"))


class KubernetesConnection(Block):
    """One Kubernetes cluster: a kubeconfig (dict) with an optional context, or the in-cluster service account.

    The cluster devmesh's operations act on, not where flow runs execute (that is prefect-kubernetes' work pool).

    Args:
        kubeconfig: a kubeconfig as a dict (tokens and keys inside stay secret: never in repr, logs or errors).
        context: the kubeconfig context to use; its `current-context` when empty.
        in_cluster: use the pod's service account (/var/run/secrets/kubernetes.io/serviceaccount).
        request_timeout: seconds per API request; the operations pass it on every call.

    Example:
        conn = KubernetesConnection.from_kubeconfig_file("~/.kube/config", context="staging")
        api = conn.api_client()
    """

    _block_type_name = "devmesh Kubernetes connection"

    kubeconfig: SecretDict | None = Field(None, description="A kubeconfig as a dict (secret).")
    context: str | None = Field(None, description="Kubeconfig context; its current-context when empty.")
    in_cluster: bool = Field(False, description="Use the in-cluster service account instead of a kubeconfig.")
    request_timeout: float = Field(15, gt=0, le=600, description="Seconds per API request.")

    def api_client(self) -> client.ApiClient:
        """A new ApiClient for this cluster; ConfigError when nothing (or both) is configured or it is invalid.

        urllib3 retries connection setup twice but never re-sends after a read error or timeout: retrying is
        the job of the guard and Prefect, which know whether the operation is idempotent.
        """
        configuration = client.Configuration()
        configuration.retries = urllib3.Retry(total=2, connect=2, read=0, status=0, redirect=0, other=0,
                                              raise_on_status=False)
        raw = self.kubeconfig.get_secret_value() if self.kubeconfig is not None else None
        if raw and self.in_cluster:
            raise ConfigError("KubernetesConnection: set either kubeconfig or in_cluster, not both")
        try:
            if raw:
                return config.new_client_from_config_dict(raw, context=self.context or None, persist_config=False,
                                                          client_configuration=configuration)
            if self.in_cluster:
                config.load_incluster_config(client_configuration=configuration)
                return client.ApiClient(configuration)
        except (ConfigException, KeyError, TypeError, ValueError, OSError) as exc:
            raise ConfigError(f"KubernetesConnection: {scrub(exc, *self._secrets())}") from None
        raise ConfigError("KubernetesConnection: no kubeconfig and in_cluster is false; nothing to connect to")

    @classmethod
    def from_kubeconfig_file(cls, path: str | Path, context: str | None = None, **fields: Any) -> KubernetesConnection:
        """A connection from a kubeconfig file. Certificates and keys it references by path are inlined as
        `*-data`, so the block stands alone wherever it is loaded; exec plugins are kept as they are."""
        path = Path(path).expanduser()
        try:
            raw = yaml.safe_load(path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("not a kubeconfig mapping")
            for section, key in _FILE_FIELDS:
                for entry in raw.get(f"{section}s") or []:
                    body = entry.get(section) or {}
                    if body.get(key) and not body.get(f"{key}-data"):
                        data = (path.parent / Path(body.pop(key)).expanduser()).read_bytes()
                        body[f"{key}-data"] = base64.b64encode(data).decode()
        except (OSError, ValueError, yaml.YAMLError, AttributeError) as exc:
            raise ConfigError(f"cannot read kubeconfig {path}: {type(exc).__name__}") from None
        return cls(kubeconfig=raw, context=context, **fields)

    def describe(self) -> str:
        """Which cluster this is, without credentials."""
        if self.in_cluster:
            return "in-cluster service account"
        raw = self.kubeconfig.get_secret_value() if self.kubeconfig is not None else {}
        name = self.context or (raw or {}).get("current-context") or "(no context)"
        return f"kubeconfig context {name}"

    def _secrets(self) -> list[str]:
        """Every secret string of the block (tokens, keys, passwords in the kubeconfig), for scrubbing."""
        return secret_values(self)

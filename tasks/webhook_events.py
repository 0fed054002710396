"""GitHub deliveries as Prefect events, and the routes (which event runs which deployment).

The routes are read from prefect.yaml: every deployment trigger that matches `github.repository.*` resources
declares the event names it runs on (`expect`). So the gateway knows which events will run something (others
are recorded as ignored) from the same declaration that starts the runs — one place to edit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DELIVERY_NAMESPACE", "Routes", "event_id", "event_name", "to_event"]

DELIVERY_NAMESPACE = uuid.UUID("6b1f3a2e-9c57-4d0e-8a59-5f0d0e6a7c11")
RESOURCE_PREFIX = "github.repository."


def event_name(event: str, action: str | None) -> str:
    return f"github.{event}.{action}" if action else f"github.{event}"


def event_id(delivery_id: str) -> uuid.UUID:
    """Stable per delivery: the same delivery always becomes the same Prefect event id."""
    return uuid.uuid5(DELIVERY_NAMESPACE, f"github:{delivery_id}")


@dataclass(frozen=True)
class Routes:
    """(event-name glob, deployment name) pairs, in file order."""

    rules: tuple[tuple[str, str], ...]

    def route(self, name: str) -> str | None:
        for pattern, deployment in self.rules:
            if fnmatchcase(name, pattern):
                return deployment
        return None

    @classmethod
    def from_prefect_yaml(cls, path: Path) -> Routes:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        rules = []
        for deployment in spec.get("deployments") or []:
            for trigger in deployment.get("triggers") or []:
                resource = (trigger.get("match") or {}).get("prefect.resource.id", "")
                resources = resource if isinstance(resource, list) else [resource]
                if trigger.get("enabled", True) and any(r.startswith(RESOURCE_PREFIX) for r in resources):
                    rules += [(pattern, deployment["name"]) for pattern in trigger.get("expect") or []]
        return cls(tuple(rules))


def to_event(delivery: dict[str, Any]) -> dict[str, Any]:
    """A Prefect event (JSON) for a stored delivery; deployments' triggers read `payload.delivery_id`."""
    name = event_name(delivery["event"], delivery.get("action"))
    repo = delivery.get("repository") or "unknown"
    payload: dict[str, Any] = {"delivery_id": delivery["delivery_id"], "event": delivery["event"],
                               "action": delivery.get("action"), "repository": repo,
                               "tenant": delivery["tenant_id"]}
    if delivery.get("payload") is not None:
        payload["github"] = delivery["payload"]
    else:
        payload["github_truncated"] = f"{delivery.get('payload_bytes')} bytes; read it from webhook_deliveries"
    received = delivery.get("received_at") or datetime.now(timezone.utc)
    return {
        "id": str(event_id(delivery["delivery_id"])),
        "occurred": received.isoformat(),
        "event": name,
        "resource": {"prefect.resource.id": f"{RESOURCE_PREFIX}{repo}", "prefect.resource.name": repo,
                     "devmesh.tenant": delivery["tenant_id"]},
        "related": [{"prefect.resource.id": f"github.delivery.{delivery['delivery_id']}",
                     "prefect.resource.role": "delivery"}],
        "payload": payload,
    }

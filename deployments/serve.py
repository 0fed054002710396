"""Serve every deployment of prefect.yaml from this process (what `devmesh up` runs): same names, parameters,
schedules and triggers as `prefect deploy --all` would create, without a work pool or a worker.

    python -m deployments.serve [path/to/prefect.yaml]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.events import DeploymentEventTrigger
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron, Interval

__all__ = ["runner_deployments"]

ROOT = Path(__file__).resolve().parents[1]


def _schedules(spec: list[dict[str, Any]]) -> list:
    out = []
    for s in spec or []:
        active = s.get("active", True)
        if "cron" in s:
            out.append(Cron(s["cron"], timezone=s.get("timezone"), active=active))
        elif "interval" in s:
            out.append(Interval(s["interval"], timezone=s.get("timezone"), active=active))
    return out


def runner_deployments(path: Path = ROOT / "prefect.yaml") -> list:
    """One RunnerDeployment per prefect.yaml deployment, with its schedules and event triggers."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = []
    for d in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        triggers = [DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"})
                    for t in d.get("triggers") or []]
        out.append(flow.to_deployment(name=d["name"], description=d.get("description"),
                                      parameters=d.get("parameters"), schedules=_schedules(d.get("schedules")),
                                      triggers=triggers or None))
    return out


def main() -> None:  # pragma: no cover - run by `devmesh up`
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "prefect.yaml"
    serve(*runner_deployments(path), limit=4)


if __name__ == "__main__":  # pragma: no cover
    main()

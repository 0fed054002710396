"""Serve the deployments of prefect.yaml from this process (what `devmesh up` runs): same names, parameters,
schedules, triggers and concurrency limits as `prefect deploy --all` would create, without a work pool or a worker.

    python -m deployments.serve [--queue interactive|background] [--limit N] [path/to/prefect.yaml]

`--queue` serves only the deployments of that work queue (their `work_pool.work_queue_name`): `devmesh up` starts
one runner per queue, so operations and approvals (interactive) never wait behind webhook ingestion (background)
for a slot of the runner.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.events import DeploymentEventTrigger
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron, Interval

__all__ = ["QUEUES", "deployment_queue", "runner_deployments"]

ROOT = Path(__file__).resolve().parents[1]
QUEUES = {"interactive": 4, "background": 4}  # work queue -> runs its runner starts at once


def _schedules(spec: list[dict[str, Any]]) -> list:
    out = []
    for s in spec or []:
        active = s.get("active", True)
        if "cron" in s:
            out.append(Cron(s["cron"], timezone=s.get("timezone"), active=active))
        elif "interval" in s:
            out.append(Interval(s["interval"], timezone=s.get("timezone"), active=active))
    return out


def deployment_queue(deployment: dict[str, Any]) -> str:
    """The work queue a prefect.yaml deployment runs in (background when it names none)."""
    return (deployment.get("work_pool") or {}).get("work_queue_name") or "background"


def runner_deployments(path: Path = ROOT / "prefect.yaml", queue: str | None = None) -> list:
    """One RunnerDeployment per prefect.yaml deployment (of `queue` only, if given), with its schedules, event
    triggers and concurrency limit."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = []
    for d in spec["deployments"]:
        if queue is not None and deployment_queue(d) != queue:
            continue
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        triggers = [DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"})
                    for t in d.get("triggers") or []]
        limit = d.get("concurrency_limit")
        out.append(flow.to_deployment(name=d["name"], description=d.get("description"),
                                      parameters=d.get("parameters"), schedules=_schedules(d.get("schedules")),
                                      triggers=triggers or None,
                                      concurrency_limit=ConcurrencyLimitConfig(**limit) if isinstance(limit, dict)
                                      else limit))
    return out


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - run by `devmesh up`
    parser = argparse.ArgumentParser(prog="python -m deployments.serve")
    parser.add_argument("spec", nargs="?", default=str(ROOT / "prefect.yaml"))
    parser.add_argument("--queue", choices=sorted(QUEUES), help="serve only this work queue's deployments")
    parser.add_argument("--limit", type=int, help="flow runs at once (default: the queue's, else 4)")
    args = parser.parse_args(argv)
    deployments = runner_deployments(Path(args.spec), args.queue)
    serve(*deployments, limit=args.limit or QUEUES.get(args.queue or "", 4))


if __name__ == "__main__":  # pragma: no cover
    main()

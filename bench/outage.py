"""Prefect server outage: the stack's Prefect server is killed (SIGKILL) for `downtime_s` while signed webhooks
arrive at the gateway; it is then restarted on the same port and database. Every accepted delivery must run its
flow exactly once afterwards: none lost, none twice.

The stack is the one `devmesh up` runs — embedded PostgreSQL, `prefect server start` (its state in a
`prefect` database of the embedded PostgreSQL, as `devmesh up` keeps it), `python -m deployments.serve` (every deployment of prefect.yaml with its event triggers),
and the gateway (uvicorn) — started here component by component, because `devmesh up` stops the whole stack when
one component exits, and the point is to take one away.

Why SIGKILL: a crash (OOM killer, lost node) is the harsher case. SIGTERM lets uvicorn finish in-flight requests;
SIGKILL gives the server no chance to, and loses its in-memory event queue. The server is idle at the moment it is
killed, so the figure is about what arrives while it is down.

Reported: deliveries sent / accepted (202) / duplicates (200, redeliveries of ids already accepted), deliveries
pending at the gateway during the outage, time from restart to the last accepted delivery processed, how often each
delivery was handled (min / max of its `handled` count: a handler run claims deliveries in batches, so one run
serves many), lost (accepted, never handled), doubled (handled more than once), and the handler runs (completed;
cancelled at once by the deployment's concurrency limit while another drained).

    .venv/bin/python -m bench.outage          # 30 s outage, 40 deliveries + 10 redeliveries
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
WEBHOOKS = ROOT.parent / "shared" / "testdata" / "github-webhooks"
SECRET = "outage-webhook-secret-0123456789abcdef"
ROUTED = ("github-discussions", "github-push")  # the deployments that webhook events run (prefect.yaml triggers)
# real GitHub payloads (../shared/testdata/github-webhooks/<event>/<action>.json) of events routed to a flow
KINDS = [("issues", "opened"), ("issue_comment", "created"), ("pull_request", "opened"), ("issues", "closed"),
         ("issues", "edited"), ("issues", "labeled"), ("issues", "reopened"), ("pull_request", "closed")]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payloads(count: int, webhooks: Path = WEBHOOKS) -> list[tuple[str, bytes]]:
    """`count` (event, body) pairs cycling through KINDS; each names its own issue / pull request / comment (the
    number or id is made unique), so every delivery is its own document and the runs do not overwrite each other."""
    out = []
    for i in range(count):
        event, action = KINDS[i % len(KINDS)]
        payload = json.loads((webhooks / event / f"{action}.json").read_text(encoding="utf-8"))
        payload = copy.deepcopy(payload)
        number = 10_000 + i
        if event == "pull_request":
            payload["number"] = number
            payload["pull_request"]["number"] = number
        else:
            payload["issue"]["number"] = number
        if event == "issue_comment":
            payload["comment"]["id"] = 90_000_000 + i
        out.append((event, json.dumps(payload).encode()))
    return out


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class OutageStack:
    """The stack of `devmesh up`, started component by component so that the Prefect server can be killed and
    restarted alone. Use as a context manager; every child is stopped on exit (even after a failure)."""

    def __init__(self, home: Path, *, embedder: str = "local", runner_poll_s: int | None = None,
                 retry_interval_s: float | None = None, webhook_deployments_only: bool = False, lean_server: bool = False,
                 runner_per_queue: bool = False, extra_env: dict[str, str] | None = None,
                 prefect_database: str = "postgres", log=print):
        """webhook_deployments_only: serve only the deployments with event triggers (github-discussions,
        github-push) instead of all of prefect.yaml; lean_server: no UI and no scheduler service on the Prefect
        server. Both only shorten start-up (the test's budget); triggers, events and runs are the same.
        runner_per_queue: one runner per work queue, as `devmesh up` (default: one runner for every deployment).
        prefect_database: where the Prefect server keeps its state, as `devmesh up` (deployments.stack.
        prefect_database): "postgres" (a database in the embedded cluster) or "sqlite"."""
        self.runner_per_queue = runner_per_queue
        self.prefect_database = prefect_database  # "postgres" (as `devmesh up`) or "sqlite"
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.prefect_port, self.gateway_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.gateway = f"http://127.0.0.1:{self.gateway_port}"
        self.auth = ("devmesh", secrets.token_urlsafe(18))
        from cryptography.fernet import Fernet

        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVMESH_", "PREFECT_"))}
        (self.home / "prefect").mkdir(exist_ok=True)
        (self.home / "metrics").mkdir(exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        # what deployments.stack.prefect_environment gives every process of `devmesh up`
        env.update({
            "DEVMESH_HOME": str(self.home), "DEVMESH_EMBEDDER": embedder,
            "PREFECT_HOME": str(self.home / "prefect"),
            "PREFECT_SERVER_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(self.prefect_port),
            "PREFECT_API_URL": self.api, "PREFECT_SERVER_API_AUTH_STRING": ":".join(self.auth),
            "PREFECT_API_AUTH_STRING": ":".join(self.auth), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO", "PROMETHEUS_MULTIPROC_DIR": str(self.home / "metrics"),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra_env or {})
        if runner_poll_s is not None:
            env["PREFECT_RUNNER_POLL_FREQUENCY"] = str(runner_poll_s)
        if retry_interval_s is not None:
            env["DEVMESH_GATEWAY__RETRY_INTERVAL_S"] = str(retry_interval_s)
        if lean_server:
            env.update({"PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
                        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"})
        self.spec = ROOT / "prefect.yaml"
        if webhook_deployments_only:
            import yaml

            spec = yaml.safe_load(self.spec.read_text(encoding="utf-8"))
            spec["deployments"] = [d for d in spec["deployments"] if d["name"] in ROUTED]
            self.spec = self.home / "prefect.webhooks.yaml"
            self.spec.write_text(yaml.safe_dump(spec), encoding="utf-8")
            env["DEVMESH_GATEWAY__ROUTES_FILE"] = str(self.spec)
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.pool = None

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def __enter__(self) -> OutageStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.home / "logs" / f"{name}.log", "ab")
        # own session: a signal to the group reaches uvicorn's and the runner's children too
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        from blocks.postgres import PgVectorStore
        from blocks.settings import Settings
        from tasks.migrate import ensure_schema

        from deployments.stack import prefect_database

        settings = Settings(home=self.home, embedder="local", prefect_database=self.prefect_database)
        store = PgVectorStore.from_settings(settings)
        self.pool = store.pool()  # starts the embedded server; children join it
        ensure_schema(self.pool)
        prefect_env, _ = prefect_database(settings, store)  # as `devmesh up`: its own database in the cluster
        self.env.update(prefect_env)
        started = time.monotonic()
        self.start_server()
        self.log(f"prefect server up in {time.monotonic() - started:.1f} s")
        self._webhook_block()
        if self.runner_per_queue:
            from deployments.stack import SERVE_QUEUES

            for queue in SERVE_QUEUES:
                self._spawn(f"serve-{queue}", [sys.executable, "-m", "deployments.serve", "--queue", queue,
                                               str(self.spec)])
        else:
            self._spawn("serve", [sys.executable, "-m", "deployments.serve", str(self.spec)])
        self._spawn("gateway", [sys.executable, "-m", "deployments.gateway_server", "--host", "127.0.0.1",
                                "--port", str(self.gateway_port)])
        self._wait_deployments(180)
        self._wait("gateway", f"{self.gateway}/healthz", None, 120)
        self._write_stack_file()
        self.log(f"deployments, triggers and gateway up in {time.monotonic() - started:.1f} s")

    def _write_stack_file(self) -> None:
        """DEVMESH_HOME's stack.json, as `devmesh up` writes it once everything is up: `devmesh status` reads it, and
        `devmesh op run` finds the gateway in it (deployments/operator_channel.py)."""
        from deployments.stack import STACK_FILE

        (self.home / STACK_FILE).write_text(json.dumps({
            "started_at": time.time(), "prefect_api": self.api, "prefect_ui": self.api.removesuffix("/api"),
            "gateway": self.gateway, "database": "embedded", "pids": {n: p.pid for n, p in self.procs.items()},
            "supervisor": os.getpid(), "registration": "open"}, indent=2))

    def start_server(self, timeout: float = 180) -> float:
        """Start `prefect server start` on the stack's port and database; returns the seconds it took."""
        started = time.monotonic()
        self._spawn("prefect-server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                       "--port", str(self.prefect_port)])
        self._wait("prefect-server", f"{self.api}/health", self.auth, timeout)
        return time.monotonic() - started

    def kill_server(self) -> None:
        """SIGKILL the Prefect server's process group (a crash: no graceful shutdown)."""
        proc = self.procs.pop("prefect-server")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while self._healthy(f"{self.api}/health", self.auth) and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGINT (as Ctrl-C in `devmesh up`) to gateway, serve, server in that order; SIGKILL what lingers; then
        the embedded PostgreSQL of this home (children killed with SIGKILL stay on its list of users, so the last
        process to exit would not stop it)."""
        runners = [name for name in self.procs if name.startswith("serve")]
        for name in ("gateway", *runners, "prefect-server"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)
        self.procs.clear()
        from deployments.stack import STACK_FILE

        (self.home / STACK_FILE).unlink(missing_ok=True)
        from bench.run import stop_servers_under

        stop_servers_under(self.home, log=self.log)

    def prefect_database_url(self) -> str:
        """The database the Prefect server keeps its state in (SQLAlchemy URL)."""
        return self.env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or \
            f"sqlite+aiosqlite:///{self.home / 'prefect' / 'prefect.db'}"

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    # --- waiting -------------------------------------------------------------------------------------------------

    @staticmethod
    def _healthy(url: str, auth: tuple[str, str] | None) -> bool:
        try:
            return httpx.get(url, timeout=2, auth=auth).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait(self, name: str, url: str, auth, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited ({self.procs[name].returncode}); see {self.home / 'logs'}")
            if self._healthy(url, auth):
                return
            time.sleep(0.25)
        raise RuntimeError(f"{name} not healthy within {timeout:.0f} s; see {self.home / 'logs'}")

    def _wait_deployments(self, timeout: float) -> None:
        """Until the served deployments and their trigger automations exist (as `devmesh up` waits)."""
        from deployments.stack import wait_for_deployments

        wait_for_deployments([p for n, p in self.procs.items() if n.startswith("serve")], self.api, self.auth,
                             timeout, spec=self.spec,
                             hint=f"; see {self.home / 'logs'}")

    def _webhook_block(self) -> None:
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
        from pydantic import SecretStr

        from blocks.webhooks import GitHubWebhook

        with temporary_settings({PREFECT_API_URL: self.api, PREFECT_API_AUTH_STRING: ":".join(self.auth)}):
            GitHubWebhook(secrets=[SecretStr(SECRET)]).save("devmesh-github-webhook", overwrite=True)

    # --- traffic and inspection ------------------------------------------------------------------------------

    def post(self, client: httpx.Client, event: str, delivery_id: str, body: bytes) -> int:
        response = client.post(f"{self.gateway}/webhooks/github", content=body, headers={
            "Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery_id,
            "X-Hub-Signature-256": sign(body)})
        return response.status_code

    def pending_at_gateway(self) -> int:
        return httpx.get(f"{self.gateway}/healthz", timeout=5).json()["pending_events"]

    def deliveries(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        from psycopg.rows import dict_row

        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT delivery_id, status, attempts, last_error, flow_run_id, emitted_at, processed_at,"
                        " received_at, handled"
                        " FROM webhook_deliveries WHERE delivery_id = ANY(%s)", [ids])
            return {r["delivery_id"]: r for r in cur.fetchall()}

    def flow_runs(self) -> list[dict[str, Any]]:
        """Every flow run of the webhook-routed deployments that is due (id, route parameter, state type, start);
        runs the scheduler created for a later time are left out."""
        from datetime import datetime, timezone

        deployments = httpx.post(f"{self.api}/deployments/filter", auth=self.auth, timeout=10, json={
            "deployments": {"name": {"any_": list(ROUTED)}}}).json()
        ids = [d["id"] for d in deployments]
        runs, offset = [], 0
        while True:
            page = httpx.post(f"{self.api}/flow_runs/filter", auth=self.auth, timeout=30, json={
                "flow_runs": {"deployment_id": {"any_": ids}}, "limit": 200, "offset": offset}).json()
            now = datetime.now(timezone.utc)
            runs += [{"id": r["id"], "route": (r.get("parameters") or {}).get("route"), "state": r.get("state_type"),
                      "state_name": r.get("state_name"), "start_time": r.get("start_time"),
                      "end_time": r.get("end_time")} for r in page
                     if r.get("state_type") != "SCHEDULED" or not r.get("expected_start_time")
                     or datetime.fromisoformat(r["expected_start_time"]) <= now]
            if len(page) < 200:
                return runs
            offset += 200

    def wait_drained(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Until every delivery in `ids` is processed or failed and every routed flow run is final."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.deliveries(ids)
            done = all(rows.get(i, {}).get("status") in ("processed", "failed") for i in ids)
            if done and all(r["state"] in FINAL for r in self.flow_runs()):
                return rows
            if time.monotonic() > deadline:
                counts = Counter(r.get("status") for r in rows.values())
                raise TimeoutError(f"not drained in {timeout:.0f} s: deliveries {dict(counts)}, alive "
                                   f"{self.alive()}; logs in {self.home / 'logs'}")
            dead = [n for n, up in self.alive().items() if not up]
            if dead:
                raise RuntimeError(f"{dead} exited while draining; logs in {self.home / 'logs'}")
            time.sleep(0.5)


def outage(stack: OutageStack, *, deliveries: int, redeliveries: int, downtime_s: float, drain_timeout_s: float,
           log=print) -> dict[str, Any]:
    """Kill the server, send `deliveries` (+ `redeliveries` of ids already sent) while it is down, restart it after
    `downtime_s`, wait until everything ran; the figures and the per-delivery evidence."""
    bodies = payloads(deliveries)
    ids = [f"outage-{uuid.uuid4()}" for _ in bodies]
    before = {r["id"] for r in stack.flow_runs()}
    stack.kill_server()
    down_at = time.monotonic()
    statuses: Counter[int] = Counter()
    accepted, duplicates = [], 0
    with httpx.Client(timeout=10) as client:
        for (event, body), delivery in zip(bodies, ids):
            status = stack.post(client, event, delivery, body)
            statuses[status] += 1
            if status == 202:
                accepted.append(delivery)
        for k in range(redeliveries):  # GitHub's "Redeliver": same id, same body
            j = (k * 7) % len(bodies)
            status = stack.post(client, bodies[j][0], ids[j], bodies[j][1])
            statuses[status] += 1
            duplicates += status == 200
    sent_s = time.monotonic() - down_at
    # while down: everything waits in the gateway's outbox, and its emit attempts fail
    while time.monotonic() - down_at < downtime_s:
        time.sleep(min(0.25, max(0.0, downtime_s - (time.monotonic() - down_at))))
    pending_down = stack.pending_at_gateway()
    rows_down = stack.deliveries(ids)
    failed_attempts = sum(1 for r in rows_down.values() if r["status"] == "received" and r["last_error"])
    downtime = time.monotonic() - down_at
    log(f"server down {downtime:.1f} s: {len(accepted)} accepted, {duplicates} duplicates, {pending_down} pending")
    restart_s = stack.start_server()
    restarted = time.monotonic()
    rows = stack.wait_drained(ids, drain_timeout_s)
    drain_s = time.monotonic() - restarted
    # once more after the drain: a redelivery of every accepted id is still a duplicate, and nothing runs again
    with httpx.Client(timeout=10) as client:
        late = Counter(stack.post(client, bodies[ids.index(i)][0], i, bodies[ids.index(i)][1]) for i in accepted)
    runs = [r for r in stack.flow_runs() if r["id"] not in before]
    by_id = {r["id"]: r for r in runs}
    counts = [rows[i]["handled"] if i in rows else 0 for i in accepted]
    figures = {
        "deliveries_sent": deliveries + redeliveries, "unique_deliveries": deliveries,
        "accepted": len(accepted), "duplicates": duplicates, "statuses": {str(k): v for k, v in statuses.items()},
        "send_seconds": round(sent_s, 2), "downtime_seconds": round(downtime, 2),
        "pending_at_gateway_while_down": pending_down, "emit_failed_while_down": failed_attempts,
        "server_restart_seconds": round(restart_s, 2), "drain_seconds_after_restart": round(drain_s, 2),
        "flow_runs": len(runs), "flow_runs_completed": sum(r["state"] == "COMPLETED" for r in runs),
        "flow_runs_cancelled": sum(r["state"] == "CANCELLED" for r in runs),
        "handled_per_delivery_min": min(counts) if counts else 0,
        "handled_per_delivery_max": max(counts) if counts else 0,
        "lost": sum(1 for c in counts if c == 0),
        "failed": sum(1 for i in accepted if rows.get(i, {}).get("status") == "failed"),
        "doubled": sum(1 for c in counts if c > 1),
        "late_redeliveries": {str(k): v for k, v in late.items()},
        "delivery_status": dict(Counter(r["status"] for r in rows.values())),
        "run_ids_match_rows": all(by_id.get(str(rows[i]["flow_run_id"]), {}).get("state") == "COMPLETED"
                                  for i in accepted if i in rows),
    }
    log(json.dumps(figures))
    return {"figures": figures, "accepted_ids": accepted, "rows": rows, "runs": runs}


def run(workdir: Path, *, deliveries: int = 40, redeliveries: int = 10, downtime_s: float = 30.0,
        drain_timeout_s: float = 900.0, runner_poll_s: int | None = None, retry_interval_s: float | None = None,
        log=print) -> dict[str, Any]:
    """The outage benchmark in `workdir` (its own embedded PostgreSQL and Prefect database); every child stopped."""
    from bench.run import stop_servers_under
    from blocks.postgres import close_pools

    workdir = Path(workdir)
    started = time.monotonic()
    try:
        with OutageStack(workdir / "home", runner_poll_s=runner_poll_s, retry_interval_s=retry_interval_s,
                         log=log) as stack:
            log(f"stack up in {time.monotonic() - started:.1f} s")
            result = outage(stack, deliveries=deliveries, redeliveries=redeliveries, downtime_s=downtime_s,
                            drain_timeout_s=drain_timeout_s, log=log)
    finally:
        close_pools()
        stop_servers_under(workdir)  # the embedded PostgreSQL of this run's home, whoever is left using it
    return {**result["figures"], "parameters": {
        "deliveries": deliveries, "redeliveries": redeliveries, "downtime_s": downtime_s,
        "kill_signal": "SIGKILL", "runner_poll_s": runner_poll_s or "prefect default (10)",
        "gateway_retry_interval_s": retry_interval_s or "devmesh default (5)", "serve_limit": 4,
        "payload_kinds": [f"{e}.{a}" for e, a in KINDS]},
        "total_seconds": round(time.monotonic() - started, 1)}


if __name__ == "__main__":
    from bench.run import DATA

    target = DATA / f"outage-{time.strftime('%Y%m%d-%H%M%S')}"
    print(json.dumps(run(target, log=lambda m: print(m, file=sys.stderr)), indent=2))

"""`devmesh up` / `devmesh status`: the whole stack on one machine, run the way it is run in production.

up starts, in order: the embedded PostgreSQL (unless DEVMESH_DATABASE_URL points elsewhere), a Prefect server
(bound to loopback, basic auth on its API, PREFECT_SERVER_ENCRYPTION_KEY from the environment), the deployments
of prefect.yaml served by one runner per work queue (`deployments.serve --queue interactive|background`: operations
and approvals never wait behind webhook ingestion), and the gateway (uvicorn). Ctrl-C stops them in
reverse order. Data stays under DEVMESH_HOME, so running it again reuses it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from blocks.errors import ConfigError
from blocks.settings import Settings

if TYPE_CHECKING:
    from tasks.runtime import Runtime

__all__ = ["Component", "prefect_database", "prefect_environment", "status", "up"]

SERVE_QUEUES = ("interactive", "background")  # deployments.serve.QUEUES: one runner each
PREFECT_PORT = int(os.environ.get("DEVMESH_PREFECT_PORT", "4200"))
STACK_FILE = "stack.json"


@dataclass
class Component:
    name: str
    process: subprocess.Popen
    health: str | None


def _auth_string(home: Path) -> str:
    """The Prefect API's basic-auth `user:password`: from the environment, else generated once (file mode 600)."""
    given = os.environ.get("PREFECT_SERVER_API_AUTH_STRING") or os.environ.get("PREFECT_API_AUTH_STRING")
    if given:
        return given
    path = home / "prefect-auth"
    if not path.exists():
        path.write_text(f"devmesh:{secrets.token_urlsafe(24)}\n", encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def prefect_environment(settings: Settings, port: int = PREFECT_PORT) -> dict[str, str]:
    """Environment of every process of the stack: one Prefect server, on loopback, with auth and our key."""
    key = os.environ.get("PREFECT_SERVER_ENCRYPTION_KEY")
    if not key:
        raise ConfigError(
            "PREFECT_SERVER_ENCRYPTION_KEY is not set. Prefect encrypts block secrets with it; keep it outside "
            "the data directory. Generate one with: python -c \"from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())\"")
    home = Path(settings.home).expanduser().resolve()
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    auth = _auth_string(home)
    metrics = home / "metrics"  # prometheus-client's multi-process directory, fresh for each start
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir()
    return {
        **os.environ,
        "DEVMESH_HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ENCRYPTION_KEY": key,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_API_AUTH_STRING": auth,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        # runners look for due runs every 2 s instead of 10: a webhook's handler run or an approval's operate run
        # starts seconds after it is created (a poll is one cheap API call)
        "PREFECT_RUNNER_POLL_FREQUENCY": os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY", "2"),
    }


PREFECT_DATABASE = "prefect"  # the Prefect server's database in the embedded PostgreSQL


def prefect_database(settings: Settings, store) -> tuple[dict[str, str], str]:
    """The Prefect server's database: (environment to give it, a line saying which).

    PREFECT_SERVER_DATABASE_CONNECTION_URL given: that. Else, with settings.prefect_database 'postgres' (the
    default) and the embedded PostgreSQL: a `prefect` database in the same cluster, over its Unix socket (asyncpg).
    Why not Prefect's SQLite default: SQLite takes one writer at a time, and under a burst of webhooks the server's
    event and task-run writes held it, so a slot request of the tool cap was answered 503 (72 % of them measured in
    the burst bench, docs/benchmarks.md section 10). Else (a managed PostgreSQL for devmesh, where devmesh's role
    should not create databases; or 'sqlite' asked for): Prefect's SQLite file under home/prefect."""
    given = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    if given:
        return {}, "prefect database: PREFECT_SERVER_DATABASE_CONNECTION_URL"
    if settings.prefect_database == "postgres" and store.embedded:
        from blocks.postgres import embedded_database

        url = embedded_database(Path(settings.home).expanduser().resolve(), PREFECT_DATABASE)
        return ({"PREFECT_SERVER_DATABASE_CONNECTION_URL": url.replace("postgresql://", "postgresql+asyncpg://", 1)},
                f"prefect database: {PREFECT_DATABASE!r} in the embedded PostgreSQL")
    why = "DEVMESH_PREFECT_DATABASE=sqlite" if settings.prefect_database == "sqlite" else \
        "DEVMESH_DATABASE_URL is set; give PREFECT_SERVER_DATABASE_CONNECTION_URL (postgresql+asyncpg://...) " \
        "for a server that takes bursts"
    return {}, f"prefect database: SQLite under {Path(settings.home) / 'prefect'} ({why})"


def _healthy(url: str, auth: str | None = None) -> bool:
    try:
        user, _, password = (auth or "").partition(":")
        response = httpx.get(url, timeout=2, auth=(user, password) if auth else None)
        return response.status_code == 200
    except httpx.HTTPError:
        return False


class Stopped(Exception):
    """Ctrl-C (or SIGTERM) came while the stack was starting."""


def _wait(component: Component, auth: str | None, timeout: float, stopped=lambda: False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopped():  # Ctrl-C while starting: stop now, not after the wait (the caller stops what started)
            raise Stopped()
        if component.process.poll() is not None:
            raise RuntimeError(f"{component.name} exited with code {component.process.returncode} while starting")
        if component.health is None or _healthy(component.health, auth):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{component.name} did not become healthy within {timeout:.0f} s ({component.health})")


def expected_deployments(spec: Path | None = None) -> tuple[int, int]:
    """(deployments, triggers) declared in `spec` (default: this repository's prefect.yaml)."""
    import yaml

    spec = spec or Path(__file__).resolve().parents[1] / "prefect.yaml"
    deployments = yaml.safe_load(spec.read_text(encoding="utf-8"))["deployments"]
    return len(deployments), sum(len(d.get("triggers") or []) for d in deployments)


def wait_for_deployments(serving: subprocess.Popen | list[subprocess.Popen], api: str, auth: tuple[str, str],
                         timeout: float, spec: Path | None = None, hint: str = "") -> None:
    """Block until the deployments the `serving` processes serve and their trigger automations exist on the
    Prefect server."""
    want_deployments, want_triggers = expected_deployments(spec)
    processes = serving if isinstance(serving, list) else [serving]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"deployments exited with code {process.returncode} while starting{hint}")
        try:
            deployments = httpx.post(f"{api}/deployments/count", json={}, auth=auth, timeout=5).json()
            automations = httpx.post(f"{api}/automations/count", json={}, auth=auth, timeout=5).json()
            if deployments >= want_deployments and automations >= want_triggers:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the served deployments did not register within {timeout:.0f} s{hint}")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _in_stack(env: dict[str, str], code: str, what: str) -> str:
    """Run `code` in a child with the stack's environment (its Prefect API); returns what it printed."""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"could not create {what}: {out.stderr[-500:]}")
    lines = out.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _ensure_webhook_block(env: dict[str, str], name: str) -> str | None:
    """Create the webhook block on first start, from DEVMESH_WEBHOOK_SECRET or a generated secret."""
    code = (
        "import os, secrets\n"
        "from pydantic import SecretStr\n"
        "from blocks.webhooks import GitHubWebhook\n"
        f"name = {name!r}\n"
        "try:\n    GitHubWebhook.load(name); print('exists')\n"
        "except ValueError:\n"
        "    given = os.environ.get('DEVMESH_WEBHOOK_SECRET')\n"
        "    GitHubWebhook(secrets=[SecretStr(given or secrets.token_urlsafe(32))]).save(name)\n"
        "    print('given' if given else 'generated')\n")
    return _in_stack(env, code, "the webhook block")


def _ensure_audit_key(env: dict[str, str], name: str) -> str:
    """Create the audit trail's signing key in its Secret block on first start; returns 'created|exists <fp>'."""
    code = ("from blocks.audit_key import load_or_create_audit_key\n"
            f"key, created = load_or_create_audit_key({name!r})\n"
            "print(('created' if created else 'exists'), key.fingerprint)\n")
    return _in_stack(env, code, "the audit key")


def _register_blocks(env: dict[str, str]) -> None:
    """Every devmesh block type in the server's catalog, by the command README gives."""
    out = subprocess.run([sys.executable, "-m", "prefect", "block", "register", "-m", "blocks.catalog"], env=env,
                         capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"could not register the block types: {(out.stdout + out.stderr)[-500:]}")


def _check_webhook_secret() -> None:
    from blocks.webhooks import MIN_SECRET_CHARS

    given = os.environ.get("DEVMESH_WEBHOOK_SECRET")
    if given is not None and len(given) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"DEVMESH_WEBHOOK_SECRET has {len(given)} characters; webhook secrets need at least {MIN_SECRET_CHARS}."
            " Generate one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\" (and give the same "
            "to GitHub), or unset it to have one generated into the webhook block")


def up(settings: Runtime | Settings | None = None, *, gateway_port: int | None = None,
       prefect_port: int = PREFECT_PORT, echo=print) -> int:
    """Start the stack and block until Ctrl-C (or a component dies); returns the exit code. `settings` may be the
    process's Runtime; otherwise `up` builds it."""
    from tasks.runtime import Runtime

    runtime = Runtime.of(settings)
    settings = runtime.settings
    _check_webhook_secret()
    env = prefect_environment(settings, prefect_port)
    home = Path(env["DEVMESH_HOME"])
    gateway_port = gateway_port or settings.gateway.port
    for port in (prefect_port, gateway_port):
        if not _port_free(port):
            raise ConfigError(f"port {port} on 127.0.0.1 is in use (is devmesh already up? `devmesh status`)")
    store = runtime.store
    runtime.pool()  # the schema ensured; starts (or joins) the embedded PostgreSQL; children join it
    echo(f"database: {store.describe()}")
    prefect_env, prefect_db = prefect_database(settings, store)
    env.update(prefect_env)
    echo(prefect_db)
    components: list[Component] = []
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    python = sys.executable
    prefect_api = env["PREFECT_API_URL"]
    try:
        server = Component("prefect server", subprocess.Popen(
            [python, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            env=env, stdout=_log(home, "prefect-server"), stderr=subprocess.STDOUT), f"{prefect_api}/health")
        components.append(server)
        # a first start migrates Prefect's schema (on PostgreSQL, ~20 s on an idle machine; minutes under heavy load)
        _wait(server, env["PREFECT_API_AUTH_STRING"], 600, lambda: stopping)
        echo(f"prefect UI: http://127.0.0.1:{prefect_port}  (API {prefect_api}, basic auth: {home / 'prefect-auth'}"
             f" or PREFECT_API_AUTH_STRING)")
        _register_blocks(env)
        echo("block types registered: the UI's Blocks catalog offers devmesh's (prefect block register -m "
             "blocks.catalog)")
        created = _ensure_webhook_block(env, settings.gateway.webhook_block)
        if created == "generated":
            echo(f"webhook secret generated into block {settings.gateway.webhook_block!r} (read it in the UI)")
        made, _, fingerprint = _ensure_audit_key(env, settings.audit.key_block).partition(" ")
        echo(f"audit key: Secret block {settings.audit.key_block!r} ({made}, {fingerprint}); `devmesh audit verify` "
             "checks the trail against its last checkpoint")
        runners = [Component(f"deployments ({queue})", subprocess.Popen(
            [python, "-m", "deployments.serve", "--queue", queue], env=env, stdout=_log(home, f"serve-{queue}"),
            stderr=subprocess.STDOUT), None) for queue in SERVE_QUEUES]
        components += runners
        user, _, password = env["PREFECT_API_AUTH_STRING"].partition(":")
        # else an early delivery finds no trigger to run it
        wait_for_deployments([r.process for r in runners], env["PREFECT_API_URL"], (user, password), timeout=180)
        echo("runners: one per work queue (interactive: operate, assistant, search; background: webhooks, ingests, "
             "housekeeping)")
        gateway = Component("gateway", subprocess.Popen(
            [python, "-m", "deployments.gateway_server", "--host", settings.gateway.host, "--port", str(gateway_port)],
            env=env, stdout=_log(home, "gateway"),
            stderr=subprocess.STDOUT), f"http://{settings.gateway.host}:{gateway_port}/healthz")
        components.append(gateway)
        _wait(gateway, None, 120, lambda: stopping)
        (home / STACK_FILE).write_text(json.dumps({
            "started_at": time.time(), "prefect_api": prefect_api, "prefect_ui": f"http://127.0.0.1:{prefect_port}",
            "gateway": f"http://{settings.gateway.host}:{gateway_port}", "database": store.describe(),
            "pids": {c.name: c.process.pid for c in components}, "supervisor": os.getpid(),
            "registration": settings.tenancy.registration}, indent=2))
        echo(f"gateway: http://{settings.gateway.host}:{gateway_port}/webhooks/github")
        echo(f"registration: {registration_text(settings)}")
        echo("devmesh is up; Ctrl-C stops it")
        while not stopping:
            for c in components:
                if c.process.poll() is not None:
                    echo(f"{c.name} exited with code {c.process.returncode}; stopping (logs in {home / 'logs'})")
                    return 1
            time.sleep(0.5)
        return 0
    except Stopped:
        echo("stopped while starting")
        return 130
    finally:
        for c in reversed(components):
            if c.process.poll() is None:
                # SIGINT, as Ctrl-C would: uvicorn and the runner shut down and exit normally, so their exit
                # handlers leave the embedded PostgreSQL's user list (after SIGTERM they would not, and the
                # server would outlive the stack)
                c.process.send_signal(signal.SIGINT)
        for c in reversed(components):
            try:
                c.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                c.process.kill()
        (home / STACK_FILE).unlink(missing_ok=True)
        echo("devmesh stopped")


def _log(home: Path, name: str):
    (home / "logs").mkdir(parents=True, exist_ok=True)
    return open(home / "logs" / f"{name}.log", "ab")


REGISTRATION_MODES = {
    "open": "open (anyone may register an organization; DEVMESH_TENANCY__REGISTRATION=invite or closed restricts it)",
    "invite": "by invite (a one-time token from `devmesh orgs invite`)",
    "closed": "closed (nobody may register an organization)",
}


def registration_text(settings: Settings, mode: str | None = None) -> str:
    """Which registration mode is on, in words."""
    mode = mode or settings.tenancy.registration
    return REGISTRATION_MODES.get(mode, mode)


def status(settings: Settings | None = None) -> dict[str, Any]:
    """What is running, from the stack file and live health checks; and which registration mode is on."""
    settings = settings or Settings()
    home = Path(settings.home).expanduser().resolve()
    path = home / STACK_FILE
    if not path.exists():
        return {"up": False, "reason": f"no {path} (devmesh up is not running)",
                "registration": registration_text(settings)}
    info = json.loads(path.read_text())
    auth_file = home / "prefect-auth"
    auth = os.environ.get("PREFECT_API_AUTH_STRING") or (auth_file.read_text().strip() if auth_file.exists() else None)
    alive = {}
    for name, pid in info["pids"].items():
        try:
            os.kill(pid, 0)
            alive[name] = True
        except OSError:
            alive[name] = False
    checks = {"prefect server": _healthy(f"{info['prefect_api']}/health", auth),
              "gateway": _healthy(f"{info['gateway']}/healthz")}
    return {"up": all(alive.values()) and all(checks.values()), "processes": alive, "health": checks,
            **{k: info[k] for k in ("prefect_ui", "gateway", "database")},
            "registration": registration_text(settings, info.get("registration"))}

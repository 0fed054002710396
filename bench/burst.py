"""Webhooks and operations under burst (issue 15): 1,000 signed deliveries over 60 s against the stack of
`devmesh up`, and guarded operations during the burst.

The stack is `devmesh up`'s — embedded PostgreSQL, `prefect server start`, one runner per work queue
(`deployments.serve --queue interactive|background`), the gateway — started by bench/outage.py's OutageStack, with the
local embedding model. GitHub is the loopback fake of tests/fakes (FakeGitHubRepo, spoken to by the real PyGithub): it
holds the 20 repositories, the pushed commits the push handler fetches files from, and the issues the operations
create and comment on.

Traffic: issues opened, comments created and pushes to the default branch (45 / 35 / 20 %) over 20 repositories,
built from the real payloads in ../shared/testdata/github-webhooks (issues/opened, issue_comment/created, push/push
with its ref, shas and commits set to a real commit of the fake), each carrying a word of its own; sent open-loop at
an even rate from 127.0.0.1, signed like GitHub signs them.

Measured:
- each accepted delivery processed exactly once (its `handled` count is 1, status processed, and the flow run that
  processed it completed); a sample of 100 is then searched by its own word (keyword search) and must be found;
- searchable latency: from the 202 to `processed_at` (set in the transaction after the documents were committed,
  so searchable from then on) — p50 / p99 / max; and the last one after the last send;
- CPU seconds per delivery: the CPU the stack's processes (server, runners and their flow-run processes, gateway,
  PostgreSQL) used from the first send until the last delivery was processed, divided by the deliveries;
- what a flow run costs to start: one handler run with nothing to do, before the burst (wall time from creation to
  running and to completed, CPU of the stack meanwhile), and the handler runs of the burst (completed / cancelled
  at once by the deployment's concurrency limit), counted once they are final (waited for, with a deadline, after
  the last delivery was processed): how the run that handled each delivery ended (attributed by the delivery's
  `flow_run_id`, the claiming run's id), and how long after the last delivery the last of them ended;
- during the burst: `devmesh op run` of a dry run (process start to answer), `devmesh op run --execute` of an
  operation needing no approval (request to finish), and an operation needing approval submitted as REST and MCP
  submit it (`flows.operate.submit_operation`: the `operate` deployment's run pauses), then `devmesh approve`: the
  time from the approve command until the run resumed (the operation left awaiting_approval) and finished.

    .venv/bin/python -m bench.burst                       # 1,000 deliveries over 60 s
    .venv/bin/python -m bench.burst --deliveries 200 --seconds 20   # quick
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.outage import FINAL, ROOT, WEBHOOKS, OutageStack

REPOS = [f"burst-org/repo-{i:02d}" for i in range(20)]
MIX = (("issues", 45), ("issue_comment", 35), ("push", 20))  # percent of the deliveries
TENANT = "default"  # the operator's webhook block feeds the operator's tenant
OPS_REPO = "burst-org/ops"
APPROVER = "burst-approver"


def _word(i: int) -> str:
    return f"brst{i:05d}q"


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def build_deliveries(count: int, fake, webhooks: Path = WEBHOOKS, seed: int = 15) -> list[dict[str, Any]]:
    """`count` deliveries (event, id, body, word, document id) mixing MIX over REPOS, from the real payloads; the
    pushes' commits are made on `fake` first (each adds one file holding its word)."""
    rng = random.Random(seed)
    kinds = [k for k, share in MIX for _ in range(share)]
    issue = json.loads((webhooks / "issues" / "opened.json").read_text(encoding="utf-8"))
    comment = json.loads((webhooks / "issue_comment" / "created.json").read_text(encoding="utf-8"))
    push = json.loads((webhooks / "push" / "push.json").read_text(encoding="utf-8"))
    heads: dict[str, str | None] = {}
    out = []
    for i in range(count):
        kind, repo = kinds[rng.randrange(len(kinds))], REPOS[i % len(REPOS)]
        owner, name = repo.split("/")
        word = _word(i)
        if kind == "issues":
            p = copy.deepcopy(issue)
            p["issue"].update(number=100_000 + i, title=f"Burst issue {i}", body=f"The {word} check fails on deploy.")
            doc = f"github:{repo}#issue/{100_000 + i}"
        elif kind == "issue_comment":
            p = copy.deepcopy(comment)
            p["issue"]["number"] = 200_000 + i
            p["comment"].update(id=300_000_000 + i, body=f"Seen {word} again after the rollback.")
            doc = f"github:{repo}#issue/{200_000 + i}/comment/{300_000_000 + i}"
        else:
            p = copy.deepcopy(push)
            path = f"src/burst_{i:05d}.py"
            before = heads.get(repo)
            after = fake.commit(repo, {path: f'"""Module {word}."""\n\n\ndef handler_{i}():\n    return "{word}"\n'},
                                message=f"add {path}")
            heads[repo] = after
            p.update(ref="refs/heads/main", before=before or "0" * 40, after=after, created=before is None,
                     deleted=False, forced=False, base_ref=None,
                     compare=f"https://github.com/{repo}/compare/{(before or '0' * 40)[:12]}...{after[:12]}")
            commit = {"id": after, "tree_id": after, "distinct": True, "message": f"add {path}",
                      "timestamp": "2024-05-01T10:00:00Z", "url": f"https://github.com/{repo}/commit/{after}",
                      "author": {"name": "burst", "email": "burst@example.com", "username": "burst"},
                      "committer": {"name": "burst", "email": "burst@example.com", "username": "burst"},
                      "added": [path], "removed": [], "modified": []}
            p["commits"], p["head_commit"] = [commit], commit
            p["repository"].update(default_branch="main", master_branch="main")
            doc = f"github:{repo}:{path}"
        p["repository"].update(full_name=repo, name=name)
        p["repository"]["owner"]["login"] = owner
        out.append({"i": i, "event": kind, "id": f"burst-{uuid.uuid4()}", "body": json.dumps(p).encode(),
                    "word": word, "doc": doc, "repo": repo})
    return out


# ---------------------------------------------------------------------------------------------- the stack's CPU

def _stack_pids(stack: OutageStack) -> list[int]:
    pids = [p.pid for p in stack.procs.values()]
    for pid_file in (stack.home).rglob("postmaster.pid"):
        try:
            pids.append(int(pid_file.read_text().splitlines()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def stack_cpu(stack: OutageStack) -> float:
    """CPU seconds the stack's processes used so far: each root's own and its waited-for children's, plus its live
    descendants' (flow-run processes, PostgreSQL backends)."""
    import psutil

    total = 0.0
    for pid in _stack_pids(stack):
        try:
            root = psutil.Process(pid)
            t = root.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
            for child in root.children(recursive=True):
                try:
                    c = child.cpu_times()
                    total += c.user + c.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return total


# ---------------------------------------------------------------------------------------------- set-up

def _in_stack(stack: OutageStack, argv: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=timeout)


def _error(stderr: str) -> str:
    """The end of a failed command's stderr, without rich's traceback boxes."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not any(c in line for c in "│╭╰")]
    return " ".join(lines)[-240:]


def _devmesh(stack: OutageStack, *args: str, timeout: float = 180) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    out = _in_stack(stack, [sys.executable, "-m", "deployments.cli", *args], timeout=timeout)
    return time.monotonic() - started, out


def prepare_operations(stack: OutageStack, fake) -> str:
    """The blocks and the grant operations need (GitHub connection to the fake, a policy that lets issues be
    created freely and comments only with an approval), the audit key, an approver; returns the approver's token."""
    fake.add_repo(OPS_REPO)
    fake.add_issue(OPS_REPO, "Rollout stuck", "The canary waits for a manual check.")
    code = (
        "from pydantic import SecretStr\n"
        "from blocks.audit_key import load_or_create_audit_key\n"
        "from blocks.github import GitHubConnection\n"
        "from blocks.policy import OperationPolicy\n"
        f"GitHubConnection(base_url={fake.url!r}, token=SecretStr({fake.token!r}), timeout=10,"
        " seconds_between_requests=0, seconds_between_writes=0).save('devmesh-github', overwrite=True)\n"
        "OperationPolicy(operations=['github.create_issue', 'github.comment_issue'], github_repos=['burst-org/*'],"
        " require_approval=['github.comment_issue'], max_issues_per_hour=1000).save('devmesh-policy', overwrite=True)\n"
        "load_or_create_audit_key('devmesh-audit-key')\n")
    out = _in_stack(stack, [sys.executable, "-c", code])
    if out.returncode != 0:
        raise RuntimeError(f"could not create the operation blocks: {out.stderr[-800:]}")
    _, granted = _devmesh(stack, "tenants", "grant", TENANT, "--policy", "devmesh-policy", "--github-block",
                          "devmesh-github")
    if granted.returncode != 0:
        raise RuntimeError(f"grant failed: {granted.stdout[-400:]} {granted.stderr[-800:]}")
    _, added = _devmesh(stack, "approvers", "add", APPROVER, "--tenant", TENANT)
    if added.returncode != 0:
        raise RuntimeError(f"approvers add failed: {added.stderr[-800:]}")
    return added.stdout.strip().splitlines()[-1]


def _operation(stack: OutageStack, operation_id: str) -> dict[str, Any] | None:
    from psycopg.rows import dict_row

    with stack.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT status, flow_run_id FROM operations WHERE id = %s", [operation_id]).fetchone()


def _wait_operation(stack: OutageStack, operation_id: str, statuses: set[str], timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        row = _operation(stack, operation_id)
        if row and row["status"] in statuses:
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def operations_during_burst(stack: OutageStack, token: str, log=print) -> dict[str, Any]:
    """A dry run, an execute without approval, and one with approval, in that order; the figures."""
    out: dict[str, Any] = {}
    args = json.dumps({"repo": OPS_REPO, "title": "Burst check", "body": "Opened during the webhook burst."})
    # the floor: the CLI's own start-up (Python, Typer, Prefect's import), a command that asks nothing of anyone
    seconds, _ = _devmesh(stack, "op", "list", "--json")
    out["cli_startup_seconds"] = round(seconds, 2)
    seconds, dry = _devmesh(stack, "op", "run", "github.create_issue", "--args", args, "--tenant", TENANT)
    out["dry_run_cli_seconds"] = round(seconds, 2)
    out["dry_run_status"] = json.loads(dry.stdout).get("status") if dry.returncode == 0 else _error(dry.stderr)
    log(f"  op run (dry run): {seconds:.2f} s, {out['dry_run_status']}")
    seconds, done = _devmesh(stack, "op", "run", "github.create_issue", "--args", args, "--tenant", TENANT,
                             "--execute", "--key", f"burst-{uuid.uuid4().hex[:8]}")
    out["execute_no_approval_cli_seconds"] = round(seconds, 2)
    out["execute_no_approval_status"] = json.loads(done.stdout).get("status") if done.returncode == 0 \
        else _error(done.stderr)
    log(f"  op run --execute (no approval): {seconds:.2f} s, {out['execute_no_approval_status']}")
    # needs approval: submitted as the REST API and MCP submit it; the operate deployment's run pauses
    code = ("import json\n"
            "from flows.operate import OperateRequest, submit_operation\n"
            f"r = submit_operation(OperateRequest(operation='github.comment_issue', arguments={{'repo': {OPS_REPO!r},"
            " 'issue_number': 1, 'body': 'Approved during the burst.'}, tenant=" + repr(TENANT) + ","
            " actor={'via': 'bench'}, dry_run=False))\n"
            "print(json.dumps({'status': r['status'], 'operation_id': r['operation_id']}))\n")
    started = time.monotonic()
    submitted = _in_stack(stack, [sys.executable, "-c", code])
    if submitted.returncode != 0:
        out["approval_error"] = submitted.stderr[-500:]
        return out
    info = json.loads(submitted.stdout.strip().splitlines()[-1])
    operation_id = info["operation_id"]
    out["approval_submit_seconds"] = round(time.monotonic() - started, 2)
    paused = _wait_operation(stack, operation_id, {"awaiting_approval"}, 300)
    out["approval_run_paused_seconds_after_submit"] = round(time.monotonic() - started, 2) if paused is not None \
        else None
    log(f"  approval: submitted ({info['status']}), run paused {out['approval_run_paused_seconds_after_submit']} s "
        "after the request")
    # `devmesh approve` in its own process; meanwhile the operation's row is watched every 50 ms
    approve_started, approve_wall = time.monotonic(), time.time()
    approving = subprocess.Popen([sys.executable, "-m", "deployments.cli", "approve", operation_id, "--token", token,
                                  "--tenant", TENANT], cwd=ROOT, env=stack.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    resumed_wall = finished_wall = approve_exit = None
    while time.monotonic() - approve_started < 240 and finished_wall is None:
        row = _operation(stack, operation_id) or {}
        if resumed_wall is None and row.get("status") not in (None, "awaiting_approval"):
            resumed_wall = time.time()
        if row.get("status") in ("succeeded", "failed", "rejected", "denied"):
            finished_wall = time.time()
        if approve_exit is None and approving.poll() is not None:
            approve_exit = time.monotonic() - approve_started
        time.sleep(0.05)
    stdout, stderr = approving.communicate(timeout=120)
    if approving.returncode != 0:
        out["approval_error"] = stderr[-500:]
        return out
    out["approve_cli_seconds"] = round(approve_exit if approve_exit is not None
                                       else time.monotonic() - approve_started, 2)
    with stack.pool.connection() as conn:
        decided = conn.execute("SELECT decided_at FROM approvals WHERE operation_id = %s",
                               [operation_id]).fetchone()[0].timestamp()
    out["decision_recorded_seconds_after_approve_started"] = round(decided - approve_wall, 2)
    out["resumed_seconds_after_approve"] = round(resumed_wall - approve_wall, 2) if resumed_wall else None
    out["resumed_seconds_after_decision"] = round(resumed_wall - decided, 2) if resumed_wall else None
    out["finished_seconds_after_approve"] = round(finished_wall - approve_wall, 2) if finished_wall else None
    out["approval_status"] = (_operation(stack, operation_id) or {}).get("status")
    log(f"  approval: decision recorded {out['decision_recorded_seconds_after_approve_started']} s after `devmesh "
        f"approve` started; resumed {out['resumed_seconds_after_decision']} s after the decision "
        f"({out['resumed_seconds_after_approve']} s after the command started), finished "
        f"{out['finished_seconds_after_approve']} s ({out['approval_status']})")
    return out


# ---------------------------------------------------------------------------------------------- flow-run cost

def idle_handler_run(stack: OutageStack) -> dict[str, Any]:
    """One github-discussions handler run with nothing pending: its wall time and the stack's CPU meanwhile."""
    auth, api = stack.auth, stack.api
    deployment = httpx.get(f"{api}/deployments/name/github-events/github-discussions", auth=auth, timeout=10).json()
    cpu0, t0 = stack_cpu(stack), time.monotonic()
    run = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", auth=auth, timeout=10,
                     json={"parameters": {"route": "github-discussions", "linger_s": 0}}).json()
    state, running_at = None, None
    while time.monotonic() - t0 < 300:
        info = httpx.get(f"{api}/flow_runs/{run['id']}", auth=auth, timeout=10).json()
        state = info["state_type"]
        if state == "RUNNING" and running_at is None:
            running_at = time.monotonic() - t0
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(0.1)
    wall = time.monotonic() - t0
    return {"state": state, "wall_seconds": round(wall, 2),
            "seconds_to_running": round(running_at, 2) if running_at is not None else None,
            "stack_cpu_seconds": round(stack_cpu(stack) - cpu0, 2)}


def handler_runs(stack: OutageStack, since_ids: set[str]) -> dict[str, Any]:
    runs = [r for r in stack.flow_runs() if r["id"] not in since_ids]
    return {"runs": len(runs), "states": dict(Counter(r["state"] for r in runs))}


# ---------------------------------------------------------------------------------------------- the server's answers

class SlotProbe:
    """Every `interval_s` during the burst: one request for a slot of the tool cap, sent straight to the Prefect API
    (no client retries: what the server answers, and how fast), released at once; and one read (the count of flow
    runs) beside it, to tell a busy writer from a busy server."""

    def __init__(self, stack: OutageStack, limit: str = "devmesh-tool-executions", interval_s: float = 1.0):
        self.stack, self.limit, self.interval_s = stack, limit, interval_s
        self.writes: list[tuple[float, int | str, float]] = []  # (offset s, status or error, seconds)
        self.reads: list[tuple[float, int | str, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "SlotProbe":
        httpx.post(f"{self.stack.api}/v2/concurrency_limits/", auth=self.stack.auth, timeout=30,
                   json={"name": self.limit, "limit": 5})  # 409 when it exists: fine
        self.t0 = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=120)

    def _timed(self, out: list, method: str, path: str, body: dict) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = httpx.request(method, f"{self.stack.api}{path}", json=body, auth=self.stack.auth, timeout=30)
            out.append((started - self.t0, response.status_code, time.monotonic() - started))
            return response
        except httpx.HTTPError as exc:
            out.append((started - self.t0, type(exc).__name__, time.monotonic() - started))
            return None

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            got = self._timed(self.writes, "POST", "/v2/concurrency_limits/increment-with-lease",
                              {"names": [self.limit], "slots": 1, "mode": "concurrency", "lease_duration": 60})
            if got is not None and got.status_code == 200:
                try:
                    httpx.post(f"{self.stack.api}/v2/concurrency_limits/decrement-with-lease", auth=self.stack.auth,
                               timeout=30, json={"lease_id": got.json()["lease_id"]})
                except httpx.HTTPError:
                    pass
            self._timed(self.reads, "POST", "/flow_runs/count", {})
            self.stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    @staticmethod
    def _summary(samples: list[tuple[float, int | str, float]]) -> dict[str, Any]:
        ok = [s for _, status, s in samples if status == 200]
        return {"requests": len(samples), "answers": dict(Counter(str(status) for _, status, _ in samples)),
                "ok_p50_s": _pct(ok, 0.5), "ok_p99_s": _pct(ok, 0.99),
                "ok_max_s": round(max(ok), 2) if ok else None,
                "slowest_any_s": round(max(s for _, _, s in samples), 2) if samples else None}

    def summary(self) -> dict[str, Any]:
        return {"slot_request": self._summary(self.writes), "read": self._summary(self.reads),
                "interval_s": self.interval_s}


def prefect_rows(stack: OutageStack) -> dict[str, int]:
    """Rows written to the Prefect server's database so far, by table: inserts + updates + deletes of each table
    (PostgreSQL's statistics), or the rows each table holds (SQLite, which keeps no such counts)."""
    url = stack.prefect_database_url()
    if url.startswith("sqlite"):
        import sqlite3

        path = url.split("///", 1)[1]
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                                 " AND name NOT LIKE 'sqlite_%'")]
            return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    with stack.pool.connection() as conn:
        dsn = conn.info.dsn
    import psycopg

    dsn = psycopg.conninfo.make_conninfo(dsn, dbname="prefect")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables").fetchall()
    return {name: int(count) for name, count in rows}


def rows_written(before: dict[str, int], after: dict[str, int], top: int = 8) -> dict[str, int]:
    diff = {t: after.get(t, 0) - before.get(t, 0) for t in after}
    ordered = sorted(((t, n) for t, n in diff.items() if n > 0), key=lambda x: -x[1])
    return dict(ordered[:top]) | {"(all tables)": sum(n for n in diff.values() if n > 0)}


# ---------------------------------------------------------------------------------------------- the burst

def settle_handler_runs(stack: OutageStack, rows: dict[str, dict], before: set[str], *, timeout: float,
                        log=print) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Once every delivery is processed: wait (up to `timeout` s) until the burst's handler runs — those that
    processed a delivery and those created by then — are final, so that how each ended can be counted; returns the
    burst's runs and {seconds waited, the handler run ids, the ids of those still not final}."""
    handlers = {str(r["flow_run_id"]) for r in rows.values() if r.get("flow_run_id")}
    watch = handlers | {r["id"] for r in stack.flow_runs() if r["id"] not in before}
    started = time.monotonic()
    while True:
        runs = [r for r in stack.flow_runs() if r["id"] not in before]
        pending = [r["id"] for r in runs if r["id"] in watch and r["state"] not in FINAL]
        if not pending or time.monotonic() - started > timeout:
            break
        time.sleep(0.5)
    waited = round(time.monotonic() - started, 1)
    log(f"handler runs final {waited} s after the drain; not final: {len(pending)}")
    return runs, {"seconds": waited, "handlers": sorted(handlers), "not_final": len(pending)}


def burst(stack: OutageStack, fake, *, deliveries: int, seconds: float, drain_timeout_s: float,
          ops: bool = True, runs_timeout_s: float = 180.0, log=print) -> dict[str, Any]:
    from psycopg.rows import dict_row

    token = prepare_operations(stack, fake) if ops else None
    items = build_deliveries(deliveries, fake)
    idle = idle_handler_run(stack)
    log(f"idle handler run: {idle}")
    before_runs = {r["id"] for r in stack.flow_runs()}
    acks: dict[str, float] = {}
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=32, max_keepalive_connections=32))
    ops_result: dict[str, Any] = {}
    ops_thread = None
    if ops:
        def run_ops():
            time.sleep(seconds / 3)  # well into the burst, with a backlog building
            try:
                ops_result.update(operations_during_burst(stack, token, log=log))
            except Exception as exc:  # noqa: BLE001 - reported in the figures
                ops_result["error"] = f"{type(exc).__name__}: {exc}"
        ops_thread = threading.Thread(target=run_ops, daemon=True)

    def send(item: dict[str, Any]) -> None:
        try:
            status = stack.post(client, item["event"], item["id"], item["body"])
        except httpx.HTTPError as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
            return
        with lock:
            statuses[status] += 1
            if status == 202:
                acks[item["id"]] = time.time()

    rows0 = prefect_rows(stack)
    probe = SlotProbe(stack).__enter__()
    cpu0 = stack_cpu(stack)
    start = time.monotonic()
    if ops_thread:
        ops_thread.start()
    with ThreadPoolExecutor(32) as pool:
        for k, item in enumerate(items):
            due = start + k * seconds / max(1, len(items))
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, item)
    last_send_wall = time.time()
    send_s = time.monotonic() - start
    log(f"sent {len(items)} in {send_s:.1f} s: {dict(statuses)}, {len(errors)} errors")
    ids = list(acks)
    rows: dict[str, dict] = {}
    deadline = time.monotonic() + drain_timeout_s
    while time.monotonic() < deadline:
        with stack.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT delivery_id, status, handled, processed_at, flow_run_id, last_error"
                        " FROM webhook_deliveries WHERE delivery_id = ANY(%s)", [ids])
            rows = {r["delivery_id"]: r for r in cur.fetchall()}
        done = sum(1 for r in rows.values() if r["status"] in ("processed", "failed"))
        if done == len(ids):
            break
        time.sleep(1)
    drained_s = time.monotonic() - start
    cpu = stack_cpu(stack) - cpu0
    probe.__exit__(None, None, None)
    prefect_writes = rows_written(rows0, prefect_rows(stack))
    client.close()
    if ops_thread:
        ops_thread.join(timeout=600)
    latencies = [rows[i]["processed_at"].timestamp() - acks[i] for i in ids if rows.get(i, {}).get("processed_at")]
    last = max((r["processed_at"].timestamp() for r in rows.values() if r.get("processed_at")), default=None)
    runs, ending = settle_handler_runs(stack, rows, before_runs, timeout=runs_timeout_s, log=log)
    by_id = {r["id"]: r for r in runs}
    handled_by = Counter(by_id.get(str(r.get("flow_run_id")), {}).get("state", "(no such run)")
                         for r in rows.values() if r.get("status") in ("processed", "failed"))
    ends = [datetime.fromisoformat(by_id[h]["end_time"]).timestamp() for h in ending["handlers"]
            if h in by_id and by_id[h].get("end_time")]
    handled = Counter(rows.get(i, {}).get("handled", 0) for i in ids)
    # searchable: a sample, each by its own word
    from blocks.settings import Settings
    from flows.search import search_now
    from tasks.search import SearchRequest

    settings = Settings(home=stack.home, embedder="local")
    by_delivery = {it["id"]: it for it in items}
    sample = random.Random(7).sample(ids, min(100, len(ids)))
    found = 0
    for i in sample:
        hits = search_now(SearchRequest(query=by_delivery[i]["word"], mode="keyword", tenant=TENANT, limit=3),
                          settings)
        found += any(h.document_id == by_delivery[i]["doc"] for h in hits)
    kinds = Counter(by_delivery[i]["event"] for i in ids)
    return {
        "deliveries_sent": len(items), "send_seconds": round(send_s, 1), "statuses": {str(k): v for k, v in
                                                                                      statuses.items()},
        "send_errors": len(errors), "accepted": len(ids), "accepted_by_event": dict(kinds),
        "processed": sum(1 for r in rows.values() if r["status"] == "processed"),
        "failed": sum(1 for r in rows.values() if r["status"] == "failed"),
        "failures": [r["last_error"] for r in rows.values() if r["status"] == "failed"][:5],
        "handled_counts": {str(k): v for k, v in handled.items()},
        "processed_by_completed_run": sum(1 for i in ids if by_id.get(str(rows.get(i, {}).get("flow_run_id")),
                                                                      {}).get("state") == "COMPLETED"),
        "handled_by_run_state": dict(handled_by), "handler_runs_that_processed": len(ending["handlers"]),
        "runs_final_after_drain_s": ending["seconds"], "runs_not_final": ending["not_final"],
        "last_handler_run_ended_after_last_processed_s": round(max(ends) - last, 2) if ends and last else None,
        "searchable_p50_s": _pct(latencies, 0.5), "searchable_p99_s": _pct(latencies, 0.99),
        "searchable_max_s": round(max(latencies), 2) if latencies else None,
        "last_searchable_after_last_send_s": round(last - last_send_wall, 2) if last else None,
        "drained_seconds_after_first_send": round(drained_s, 1),
        "search_sample": {"searched": len(sample), "found": found},
        "stack_cpu_seconds": round(cpu, 1), "cpu_seconds_per_delivery": round(cpu / max(1, len(ids)), 3),
        "handler_runs": {"runs": len(runs), "states": dict(Counter(r["state"] for r in runs))},
        "idle_handler_run": idle, "operations": ops_result,
        "prefect_server": {"database": stack.prefect_database_url().split(":", 1)[0],
                           "probe": probe.summary(), "rows_written_by_table": prefect_writes},
    }


def measure_burst(workdir: Path, *, deliveries: int = 1000, seconds: float = 60.0, drain_timeout_s: float = 900.0,
                  ops: bool = True, log=print) -> dict[str, Any]:
    """The whole benchmark in `workdir` (its own PostgreSQL and Prefect database); every child stopped after."""
    import os

    from bench.run import stop_servers_under
    from blocks.postgres import close_pools
    from tests.fakes.github_repo_server import FakeGitHubRepo

    if not (WEBHOOKS / "issues" / "opened.json").is_file():
        raise FileNotFoundError(f"{WEBHOOKS} is absent: the burst uses its real payloads")
    workdir = Path(workdir)
    started = time.monotonic()
    load = os.getloadavg()
    try:
        with FakeGitHubRepo() as fake:
            for repo in REPOS:
                fake.add_repo(repo)
            # as `devmesh up` runs it: a runner per queue, runners polling every 2 s (deployments.stack)
            with OutageStack(workdir / "home", runner_per_queue=True, runner_poll_s=2, log=log) as stack:
                log(f"stack up in {time.monotonic() - started:.1f} s")
                result = burst(stack, fake, deliveries=deliveries, seconds=seconds,
                               drain_timeout_s=drain_timeout_s, ops=ops, log=log)
                result["alive_at_end"] = stack.alive()
    finally:
        close_pools()
        stop_servers_under(workdir)
    return {**result, "parameters": {"deliveries": deliveries, "seconds": seconds, "repositories": len(REPOS),
                                     "mix_percent": dict(MIX), "embedder": "local (MiniLM int8)",
                                     "load_average_at_start": [round(x, 1) for x in load],
                                     "cores": os.cpu_count()},
            "total_seconds": round(time.monotonic() - started, 1)}


# ---------------------------------------------------------------------------------------------- report

TITLE = "10. Webhooks and operations under burst"


def _s(x: Any) -> str:
    return "-" if x is None else f"{x} s"


def goal_rows(r: dict) -> list[list[str]]:
    """The issue's goals, measured (bench.report's goals table)."""
    ops = r.get("operations") or {}
    exact = r["handled_counts"] == {"1": r["accepted"]} and r["processed"] == r["accepted"]
    rows = [
        [f"burst: {r['deliveries_sent']:,} deliveries in {r['send_seconds']:.0f} s, each processed exactly once",
         f"{r['processed']:,} of {r['accepted']:,} processed, handled counts {r['handled_counts']}",
         "yes" if exact else "**no**"],
        ["burst: searchable within 60 s of acceptance (p99)", _s(r["searchable_p99_s"]),
         "yes" if (r["searchable_p99_s"] or 1e9) <= 60 else "**no**"],
        ["burst: the last searchable within 120 s of the last send", _s(r["last_searchable_after_last_send_s"]),
         "yes" if (r["last_searchable_after_last_send_s"] or 1e9) <= 120 else "**no**"],
    ]
    if ops:
        rows += [
            ["burst: an operation needing no approval finishes within 10 s of its request",
             _s(ops.get("execute_no_approval_cli_seconds")),
             "yes" if (ops.get("execute_no_approval_cli_seconds") or 1e9) <= 10 else "**no**"],
            ["burst: an approved operation resumes within 5 s of `devmesh approve` (from its decision; from the "
             "command's start)",
             f"{_s(ops.get('resumed_seconds_after_decision'))}; {_s(ops.get('resumed_seconds_after_approve'))}",
             "yes" if (ops.get("resumed_seconds_after_approve") or 1e9) <= 5 else
             ("from the decision only" if (ops.get("resumed_seconds_after_decision") or 1e9) <= 5 else "**no**")],
            ["`devmesh op run` of a dry run answers within 3 s (stack up; during the burst)",
             _s(ops.get("dry_run_cli_seconds")), "yes" if (ops.get("dry_run_cli_seconds") or 1e9) <= 3 else "**no**"],
        ]
    return rows


def markdown(r: dict) -> str:
    ops, idle, p = r.get("operations") or {}, r["idle_handler_run"], r["parameters"]
    rows = [
        ["deliveries sent / accepted", f"{r['deliveries_sent']:,} in {r['send_seconds']} s / {r['accepted']:,} "
                                       f"({', '.join(f'{k} {v}' for k, v in r['accepted_by_event'].items())})"],
        ["answers", ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items()))],
        ["processed / failed", f"{r['processed']:,} / {r['failed']}"],
        ["times each delivery was handled", ", ".join(f"{k}×: {v:,}" for k, v in r["handled_counts"].items())],
        ["processed by a run that completed (the runs waited for until final, then counted)",
         f"{r['processed_by_completed_run']:,}; by how the handling run ended: "
         f"{', '.join(f'{k} {v:,}' for k, v in r['handled_by_run_state'].items())}"],
        ["handler runs that processed deliveries; all runs final after the drain; the last of them ended after "
         "the last delivery was processed",
         f"{r['handler_runs_that_processed']}; {_s(r['runs_final_after_drain_s'])} (not final: "
         f"{r['runs_not_final']}); {_s(r['last_handler_run_ended_after_last_processed_s'])}"],
        ["searchable after the 202: p50 / p99 / max", f"{r['searchable_p50_s']} / {r['searchable_p99_s']} / "
                                                       f"{r['searchable_max_s']} s"],
        ["last searchable after the last send", _s(r["last_searchable_after_last_send_s"])],
        ["sample searched by its own word (keyword)", f"{r['search_sample']['found']} of "
                                                       f"{r['search_sample']['searched']} found"],
        ["stack CPU, first send to last processed", f"{r['stack_cpu_seconds']} s: **{r['cpu_seconds_per_delivery']} "
                                                    "CPU-s per delivery**"],
        ["handler runs during the burst", f"{r['handler_runs']['runs']} "
                                          f"({', '.join(f'{k} {v}' for k, v in r['handler_runs']['states'].items())})"],
        ["a handler run with nothing to do (flow-run start cost)",
         f"{idle['seconds_to_running']} s to running, {idle['wall_seconds']} s to {idle['state']}, "
         f"{idle['stack_cpu_seconds']} CPU-s of the stack"],
    ]
    if ops:
        rows += [
            ["`devmesh op run` dry run (process start to answer); the CLI's own start-up (`devmesh op list`)",
             f"{_s(ops.get('dry_run_cli_seconds'))} ({ops.get('dry_run_status')}); "
             f"{_s(ops.get('cli_startup_seconds'))}"],
            ["`devmesh op run --execute`, no approval (request to finish)",
             f"{_s(ops.get('execute_no_approval_cli_seconds'))} ({ops.get('execute_no_approval_status')})"],
            ["approval: request to paused run", _s(ops.get("approval_run_paused_seconds_after_submit"))],
            ["approval: `devmesh approve` started → decision recorded → run resumed / finished",
             f"decision after {_s(ops.get('decision_recorded_seconds_after_approve_started'))} (the command's own "
             f"start-up), resumed {_s(ops.get('resumed_seconds_after_decision'))} after it; from the command's start: "
             f"resumed {_s(ops.get('resumed_seconds_after_approve'))}, finished "
             f"{_s(ops.get('finished_seconds_after_approve'))} ({ops.get('approval_status')})"],
        ]
        server = r.get("prefect_server") or {}
        if server:
            probe, written = server["probe"], server["rows_written_by_table"]
            rows += [
                ["Prefect server's database", server["database"]],
                ["a tool-slot request every second during the burst (straight to the API, no retries): answers; "
                 "time of those granted p50 / p99",
                 f"{', '.join(f'{k}: {v}' for k, v in probe['slot_request']['answers'].items())}; "
                 f"{_s(probe['slot_request']['ok_p50_s'])} / {_s(probe['slot_request']['ok_p99_s'])}"],
                ["a read beside it (count of flow runs): answers; p50 / p99",
                 f"{', '.join(f'{k}: {v}' for k, v in probe['read']['answers'].items())}; "
                 f"{_s(probe['read']['ok_p50_s'])} / {_s(probe['read']['ok_p99_s'])}"],
                ["what the Prefect server wrote from the first send to the last processed, by table (PostgreSQL: "
                 "rows inserted, updated or deleted; SQLite: rows added)",
                 ", ".join(f"{k} {v:,}" for k, v in written.items())],
            ]
        if ops.get("error") or ops.get("approval_error"):
            rows.append(["operations error", f"`{(ops.get('error') or ops.get('approval_error'))[:300]}`"])
    return "\n".join([
        f"## {TITLE}", "",
        f"`bench/burst.py`: {p['deliveries']:,} signed deliveries (issues opened, comments, pushes; "
        f"{p['repositories']} repositories; real payload shapes from ../shared/testdata/github-webhooks) sent "
        f"open-loop over {p['seconds']:.0f} s from 127.0.0.1 to the stack of `devmesh up` (embedded PostgreSQL, "
        "Prefect server, one runner per work queue, gateway; local MiniLM embedder; GitHub a loopback fake). A "
        "handler run claims the emitted deliveries 100 at a time and embeds a batch together; the webhook "
        "deployments have a concurrency limit of 1 (new runs cancelled while one drains), a run that ends while "
        "deliveries wait starts the next one once its slot is free, and a 60 s trailing schedule. Searchable = the "
        "delivery's `processed_at`, set after its documents were committed. After the drain, the handler runs are "
        "waited for until final before they are counted. During the burst: guarded operations through the CLI (a "
        "dry run is answered by the stack's gateway) and an approval. Load average at the start "
        f"{p['load_average_at_start']} on {p['cores']} cores: "
        + ("**measured under load** (other work shared the machine)." if p['load_average_at_start'][0] > 1.5
           else "the machine otherwise idle (the stack and the sender share its cores)."), "",
        _table(rows), ""])


def _table(rows: list[list[str]]) -> str:
    lines = ["| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from bench.run import DATA

    parser = argparse.ArgumentParser(prog="python -m bench.burst")
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-ops", action="store_true", help="deliveries only")
    args = parser.parse_args(argv)
    target = DATA / f"burst-{time.strftime('%Y%m%d-%H%M%S')}"
    result = measure_burst(target, deliveries=args.deliveries, seconds=args.seconds, ops=not args.no_ops,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2, default=str))
    print(markdown(result), file=sys.stderr)


if __name__ == "__main__":
    main()

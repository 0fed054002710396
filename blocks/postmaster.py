"""Whether the embedded PostgreSQL's postmaster runs: postmaster.pid read against /proc (zombies and reused pids
are not it), and waiting for one in crash recovery to be ready."""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["postmaster_alive", "wait_ready"]


# postmaster.pid is the postmaster's start time (epoch seconds); /proc gives the process's. The slack covers the
# time from fork to PostmasterMain on a loaded machine and the rounding of btime.
_START_SLACK_S = 10.0


def postmaster_alive(pgdata: Path) -> int | None:
    """The pid of the postmaster named in pgdata/postmaster.pid if it is running, else None."""
    try:
        with open(pgdata / "postmaster.pid", "rb") as f:
            pid = int(f.readline())
            f.readline()
            started = int(f.readline() or 0)
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, under another user (root runs the server as embedded_postgres)
    return pid if _same_process(pid, started) else None


def _same_process(pid: int, started: int) -> bool:
    """Whether `pid` is a live (not zombie) process started at `started` (epoch s); True where /proc is absent."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # no procfs (macOS): trust kill(pid, 0)
    except OSError:
        return True
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
    if fields[0] in ("Z", "X"):
        return False
    if started <= 0:
        return True
    boot = _boot_time()
    if boot is None:
        return True
    return abs(boot + int(fields[19]) / os.sysconf("SC_CLK_TCK") - started) <= _START_SLACK_S


def _boot_time() -> int | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def wait_ready(pgdata: Path, timeout: float) -> None:
    """Wait until a postmaster that is starting (crash recovery) says 'ready' in postmaster.pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if postmaster_alive(pgdata) is None:
            return  # not running (or it died): the caller's retry starts it or reports why
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            lines = []
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return
        time.sleep(0.1)

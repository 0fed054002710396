"""blocks.postmaster.postmaster_alive: the pid in postmaster.pid counts only if it is that postmaster, running."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from blocks.postmaster import postmaster_alive


def _pidfile(pgdata, pid: int, started: float) -> None:
    pgdata.mkdir(exist_ok=True)
    (pgdata / "postmaster.pid").write_text(f"{pid}\n{pgdata}\n{int(started)}\n5432\n/tmp\n\n  0  0\nready   \n")


def test_a_running_process_started_when_the_file_says_is_alive(tmp_path):
    me = psutil.Process()
    _pidfile(tmp_path / "pgdata", me.pid, me.create_time())
    assert postmaster_alive(tmp_path / "pgdata") == me.pid


def test_a_reused_pid_is_not_the_postmaster(tmp_path):
    me = psutil.Process()  # alive, but started an hour after the postmaster the file names
    _pidfile(tmp_path / "pgdata", me.pid, me.create_time() - 3600)
    assert postmaster_alive(tmp_path / "pgdata") is None


def test_a_zombie_is_not_alive(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not reaped yet
            assert time.monotonic() < deadline
            time.sleep(0.02)
        _pidfile(tmp_path / "pgdata", child.pid, psutil.Process(child.pid).create_time())
        assert postmaster_alive(tmp_path / "pgdata") is None
    finally:
        child.wait()


def test_no_file_or_a_dead_pid_is_not_alive(tmp_path):
    assert postmaster_alive(tmp_path / "pgdata") is None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _pidfile(tmp_path / "pgdata", child.pid, time.time())
    assert postmaster_alive(tmp_path / "pgdata") is None

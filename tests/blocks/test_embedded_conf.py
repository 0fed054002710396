"""blocks.embedded_conf: the embedded cluster's shared_buffers, sized from the machine, applied at each start."""

from __future__ import annotations

import subprocess
import sys

import blocks.embedded_conf as conf
from blocks.embedded_conf import CONF_NAME, INCLUDE, apply_server_settings, machine_memory, shared_buffers_mb

GB = 2**30

# One process's life with the embedded server: start it, print its shared_buffers in MB, run the given SQL; the
# server stops when the process exits (the wheel's cleanup), so the next process starts it again.
CHILD = """
import sys
import psycopg
from pathlib import Path
from blocks.postgres import start_embedded
with psycopg.connect(start_embedded(Path(sys.argv[1])), autocommit=True) as conn:
    print(conn.execute("SELECT setting::bigint * 8192 / 1048576 FROM pg_settings WHERE name = 'shared_buffers'").fetchone()[0])
    for statement in sys.argv[2:]:
        conn.execute(statement)
"""


def _start(home, *statements: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, str(home), *statements], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_shared_buffers_are_an_eighth_of_the_memory_within_postgres_default_and_a_cap():
    assert shared_buffers_mb(None) == 128
    assert shared_buffers_mb(512 * 2**20) == 128
    assert shared_buffers_mb(4 * GB) == 512
    assert shared_buffers_mb(64 * GB) == 1024


def test_a_containers_memory_limit_counts_when_it_is_lower_than_the_machines(tmp_path, monkeypatch):
    v2, v1 = tmp_path / "memory.max", tmp_path / "limit_in_bytes"
    monkeypatch.setattr(conf, "CGROUP_LIMITS", (v2, v1))
    machine = machine_memory()
    v2.write_text("max\n")  # cgroup v2 without a limit
    assert machine_memory() == machine
    v1.write_text(f"{GB}\n")
    assert machine_memory() == min(machine, GB)


def test_the_session_server_runs_with_the_sized_shared_buffers(pool):
    with pool.connection() as conn:
        mb = conn.execute("SELECT setting::bigint * 8192 / 1048576 FROM pg_settings WHERE name = 'shared_buffers'")
        assert mb.fetchone()[0] == shared_buffers_mb(machine_memory())


def test_an_older_cluster_gets_the_settings_at_its_next_start_and_alter_system_still_wins(tmp_path):
    expected = shared_buffers_mb(machine_memory())
    assert _start(tmp_path) == expected
    pgdata = tmp_path / "pgdata"
    postgresql_conf = pgdata / "postgresql.conf"
    # a cluster made before devmesh wrote settings: no include, no devmesh.conf
    postgresql_conf.write_text(postgresql_conf.read_text().replace(INCLUDE + "\n", ""))
    (pgdata / CONF_NAME).unlink()
    assert _start(tmp_path, "ALTER SYSTEM SET shared_buffers = '160MB'") == expected
    assert postgresql_conf.read_text().splitlines().count(INCLUDE) == 1
    assert _start(tmp_path, "ALTER SYSTEM RESET shared_buffers") == 160
    assert _start(tmp_path) == expected
    assert postgresql_conf.read_text().splitlines().count(INCLUDE) == 1


def test_a_data_directory_that_cannot_take_the_settings_starts_with_what_it_has(tmp_path, caplog):
    (tmp_path / "postgresql.conf").write_text("max_connections = 100\n")
    (tmp_path / CONF_NAME / "taken").mkdir(parents=True)  # the settings file cannot be put in place
    with caplog.at_level("WARNING", logger="devmesh.postgres"):
        assert apply_server_settings(tmp_path) is False
    assert "could not write the embedded server's settings" in caplog.text
    assert not list(tmp_path.glob(f".{CONF_NAME}.*"))  # no staged file left behind

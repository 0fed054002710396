"""The embedded cluster's server settings, written into its data directory before each start.

initdb sizes `shared_buffers` at 128 MB whatever the machine. An HNSW graph of 100,000 384-d chunks is about
200 MB, so with that default every insert into the graph (and every search) reads its pages through the OS cache
and evicts them again: online inserts with the indexes live measured ~330 rows/s here against ~500 with 1 GB
(docs/benchmarks.md, section 1). The embedded server gets an eighth of the machine's memory, 128 MB at least and
1 GB at most: it shares the machine with the agents, the Prefect server, the embedder and index builds (a quarter
of the memory, tasks/indexes.index_memory_cap_mb); PostgreSQL's guide suggests a quarter for a dedicated server.

The settings go to `devmesh.conf` beside postgresql.conf, which includes it at its end (one line, added once), so
a cluster made before this module gets them at its next start, and a setting above that line in postgresql.conf
is overridden: change it with `ALTER SYSTEM` (postgresql.auto.conf, read last), which still wins. A data
directory devmesh cannot write to starts with what it has (a warning says so). An external server is its
operator's to tune.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

__all__ = ["machine_memory", "shared_buffers_mb", "write_server_settings", "apply_server_settings", "CONF_NAME"]

_log = logging.getLogger("devmesh.postgres")

CONF_NAME = "devmesh.conf"
INCLUDE = f"include_if_exists = '{CONF_NAME}'"
SHARED_BUFFERS_MB = (128, 1024)  # PostgreSQL's default, and the cap
# cgroup v2, then v1: a container's limit, which sysconf does not see
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def machine_memory() -> int | None:
    """Bytes of memory this process may use: the machine's, or its container's limit if lower; None if unknown."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    for path in CGROUP_LIMITS:
        try:
            limit = path.read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            memory = min(memory, int(limit))
    return memory


def shared_buffers_mb(memory: int | None) -> int:
    """An eighth of `memory`, within SHARED_BUFFERS_MB (the lower bound when memory is unknown)."""
    low, high = SHARED_BUFFERS_MB
    return low if memory is None else max(low, min(high, memory // 8 // 2**20))


def write_server_settings(pgdata: Path) -> None:
    """Write devmesh.conf into `pgdata` and include it from postgresql.conf (before the server starts)."""
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    lines = [
        "# Written by devmesh (blocks/embedded_conf.py) at each start; ALTER SYSTEM overrides these.",
        f"shared_buffers = '{shared_buffers_mb(machine_memory())}MB'",
    ]
    fd, staged = tempfile.mkstemp(prefix=f".{CONF_NAME}.", dir=pgdata)  # its own name: two starters may race
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(staged, 0o644)
        owner = conf.stat()
        if os.geteuid() == 0:  # the wheel runs the server as another user when started by root
            os.chown(staged, owner.st_uid, owner.st_gid)
        os.replace(staged, pgdata / CONF_NAME)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    if INCLUDE not in text.splitlines():
        with conf.open("a") as f:
            f.write(("" if text.endswith("\n") else "\n") + INCLUDE + "\n")


def apply_server_settings(pgdata: Path) -> bool:
    """write_server_settings, or a warning if the data directory cannot take them (read-only, foreign-owned): the
    server then starts with the settings it has. False in that case."""
    try:
        write_server_settings(pgdata)
    except OSError as exc:
        _log.warning("could not write the embedded server's settings into %s (%s); it starts with the ones it has",
                     pgdata, exc)
        return False
    return True

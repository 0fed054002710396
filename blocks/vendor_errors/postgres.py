"""psycopg's and psycopg_pool's failures of the database as a whole as devmesh errors (see blocks/vendor_errors)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from blocks.errors import AppError

__all__ = ["map_postgres_errors"]


@contextmanager
def map_postgres_errors(store: Any) -> Iterator[None]:
    """Within: an error that means the database as a whole failed (disk full, server crashed, stopped or gone:
    `store.failure(exc)`, blocks.postgres.PgVectorStore's judgement, which reads the embedded server's log) comes out
    as the StoreUnavailable saying what to do, its cause kept for the log. An error of one statement passes
    unchanged: the task that owns the statement knows what it means (a unique violation, a cancelled search)."""
    import psycopg
    from psycopg_pool import PoolTimeout

    try:
        yield
    except AppError:
        raise
    except (psycopg.Error, PoolTimeout) as exc:
        failure = store.failure(exc)
        if failure is None:
            raise
        raise failure from exc

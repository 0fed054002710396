"""What the ranking queries of one search share: the request's filters as conditions on chunks, and the
connection a ranking runs on, configured for the search (statement_timeout; ef_search and iterative scans for
the HNSW index)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from psycopg import Connection, sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from blocks.settings import SearchSettings

if TYPE_CHECKING:
    from tasks.search import SearchRequest

__all__ = ["request_filters", "configure_hnsw", "ranking_connection", "configure_search"]


def request_filters(request: SearchRequest) -> tuple[sql.Composable, dict]:
    """The request's filters as SQL conditions on `chunks c` (each begins with AND), and their parameters."""
    parts, params = [], {}
    if request.document_ids is not None:
        parts.append(sql.SQL("AND c.document_id = ANY(%(document_ids)s)"))
        params["document_ids"] = request.document_ids
    if request.metadata is not None:
        parts.append(sql.SQL("AND c.metadata @> %(metadata)s"))
        params["metadata"] = Jsonb(request.metadata)
    if request.created_after is not None:
        parts.append(sql.SQL("AND c.created_at >= %(created_after)s"))
        params["created_after"] = request.created_after
    if request.created_before is not None:
        parts.append(sql.SQL("AND c.created_at < %(created_before)s"))
        params["created_before"] = request.created_before
    return sql.SQL(" ").join(parts), params


def configure_hnsw(conn, n: int, settings: SearchSettings) -> None:
    """For this transaction: ef_search of at least n, iterative scans so filters cannot starve the top n, and the
    search's statement_timeout."""
    conn.execute("SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true),"
                 " set_config('hnsw.max_scan_tuples', %s, true), set_config('statement_timeout', %s, true)",
                 [str(max(settings.ef_search, n)), str(settings.max_scan_tuples), _timeout_ms(settings)])


@contextmanager
def ranking_connection(db: ConnectionPool | Connection, settings: SearchSettings,
                       ef: int | None = None) -> Iterator[Connection]:
    """The connection a ranking runs on: `db` itself when it is one (run_search's, configured once for the whole
    search: one transaction, one checkout), else one from the pool `db`, configured here for this ranking (the
    search's statement_timeout; ef_search for `ef` nearest neighbours if given)."""
    if isinstance(db, Connection):
        yield db
        return
    with db.connection() as conn:
        configure_search(conn, settings, ef)
        yield conn


def configure_search(conn: Connection, settings: SearchSettings, ef: int | None) -> None:
    """This transaction's statement_timeout, and its HNSW settings for `ef` nearest neighbours unless None."""
    if ef is not None:
        configure_hnsw(conn, ef, settings)
    else:
        conn.execute("SELECT set_config('statement_timeout', %s, true)", [_timeout_ms(settings)])


def _timeout_ms(settings: SearchSettings) -> str:
    """statement_timeout of a search transaction ('0': none)."""
    return str(max(1, round(settings.timeout_s * 1000))) if settings.timeout_s is not None else "0"

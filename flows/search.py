"""The search flow, and the direct call that agents use on their hot path."""

from __future__ import annotations

import re

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.errors import ConfigError
from blocks.metrics import SEARCH_LATENCY
from blocks.settings import Settings
from tasks.embed import embed_search_query
from tasks.registry import tenant_has_vectors
from tasks.runtime import Runtime
from tasks.search import SearchHit, SearchRequest, run_search

__all__ = ["search", "search_now"]


def search_now(request: SearchRequest, runtime: Runtime | Settings | None = None, *,
               empty_if_unembedded: bool = False) -> list[SearchHit]:
    """Search without a flow run (a sync flow call costs up to ~1 s at exit; this costs milliseconds).

    `empty_if_unembedded`: a tenant that has embedded nothing yet gets no hits instead of the ConfigError its
    unresolvable default model raises (the REST API's answer: the default model may not even be registered).
    """
    with SEARCH_LATENCY.labels(request.mode).time():
        return _search_now(request, Runtime.of(runtime), empty_if_unembedded)


def _search_now(request: SearchRequest, runtime: Runtime, empty_if_unembedded: bool) -> list[SearchHit]:
    pool = runtime.pool()
    if request.mode == "keyword":
        return run_search(pool, request, settings=runtime.settings.search)
    try:
        embedder, model = runtime.model_for(request.tenant, request.model)
    except ConfigError as exc:
        if empty_if_unembedded and exc.item != "model" and not tenant_has_vectors(pool, request.tenant):
            return []
        raise
    # hybrid: the query embeds on a worker thread while its keyword ranking runs (~4 ms of ~10 saved at 100k)
    return run_search(pool, request, settings=runtime.settings.search, model=model,
                      vector=embed_search_query(embedder, request.query, request.mode))


EXCERPT_CHARS = 200  # of a hit's text in the run's table artifact
_HEADING = re.compile(r"(?:^|(?<=\s))#{1,6}\s+")


def _excerpt(text: str) -> str:
    """One line of plain text: the UI renders table cells as Markdown, where a leading '# ' is a heading."""
    return _HEADING.sub("", " ".join(text.split()))[:EXCERPT_CHARS]


@flow(name="search", persist_result=True)
def search(request: SearchRequest) -> list[dict]:
    """Hybrid, vector or keyword search as a flow run: the hits are a table artifact and the run's (persisted)
    result."""
    hits = search_now(request)
    get_run_logger().info("%s hits for %r (%s)", len(hits), request.query[:80], request.mode)
    create_table_artifact(
        key="search-hits", table=[{
            "rank": rank, "document": f"{h.document_id}#{h.seq}", "score": round(h.score, 4),
            "similarity": None if h.similarity is None else round(h.similarity, 4), "relevance": h.relevance,
            "text": _excerpt(h.text)} for rank, h in enumerate(hits, 1)],
        description=f"{len(hits)} {request.mode} hits for {request.query[:200]!r} in tenant `{request.tenant}`")
    return [h.model_dump() for h in hits]

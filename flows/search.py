"""The search flow, and the direct call that agents use on their hot path."""

from __future__ import annotations

import re

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.embedders import load_embedder
from blocks.errors import ConfigError
from blocks.metrics import SEARCH_LATENCY
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from tasks.embed import embed_query
from tasks.migrate import ensure_schema
from tasks.registry import resolve_model, search_model
from tasks.search import SearchHit, SearchRequest, run_search

__all__ = ["search", "search_now"]


def search_now(request: SearchRequest, settings: Settings | None = None) -> list[SearchHit]:
    """Search without a flow run (a sync flow call costs up to ~1 s at exit; this costs milliseconds)."""
    with SEARCH_LATENCY.labels(request.mode).time():
        return _search_now(request, settings)


def _search_now(request: SearchRequest, settings: Settings | None) -> list[SearchHit]:
    settings = settings or Settings()
    pool = PgVectorStore.from_settings(settings).pool()
    ensure_schema(pool)
    if request.mode == "keyword":
        return run_search(pool, request, settings=settings.search)
    info = search_model(pool, request.tenant, request.model)
    if info is None:
        if request.model is not None:
            resolve_model(pool, request.model)  # raises the error that names the stored models
        embedder = load_embedder(settings.embedder)
        model, name = resolve_model(pool, embedder.model_id), embedder.model_id
    else:
        embedder = load_embedder(info.embedder or settings.embedder)
        model, name = (info.id, info.dimensions), info.name
    if embedder.model_id != name:
        raise ConfigError(
            f"model {name!r} is stored, but its embedder gives {embedder.model_id!r}; "
            "set DEVMESH_EMBEDDER to that model's embedder to search it"
        )
    return run_search(pool, request, settings=settings.search, model=model, vector=embed_query(embedder, request.query))


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

"""The search flow, and the direct call that agents use on their hot path."""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.embedders import load_embedder
from blocks.errors import ConfigError
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from tasks.embed import embed_query
from tasks.migrate import ensure_schema
from tasks.models import tenant_model
from tasks.search import SearchHit, SearchRequest, resolve_model, run_search

__all__ = ["search", "search_now"]


def search_now(request: SearchRequest, settings: Settings | None = None) -> list[SearchHit]:
    """Search without a flow run (a sync flow call costs up to ~1 s at exit; this costs milliseconds)."""
    settings = settings or Settings()
    pool = PgVectorStore.from_settings(settings).pool()
    ensure_schema(pool)
    if request.mode == "keyword":
        return run_search(pool, request, settings=settings.search)
    default = tenant_model(pool, request.tenant)
    name = request.model or (default.name if default else None)
    if name is None:
        embedder = load_embedder(settings.embedder)
        name = embedder.model_id
    model = resolve_model(pool, name)
    embedder = load_embedder(_embedder_for(pool, name, settings))
    if embedder.model_id != name:
        raise ConfigError(
            f"model {name!r} is stored, but its embedder gives {embedder.model_id!r}; "
            "set DEVMESH_EMBEDDER to that model's embedder to search it"
        )
    return run_search(pool, request, settings=settings.search, model=model, vector=embed_query(embedder, request.query))


def _embedder_for(pool, model_name: str, settings: Settings) -> str:
    from tasks.models import embedder_name

    return embedder_name(pool, model_name) or settings.embedder


@flow(name="search")
def search(request: SearchRequest) -> list[dict]:
    """Hybrid, vector or keyword search as a flow run (for the UI and deployments)."""
    hits = search_now(request)
    get_run_logger().info("%s hits for %r (%s)", len(hits), request.query[:80], request.mode)
    return [h.model_dump() for h in hits]

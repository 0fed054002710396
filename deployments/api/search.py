"""Search routes: text (hybrid, vector or keyword; the tenant, one context or one user's contexts) and by vector.

The hot path: one threadpool hop for the key check, one for the search, no flow run (`search_now` is direct).
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends

from blocks.cipher import load_cipher
from blocks.errors import ConfigError
from deployments.api.auth import Reader
from deployments.api.errors import ApiError
from deployments.api.schemas import SearchBody, SearchHits, VectorSearchBody
from deployments.api.state import ApiState, api_state
from flows.search import search_now
from tasks.context_texts import model_name
from tasks.contexts import document_id
from tasks.registry import resolve_model
from tasks.search import SearchHit, SearchRequest, run_search

__all__ = ["check_model", "router", "text_search"]

router = APIRouter(tags=["search"])


def check_model(pool, name: str) -> tuple[int, int]:
    """(id, dimensions) of a stored model, or 422 naming the stored ones."""
    try:
        return resolve_model(pool, name)
    except ConfigError as exc:
        raise ApiError(422, "unknown_model", str(exc), item="model") from None


def _open_sealed(hits: list[SearchHit]) -> list[SearchHit]:
    """Hits of encrypted contexts carry their text sealed in the metadata; give it back in the clear."""
    for hit in hits:
        if "sealed" in hit.metadata:
            hit.text = load_cipher(hit.metadata["key_name"]).decrypt(hit.metadata.pop("sealed"))
    return hits


def text_search(api: ApiState, request: SearchRequest) -> list[SearchHit]:
    """search_now, with an unknown model as 422 and a tenant without vectors answering no hits."""
    try:
        return _open_sealed(search_now(request, api.runtime, empty_if_unembedded=True))
    except ConfigError as exc:
        if exc.item == "model":
            raise ApiError(422, "unknown_model", str(exc), item="model") from None
        raise


@router.post("/search", response_model=SearchHits)
def search(body: SearchBody, principal: Reader, api: ApiState = Depends(api_state)):
    """Search the tenant's documents and conversations: all, some contexts (context_id, context_ids) or one user's
    (user_id); filters match chunk metadata (a context's user_id, type ..., a text's own metadata)."""
    metadata = dict(body.filters) if body.filters is not None else None
    document_ids = body.document_ids
    contexts = [body.context_id] if body.context_id is not None else body.context_ids
    if contexts is not None:
        memory = api.memory(principal.tenant)
        # 404 unless each is this tenant's and live; searched together with any document_ids given
        found = [document_id(memory.get(c, limit=0).context.id) for c in dict.fromkeys(contexts)]
        document_ids = [*(document_ids or []), *found]
    elif body.user_id is not None:
        metadata = {**(metadata or {}), "user_id": body.user_id}
    request = SearchRequest(query=body.query, mode=body.mode, limit=body.limit, tenant=principal.tenant,
                            document_ids=document_ids, metadata=metadata, min_similarity=body.min_similarity,
                            model=model_name(api.pool(), body.model, embedders=api.settings.embedders),
                            created_after=body.created_after, created_before=body.created_before)
    hits = text_search(api, request)
    return {"hits": hits, "count": len(hits)}


@router.post("/search/vector", response_model=SearchHits)
def vector_search(body: VectorSearchBody, principal: Reader, api: ApiState = Depends(api_state)):
    """Nearest chunks to a vector you embedded yourself with a stored model (cosine)."""
    pool = api.pool()
    model = model_name(pool, body.model, embedders=api.settings.embedders)
    model_id, dims = check_model(pool, model)
    if len(body.vector) != dims:
        raise ApiError(422, "dimension_mismatch", f"model {body.model!r} has {dims} dimensions, the vector has "
                       f"{len(body.vector)}", item="vector")
    vector = np.asarray(body.vector, dtype=np.float64)
    vector = vector / (float(np.max(np.abs(vector))) or 1.0)  # scaled first, so that huge values cannot overflow
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise ApiError(422, "invalid_vector", "the vector must have a finite, non-zero length", item="vector")
    request = SearchRequest(query="(vector)", mode="vector", limit=body.limit, tenant=principal.tenant,
                            document_ids=body.document_ids, metadata=body.filters, model=model,
                            min_similarity=body.min_similarity)
    hits = run_search(pool, request, settings=api.settings.search, model=(model_id, dims),
                      vector=(vector / norm).astype(np.float32))
    return {"hits": _open_sealed(hits), "count": len(hits)}

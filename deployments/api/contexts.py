"""Context (conversation) routes: create, list, read, update metadata, append, delete, search, summary, similar
contexts and the context's stored chunks/embeddings. Ids are plain strings in the path: another tenant's id, or
anything that is not a UUID, is a 404 like an unknown id."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query, Response

from blocks.errors import ConfigError
from deployments.api.auth import Reader, Writer
from deployments.api.errors import ApiError
from deployments.api.schemas import (
    AppendBody, ContextCreateBody, ContextEmbeddings, ContextPatch, ContextSearchBody, ContextTextBody, SearchHits,
    SimilarList,
)
from deployments.api.search import text_search
from deployments.api.state import ApiState, api_state
from tasks.context_models import AppendResult, Context, ContextList, ContextPage, ContextSummary
from tasks.context_texts import StoredText, embedder_for, store_context_text
from tasks.contexts import context_embeddings, context_scope, list_contexts, update_context_metadata

__all__ = ["router"]

router = APIRouter(prefix="/contexts", tags=["contexts"])


@router.post("", status_code=201, response_model=Context, summary="Create a context")
def create(body: ContextCreateBody, principal: Writer, api: ApiState = Depends(api_state)):
    """A new conversation context, with your own id and first messages if you give them (all or nothing)."""
    memory = api.memory(principal.tenant)
    context = memory.create_context(**body.context_fields())
    messages = body.first_messages()
    if messages:
        try:
            memory.append(context.id, messages)
        except BaseException:
            memory.delete(context.id)  # nothing half-made: no empty context left behind a refused first message
            raise
        context = memory.get(context.id, limit=0).context
    return context


@router.get("", response_model=ContextList)
def contexts(principal: Reader, api: ApiState = Depends(api_state),
             limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=100_000),
             cursor: str | None = Query(None, max_length=512, description="next_cursor of the previous page."),
             user_id: str | None = Query(None, max_length=256), agent_id: str | None = Query(None, max_length=256),
             session_id: str | None = Query(None, max_length=256), type: str | None = Query(None, max_length=64),
             metadata: str | None = Query(None, max_length=10_000, description="JSON object the metadata contains."),
             include_expired: bool = False, with_total: bool = True):
    """The tenant's contexts, newest first, filtered; page with `cursor` (or `offset`)."""
    wanted = None
    if metadata is not None:
        try:
            wanted = json.loads(metadata)
        except ValueError:
            wanted = None
        if not isinstance(wanted, dict):
            raise ApiError(422, "validation_error", "query.metadata: expected a JSON object", item="query.metadata")
    return list_contexts(api.pool(), principal.tenant, {
        "limit": limit, "offset": offset, "cursor": cursor, "user_id": user_id, "agent_id": agent_id,
        "session_id": session_id, "type": type, "metadata": wanted, "include_expired": include_expired,
        "with_total": with_total})


@router.get("/{context_id}", response_model=ContextPage)
def get(context_id: str, principal: Reader, api: ApiState = Depends(api_state),
        offset: int = Query(0, ge=-10_000_000, le=10_000_000, description="Negative: from the end."),
        limit: int = Query(100, ge=0, le=1000)):
    """The context with one page of its messages."""
    return api.memory(principal.tenant).get(context_id, offset=offset, limit=limit)


@router.patch("/{context_id}", response_model=Context)
def patch(context_id: str, body: ContextPatch, principal: Writer, api: ApiState = Depends(api_state)):
    """Merge into (or replace) the context's metadata; its chunks carry the new value too."""
    return update_context_metadata(api.pool(), principal.tenant, context_id, body.metadata, replace=body.replace)


@router.post("/{context_id}/messages", status_code=201, response_model=AppendResult)
def append(context_id: str, body: AppendBody, principal: Writer, api: ApiState = Depends(api_state)):
    """Append messages atomically; only they are chunked and embedded."""
    return api.memory(principal.tenant).append(context_id, body.messages)


@router.delete("/{context_id}", status_code=204)
def delete(context_id: str, principal: Writer, api: ApiState = Depends(api_state)):
    """Delete the context with its messages, chunks and embeddings."""
    if not api.memory(principal.tenant).delete(context_id):
        raise ApiError(404, "not_found", "no such context", item=context_id[:64])
    return Response(status_code=204)


@router.post("/{context_id}/search", response_model=SearchHits)
def search(context_id: str, body: ContextSearchBody, principal: Reader, api: ApiState = Depends(api_state)):
    """Search within this context."""
    memory = api.memory(principal.tenant)
    cid = memory.get(context_id, limit=0).context.id
    hits = text_search(api, context_scope(principal.tenant, cid, body.query, mode=body.mode, limit=body.limit,
                                          min_similarity=body.min_similarity, created_after=body.created_after,
                                          created_before=body.created_before))
    return {"hits": hits, "count": len(hits)}


@router.get("/{context_id}/summary", response_model=ContextSummary)
def summary(context_id: str, principal: Reader, api: ApiState = Depends(api_state)):
    """Counts, token estimate and time span."""
    return api.memory(principal.tenant).summary(context_id)


@router.get("/{context_id}/similar", response_model=SimilarList)
def similar(context_id: str, principal: Reader, api: ApiState = Depends(api_state),
            limit: int = Query(5, ge=1, le=100)):
    """Contexts most like this one (itself excluded), best first."""
    memory = api.memory(principal.tenant)
    memory.get(context_id, limit=0)
    try:
        return {"items": memory.similar(context_id, limit=limit)}
    except ConfigError:  # the embedder's model holds no vectors yet: nothing can be similar
        return {"items": []}


@router.get("/{context_id}/embeddings", response_model=ContextEmbeddings)
def embeddings(context_id: str, principal: Reader, api: ApiState = Depends(api_state),
               limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10_000_000),
               include_vectors: bool = Query(False, description="Include the raw vectors.")):
    """The context's chunks with the models they are embedded with, in order, one page at a time."""
    memory = api.memory(principal.tenant)
    context = memory.get(context_id, limit=0).context
    items = context_embeddings(memory.pool, principal.tenant, context.document_id, limit=limit, offset=offset,
                               include_vectors=include_vectors)
    return {"context_id": context.id, "items": items, "offset": offset,
            "next_offset": offset + len(items) if len(items) == limit else None}


@router.post("/{context_id}/embeddings", status_code=201, response_model=StoredText,
             summary="Store a text you chunked")
def store_text(context_id: str, body: ContextTextBody, principal: Writer, api: ApiState = Depends(api_state)):
    """Embed and store one text at position `content_index` of the context (storing that position again replaces
    it; an unchanged text is not re-embedded). Context searches and similar-context searches then find it."""
    settings = api.settings
    try:
        embedder, name = embedder_for(api.pool(), principal.tenant, body.model, default=settings.embedder,
                                      embedders=settings.embedders)
    except ConfigError as exc:
        raise ApiError(422, "unknown_model", str(exc), item="model") from None
    return store_context_text(api.pool(), principal.tenant, context_id, body.model_dump(exclude={"model"}),
                              embedder=embedder, embedder_name=name)

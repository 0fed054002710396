"""POST /embeddings: store documents through the ingest path (chunk, skip unchanged, embed new, write)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from deployments.api.auth import Writer
from deployments.api.errors import ApiError
from deployments.api.schemas import EmbeddingsBody, EmbeddingsResult
from deployments.api.state import ApiState, api_state
from flows.ingest import DocumentSpec, IngestRequest, run_ingest

__all__ = ["router"]

router = APIRouter(tags=["embeddings"])
CHUNK_COUNTS = "SELECT document_id, chunk_count FROM documents WHERE tenant_id = %s AND document_id = ANY(%s)"
RESERVED = "context:"  # the documents of conversation contexts


@router.post("/embeddings", status_code=201, response_model=EmbeddingsResult)
def store(body: EmbeddingsBody, principal: Writer, api: ApiState = Depends(api_state)):
    """Chunk, embed and store one document or a batch; unchanged text costs nothing. Per-document failures are
    listed in `errors` (the others are stored); when every document fails the answer is 422."""
    items = body.items()
    reserved = [d.id for d in items if d.id.startswith(RESERVED)]
    if reserved:
        raise ApiError(422, "invalid_input", f"document ids starting with {RESERVED!r} are reserved for contexts",
                       item=reserved[0][:200])
    request = IngestRequest(tenant=principal.tenant, documents=[
        DocumentSpec(document_id=d.id, text=d.text, kind=d.kind, metadata=d.metadata) for d in items])
    summary = run_ingest(request, api.runtime)
    errors = [{"item": e["item"], "error": e["error"][:1000]} for e in summary["errors"]]
    failed = {e["item"] for e in errors}
    stored = [d.id for d in items if d.id not in failed]
    if not stored:
        raise ApiError(422, "invalid_input", errors[0]["error"] if errors else "nothing to store",
                       item=errors[0]["item"] if errors else None, errors=errors)
    with api.pool().connection() as conn:
        counts = dict(conn.execute(CHUNK_COUNTS, [principal.tenant, stored]).fetchall())
    return {"model": summary["model"], "documents": [{"id": i, "chunks": counts.get(i, 0)} for i in stored],
            "unchanged": summary["documents_unchanged"], "chunks": summary["chunks"],
            "chunks_inserted": summary["chunks_inserted"], "chunks_kept": summary["chunks_kept"],
            "chunks_deleted": summary["chunks_deleted"], "texts_embedded": summary["texts_embedded"],
            "errors": errors}

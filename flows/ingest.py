"""The ingest flow: read → chunk → skip what is unchanged → embed what is new → store."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from blocks.embedders import load_embedder
from blocks.errors import InputError
from blocks.metrics import CHUNKS_STORED
from blocks.settings import Settings
from blocks.storable import StorableModel
from blocks.vendor_errors import map_postgres_errors
from tasks.ingest import IngestResult, store_documents
from tasks.prepare import prepare_batch, source_hash
from tasks.read import ItemError, SourceDoc, read_sources
from tasks.registry import ensure_model, set_embedder_name
from tasks.runtime import Runtime, call
from tasks.store import DocumentIn, unchanged_documents

__all__ = [
    "DocumentSpec", "IngestRequest", "IngestResult", "PROGRESS_LISTENER", "RunProgress", "ingest", "ingest_documents",
]

Progress = Callable[[str, int, int], None]


class DocumentSpec(BaseModel):
    """A document given inline rather than as a file."""

    model_config = ConfigDict(extra="forbid")
    document_id: str = Field(..., min_length=1, max_length=1024)
    text: str
    kind: Literal["auto", "text", "markdown", "code"] = "auto"
    path: str | None = Field(None, description="Original path; its extension picks the code language.")
    metadata: dict = Field(default_factory=dict)


class IngestRequest(StorableModel):
    """What to ingest and how to chunk it."""

    model_config = ConfigDict(extra="forbid")
    tenant: str = Field("default", min_length=1, max_length=128)
    paths: list[str] = Field(default_factory=list, description="Files or directories to read.")
    documents: list[DocumentSpec] = Field(default_factory=list, description="Inline documents.")
    kind: Literal["auto", "text", "markdown", "code"] = "auto"
    chunk_size: int | None = Field(None, ge=16, le=8192, description="Tokens per chunk (default from settings).")
    chunk_overlap: int | None = Field(None, ge=0, description="Overlap in tokens (default from settings).")
    embedder: str | None = Field(None, description="'local' or an embedder block slug (default from settings).")
    metadata: dict = Field(default_factory=dict, description="Merged into every document's metadata.")


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def ingest_documents(request: IngestRequest, runtime: Runtime | Settings | None = None,
                     progress: Progress | None = None) -> IngestResult:
    """The pipeline behind the `ingest` flow; inside a flow run its steps are task runs. Callers in code use the
    typed result; only the flow returns it as a JSON dict (IngestResult.summary), which Prefect stores.

    Raises StoreUnavailable when the database as a whole fails (disk full, server gone): the message says what to
    do; every batch committed before is complete, and a re-run skips it.
    """
    runtime = Runtime.of(runtime)
    with map_postgres_errors(runtime.store):
        return _run_ingest(request, runtime, progress)


def _run_ingest(request: IngestRequest, runtime: Runtime, progress: Progress | None) -> IngestResult:
    report = progress or (lambda stage, done, total: None)
    settings = runtime.settings
    size = request.chunk_size or settings.chunk.size
    overlap = request.chunk_overlap if request.chunk_overlap is not None else settings.chunk.overlap
    if overlap >= size:
        raise ValueError(f"chunk_overlap ({overlap}) must be smaller than chunk_size ({size})")
    pool = runtime.pool()
    embedder_name = runtime.embedder_name(request.tenant, request.embedder)
    embedder = load_embedder(embedder_name)
    model_id = ensure_model(pool, embedder.model_id, embedder.dimensions)
    set_embedder_name(pool, model_id, embedder_name)

    sources = [SourceDoc(d.document_id, d.text, d.kind, d.path, {**request.metadata, **d.metadata})
               for d in request.documents]
    errors: list[ItemError] = []
    skipped: list[str] = []
    if request.paths:
        read, read_errors, skipped = call(read_sources, request.paths, settings.ingest.max_file_bytes)
        sources += [SourceDoc(d.document_id, d.text, request.kind, d.path, {**request.metadata, **d.metadata})
                    for d in read]
        errors += read_errors
    seen: set[str] = set()
    for doc in sources:
        if doc.document_id in seen:
            errors.append(ItemError(doc.document_id, "document id given twice in one ingest"))
        seen.add(doc.document_id)
    sources = [d for d in sources if d.document_id not in {e.item for e in errors}]

    # Unchanged documents are recognised by their hash before any chunking: a re-ingest costs a read and a hash.
    hashed = []
    for doc in sources:
        try:
            hashed.append(DocumentIn(doc.document_id, source_hash(doc, kind=request.kind, size=size, overlap=overlap,
                                                                  model_id=embedder.model_id), []))
        except InputError as exc:
            errors.append(ItemError(doc.document_id, str(exc)))
    unchanged = unchanged_documents(pool, request.tenant, model_id, hashed)
    valid = {d.document_id for d in hashed}
    sources = [d for d in sources if d.document_id in valid and d.document_id not in unchanged]
    todo = []
    for i, batch in enumerate(_batches(sources, 200)):
        docs, batch_errors = call(prepare_batch, batch, request.kind, size, overlap, embedder, label=f"{i}")
        todo += docs
        errors += batch_errors
        report("chunk", min((i + 1) * 200, len(sources)), len(sources))

    stored = store_documents(runtime.store, pool, embedder, model_id, request.tenant, todo, settings.ingest, report)
    errors += stored.errors
    result = IngestResult(
        tenant=request.tenant, model=embedder.model_id, documents=len(todo) + len(unchanged),
        documents_unchanged=len(unchanged),
        chunks=sum(len(d.chunks) for d in todo) + sum(unchanged.values()),
        chunks_inserted=stored.writes.chunks_inserted, chunks_kept=stored.writes.chunks_kept + sum(unchanged.values()),
        chunks_deleted=stored.writes.chunks_deleted, embedding_calls=stored.calls, texts_embedded=stored.embedded,
        bulk_index_rebuild=stored.bulk, skipped=skipped, errors=errors, where=runtime.describe(),
        document_chunks={**{d.document_id: len(d.chunks) for d in todo if d.document_id not in stored.failed},
                         **unchanged},
    )
    CHUNKS_STORED.labels(request.tenant).inc(stored.writes.chunks_inserted)
    return result


class RunProgress:
    """The ingest's progress as a Prefect progress artifact of its flow run (the UI's bar), plus any listener
    (the CLI's bar): chunking 0-10 %, embedding 10-70 %, storing 70-100 %; the artifact is written at most every
    `every_s` seconds and at 100 %."""

    WEIGHTS = {"chunk": 10.0, "embed": 60.0, "store": 30.0}  # percent of the whole, in this order

    def __init__(self, listener: Progress | None = None, every_s: float = 0.5) -> None:
        self.listener, self.every_s = listener, every_s
        self.done: dict[str, float] = {}
        self.artifact = create_progress_artifact(0.0, key="ingest-progress",
                                                 description="Chunking, embedding and storing")
        self.written, self.last = 0.0, 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.listener is not None:
            self.listener(stage, done, total)
        self.done[stage] = done / total if total else 1.0
        percent = round(sum(width * self.done.get(name, 0.0) for name, width in self.WEIGHTS.items()), 1)
        now = time.monotonic()
        if percent > self.written and (percent >= 100 or now - self.last >= self.every_s):
            update_progress_artifact(self.artifact, percent)
            self.written, self.last = percent, now

    def finish(self) -> None:
        """100 %: every stage is done (a stage with nothing to do may never have reported)."""
        if self.written < 100:
            update_progress_artifact(self.artifact, 100.0)
            self.written = 100.0


# The CLI's progress bar while the flow runs in its process (a callable cannot be a flow parameter).
PROGRESS_LISTENER: ContextVar[Progress | None] = ContextVar("devmesh_ingest_progress", default=None)


@flow(name="ingest", log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=2))
def ingest(request: IngestRequest) -> dict:
    """Ingest files and inline documents: chunk, embed only what changed, store; items fail one by one.
    Returns the summary (IngestResult.summary): the run's result as the UI and API store it."""
    progress = RunProgress(PROGRESS_LISTENER.get())
    result = ingest_documents(request, progress=progress)
    progress.finish()
    logger = get_run_logger()
    logger.info(
        "%s documents (%s unchanged), %s chunks: %s inserted, %s kept, %s deleted; %s texts embedded; %s errors",
        result.documents, result.documents_unchanged, result.chunks, result.chunks_inserted,
        result.chunks_kept, result.chunks_deleted, result.texts_embedded, len(result.errors),
    )
    rows = "\n".join(f"| `{e.item}` | {e.error} |" for e in result.errors[:200])
    create_markdown_artifact(
        key="ingest-summary",
        markdown=(f"## Ingest into tenant `{result.tenant}`\n\n"
                  f"{result.documents} documents, {result.chunks_inserted} chunks inserted, "
                  f"{result.chunks_kept} kept, {result.chunks_deleted} deleted, "
                  f"{result.texts_embedded} texts embedded with `{result.model}`.\n\n"
                  + (f"### Errors\n\n| item | error |\n|---|---|\n{rows}\n" if rows else "No errors.\n")),
        description="What the ingest stored and what it refused.",
    )
    return result.summary()

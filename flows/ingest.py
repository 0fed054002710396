"""The ingest flow: read → chunk → skip what is unchanged → embed what is new → store."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Literal

import psycopg
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from blocks.embedders import load_embedder
from blocks.embedders.hosted import collect_usage
from blocks.errors import InputError, StoreError
from blocks.metrics import CHUNKS_STORED
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from blocks.storable import StorableModel
from tasks.embed import embed_batch
from tasks.embedding_claims import LEASE_S, claim, collect, publish, release
from tasks.prepare import prepare_batch, source_hash
from tasks.read import ItemError, SourceDoc, read_sources
from tasks.registry import ensure_model, set_embedder_name
from tasks.runtime import Runtime, call, in_flow_run
from tasks.store import (
    DocumentIn, StoreResult, hashes_needing_embedding, unchanged_documents, write_batch, write_documents,
)
from tasks.indexes import bulk_load, index_memory_cap_mb
from tasks.usage import record_usage

__all__ = ["DocumentSpec", "IngestRequest", "PROGRESS_LISTENER", "RunProgress", "ingest", "run_ingest"]

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


def run_ingest(request: IngestRequest, runtime: Runtime | Settings | None = None,
               progress: Progress | None = None) -> dict:
    """The pipeline behind the `ingest` flow; inside a flow run its steps are task runs.

    Raises StoreUnavailable when the database as a whole fails (disk full, server gone): the message says what to
    do; every batch committed before is complete, and a re-run skips it.
    """
    runtime = Runtime.of(runtime)
    try:
        return _run_ingest(request, runtime, progress)
    except psycopg.Error as exc:
        failure = runtime.failure(exc)
        if failure is None:
            raise
        raise failure from exc


def _run_ingest(request: IngestRequest, runtime: Runtime, progress: Progress | None) -> dict:
    report = progress or (lambda stage, done, total: None)
    settings = runtime.settings
    size = request.chunk_size or settings.chunk.size
    overlap = request.chunk_overlap if request.chunk_overlap is not None else settings.chunk.overlap
    if overlap >= size:
        raise ValueError(f"chunk_overlap ({overlap}) must be smaller than chunk_size ({size})")
    store = runtime.store
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

    needed = hashes_needing_embedding(pool, request.tenant, model_id, [c.content_hash for d in todo for c in d.chunks])
    total = StoreResult()
    cap = index_memory_cap_mb(store, settings.ingest.index_memory_mb)
    with bulk_load(pool, model_id, embedder.dimensions, len(needed), memory_cap_mb=cap) as bulk, \
            collect_usage() as usages:
        try:
            calls, embedded = _embed_and_write(store, pool, embedder, model_id, request.tenant, todo, needed,
                                               settings, total, errors, report)
        except BaseException as exc:
            _record_usage_after(exc, pool, request.tenant, usages)
            raise
        record_usage(pool, request.tenant, usages)

    summary = {
        "tenant": request.tenant,
        "model": embedder.model_id,
        "documents": len(todo) + len(unchanged),
        "documents_unchanged": len(unchanged),
        "chunks": sum(len(d.chunks) for d in todo) + sum(unchanged.values()),
        "chunks_inserted": total.chunks_inserted,
        "chunks_kept": total.chunks_kept + sum(unchanged.values()),
        "chunks_deleted": total.chunks_deleted,
        "embedding_calls": calls,
        "texts_embedded": embedded,
        "bulk_index_rebuild": bulk,
        "skipped": skipped,
        "errors": [{"item": e.item, "error": e.error} for e in errors],
        "where": store.describe(),
    }
    CHUNKS_STORED.labels(request.tenant).inc(total.chunks_inserted)
    return summary


def _record_usage_after(exc: BaseException, pool, tenant: str, usages: list) -> None:
    """Record the hosted providers' tokens and cost of an ingest that failed with `exc`, without replacing it."""
    if not usages:
        return
    if isinstance(exc, StoreError):  # the database is gone, full or refusing: the usage rows would wait 30 s, fail
        exc.add_note(f"the usage of {len(usages)} embedding call(s) was not recorded: the database failed")
        return
    try:
        record_usage(pool, tenant, usages)  # tokens and cost of hosted providers, even on failure
    except Exception as usage_error:  # noqa: BLE001 - the first error is the one to report
        exc.add_note(f"the usage of {len(usages)} embedding call(s) was not recorded ({usage_error})")


def _embed_and_write(store, pool, embedder, model_id, tenant, todo, needed, settings, total, errors,
                     report) -> tuple[int, int]:
    """Documents go in batches of about store_batch chunks: embed batch i+1 while batch i is written.

    Each embedding step claims its texts first (tasks/embedding_claims.py): a text another ingest of the tenant is
    embedding at the same time is not embedded again; its vector is taken once that ingest publishes it.

    Returns (provider calls, texts embedded) of this ingest alone.
    """
    batches, current, size = [], [], 0
    for doc in todo:
        current.append(doc)
        size += len(doc.chunks)
        if size >= settings.ingest.store_batch:
            batches.append(current)
            current, size = [], 0
    if current:
        batches.append(current)
    calls = embedded = 0
    pending = None
    done_chunks, total_chunks, to_embed = 0, sum(len(d.chunks) for d in todo), len(needed)
    step = settings.ingest.embed_batch  # one embedding task run, one tick of the progress bar
    owner = uuid.uuid4()  # this ingest's embedding claims (tasks/embedding_claims.py)
    report("embed", 0, to_embed)

    def embed_mine(hashes: list[str], texts: dict[str, str], vectors: dict, label: str) -> None:
        nonlocal calls, embedded
        if not hashes:
            return
        got = dict(zip(hashes, call(embed_batch, embedder, [texts[h] for h in hashes], label=label)))
        publish(pool, tenant, model_id, owner, got)
        vectors.update(got)
        calls += -(-len(hashes) // embedder.max_batch)  # embed_texts calls the provider per max_batch texts
        embedded += len(hashes)
        report("embed", embedded, to_embed)

    try:
        for i, batch in enumerate(batches):
            texts = {c.content_hash: c.text for d in batch for c in d.chunks if c.content_hash in needed}
            vectors: dict = {}
            hashes = list(texts)
            theirs: set[str] = set()
            for j in range(0, len(hashes), step):
                part = hashes[j : j + step]
                mine = claim(pool, tenant, model_id, part, owner)
                theirs |= set(part) - mine
                embed_mine([h for h in part if h in mine], texts, vectors, f"{i}-{j // step}")
            waits = 0
            while theirs:  # texts another ingest is embedding: its vectors, or its claim once expired
                got, taken, theirs = collect(pool, tenant, model_id, sorted(theirs), owner)
                vectors.update(got)
                embed_mine(sorted(taken), texts, vectors, f"{i}-taken-{waits}")
                if theirs:
                    waits += 1
                    time.sleep(min(0.05 * waits, 1.0))
            needed -= set(hashes)  # a hash shared by later batches is stored by then
            if pending is not None:
                _settle(pending, total, errors)
                report("store", done_chunks, total_chunks)
            pending = _submit_write(store, tenant, model_id, embedder.dimensions, batch, vectors, f"{i}")
            done_chunks += sum(len(d.chunks) for d in batch)
        if pending is not None:
            _settle(pending, total, errors)
    except BaseException as exc:
        try:  # other runs may claim these texts now; a failure here must not hide the ingest's own error
            release(pool, owner)
        except Exception as release_error:  # noqa: BLE001
            exc.add_note(f"its embedding claims were not released ({release_error}): they expire in "
                         f"{LEASE_S:.0f} s")
        raise
    release(pool, owner)
    report("store", done_chunks, total_chunks)
    return calls, embedded


def _submit_write(store, tenant, model_id, dims, batch, vectors, label) -> Callable[[], tuple[StoreResult, list]]:
    """Start writing a batch; returns a function that waits for it and gives (result, item errors).

    In a flow run the write is a task run in the bounded pool (the next batch embeds meanwhile); its future is
    always awaited and its state checked. If the batch fails as a whole, its documents are written one by one
    so that one bad item fails alone and the others land.
    """
    args = (store.pool(), tenant, model_id, dims)
    if not in_flow_run():
        try:
            outcome = (write_documents(*args, batch, vectors), [])
        except Exception as exc:  # noqa: BLE001 - retried item by item below
            _raise_if_unavailable(exc, store)
            outcome = _write_one_by_one(*args, batch, vectors, store)
        return lambda: outcome
    future = write_batch.submit(store, tenant, model_id, dims, batch, vectors, label=label)

    def wait() -> tuple[StoreResult, list]:
        try:
            return future.result(), []
        except Exception as exc:  # noqa: BLE001 - retried item by item below
            _raise_if_unavailable(exc, store)
            return _write_one_by_one(*args, batch, vectors, store)

    return wait


def _settle(pending, total: StoreResult, errors: list[ItemError]) -> None:
    result, item_errors = pending()
    total.add(result)
    errors += item_errors


def _raise_if_unavailable(exc: Exception, store: PgVectorStore) -> None:
    """A full disk or a lost server fails every item alike: stop the ingest with what to do, retry nothing."""
    failure = store.failure(exc)
    if failure is not None:
        raise failure from exc


def _write_one_by_one(pool, tenant, model_id, dims, batch, vectors, store) -> tuple[StoreResult, list[ItemError]]:
    result, errors = StoreResult(), []
    for doc in batch:
        try:
            result.add(write_documents(pool, tenant, model_id, dims, [doc], vectors))
        except Exception as exc:  # noqa: BLE001 - the error is reported per item, the others proceed
            _raise_if_unavailable(exc, store)
            errors.append(ItemError(doc.document_id, f"not stored: {exc}"))
    return result, errors


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
    """Ingest files and inline documents: chunk, embed only what changed, store; items fail one by one."""
    progress = RunProgress(PROGRESS_LISTENER.get())
    summary = run_ingest(request, progress=progress)
    progress.finish()
    logger = get_run_logger()
    logger.info(
        "%s documents (%s unchanged), %s chunks: %s inserted, %s kept, %s deleted; %s texts embedded; %s errors",
        summary["documents"], summary["documents_unchanged"], summary["chunks"], summary["chunks_inserted"],
        summary["chunks_kept"], summary["chunks_deleted"], summary["texts_embedded"], len(summary["errors"]),
    )
    rows = "\n".join(f"| `{e['item']}` | {e['error']} |" for e in summary["errors"][:200])
    create_markdown_artifact(
        key="ingest-summary",
        markdown=(f"## Ingest into tenant `{summary['tenant']}`\n\n"
                  f"{summary['documents']} documents, {summary['chunks_inserted']} chunks inserted, "
                  f"{summary['chunks_kept']} kept, {summary['chunks_deleted']} deleted, "
                  f"{summary['texts_embedded']} texts embedded with `{summary['model']}`.\n\n"
                  + (f"### Errors\n\n| item | error |\n|---|---|\n{rows}\n" if rows else "No errors.\n")),
        description="What the ingest stored and what it refused.",
    )
    return summary

"""The ingest's storing step, below its flow: documents chunked and hashed go in batches, each embedded (what no
stored chunk of the tenant has a vector for, claimed first so that concurrent ingests embed a text once) while the
previous one is written; a batch that fails as a whole is written again one document at a time, so that one bad
item fails alone. Around it: a bulk load drops and rebuilds the search indexes (tasks/indexes.py), and the hosted
providers' usage is recorded, also when the ingest fails. `IngestResult` is what an ingest did, typed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from blocks.embedders.base import Embedder
from blocks.embedders.hosted import collect_usage
from blocks.errors import StoreError
from blocks.postgres import PgVectorStore
from blocks.settings import IngestSettings
from tasks.embed import embed_batch
from tasks.embedding_claims import LEASE_S, claim, collect, publish, release
from tasks.indexes import bulk_load, index_memory_cap_mb
from tasks.read import ItemError
from tasks.runtime import call, in_flow_run
from tasks.store import DocumentIn, StoreResult, hashes_needing_embedding, write_batch, write_documents
from tasks.usage import record_usage

__all__ = ["IngestResult", "Stored", "store_documents"]

Progress = Callable[[str, int, int], None]


@dataclass
class IngestResult:
    """What one ingest did. `document_chunks`: each document stored or found unchanged -> its chunk count."""

    tenant: str
    model: str
    documents: int
    documents_unchanged: int
    chunks: int
    chunks_inserted: int
    chunks_kept: int
    chunks_deleted: int
    embedding_calls: int
    texts_embedded: int
    bulk_index_rebuild: bool
    skipped: list[str]
    errors: list[ItemError]
    where: str
    document_chunks: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        """The summary the `ingest` flow returns, the CLI prints and Memory.remember gives (keys in this order)."""
        return {
            "tenant": self.tenant, "model": self.model, "documents": self.documents,
            "documents_unchanged": self.documents_unchanged, "chunks": self.chunks,
            "chunks_inserted": self.chunks_inserted, "chunks_kept": self.chunks_kept,
            "chunks_deleted": self.chunks_deleted, "embedding_calls": self.embedding_calls,
            "texts_embedded": self.texts_embedded, "bulk_index_rebuild": self.bulk_index_rebuild,
            "skipped": self.skipped, "errors": [{"item": e.item, "error": e.error} for e in self.errors],
            "where": self.where,
        }


@dataclass
class Stored:
    """What store_documents did: the writes' counts, the documents that failed (errors), provider calls and texts
    embedded by this ingest alone, and whether the indexes were dropped and rebuilt around it (or rebuilt)."""

    writes: StoreResult
    errors: list[ItemError]
    calls: int
    embedded: int
    bulk: bool

    @property
    def failed(self) -> set[str]:
        return {e.item for e in self.errors}


def store_documents(store: PgVectorStore, pool, embedder: Embedder, model_id: int, tenant: str,
                    todo: list[DocumentIn], ingest: IngestSettings, report: Progress) -> Stored:
    """Embed what is new in `todo` and write it, batch by batch (see the module's docstring)."""
    needed = hashes_needing_embedding(pool, tenant, model_id, [c.content_hash for d in todo for c in d.chunks])
    total, errors = StoreResult(), []
    cap = index_memory_cap_mb(store, ingest.index_memory_mb)
    with bulk_load(pool, model_id, embedder.dimensions, len(needed), tenant=tenant, memory_cap_mb=cap) as bulk, \
            collect_usage() as usages:
        try:
            calls, embedded = _embed_and_write(store, pool, embedder, model_id, tenant, todo, needed, ingest, total,
                                               errors, report)
        except BaseException as exc:
            _record_usage_after(exc, pool, tenant, usages)
            raise
        record_usage(pool, tenant, usages)
    return Stored(total, errors, calls, embedded, bulk)


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


def _embed_and_write(store, pool, embedder, model_id, tenant, todo, needed, ingest: IngestSettings, total, errors,
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
        if size >= ingest.store_batch:
            batches.append(current)
            current, size = [], 0
    if current:
        batches.append(current)
    calls = embedded = 0
    pending = None
    done_chunks, total_chunks, to_embed = 0, sum(len(d.chunks) for d in todo), len(needed)
    step = ingest.embed_batch  # one embedding task run, one tick of the progress bar
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

"""Turn source documents into chunked, hashed documents ready to store."""

from __future__ import annotations

import dataclasses

from prefect import task
from prefect.cache_policies import NONE

from blocks.embedders.base import Embedder
from blocks.errors import InputError
from blocks.storable import unstorable
from tasks.chunk import chunk_document
from tasks.read import ItemError, SourceDoc, decode_text
from tasks.store import DocumentIn, document_hash

__all__ = ["prepare_documents", "prepare_batch", "source_hash", "CHUNKER_VERSION"]

# Bump when chunking changes in a way that must re-chunk stored documents.
CHUNKER_VERSION = 1
MAX_DOCUMENT_ID = 1024


def _validate(doc: SourceDoc) -> None:
    if not doc.document_id or len(doc.document_id) > MAX_DOCUMENT_ID or "\x00" in doc.document_id:
        raise InputError(f"document id must be 1-{MAX_DOCUMENT_ID} characters without NUL", item=repr(doc.document_id[:80]))
    problem = unstorable(doc.document_id, "the document id") or unstorable(doc.metadata, "metadata")
    if problem:
        raise InputError(f"{problem}, which cannot be stored", item=doc.document_id.encode("utf-8", "replace").decode())
    try:  # the text: lone surrogates here, then empty, NUL (binary) and the rest as for a file's bytes
        data = doc.text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"invalid Unicode (lone surrogate) at character {exc.start}", item=doc.document_id) from None
    decode_text(data, doc.document_id)


def source_hash(doc: SourceDoc, *, kind: str, size: int, overlap: int, model_id: str) -> str:
    """The hash a document is stored under: its text, chunking parameters, model and metadata (validated first)."""
    _validate(doc)
    return document_hash(doc.text, doc.kind if doc.kind != "auto" else kind, size, overlap, CHUNKER_VERSION,
                         model_id, sorted(doc.metadata.items(), key=str))


def prepare_documents(
    docs: list[SourceDoc], *, kind: str, size: int, overlap: int, embedder: Embedder
) -> tuple[list[DocumentIn], list[ItemError]]:
    """Validate, chunk (sizes in the embedder's tokens) and hash each document; failures name the document."""
    prepared, errors = [], []
    for doc in docs:
        try:
            content_hash = source_hash(doc, kind=kind, size=size, overlap=overlap, model_id=embedder.model_id)
            doc_kind = doc.kind if doc.kind != "auto" else kind
            chunks = chunk_document(doc.text, kind=doc_kind, size=size, overlap=overlap,
                                    count_tokens=embedder.count_tokens, path=doc.path or doc.document_id)
            if not chunks:
                raise InputError("no text to index after chunking", item=doc.document_id)
            chunks = [dataclasses.replace(c, metadata={**doc.metadata, **c.metadata}) for c in chunks]
            prepared.append(DocumentIn(
                document_id=doc.document_id, chunks=chunks, kind=doc_kind, source=doc.path, metadata=doc.metadata,
                content_hash=content_hash,
            ))
        except InputError as exc:
            errors.append(ItemError(doc.document_id, str(exc)))
    return prepared, errors


@task(name="chunk-documents", task_run_name="chunk-{label}", cache_policy=NONE)
def prepare_batch(docs: list[SourceDoc], kind: str, size: int, overlap: int, embedder: Embedder,
                  label: str = "batch") -> tuple[list[DocumentIn], list[ItemError]]:
    """Chunk and hash one batch of documents."""
    return prepare_documents(docs, kind=kind, size=size, overlap=overlap, embedder=embedder)

"""tasks/prepare.py: a document that cannot be stored is refused before chunking, each with the message of its
cause (a text's NUL is a binary file, as for files read from disk; ids and metadata name the place)."""

from __future__ import annotations

import re

import pytest

from blocks.errors import InputError
from tasks.prepare import source_hash
from tasks.read import SourceDoc


def _nest(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _hash(doc: SourceDoc) -> str:
    return source_hash(doc, kind="auto", size=64, overlap=8, model_id="m")


@pytest.mark.parametrize("doc, message", [
    (SourceDoc("bin", "\x00\x01binary"), r"binary file \(NUL bytes\); only text is ingested$"),
    (SourceDoc("late-nul", "x" * 9000 + "\x00"), r"text contains NUL bytes$"),
    (SourceDoc("sur", "x\ud800y"), r"invalid Unicode \(lone surrogate\) at character 1$"),
    (SourceDoc("empty", "  \n"), r"empty: nothing to ingest$"),
    (SourceDoc("id\ud800", "fine"), r"the document id contains a lone surrogate \(\\ud800\), which cannot be stored$"),
    (SourceDoc("meta", "fine", metadata={"a": ["\x00"]}),
     r"metadata\.a\[0\] contains a NUL character \(\\u0000\), which cannot be stored$"),
    (SourceDoc("deep", "fine", metadata={"a": _nest(70)}),
     r"metadata\.a\[0\]\[0\].* is nested more than 64 levels deep, which cannot be stored$"),
])
def test_each_unstorable_document_is_refused_with_its_own_message(doc, message):
    item = doc.document_id.encode("utf-8", "replace").decode()
    with pytest.raises(InputError, match=f"^{re.escape(item)}: {message}"):
        _hash(doc)


def test_a_text_document_hashes():
    assert len(_hash(SourceDoc("ok", "plain text", metadata={"k": "v"}))) >= 32

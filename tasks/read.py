"""Read source files for ingestion, refusing what is not text with an error that names the file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from blocks.errors import InputError

__all__ = ["SourceDoc", "ItemError", "decode_text", "read_file", "read_paths", "read_sources"]

# Directories nobody wants in a search index.
SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".pytest_cache",
             ".devmesh", ".tox", "dist", "build", ".hypothesis", ".ruff_cache"}


@dataclass
class SourceDoc:
    """A document to ingest: id, text, chunker kind, where it came from."""

    document_id: str
    text: str
    kind: str = "auto"
    path: str | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class ItemError:
    """An item that failed; the others go on."""

    item: str
    error: str


def decode_text(data: bytes, item: str) -> str:
    """UTF-8 text, or an InputError that says why these bytes are not ingestible text."""
    if not data.strip():
        raise InputError("empty: nothing to ingest", item=item)
    if b"\x00" in data[:8192]:
        raise InputError("binary file (NUL bytes); only text is ingested", item=item)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"invalid UTF-8 at byte {exc.start}: {exc.reason}", item=item) from None
    if "\x00" in text:
        raise InputError("text contains NUL bytes", item=item)
    return text


def read_file(path: Path, document_id: str, max_bytes: int) -> SourceDoc:
    """One file as a SourceDoc; size is checked before reading."""
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"file is {size:,} bytes, over the {max_bytes:,}-byte limit", item=document_id)
    text = decode_text(path.read_bytes(), document_id)
    return SourceDoc(document_id=document_id, text=text, path=str(path), metadata={"path": document_id})


def _walk(root: Path) -> tuple[list[Path], list[str]]:
    files, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or p.is_symlink():
                skipped.append(str(p))  # hidden files and symlinks are not followed out of the tree
                continue
            files.append(p)
    return files, skipped


def read_paths(paths: list[str], *, max_bytes: int, base: Path | None = None) -> tuple[list[SourceDoc], list[ItemError], list[str]]:
    """Files named or found under directories: (docs, errors, skipped).

    A file named explicitly that is not text is an error; inside a directory walk it is skipped quietly.
    Document ids are paths relative to `base` (default: the working directory) when under it.
    """
    base = (base or Path.cwd()).resolve()
    docs, errors, skipped = [], [], []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            errors.append(ItemError(raw, "no such file or directory"))
            continue
        explicit = not path.is_dir()
        candidates, skip = ([path], []) if explicit else _walk(path)
        skipped.extend(skip)
        for p in candidates:
            resolved = p.resolve()
            doc_id = resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else resolved.as_posix()
            try:
                docs.append(read_file(p, doc_id, max_bytes))
            except InputError as exc:
                (errors.append(ItemError(doc_id, str(exc))) if explicit else skipped.append(f"{doc_id} ({exc})"))
            except OSError as exc:
                errors.append(ItemError(doc_id, f"cannot read: {exc.strerror}"))
    return docs, errors, skipped


@task(name="read-sources", cache_policy=NONE)
def read_sources(paths: list[str], max_bytes: int) -> tuple[list[SourceDoc], list[ItemError], list[str]]:
    """Read every file under the given paths (one task run for all of them)."""
    return read_paths(paths, max_bytes=max_bytes)

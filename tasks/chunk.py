"""Chunkers: cut text, markdown, code and conversations into chunks sized in model tokens."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePath

from langchain_text_splitters import Language, MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

__all__ = [
    "KINDS",
    "Chunk",
    "Message",
    "TokenCounter",
    "chunk_code",
    "chunk_conversation",
    "chunk_document",
    "chunk_markdown",
    "chunk_text",
    "chunk_turns",
    "language_for_path",
]

TokenCounter = Callable[[str], int]

KINDS = ("text", "markdown", "code", "auto")

# File extension -> langchain `Language` value. Perl is left out: langchain 1.1.3 lists Language.PERL
# but from_language() raises "not implemented yet" for it.
_EXTENSIONS = {
    **dict.fromkeys((".py", ".pyi", ".pyw"), "python"),
    **dict.fromkeys((".js", ".jsx", ".mjs", ".cjs"), "js"),
    **dict.fromkeys((".ts", ".tsx", ".mts", ".cts"), "ts"),
    ".go": "go",
    ".java": "java",
    **dict.fromkeys((".kt", ".kts"), "kotlin"),
    ".php": "php",
    ".proto": "proto",
    ".r": "r",
    ".rst": "rst",
    ".rb": "ruby",
    ".rs": "rust",
    **dict.fromkeys((".scala", ".sc"), "scala"),
    ".swift": "swift",
    **dict.fromkeys((".md", ".markdown", ".mdx"), "markdown"),
    ".tex": "latex",
    **dict.fromkeys((".html", ".htm"), "html"),
    ".sol": "sol",
    ".cs": "csharp",
    **dict.fromkeys((".cbl", ".cob", ".cpy"), "cobol"),
    **dict.fromkeys((".c", ".h"), "c"),
    **dict.fromkeys((".cpp", ".cc", ".cxx", ".hpp", ".hh", ".hxx"), "cpp"),
    ".lua": "lua",
    ".hs": "haskell",
    **dict.fromkeys((".ex", ".exs"), "elixir"),
    **dict.fromkeys((".ps1", ".psm1", ".psd1"), "powershell"),
    **dict.fromkeys((".bas", ".frm", ".vbp"), "visualbasic6"),
}

_HEADERS = [("#" * level, f"h{level}") for level in range(1, 7)]
_TURN_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: position, text, size in model tokens, sha256 of the text, chunker metadata."""

    seq: int
    text: str
    token_count: int
    content_hash: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """One conversation turn: who spoke (role, optional name) and what was said."""

    role: str
    content: str
    name: str | None = None


def language_for_path(path: str) -> str | None:
    """The langchain `Language` value for a file's extension, or None when there is none we know."""
    return _EXTENSIONS.get(PurePath(path).suffix.lower())


def chunk_text(text: str, *, size: int, overlap: int, count_tokens: TokenCounter) -> list[Chunk]:
    """Plain text split on paragraphs, then lines, words and characters, to at most `size` tokens."""
    pieces = _splitter(size, overlap, count_tokens).split_text(text)
    return _chunks(((piece, {}) for piece in pieces), count_tokens)


def chunk_markdown(text: str, *, size: int, overlap: int, count_tokens: TokenCounter) -> list[Chunk]:
    """Markdown split into header sections (header line kept in the text), long sections split further."""
    # MarkdownHeaderTextSplitter normalises whitespace: it strips every line (indentation inside code
    # fences too), drops non-printable characters and joins paragraphs with "  \n".
    sections = MarkdownHeaderTextSplitter(_HEADERS, strip_headers=False).split_text(text)
    docs = _splitter(size, overlap, count_tokens, "markdown").split_documents(sections)
    return _chunks(((doc.page_content, {"headers": dict(doc.metadata)}) for doc in docs), count_tokens)


def chunk_code(text: str, *, language: str, size: int, overlap: int, count_tokens: TokenCounter) -> list[Chunk]:
    """Source code split at the language's definition boundaries (class, def, func...), then lines."""
    language = _language(language).value
    pieces = _splitter(size, overlap, count_tokens, language).split_text(text)
    return _chunks(((piece, {"language": language}) for piece in pieces), count_tokens)


def chunk_conversation(
    messages: list[Message],
    *,
    size: int,
    overlap: int,
    count_tokens: TokenCounter,
    first_index: int = 0,
) -> list[Chunk]:
    """Whole messages packed into chunks of up to `size` tokens; a message is split only when alone too long.

    Each chunk starts with the last whole messages (up to `overlap` tokens) of the one before, so the turn a
    message answers travels with it: "yes, do that" is found together with what "that" was.
    """
    splitter = _splitter(size, overlap, count_tokens)  # also validates size and overlap like the others
    rendered = [_render(m) for m in messages]
    speakers = [_speaker(m) for m in messages]

    def join(indexes: list[int]) -> str:
        return _TURN_SEPARATOR.join(rendered[i] for i in indexes)

    def meta(first: int, last: int) -> dict:
        return {
            "message_range": [first + first_index, last + first_index],
            "speakers": sorted(set(speakers[first : last + 1])),
        }

    pieces: list[tuple[str, dict]] = []
    window: list[int] = []  # the messages of the chunk being packed; its last one is never in an earlier chunk
    for i, text in enumerate(rendered):
        if count_tokens(text) > size:
            if window:
                pieces.append((join(window), meta(window[0], window[-1])))
            pieces.extend((part, meta(i, i)) for part in splitter.split_text(text))
            window = []
            continue
        if window and count_tokens(join([*window, i])) > size:
            pieces.append((join(window), meta(window[0], window[-1])))
            window = _carried(window, overlap, join, count_tokens)
            while window and count_tokens(join([*window, i])) > size:
                window = window[1:]
        window.append(i)
    if window:
        pieces.append((join(window), meta(window[0], window[-1])))
    return _chunks(pieces, count_tokens)


def chunk_turns(
    messages: list[Message],
    *,
    size: int,
    overlap: int,
    count_tokens: TokenCounter,
    first_index: int = 0,
) -> list[Chunk]:
    """Each message its own chunk ("name: content"), so a hit is the one turn that says it.

    A message longer than `size` tokens is split like plain text (with `overlap`), every part keeping its
    message_range. Unlike chunk_conversation the chunks do not depend on how messages were grouped into
    appends, and appending one message embeds that message only.
    """
    splitter = _splitter(size, overlap, count_tokens)
    pieces: list[tuple[str, dict]] = []
    for i, message in enumerate(messages):
        text = _render_turn(message)
        meta = {"message_range": [i + first_index, i + first_index], "speakers": [_speaker(message)]}
        parts = [text] if count_tokens(text) <= size else splitter.split_text(text)
        pieces.extend((part, meta) for part in parts)
    return _chunks(pieces, count_tokens)


def chunk_document(
    text: str,
    *,
    kind: str,
    size: int,
    overlap: int,
    count_tokens: TokenCounter,
    path: str | None = None,
) -> list[Chunk]:
    """Chunk by kind; "auto" picks markdown or code from the path's extension, else text (so does "code")."""
    if kind not in KINDS:
        raise ValueError(f"expected kind in {KINDS}, got {kind!r}")
    if not text.strip():
        return []
    language = language_for_path(path) if path else None
    if kind == "auto":
        kind = "markdown" if language == "markdown" else "code" if language else "text"
    if kind == "markdown":
        return chunk_markdown(text, size=size, overlap=overlap, count_tokens=count_tokens)
    if kind == "code" and language:
        return chunk_code(text, language=language, size=size, overlap=overlap, count_tokens=count_tokens)
    return chunk_text(text, size=size, overlap=overlap, count_tokens=count_tokens)


def _splitter(
    size: int, overlap: int, count_tokens: TokenCounter, language: str | None = None
) -> RecursiveCharacterTextSplitter:
    """A recursive splitter measuring in model tokens, with the language's separators when given."""
    # The splitter adds up count_tokens of pieces to decide where to cut and falls back to single
    # characters, so a chunk can exceed `size` only when one character counts more than `size`, or
    # when a joined piece counts more than its parts did (possible inside a WordPiece word, never
    # with a whitespace counter).
    options = {"chunk_size": size, "chunk_overlap": overlap, "length_function": count_tokens}
    if language is None:
        return RecursiveCharacterTextSplitter(**options)
    return RecursiveCharacterTextSplitter.from_language(_language(language), **options)


def _language(language: str) -> Language:
    """The langchain Language for a value such as "python"; ValueError names the known ones."""
    try:
        return Language(language)
    except ValueError:
        raise ValueError(f"expected a language in {[lang.value for lang in Language]}, got {language!r}") from None


def _carried(
    window: list[int], overlap: int, join: Callable[[list[int]], str], count_tokens: TokenCounter
) -> list[int]:
    """The longest run of trailing messages of `window` that together count at most `overlap` tokens."""
    start = len(window)
    while start > 0 and count_tokens(join(window[start - 1 :])) <= overlap:
        start -= 1
    return window[start:]


def _render(message: Message) -> str:
    """A message as chunk text: "role: content", or "role (name): content"."""
    return f"{_speaker(message)}: {message.content}"


def _render_turn(message: Message) -> str:
    """A message as a turn chunk: "name: content" when it has a name (the speaker is the signal; the role
    word is the same on half the turns), else "role: content"."""
    return f"{message.name or message.role}: {message.content}"


def _speaker(message: Message) -> str:
    """Who spoke: the role, with the name in parentheses when there is one."""
    return f"{message.role} ({message.name})" if message.name else message.role


def _chunks(pieces: Iterable[tuple[str, dict]], count_tokens: TokenCounter) -> list[Chunk]:
    """Chunks of the non-blank pieces, numbered from 0, measured and hashed."""
    kept = [(text, metadata) for text, metadata in pieces if text.strip()]
    return [
        Chunk(
            seq=seq,
            text=text,
            token_count=count_tokens(text),
            content_hash=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            metadata=metadata,
        )
        for seq, (text, metadata) in enumerate(kept)
    ]

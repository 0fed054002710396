"""Values PostgreSQL cannot store, refused at validation with the field and the place inside it.

PostgreSQL refuses NUL (U+0000) in text and jsonb, and a lone surrogate (U+D800-U+DFFF) cannot be encoded to UTF-8
at all; and a value nested deeper than MAX_DEPTH levels is stored but cannot be serialized back (pydantic's
serializer stops near 255 levels), so it is refused too. Without this check such a value reaches the database and
fails there, naming no field (or, when it fails half-way through a write, after other rows were written). Models
that take text from callers inherit `StorableModel`: every field is checked, including the keys and values nested in
dicts and lists. Models built from database rows do not: what was stored is read back as it is.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator

__all__ = ["MAX_DEPTH", "StorableModel", "unstorable"]

MAX_DEPTH = 64  # levels of nested objects/arrays inside one field

_BAD = re.compile("[\x00\ud800-\udfff]")


def _what(text: str) -> str:
    char = _BAD.search(text).group()
    return "a NUL character (\\u0000)" if char == "\x00" else f"a lone surrogate (\\u{ord(char):04x})"


def _short(where: str, limit: int = 80) -> str:
    """A place inside a value, cut to `limit` characters (a path 65 levels down is mostly repetition)."""
    return where if len(where) <= limit else where[:limit - 1] + "\u2026"


def unstorable(value: Any, path: str = "") -> str | None:
    """Where `value` holds a NUL or a lone surrogate or nests too deeply, and what, or None."""
    stack = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{_short(where) or 'the value'} is nested more than {MAX_DEPTH} levels deep"
        if isinstance(item, str):
            if _BAD.search(item):
                return f"{_short(where) or 'the value'} contains {_what(item)}"
        elif isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and _BAD.search(key):
                    return f"a key of {_short(where) or 'the object'} contains {_what(key)}"
                stack.append((sub, f"{where}.{key}" if where else str(key), depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((sub, f"{where}[{i}]", depth + 1) for i, sub in enumerate(item))
    return None


class StorableModel(BaseModel):
    """A model whose string fields, and strings nested in its dict/list fields, can all be stored."""

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, (str, dict, list, tuple)):
            problem = unstorable(value, info.field_name or "")
            if problem:
                raise ValueError(f"{problem}, which cannot be stored")
        return value

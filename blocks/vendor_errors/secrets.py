"""The secrets a mapper masks: given as values, or as a callable read only when a failure is mapped."""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["Secrets", "resolve"]

Secrets = Iterable[str | None] | Callable[[], Iterable[str | None]]


def resolve(secrets: Secrets) -> tuple[str | None, ...]:
    return tuple(secrets() if callable(secrets) else secrets)

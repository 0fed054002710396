"""The secrets a mapper masks: those given (values, or a callable read only when a failure is mapped), and every
secret registered in the process (blocks.redact: a connection block's credentials once it made a client)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from blocks.redact import registered_secrets

__all__ = ["Secrets", "resolve"]

Secrets = Iterable[str | None] | Callable[[], Iterable[str | None]]


def resolve(secrets: Secrets) -> tuple[str | None, ...]:
    return (*(secrets() if callable(secrets) else secrets), *registered_secrets())

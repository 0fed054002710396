"""Secrets never reach a log line: every log record is redacted when it is created.

Client libraries log credentials at DEBUG (botocore logs the `Authorization` header with the access key id;
urllib3 and PyGithub log request headers). A filter on a logger misses its children's records and a filter on a
handler misses handlers added later (Prefect's, pytest's), so devmesh wraps the log record factory instead: it
covers every logger and every handler. The cost is paid only once a secret is registered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from prefect.blocks.fields import SecretDict
from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = ["redact", "register_secrets", "registered_secrets", "secret_values"]

MIN_LENGTH = 6  # shorter values would mask ordinary words
_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def registered_secrets() -> tuple[str, ...]:
    """Every secret registered in this process (error mappers mask them too)."""
    with _lock:
        return tuple(_secrets)


def register_secrets(values: Iterable[str]) -> None:
    """Mask these values in every log record from now on, in this process."""
    global _installed
    new = {v for v in values if v and len(v) >= MIN_LENGTH}
    with _lock:
        _secrets.update(new)
        if _secrets and not _installed:
            _install()
            _installed = True


def _install() -> None:
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not _secrets:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string: leave it to the handler to report
            return record
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return record

    logging.setLogRecordFactory(factory)


# Identifiers kept as plain strings by their blocks that still must not be logged (botocore logs the key id).
PLAIN_SENSITIVE = {"aws_access_key_id", "aws_session_token"}  # prefect_aws keeps both as plain strings


def secret_values(block: BaseModel) -> list[str]:
    """The plain values of every SecretStr / SecretDict field of a block (nested models included)."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, (SecretStr, SecretBytes)):
            raw = value.get_secret_value()
            out.append(raw.decode(errors="replace") if isinstance(raw, bytes) else raw)
        elif isinstance(value, SecretDict):
            walk_plain(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                field_value = getattr(value, name)
                if name in PLAIN_SENSITIVE and isinstance(field_value, str):
                    out.append(field_value)
                else:
                    walk(field_value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    def walk_plain(value: Any) -> None:
        if isinstance(value, str) and len(value) >= 8:
            out.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk_plain(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk_plain(item)

    walk(block)
    return [s for s in out if s]

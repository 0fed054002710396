"""Checkpoints of the audit trail's head, kept outside the database, so that deleting the last records (which
leaves a shorter chain that verifies) or re-signing is found by the next `devmesh audit verify`.

A checkpoint is {seq, hash, signed_from, legacy_end, records, at, key, public_key, source} signed with the audit
key. Each successful verify (the CLI and the daily `verify-audit` flow run) appends one as a JSON line to an
append-only file (Settings.audit.checkpoint_file, default `<home>/audit-checkpoints.jsonl`, mode 600); the flow
also publishes it as its artifact `devmesh-audit-head` and a `devmesh.audit.checkpoint` Prefect event, copies an
operator can compare with on another machine (`devmesh audit verify --checkpoint '<json>'`).

The file is the operator's, not the database's: whoever holds only the database can neither edit it nor sign a
new line. Removing its last lines only makes the comparison start from an older head; the artifacts and events
keep the newer ones.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from blocks.audit_key import AuditKey
from blocks.errors import InputError
from blocks.settings import Settings

__all__ = ["CHECKPOINT_CONTEXT", "checkpoint_path", "checkpoint_problem", "make_checkpoint", "newest_checkpoint",
           "parse_checkpoint", "record_checkpoint", "verify_against_checkpoint"]

CHECKPOINT_CONTEXT = b"devmesh-audit-checkpoint:v1:"
_SIGNED_FIELDS = ("seq", "hash", "signed_from", "legacy_end", "records", "at", "key", "source")


def _message(checkpoint: dict[str, Any]) -> bytes:
    body = {k: checkpoint.get(k) for k in _SIGNED_FIELDS}
    return CHECKPOINT_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def checkpoint_path(settings: Settings) -> Path:
    return Path(settings.audit.checkpoint_file or Path(settings.home) / "audit-checkpoints.jsonl").expanduser()


def make_checkpoint(report, key: AuditKey, source: str) -> dict[str, Any]:
    """A signed checkpoint of a verified report's head (`source`: who took it, e.g. "cli", "flow")."""
    checkpoint = {"seq": report.head_seq, "hash": report.head_hash, "signed_from": report.signed_from,
                  "legacy_end": report.legacy_end, "records": report.records,
                  "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "key": key.fingerprint,
                  "source": source, "public_key": key.public_b64}
    checkpoint["signature"] = key.sign(_message(checkpoint))
    return checkpoint


def checkpoint_problem(checkpoint: dict[str, Any], key: AuditKey) -> str | None:
    """None when `checkpoint` is signed by `key`, else what is wrong with it."""
    at = checkpoint.get("at", "?")
    if checkpoint.get("key") != key.fingerprint:
        return (f"the checkpoint of {at} was signed by key {checkpoint.get('key')}, but the audit key is "
                f"{key.fingerprint}: the key was replaced since (records it signed cannot be trusted)")
    if not key.verify(_message(checkpoint), checkpoint.get("signature")):
        return f"the checkpoint of {at} is not signed by the audit key: it was forged or edited"
    return None


def parse_checkpoint(text: str) -> dict[str, Any]:
    """A checkpoint from its JSON (a line of the file, an artifact's or event's copy)."""
    try:
        checkpoint = json.loads(text)
    except ValueError as exc:
        raise InputError(f"a checkpoint must be JSON: {exc}", item="checkpoint") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("seq"), int) \
            or not isinstance(checkpoint.get("hash"), str):
        raise InputError("a checkpoint must be a JSON object with seq (integer) and hash", item="checkpoint")
    return checkpoint


def newest_checkpoint(path: Path, key: AuditKey) -> tuple[dict[str, Any] | None, str | None]:
    """(the last checkpoint of the file, None) when every line is signed by `key`; (None, what is wrong) when one
    is not; (None, None) when there is no file yet."""
    if not path.exists():
        return None, None
    newest = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            checkpoint = parse_checkpoint(line)
        except InputError as exc:
            return None, f"line {number} of {path} is not a checkpoint: {exc}"
        problem = checkpoint_problem(checkpoint, key)
        if problem:
            return None, f"line {number} of {path}: {problem}"
        newest = {**checkpoint, "read_from": str(path)}
    return newest, None


def record_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Append `checkpoint` as one line (created with mode 600; written with O_APPEND and fsync'd)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(checkpoint, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_against_checkpoint(pool, settings: Settings, key: AuditKey, *, given: dict[str, Any] | None = None,
                              source: str, record: bool = True):
    """Verify the trail with `key` against a checkpoint (`given`, else the newest of the file) and, when it holds
    and the key can sign, append a new checkpoint of the head. Returns (AuditReport, the new checkpoint or None)."""
    from tasks.audit import AuditReport, verify_audit

    path = checkpoint_path(settings)
    if given is not None:
        checkpoint, problem = given, checkpoint_problem(given, key)
    else:
        checkpoint, problem = newest_checkpoint(path, key)
    if problem:
        return AuditReport(False, 0, 0, "", problem, None, key=key.fingerprint, checked_against=checkpoint), None
    report = verify_audit(pool, key, checkpoint)
    if not (report.ok and record and key.can_sign and report.records):
        return report, None
    new = make_checkpoint(report, key, source)
    record_checkpoint(path, new)
    return report, new

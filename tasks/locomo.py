"""LoCoMo evidence recall: read the dataset (conversations, turns, questions) and score ranked turns.

LoCoMo (Maharana et al., ACL 2024, arXiv 2402.17753) holds long multi-session conversations and questions whose
evidence turns are labelled (`dia_id` "D<session>:<turn>"). The measure is the paper's (snap-research/LoCoMo
task_eval/evaluation.py): a question's recall@k is the share of its evidence turns among the first k turns
retrieved. Here hits are expanded into the turns they cover (metadata.message_range), in rank order, repeated
turns dropped, then cut at k, so a system that returns long chunks spends its budget faster. Hit-all (every
evidence turn within k) and hit-any (at least one) are reported beside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from blocks.errors import InputError

__all__ = [
    "CATEGORIES", "KS", "Turn", "Question", "Conversation", "load_locomo", "evidence_ids", "session_time",
    "turn_content", "expand_turns", "score_question", "summarise",
]

# The paper's Table 5 numbering; 5 (adversarial, unanswerable) has no evidence to retrieve and is not asked.
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
KS = (5, 10, 25)
_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")
_SESSION = re.compile(r"session_(\d+)")


@dataclass(frozen=True)
class Turn:
    """One dialog turn as it becomes a message: its dia_id, speaker, text (caption included) and session time."""

    dia_id: str
    speaker: str
    content: str
    at: datetime | None


@dataclass(frozen=True)
class Question:
    """A question of categories 1-4 with the positions (message idx) of its valid evidence turns."""

    question: str
    category: int
    evidence: tuple[int, ...]


@dataclass
class Conversation:
    """One sample: its two speakers, its turns in order and its askable questions."""

    sample_id: str
    speakers: tuple[str, str]
    turns: list[Turn]
    questions: list[Question] = field(default_factory=list)
    sessions: list[list[int]] = field(default_factory=list)  # message positions of each session, in order
    dropped_evidence: int = 0  # evidence ids that name no turn (malformed or missing), dropped


def session_time(text: str | None) -> datetime | None:
    """"1:56 pm on 8 May, 2023" as a UTC datetime; None when absent or in another format."""
    if not text:
        return None
    for fmt in ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y"):
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def turn_content(turn: dict) -> str:
    """The turn's text, with its image caption as "[shares <caption>]" after it (the dataset's convention)."""
    text = str(turn.get("text") or "").strip()
    caption = str(turn.get("blip_caption") or "").strip()
    return f"{text} [shares {caption}]".strip() if caption else text


def evidence_ids(raw: list) -> list[str]:
    """Normalised dia_ids of an evidence list: several ids in one string split, "D:11:26" and "D30:05" mended."""
    ids = []
    for item in raw or []:
        ids += [f"D{int(s)}:{int(t)}" for s, t in _EVIDENCE.findall(str(item))]
    return list(dict.fromkeys(ids))


def _conversation(sample: dict, where: str) -> Conversation:
    conv = sample.get("conversation")
    if not isinstance(conv, dict) or "speaker_a" not in conv or "speaker_b" not in conv:
        raise InputError("expected a conversation with speaker_a and speaker_b", item=where)
    sessions = sorted((int(m.group(1)), k) for k in conv if (m := _SESSION.fullmatch(k)) and isinstance(conv[k], list))
    turns: list[Turn] = []
    positions: dict[str, int] = {}
    spans: list[list[int]] = []
    for number, key in sessions:
        at = session_time(conv.get(f"{key}_date_time"))
        span = []
        for raw in conv[key]:
            content = turn_content(raw)
            if not content:
                continue
            dia = evidence_ids([raw.get("dia_id")])
            if dia:
                positions.setdefault(dia[0], len(turns))
            span.append(len(turns))
            turns.append(Turn(dia_id=dia[0] if dia else "", speaker=str(raw.get("speaker") or ""), content=content,
                              at=at))
        if span:
            spans.append(span)
    if not turns:
        raise InputError("the conversation has no turns", item=where)
    out = Conversation(sample_id=str(sample.get("sample_id") or where), speakers=(conv["speaker_a"], conv["speaker_b"]),
                       turns=turns, sessions=spans)
    for qa in sample.get("qa") or []:
        category = qa.get("category")
        if category not in CATEGORIES:
            continue
        ids = evidence_ids(qa.get("evidence"))
        found = tuple(dict.fromkeys(positions[i] for i in ids if i in positions))
        out.dropped_evidence += len(ids) - len(found)
        if found and str(qa.get("question") or "").strip():
            out.questions.append(Question(question=str(qa["question"]).strip(), category=category, evidence=found))
    return out


def load_locomo(path: Path) -> list[Conversation]:
    """The conversations of a LoCoMo JSON file (a list of samples), or of locomo*.json inside a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("locomo*.json"))
        if len(files) != 1:
            raise FileNotFoundError(f"{path}: expected one locomo*.json file in the folder, found {len(files)}")
        path = files[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such LoCoMo file")
    try:
        samples = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON ({exc.msg} at line {exc.lineno})", item=str(path)) from None
    if not isinstance(samples, list) or not samples:
        raise InputError("expected a non-empty JSON list of samples", item=str(path))
    conversations = [_conversation(s if isinstance(s, dict) else {}, f"{path.name}[{i}]") for i, s in enumerate(samples)]
    if not any(c.questions for c in conversations):
        raise InputError("no question of categories 1-4 has a valid evidence turn", item=str(path))
    return conversations


def expand_turns(ranges: list[tuple[int, int]], k: int) -> list[int]:
    """The turns hits cover, in rank order, each once, cut at k."""
    seen: dict[int, None] = {}
    for first, last in ranges:
        for turn in range(first, last + 1):
            if len(seen) >= k:
                return list(seen)
            seen.setdefault(turn)
    return list(seen)


def score_question(ranges: list[tuple[int, int]], evidence: tuple[int, ...], ks=KS) -> dict[int, tuple[float, bool, bool]]:
    """{k: (recall, hit_all, hit_any)} of one question's ranked hit ranges."""
    out = {}
    wanted = set(evidence)
    for k in ks:
        found = wanted.intersection(expand_turns(ranges, k))
        out[k] = (len(found) / len(wanted), found == wanted, bool(found))
    return out


def summarise(scored: list[tuple[int, dict]], ks=KS) -> dict:
    """Question-weighted means in percent, overall and per category, of [(category, score_question(...))]."""
    def block(rows: list[dict]) -> dict:
        n = len(rows)
        return {"questions": n, **{f"{name}@{k}": round(100 * sum(r[k][i] for r in rows) / n, 1) if n else None
                                   for k in ks for i, name in enumerate(("recall", "hit_all", "hit_any"))}}

    return {"all": block([s for _, s in scored]),
            **{name: block([s for c, s in scored if c == cat]) for cat, name in CATEGORIES.items()}}

"""Hybrid fusion: a score-aware convex combination of the vector and BM25 rankings, and the conversation-turn
re-scoring that lets a turn's neighbours and speaker speak for it (with the two small reads it needs).

Why not only RRF: rank fusion throws away how far apart the scores are, and with equal weights it put hybrid
below BM25 alone on LoCoMo conversations (35.0 against 42.9 recall@5, issue 14). Each ranking's scores are
min-max normalised over its own candidates, then mixed with the weights (Bruch et al., "An Analysis of Fusion
Functions for Hybrid Retrieval", TOIS 2023, find this convex combination at least as good as RRF in and out of
domain). The weights were chosen on the LoCoMo development conversations; on SciFact, never tuned on, the same
fusion scores above RRF (docs/benchmarks.md).

Turn re-scoring (conversation contexts indexed by turn, tasks.chunk.chunk_turns): an answer often lacks the
words of its question, which sits in the turn before ("Any other brands?" / "Under Armour would be cool"), and
a topic runs over several turns. So a turn's score gains a share of its best neighbour's score and of the mean
score of the turns around it, and, when the query names exactly one speaker of the candidates, that speaker's
turns gain a fixed boost (on LoCoMo 96% of the evidence of questions naming one participant is that
participant's own turn). The candidates are the turns either ranking returned; a turn no ranking returned
counts 0, and the turns around the best candidates join at 0. No library does this: it is the sliding-window
context scoring of passage retrieval (Callan, SIGIR 1994) applied to turn scores, in a few lines over at most
2 x `candidates` rows plus a few dozen neighbours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg import Connection, sql

__all__ = ["Candidate", "convex", "normalise", "rescore_turns", "named_speaker", "turn_candidates"]

# Where each fused candidate that comes from a conversation sits in it: turn re-scoring reads nothing else. A
# chunk of a plain document (no message_range) is no turn and stays out: its row was most of this query's cost
# (~1.3 ms of a hybrid search over documents, its metadata decoded for nothing).
CANDIDATE_TURNS = """
SELECT id, document_id, metadata->'message_range', metadata->'speakers' FROM chunks
WHERE tenant_id = %(tenant)s AND id = ANY(%(ids)s) AND metadata ? 'message_range'"""
# The chunks starting at the given messages of the given conversations, within the search's filters, one probe
# of chunks_message (tasks/sql/021_context_turns.sql) per pair: OFFSET 0 keeps the planner from turning the
# lateral subquery into a scan of whole contexts.
NEIGHBOUR_TURNS = """
SELECT c.id, c.document_id, c.metadata->'message_range', c.metadata->'speakers'
FROM unnest(%(docs)s::text[], %(turns)s::int[]) AS x(document_id, turn)
CROSS JOIN LATERAL (
  SELECT c.* FROM chunks c
  WHERE c.tenant_id = %(tenant)s AND c.document_id = x.document_id AND c.metadata ? 'message_range'
    AND (c.metadata -> 'message_range' ->> 0)::integer = x.turn {filters}
  OFFSET 0) AS c"""
# Neighbours are read around this many of the best candidates: on LoCoMo, around all of them ranked the same.
NEIGHBOUR_SEEDS = 10
_SPEAKER_NAME = re.compile(r"\w+ \((.+)\)")  # tasks.chunk writes a named speaker as "role (name)"


@dataclass(frozen=True)
class Candidate:
    """What turn re-scoring needs of a fused chunk: where it sits in its conversation and who spoke it."""

    chunk_id: int
    document_id: str
    turn: int | None  # message index of a one-message chunk; None for anything else
    speaker: str | None


def normalise(scores: dict[int, float]) -> dict[int, float]:
    """Min-max to [0, 1] over the candidates; equal scores all become 1 (each is as good as the best)."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    if hi <= lo:
        return dict.fromkeys(scores, 1.0)
    return {k: (v - lo) / (hi - lo) for k, v in scores.items()}


def convex(vector: dict[int, float], keyword: dict[int, float], vector_weight: float,
           keyword_weight: float) -> list[tuple[int, float]]:
    """Weighted mean of the normalised scores (a chunk missing from a ranking scores 0 there), best first.

    Ties keep the order of first appearance, vector candidates first, as rrf does.
    """
    total = vector_weight + keyword_weight
    if total <= 0:
        raise ValueError("vector_weight + keyword_weight must be positive")
    v, k = normalise(vector), normalise(keyword)
    order = list(dict.fromkeys([*vector, *keyword]))
    fused = {c: (vector_weight * v.get(c, 0.0) + keyword_weight * k.get(c, 0.0)) / total for c in order}
    return sorted(fused.items(), key=lambda kv: -kv[1])


def named_speaker(query: str, speakers: set[str]) -> str | None:
    """The one speaker whose name the query contains as a word (case-insensitive); None for none or several."""
    named = [s for s in speakers if s and re.search(rf"(?<!\w){re.escape(s)}(?!\w)", query, re.IGNORECASE)]
    return named[0] if len(named) == 1 else None


def rescore_turns(fused: list[tuple[int, float]], candidates: dict[int, Candidate], query: str, *,
                  neighbour_weight: float, window: int, window_weight: float,
                  speaker_boost: float) -> list[tuple[int, float]]:
    """`fused` with each conversation turn's score raised by its context and speaker, best first.

    score(t) = f(t) + neighbour_weight * max(f(t-1), f(t+1)) + window_weight * mean(f(t-window .. t+window))
               + speaker_boost * [t spoken by the one speaker the query names]
    where f is the fused score of the turn in the same conversation (0 when no ranking returned it). Chunks
    that are not single turns keep their fused score.
    """
    if not fused:
        return []
    turns: dict[tuple[str, int], float] = {}
    for cid, score in fused:
        c = candidates.get(cid)
        if c is not None and c.turn is not None:
            key = (c.document_id, c.turn)
            turns[key] = max(turns.get(key, 0.0), score)
    if not turns:
        return fused
    speaker = named_speaker(query, {c.speaker for c in candidates.values() if c.turn is not None and c.speaker})
    span = range(-window, window + 1)
    out = []
    for cid, score in fused:
        c = candidates.get(cid)
        if c is None or c.turn is None:
            out.append((cid, score))
            continue
        near = [turns.get((c.document_id, c.turn + d), 0.0) for d in span]
        best_neighbour = max(turns.get((c.document_id, c.turn - 1), 0.0), turns.get((c.document_id, c.turn + 1), 0.0))
        bonus = neighbour_weight * best_neighbour + window_weight * sum(near) / len(near)
        if speaker is not None and c.speaker == speaker:
            bonus += speaker_boost
        out.append((cid, score + bonus))
    return sorted(out, key=lambda kv: -kv[1])


def turn_candidates(conn: Connection, tenant: str, fused: list[tuple[int, float]], window: int,
                    filters: sql.Composable, params: dict) -> tuple[list[tuple[int, float]], dict[int, Candidate]]:
    """The fused list with the turns around its best turns added at score 0, and every candidate's position.

    `filters` and `params` are the search's own (tasks.search), so a neighbour outside them never joins.
    """
    rows = conn.execute(CANDIDATE_TURNS, {"tenant": tenant, "ids": [c for c, _ in fused]}).fetchall()
    candidates = {r[0]: _candidate(*r) for r in rows}
    known = {(c.document_id, c.turn) for c in candidates.values() if c.turn is not None}
    seeds = [(c.document_id, c.turn) for c in (candidates.get(cid) for cid, _ in fused)
             if c is not None and c.turn is not None][:NEIGHBOUR_SEEDS]
    wanted = sorted({(doc, t + d) for doc, t in seeds for d in range(-window, window + 1) if t + d >= 0} - known)
    fused = list(fused)
    if wanted:
        query = sql.SQL(NEIGHBOUR_TURNS).format(filters=filters)
        for row in conn.execute(query, {**params, "tenant": tenant, "docs": [w[0] for w in wanted],
                                        "turns": [w[1] for w in wanted]}):
            neighbour = _candidate(*row)
            if row[0] not in candidates and neighbour.turn is not None:
                candidates[row[0]] = neighbour
                fused.append((row[0], 0.0))
    return fused, candidates


def _candidate(chunk_id: int, document_id: str, message_range, speakers) -> Candidate:
    """A chunk as turn re-scoring sees it: a turn when it covers one message, its speaker's name if any."""
    one = isinstance(message_range, list) and len(message_range) == 2 and isinstance(message_range[0], int) \
        and message_range[0] == message_range[1]
    speaker = speakers[0] if isinstance(speakers, list) and len(speakers) == 1 and isinstance(speakers[0], str) else None
    name = _SPEAKER_NAME.fullmatch(speaker) if speaker else None
    return Candidate(chunk_id=chunk_id, document_id=document_id, turn=message_range[0] if one else None,
                     speaker=name.group(1) if name else None)

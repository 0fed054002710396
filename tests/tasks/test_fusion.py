"""Convex score fusion and conversation-turn re-scoring (tasks/fusion.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.fusion import Candidate, convex, named_speaker, normalise, rescore_turns

SCORES = st.dictionaries(st.integers(0, 40), st.floats(-5, 50, allow_nan=False), max_size=20)


def test_convex_mixes_normalised_scores_with_the_weights():
    vector = {1: 0.9, 2: 0.5, 3: 0.1}          # normalised 1, 0.5, 0
    keyword = {3: 20.0, 4: 10.0, 2: 0.0}       # normalised 1, 0.5, 0
    fused = dict(convex(vector, keyword, 1.0, 1.0))
    assert fused == pytest.approx({1: 0.5, 2: 0.25, 3: 0.5, 4: 0.25})
    keyword_heavy = convex(vector, keyword, 1.0, 3.0)
    assert [c for c, _ in keyword_heavy][:2] == [3, 4]  # 0.75 and 0.375 beat chunk 1's 0.25
    assert convex({}, {}, 1.0, 1.0) == []
    with pytest.raises(ValueError):
        convex(vector, keyword, 0.0, 0.0)


def test_equal_scores_all_count_as_the_best():
    assert normalise({5: 2.0, 6: 2.0}) == {5: 1.0, 6: 1.0}
    assert normalise({}) == {}


@settings(max_examples=200)
@given(vector=SCORES, keyword=SCORES, wv=st.floats(0.01, 5), wk=st.floats(0.01, 5))
def test_convex_returns_each_candidate_once_in_score_order_within_0_and_1(vector, keyword, wv, wk):
    fused = convex(vector, keyword, wv, wk)
    assert sorted(c for c, _ in fused) == sorted(set(vector) | set(keyword))
    scores = [s for _, s in fused]
    assert scores == sorted(scores, reverse=True)
    assert all(-1e-9 <= s <= 1 + 1e-9 for s in scores)


def test_named_speaker_needs_exactly_one_whole_word_name():
    speakers = {"Caroline", "Mel", "Jo Ann"}
    assert named_speaker("When did caroline go to the support group?", speakers) == "Caroline"
    assert named_speaker("What did Melanie paint?", speakers) is None  # "Mel" inside a word is no name
    assert named_speaker("Did Jo Ann call?", speakers) == "Jo Ann"
    assert named_speaker("What do Caroline and Mel share?", speakers) is None
    assert named_speaker("anything", set()) is None


def _turns(doc: str, speakers: list[str]) -> dict[int, Candidate]:
    return {100 + i: Candidate(100 + i, doc, i, s) for i, s in enumerate(speakers)}


def test_an_answer_turn_rises_on_its_question_turn():
    cands = _turns("context:a", ["Ana", "Ben", "Ana", "Ben", "Ana", "Ben"])
    cands[7] = Candidate(7, "doc", None, None)  # a document chunk: not a turn, keeps its score
    # Turn 1 (the question) matched strongly; turn 4 is a distractor that matched a little more than turn 2.
    fused = [(101, 1.0), (7, 0.5), (104, 0.3), (102, 0.0)]
    out = dict(rescore_turns(fused, cands, "q", neighbour_weight=0.5, window=1, window_weight=0.0, speaker_boost=0))
    assert out[102] == pytest.approx(0.5) and out[104] == pytest.approx(0.3) and out[7] == 0.5
    assert out[101] == pytest.approx(1.0)  # its neighbours scored 0 (turn 0 unseen) and 0.0
    windowed = dict(rescore_turns(fused, cands, "q", neighbour_weight=0, window=2, window_weight=1.0, speaker_boost=0))
    assert windowed[102] == pytest.approx(0.0 + (1.0 + 0.0 + 0.0 + 0.3) / 5)


def test_the_named_speakers_turns_gain_the_boost_only_in_their_conversation():
    cands = {**_turns("context:a", ["Ana", "Ben"]), 300: Candidate(300, "context:b", 0, "Cid")}
    fused = [(101, 0.5), (100, 0.45), (300, 0.4)]
    none = rescore_turns(fused, cands, "what happened?", neighbour_weight=0, window=0, window_weight=0, speaker_boost=0.2)
    assert none == fused
    ana = dict(rescore_turns(fused, cands, "What did Ana say?", neighbour_weight=0, window=0, window_weight=0,
                             speaker_boost=0.2))
    assert ana == pytest.approx({100: 0.65, 101: 0.5, 300: 0.4})
    both = rescore_turns(fused, cands, "Did Ana tell Ben?", neighbour_weight=0, window=0, window_weight=0,
                         speaker_boost=0.2)
    assert both == fused

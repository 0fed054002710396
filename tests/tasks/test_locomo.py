"""The LoCoMo reader and measure (tasks/locomo.py): evidence ids mended, turns budgeted, means per category."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from blocks.errors import InputError
from tasks.locomo import evidence_ids, expand_turns, load_locomo, score_question, session_time, summarise
from tests.factories import locomo_sample


def test_evidence_ids_are_split_and_mended():
    assert evidence_ids(["D8:6; D9:17", "D:11:26", "D30:05", "D", "D8:6"]) == ["D8:6", "D9:17", "D11:26", "D30:5"]
    assert evidence_ids(None) == []


def test_session_time_reads_the_dataset_format():
    assert session_time("1:56 pm on 8 May, 2023") == datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)
    assert session_time("yesterday") is None and session_time(None) is None


def test_load_keeps_askable_questions_and_positions(tmp_path):
    path = tmp_path / "locomo-tiny.json"
    path.write_text(json.dumps([locomo_sample()]))
    [conv] = load_locomo(tmp_path)
    assert conv.speakers == ("Ana", "Ben")
    assert [t.dia_id for t in conv.turns] == ["D1:1", "D1:2", "D3:1"]  # the empty turn is no message
    assert conv.turns[1].content == "Lovely, what breed? [shares a dog]"
    assert conv.turns[2].at == datetime(2023, 6, 2, 9, 15, tzinfo=timezone.utc)
    assert conv.sessions == [[0, 1], [2]]
    assert [(q.category, q.evidence) for q in conv.questions] == [(1, (0, 2)), (2, (0,))]
    assert conv.dropped_evidence == 2  # D9:9 and D7:1 name no turn


def test_load_refuses_what_is_not_locomo(tmp_path):
    (tmp_path / "locomo-bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        load_locomo(tmp_path / "locomo-bad.json")
    (tmp_path / "locomo-bad.json").write_text(json.dumps([{"sample_id": "s", "conversation": {}}]))
    with pytest.raises(InputError, match="speaker_a"):
        load_locomo(tmp_path / "locomo-bad.json")
    with pytest.raises(FileNotFoundError):
        load_locomo(tmp_path / "missing.json")


def test_hits_spend_the_budget_in_turns_in_rank_order():
    assert expand_turns([(4, 6), (5, 5), (0, 1)], 4) == [4, 5, 6, 0]
    scores = score_question([(4, 6), (0, 1)], evidence=(1, 5))
    assert scores[5] == (1.0, True, True)  # 4, 5, 6, 0, 1
    short = score_question([(4, 6), (0, 1)], evidence=(1, 5), ks=(3,))
    assert short[3] == (0.5, False, True)


def test_summary_is_question_weighted_per_category():
    rows = [(1, {5: (1.0, True, True)}), (1, {5: (0.0, False, False)}), (4, {5: (0.5, False, True)})]
    out = summarise(rows, ks=(5,))
    assert out["all"] == {"questions": 3, "recall@5": 50.0, "hit_all@5": 33.3, "hit_any@5": 66.7}
    assert out["multi-hop"]["recall@5"] == 50.0 and out["single-hop"]["hit_any@5"] == 100.0
    assert out["temporal"] == {"questions": 0, "recall@5": None, "hit_all@5": None, "hit_any@5": None}

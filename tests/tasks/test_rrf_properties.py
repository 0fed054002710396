"""Property-based tests of the hybrid search's Reciprocal Rank Fusion (tasks.search.rrf)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.search import rrf

RANKING = st.lists(st.integers(0, 60), unique=True, max_size=25)
RANKINGS = st.lists(RANKING, min_size=1, max_size=4)
WEIGHT = st.floats(0.0, 5.0, allow_nan=False)
K = st.integers(1, 200)
# Hypothesis flags any change of the global `random` state while a case is drawn: late in a full run that is the
# session pool's worker threads (psycopg_pool jitters connection lifetimes with `random`), not these strategies
# (as in tests/deployments/test_api_fuzz.py).
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")


def _weights(draw_rankings, data):
    return [data.draw(WEIGHT) for _ in draw_rankings]


@settings(max_examples=300)
@given(rankings=RANKINGS, k=K, data=st.data())
def test_every_ranked_item_comes_out_once_with_scores_non_increasing(rankings, k, data):
    weights = _weights(rankings, data)
    fused = rrf(rankings, weights, k)
    items = [item for item, _ in fused]
    assert len(items) == len(set(items))
    assert set(items) == {item for ranking in rankings for item in ranking}
    scores = [score for _, score in fused]
    assert all(a >= b for a, b in zip(scores, scores[1:]))
    assert all(0.0 <= s <= sum(weights) / (k + 1) + 1e-12 for s in scores)


@settings(max_examples=300)
@given(rankings=RANKINGS, k=K, data=st.data())
def test_an_item_ahead_everywhere_is_never_fused_below(rankings, k, data):
    """Dominance: if a appears wherever b does, and ahead of it, a's fused score is at least b's."""
    weights = _weights(rankings, data)
    scores = dict(rrf(rankings, weights, k))
    position = [{item: i for i, item in enumerate(r)} for r in rankings]
    for a in scores:
        for b in scores:
            if a != b and all(b not in pos or (a in pos and pos[a] < pos[b]) for pos in position):
                assert scores[a] >= scores[b] - 1e-12


@settings(max_examples=200)
@given(rankings=RANKINGS, k=K, factor=st.floats(0.01, 100.0), data=st.data())
def test_scaling_every_weight_keeps_the_order_and_scales_the_scores(rankings, k, factor, data):
    weights = _weights(rankings, data)
    base = dict(rrf(rankings, weights, k))
    scaled = dict(rrf(rankings, [w * factor for w in weights], k))
    assert base.keys() == scaled.keys()
    for item, score in base.items():
        assert math.isclose(scaled[item], score * factor, rel_tol=1e-9, abs_tol=1e-15)


@settings(max_examples=200)
@given(rankings=RANKINGS, k=K, data=st.data())
def test_the_order_of_the_rankings_does_not_change_the_scores(rankings, k, data):
    weights = _weights(rankings, data)
    forward = dict(rrf(rankings, weights, k))
    backward = dict(rrf(rankings[::-1], weights[::-1], k))
    assert forward.keys() == backward.keys()
    assert all(math.isclose(forward[i], backward[i], rel_tol=1e-12, abs_tol=1e-15) for i in forward)


@settings(max_examples=200)
@given(first=RANKING, second=RANKING, k=K, weight=st.floats(0.1, 5.0))
def test_a_zero_weight_ranking_only_adds_items_at_zero(first, second, k, weight):
    alone = dict(rrf([first], [weight], k))
    fused = dict(rrf([first, second], [weight, 0.0], k))
    for item, score in fused.items():
        assert math.isclose(score, alone.get(item, 0.0), abs_tol=1e-15)


@given(ranking=RANKING.filter(bool), k=K)
def test_a_single_ranking_comes_back_in_its_own_order(ranking, k):
    assert [item for item, _ in rrf([ranking], [1.0], k)] == ranking

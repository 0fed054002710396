"""The hostile-input corpus (tests/reliability/hostile.py) across the CLI, REST, MCP, webhooks, flow parameters and
the assistant: every case is refused with a clear error naming what was wrong, or handled safely; no case stores
what it should not (row counts of every table before/after) and none gets a 5xx or a crash. 100 MB bodies are
streamed at a real uvicorn server: refused early, without the server buffering them."""

from __future__ import annotations

import os

import pytest

from blocks.settings import Settings
from tests.reliability.hostile import corpus, hostile_env, markdown, measure_oversize, run_corpus, tally

CASES = corpus()


@pytest.fixture(scope="module")
def outcome(pg_home, session_pool, fake_embedder, tmp_path_factory):
    """Runs the whole corpus once at module set-up (before the per-test fixtures clear DEVMESH_* variables)."""
    mp = pytest.MonkeyPatch()
    for key in [k for k in os.environ if k.startswith("DEVMESH_")]:
        mp.delenv(key)
    mp.setenv("DEVMESH_HOME", str(pg_home))
    mp.setenv("DEVMESH_EMBEDDER", "fake")
    try:
        settings = Settings(home=pg_home, embedder="fake")
        with hostile_env(settings, tmp_path_factory.mktemp("hostile")) as env:
            results = {r["name"]: r for r in run_corpus(env, CASES)}
            oversize = measure_oversize(settings, env.key)
        yield {"results": results, "oversize": oversize}
    finally:
        mp.undo()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(outcome, case):
    r = outcome["results"][case.name]
    assert r["verdict"] != "server_error", r["detail"]
    assert not r["stored_bad"], f"stored what it should not: {r['stored_bad']} ({r['detail']})"
    assert r["verdict"] == case.expect, f"expected {case.expect}, got {r['verdict']}: {r['detail']}"
    assert not r["unclear"], f"the refusal does not name {case.mentions!r}: {r['detail']}"


def test_the_counts_add_up(outcome):
    t = tally(list(outcome["results"].values()))
    print("\n" + markdown(t))
    assert t["totals"]["tried"] == len(CASES) >= 150
    assert t["totals"]["stored_bad"] == t["totals"]["server_errors"] == t["totals"]["mismatched"] == 0
    assert {"cli", "rest", "mcp", "webhook", "flow", "assistant"} == set(t["by_surface"])


def test_100_mb_bodies_are_refused_early_without_buffering(outcome):
    for m in outcome["oversize"]:
        print(m)
        assert m["status"] == 413, m
        limit = 25 * 1024 * 1024 if m["surface"] == "webhook" else 4 * 1024 * 1024
        if m["mode"] == "content-length":
            assert m["bytes_sent_before_answer"] <= 8 * 1024 * 1024, m  # answered on the header
        else:  # read up to the cap, plus what the socket buffers hold
            assert m["bytes_sent_before_answer"] <= limit + 16 * 1024 * 1024, m
        if m["rss_peak_growth_mib"] is not None:
            assert m["rss_peak_growth_mib"] < limit / 1024 / 1024 * 3 + 32, m

"""The devmesh CLI: ingest with exit codes, search output, bad input."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from deployments.cli import app

runner = CliRunner()


def test_ingest_then_search_json(settings, tenant, tmp_path):
    (tmp_path / "runbook.md").write_text("# Failover\n\nPromote the replica with pg_ctl promote.")
    (tmp_path / "notes.txt").write_text("Scale the api service to four tasks on ECS.")
    result = runner.invoke(app, ["ingest", str(tmp_path), "--tenant", tenant, "--direct", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["documents"] == 2 and summary["errors"] == []
    result = runner.invoke(app, ["search", "promote replica", "--tenant", tenant, "--json", "--limit", "1"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 1 and hits[0]["document_id"].endswith("runbook.md")
    assert {"score", "similarity", "keyword_score", "relevance", "metadata", "text"} <= set(hits[0])


def test_ingest_exit_code_says_an_item_failed(settings, tenant, tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.bin"
    good.write_text("fine")
    bad.write_bytes(b"\x89PNG\x00\x00\x00")
    result = runner.invoke(app, ["ingest", str(good), str(bad), "--tenant", tenant, "--direct"])
    assert result.exit_code == 1
    assert "bad.bin" in result.output and "binary" in result.output


def test_search_refuses_bad_mode_and_filters(settings, tenant):
    result = runner.invoke(app, ["search", "x", "--mode", "fuzzy", "--tenant", tenant])
    assert result.exit_code == 2 and "mode" in result.output
    result = runner.invoke(app, ["search", "x", "--metadata", "{not json", "--tenant", tenant])
    assert result.exit_code == 2 and "--metadata is not valid JSON" in result.output
    result = runner.invoke(app, ["search", "x", "--metadata", "[" * 100_000 + "]" * 100_000, "--tenant", tenant])
    assert result.exit_code == 2 and "--metadata is nested too deeply" in result.output


def test_a_recursion_error_in_the_search_is_not_blamed_on_metadata(settings, tenant, monkeypatch):
    import flows.search

    def runaway(request, settings):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(flows.search, "search_now", runaway)
    result = runner.invoke(app, ["search", "x", "--metadata", '{"path": "README.md"}', "--tenant", tenant])
    assert isinstance(result.exception, RecursionError)  # a bug: its traceback, not a wrong diagnosis
    assert "--metadata" not in result.output


def test_search_prints_ranked_hits(settings, tenant, tmp_path):
    (tmp_path / "a.txt").write_text("rotate credentials for the deploy bot")
    runner.invoke(app, ["ingest", str(tmp_path), "--tenant", tenant, "--direct"])
    result = runner.invoke(app, ["search", "rotate credentials", "--tenant", tenant])
    assert result.exit_code == 0
    assert "1. " in result.stdout and "a.txt#0" in result.stdout and "score" in result.stdout

"""Progress of the ingest flow run: embedding advances per batch of ingest.embed_batch texts (not 0 → all), the run
has a progress artifact that reaches 100 %, and `devmesh ingest` on its default flow-run path feeds its bar."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from typer.testing import CliRunner

import deployments.cli as cli
from flows.ingest import PROGRESS_LISTENER, DocumentSpec, IngestRequest, ingest
from tests.factories import paragraphs


def test_embedding_advances_per_batch_and_the_run_has_a_progress_artifact(prefect_harness, settings, tenant,
                                                                         monkeypatch):
    monkeypatch.setenv("DEVMESH_INGEST__EMBED_BATCH", "8")
    seen: list[tuple[str, int, int]] = []
    docs = [DocumentSpec(document_id=f"d{i}", text=paragraphs(1, topic=f"topic{i} words{i}")) for i in range(30)]
    token = PROGRESS_LISTENER.set(lambda stage, done, total: seen.append((stage, done, total)))
    try:
        state = ingest(IngestRequest(tenant=tenant, documents=docs), return_state=True)
    finally:
        PROGRESS_LISTENER.reset(token)
    assert state.is_completed()
    embedded = [done for stage, done, _ in seen if stage == "embed"]
    total = next(t for stage, _, t in seen if stage == "embed")
    assert total == 30 and embedded == [0, 8, 16, 24, 30]  # one tick per embedding task run of 8 texts
    assert [d for s, d, _ in seen if s == "store"][-1] == 30
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    [progress] = [a for a in artifacts if a.type == "progress"]
    assert progress.key == "ingest-progress" and float(progress.data) == 100.0


def test_the_cli_bar_moves_on_the_flow_run_path(prefect_harness, settings, tenant, tmp_path, monkeypatch):
    monkeypatch.setenv("DEVMESH_INGEST__EMBED_BATCH", "4")
    for i in range(12):
        (tmp_path / f"note{i}.md").write_text(f"# Note {i}\n\nrestart service number {i} when it hangs\n")
    updates: list[tuple[str, int]] = []

    class Bar:  # records what rich's Progress would draw
        def __init__(self, *columns, **options):
            self.names: dict[int, str] = {}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def add_task(self, name, total):
            self.names[len(self.names)] = name
            return len(self.names) - 1

        def update(self, task, completed, total):
            updates.append((self.names[task], completed))

    monkeypatch.setattr(cli, "Progress", Bar)
    result = CliRunner().invoke(cli.app, ["ingest", str(tmp_path), "--tenant", tenant, "--flow"])
    assert result.exit_code == 0, result.output
    assert [done for stage, done in updates if stage == "embed"] == [0, 4, 8, 12]
    assert ("store", 12) in updates

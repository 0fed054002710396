"""`make demo`: ingest the repository's own docs, runbooks and code as a Prefect flow run, then search it.

Runs on the embedded defaults: embedded PostgreSQL under .devmesh/, the local MiniLM model, and Prefect's
temporary local server (no API key, no network).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Everything the demo writes stays under .devmesh/ (Prefect's own SQLite database included).
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".devmesh" / "prefect"))
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
# Prefect's temporary server needs ~10-30 s to start on 2 busy cores; its default patience is 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from rich.console import Console  # noqa: E402

from blocks.settings import Settings  # noqa: E402
from deployments.cli import print_hits  # noqa: E402
from flows.ingest import IngestRequest, ingest  # noqa: E402
from flows.search import search_now  # noqa: E402
from tasks.search import SearchRequest  # noqa: E402

CORPUS = ["README.md", "docs", "samples", "flows"]
QUERIES = [
    ("How do I roll back a failed Kubernetes deployment?", "hybrid"),
    ("rotate the GitHub webhook secret", "hybrid"),
    ("where are the BM25 term statistics kept", "hybrid"),
]


def main() -> int:
    console = Console()
    os.chdir(ROOT)
    settings = Settings()
    paths = [p for p in CORPUS if (ROOT / p).exists()]
    console.rule("[bold]devmesh demo")
    console.print(f"Ingesting {', '.join(paths)} as a Prefect flow run (first run embeds with the local model)...")
    started = time.perf_counter()
    state = ingest(IngestRequest(paths=paths, tenant=settings.tenant), return_state=True)
    if not state.is_completed():
        console.print(f"ingest flow run ended {state.type.value}: {state.message}", style="red", markup=False)
        return 1
    summary = state.result()
    console.print(
        f"flow run completed in {time.perf_counter() - started:.1f}s: {summary['documents']} documents "
        f"({summary['documents_unchanged']} unchanged), {summary['chunks']} chunks, "
        f"{summary['texts_embedded']} embedded now with {summary['model']}, {len(summary['errors'])} errors"
    )
    for query, mode in QUERIES:
        started = time.perf_counter()
        hits = search_now(SearchRequest(query=query, mode=mode, limit=5, tenant=settings.tenant), settings)
        console.rule(f"[bold]{query}[/bold]  ({mode}, {1000 * (time.perf_counter() - started):.0f} ms)")
        print_hits(hits, console)
    console.rule()
    console.print(f"Data lives in: {summary['where']}")
    console.print(f"Prefect's run history: {os.environ['PREFECT_HOME']}")
    console.print('Try: .venv/bin/devmesh search "scale the web deployment" --mode keyword')
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

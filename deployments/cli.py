"""`devmesh`: ingest, search and evaluate from the command line; operations live in deployments/cli_ops.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from blocks.errors import AppError
from blocks.settings import Settings
from deployments import cli_ops, cli_tenancy

app = typer.Typer(help="devmesh: memory, recall and guarded DevOps actions for AI agents.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure retrieval quality.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
cli_ops.register(app)
cli_tenancy.register(app)
console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    cli_ops.fail(message, code)


def _prefect_server_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value())


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(..., help="Files or directories to ingest."),
    tenant: str = typer.Option(None, help="Tenant id (default: DEVMESH_TENANT or 'default')."),
    kind: str = typer.Option("auto", help="auto, text, markdown or code."),
    as_flow: Optional[bool] = typer.Option(
        None, "--flow/--direct", help="Run as a Prefect flow run (default: when PREFECT_API_URL is set)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Chunk, embed and store files; unchanged files cost nothing. Exit 1 if any item failed."""
    from flows.ingest import PROGRESS_LISTENER, IngestRequest, ingest as ingest_flow, ingest_documents
    from tasks.runtime import Runtime

    settings = Settings()
    try:
        request = IngestRequest(tenant=tenant or settings.tenant, paths=[str(p) for p in paths], kind=kind)
    except ValidationError as exc:
        _fail(str(exc))
    use_flow = _prefect_server_configured() if as_flow is None else as_flow
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            if use_flow:  # the flow runs in this process: it reports to the bar here and to the run's artifact
                token = PROGRESS_LISTENER.set(progress)
                try:
                    summary = ingest_flow(request)
                finally:
                    PROGRESS_LISTENER.reset(token)
            else:
                summary = ingest_documents(request, Runtime(settings), progress=progress).summary()
    except AppError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        console.print(
            f"{summary['documents']} documents ({summary['documents_unchanged']} unchanged), {summary['chunks']} chunks: "
            f"{summary['chunks_inserted']} inserted, {summary['chunks_kept']} kept, {summary['chunks_deleted']} deleted; "
            f"{summary['texts_embedded']} texts embedded in {summary['embedding_calls']} calls. Data: {summary['where']}"
        )
        for err in summary["errors"]:
            console.print(Text.assemble(("failed", "red"), f" {err['item']}: {err['error']}"), highlight=False)
    if summary["errors"]:
        raise typer.Exit(1)


@app.command()
def search(
    query: str = typer.Argument(..., help="What to look for."),
    mode: str = typer.Option("hybrid", help="vector, keyword or hybrid."),
    limit: int = typer.Option(10, help="Hits to return."),
    tenant: str = typer.Option(None, help="Tenant id."),
    metadata: Optional[str] = typer.Option(None, help='JSON object the chunk metadata must contain, e.g. \'{"path": "README.md"}\'.'),
    as_json: bool = typer.Option(False, "--json", help="Print hits as JSON."),
) -> None:
    """Search what was ingested (a direct call: no flow run on the hot path)."""
    from flows.search import search_now
    from tasks.runtime import Runtime
    from tasks.search import SearchRequest

    settings = Settings()
    try:
        filters = json.loads(metadata) if metadata else None
    except json.JSONDecodeError as exc:
        _fail(f"--metadata is not valid JSON: {exc}")
    except RecursionError:  # the json module recurses once per level
        _fail("--metadata is nested too deeply")
    try:
        request = SearchRequest(query=query, mode=mode, limit=limit, tenant=tenant or settings.tenant,
                                metadata=filters)
        hits = search_now(request, Runtime(settings))
    except (ValidationError, AppError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps([h.model_dump(mode="json") for h in hits], indent=2))
        return
    print_hits(hits)


def print_hits(hits, out: Console | None = None) -> None:
    """Ranked hits, two lines each: scores and where, then the start of the text."""
    out = out or Console()
    if not hits:
        out.print("no hits")
    for i, h in enumerate(hits, 1):
        sim = "-" if h.similarity is None else f"{h.similarity:.3f}"
        bm25 = "-" if h.keyword_score is None else f"{h.keyword_score:.2f}"
        out.print(Text.assemble((f"{i:>2}. {h.document_id}#{h.seq}", "bold"),
                                f"  score {h.score:.4f}  cosine {sim}  bm25 {bm25}  [{h.relevance}]"), highlight=False)
        out.print("    " + " ".join(h.text.split())[:220], highlight=False, markup=False)


@eval_app.command("beir")
def eval_beir(
    directory: Path = typer.Argument(..., help="A BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels-test.tsv)."),
    embed: bool = typer.Option(False, "--embed", help="Embed the corpus even if precomputed vectors sit beside it."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """nDCG@10 and recall@100 of vector, keyword and hybrid search on a BEIR dataset."""
    from flows.evaluate import run_beir_eval

    try:
        result = run_beir_eval(directory, settings=Settings(), use_precomputed=not embed)
    except (AppError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"BEIR {directory.name}: {result['queries']} queries, {result['documents']} documents")
    for col in ("mode", "nDCG@10", "recall@100", "p50 ms"):
        table.add_column(col)
    for mode, m in result["modes"].items():
        table.add_row(mode, f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}", f"{m['p50_ms']:.1f}")
    Console().print(table)


@eval_app.command("locomo")
def eval_locomo(
    path: Path = typer.Argument(..., help="A LoCoMo JSON file (list of samples) or a folder holding one locomo*.json."),
    tenant: Optional[str] = typer.Option(None, help="Tenant to load it into (default: locomo-<file hash>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Evidence-turn recall@5/10/25 of vector, keyword and hybrid search on LoCoMo conversations."""
    from flows.evaluate_locomo import run_locomo_eval
    from tasks.locomo import CATEGORIES, KS

    try:
        result = run_locomo_eval(path, settings=Settings(), tenant=tenant)
    except (AppError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"LoCoMo {result['dataset']}: {result['questions']} questions, {result['turns']} turns "
                        "(recall / hit-all / hit-any, %)")
    table.add_column("mode")
    table.add_column("questions")
    for k in KS:
        table.add_column(f"@{k}")
    table.add_column("p50 ms")
    for mode, m in result["modes"].items():
        for group in ("all", *CATEGORIES.values()):
            g = m[group]
            if not g["questions"]:
                continue
            table.add_row(mode if group == "all" else f"  {group}", str(g["questions"]),
                          *(f"{g[f'recall@{k}']:.1f} / {g[f'hit_all@{k}']:.1f} / {g[f'hit_any@{k}']:.1f}" for k in KS),
                          f"{m['p50_ms']:.1f}" if group == "all" else "")
    Console().print(table)


@app.command()
def up(port: Optional[int] = typer.Option(None, help="Gateway port (default DEVMESH_GATEWAY__PORT or 8787).")) -> None:
    """Start the embedded PostgreSQL, a Prefect server, the served deployments and the gateway; Ctrl-C stops."""
    from deployments.stack import up as stack_up

    try:
        code = stack_up(gateway_port=port, echo=lambda m: console.print(m, highlight=False, markup=False))
    except (AppError, RuntimeError) as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """What `devmesh up` is running, with live health checks; exit 1 when something is down."""
    from deployments.stack import status as stack_status

    info = stack_status()
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            Console().print(f"{key}: {value}", highlight=False)
    raise typer.Exit(0 if info["up"] else 1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def mcp(ctx: typer.Context) -> None:
    """Serve devmesh's tools over MCP: --stdio (key from DEVMESH_API_KEY) or --http [--host H --port P]."""
    from deployments.mcp_server import main as mcp_main

    raise typer.Exit(mcp_main(ctx.args))


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json"),
           migrate: bool = typer.Option(False, "--migrate", help="Apply missing migrations first.")) -> None:
    """Check the installation (database, pgvector, migrations, model files, Prefect server, blocks); exit 1 on a
    failure, each with how to fix it."""
    from deployments.doctor import run_checks
    from tasks.runtime import Runtime

    runtime = Runtime()  # the doctor's pool does not ensure the schema: a missing one is a finding
    if migrate:
        try:
            runtime.pool()  # applies the missing migrations
        except AppError as exc:
            _fail(str(exc))
    checks = run_checks(runtime)
    if as_json:
        print(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        marks = {"ok": ("ok  ", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "red")}
        out = Console()
        for c in checks:
            out.print(Text.assemble(marks[c.status], f" {c.name}: {c.detail}"), highlight=False)
            if c.fix and c.status != "ok":
                out.print(f"      fix: {c.fix}", highlight=False, markup=False)
    raise typer.Exit(1 if any(c.status == "fail" for c in checks) else 0)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

"""Re-ingest benchmark: flows.ingest.ingest_documents on a real corpus with the local model, three times:
first ingest, unchanged re-ingest (must make zero embedding calls), and after editing one paragraph."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from blocks.embedders import load_embedder
from bench.store import SCIFACT
from flows.ingest import IngestRequest, IngestResult, ingest_documents
from tasks.embed import EmbedStats
from tasks.evaluate import load_beir

__all__ = ["run_reingest", "write_corpus"]

DOCUMENTS = 250
TENANT = "bench-reingest"
_ROOT = Path(__file__).resolve().parents[1]
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def write_corpus(directory: Path, documents: int = DOCUMENTS) -> str:
    """SciFact documents as markdown files (title, then paragraphs of three sentences), or, without the test
    data, a copy of this repository's markdown and Python files. Returns a description."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    if (SCIFACT / "corpus.jsonl").is_file():
        corpus = load_beir(SCIFACT).corpus
        for doc_id, (title, text) in list(corpus.items())[:documents]:
            sentences = _SENTENCE.split(text.strip())
            paragraphs = [" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3)]
            (directory / f"{doc_id}.md").write_text(f"# {title}\n\n" + "\n\n".join(paragraphs) + "\n", encoding="utf-8")
        return f"the first {documents} SciFact documents as markdown files (title + paragraphs of 3 sentences)"
    files = sorted(p for folder in ("blocks", "tasks", "flows", "deployments", "bench", "tests", "docs")
                   for p in (_ROOT / folder).rglob("*") if p.suffix in (".md", ".py") and p.is_file())
    for path in files:
        target = directory / path.relative_to(_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return f"{len(files)} markdown and Python files of this repository ({SCIFACT} is absent)"


def _edit_one_paragraph(directory: Path) -> str:
    """Rewrite the middle paragraph of the longest markdown (or Python) file; returns its name."""
    path = max(sorted(directory.rglob("*.md")) or sorted(directory.rglob("*.py")), key=lambda p: p.stat().st_size)
    paragraphs = path.read_text(encoding="utf-8").split("\n\n")
    middle = len(paragraphs) // 2
    paragraphs[middle] = "Edited for the benchmark: " + paragraphs[middle].replace(" the ", " this ")
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    return path.name


def _ingest(request: IngestRequest, settings) -> tuple[IngestResult, float]:
    start = time.perf_counter()
    result = ingest_documents(request, settings)
    return result, time.perf_counter() - start


def run_reingest(settings, workdir: Path, log=print) -> dict:
    """First ingest, unchanged re-ingest and one-paragraph edit, timed; the model is loaded beforehand."""
    corpus = workdir / "reingest-corpus"
    described = write_corpus(corpus)
    embedder = load_embedder("local")
    start = time.perf_counter()
    embedder.embed(["warm up the model"])  # load and verify the model outside the timings
    load_s = time.perf_counter() - start
    request = IngestRequest(tenant=TENANT, paths=[str(corpus)])

    log("reingest: first ingest")
    first, first_s = _ingest(request, settings)
    log("reingest: unchanged re-ingest")
    second, second_s = _ingest(request, settings)
    edited = _edit_one_paragraph(corpus)
    log(f"reingest: after editing one paragraph of {edited}")
    third, third_s = _ingest(request, settings)
    keys = ("documents", "documents_unchanged", "chunks", "chunks_inserted", "chunks_kept", "chunks_deleted",
            "embedding_calls", "texts_embedded")
    return {
        "corpus": described,
        "model_load_s": load_s,
        "first": {"seconds": first_s, **{k: getattr(first, k) for k in keys}, "errors": len(first.errors)},
        "second": {"seconds": second_s, **{k: getattr(second, k) for k in keys}, "errors": len(second.errors)},
        "edited": {"seconds": third_s, "file": edited, **{k: getattr(third, k) for k in keys}, "errors": len(third.errors)},
        "ratio": first_s / second_s,
        "embed_stats": {"calls": EmbedStats.calls, "texts": EmbedStats.texts},
    }

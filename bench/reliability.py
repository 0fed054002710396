"""`make reliability`: the fault, hostile-input and load benchmarks of docs/reliability.md.

    python -m bench.reliability                         # every section (~50 min on 2 cores, most of it the 1M run)
    python -m bench.reliability --only database,mixed   # some sections; the others keep their last figures

Each section runs in its own directory under bench/.data/reliability/<section> (wiped first) with its own embedded
PostgreSQL, and returns a dict of figures. The figures are merged into docs/reliability.json (so a slow section
need not be re-run to refresh another) and rendered between the markers of docs/reliability.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / ".data" / "reliability"
RESULTS = ROOT / "docs" / "reliability.json"
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"

# section -> (module, title); run in this order (the long 1M section last)
SECTIONS: dict[str, tuple[str, str]] = {
    "database": ("bench.faults_database", "Postgres killed mid-ingest; database volume full"),
    "outage": ("bench.outage", "Prefect server down while webhooks arrive"),
    "faulty_provider": ("bench.faulty_provider", "Embedding provider failing 30% of calls"),
    "hostile": ("bench.hostile", "Hostile-input corpus across the surfaces"),
    "mixed": ("bench.mixed", "REST + webhooks mixed load"),
    "million": ("bench.million", "1,000,000 chunks"),
}


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _wipe(path: Path) -> None:
    """Stop a server left on `path` by an interrupted run, then delete the directory."""
    from bench.run import stop_servers_under

    stop_servers_under(path, log=_log)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _cell(text: str, limit: int = 400) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + " …"


def _flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) rows; a section's `markdown` (its own table) is rendered apart, not flattened."""
    if isinstance(value, dict):
        rows: list[tuple[str, str]] = []
        for key, inner in value.items():
            if key != "markdown":
                rows += _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, float):
        return [(prefix, f"{value:,.3f}".rstrip("0").rstrip("."))]
    if isinstance(value, int) and not isinstance(value, bool):
        return [(prefix, f"{value:,}")]
    if isinstance(value, list) and 0 < len(value) <= 4 and all(isinstance(v, dict) for v in value):
        return [row for i, inner in enumerate(value) for row in _flatten(inner, f"{prefix}[{i}]")]
    if isinstance(value, list) and len(value) > 12:
        value = value[:12] + ["…"]
    return [(prefix, _cell(value if isinstance(value, str) else json.dumps(value, default=str)))]


def render(results: dict) -> str:
    """Every recorded figure, section by section, as it was measured (the prose above the markers explains them)."""
    parts = []
    for name, (_, title) in SECTIONS.items():
        entry = results.get(name)
        if entry is None:
            parts.append(f"### {title} (`{name}`)\n\nNot measured yet: `python -m bench.reliability --only {name}`.")
            continue
        head = f"### {title} (`{name}`)\n\nMeasured {entry['measured_at']} UTC in {entry['seconds']:.0f} s " \
               f"(load average before/after: {entry['load'][0]:.2f} / {entry['load'][1]:.2f})."
        if entry.get("error"):
            parts.append(f"{head}\n\n**Failed**: `{entry['error']}`")
            continue
        rows = "\n".join(f"| `{k}` | {v} |" for k, v in _flatten(entry["figures"]))
        own = entry["figures"].get("markdown") if isinstance(entry["figures"], dict) else None
        parts.append(f"{head}\n\n" + (f"{own}\n\n" if own else "") + f"| figure | value |\n|---|---|\n{rows}")
    return "\n\n".join(parts)


def write_doc(results: dict) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{render(results)}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    failed = False
    for name in chosen:
        module, title = SECTIONS[name]
        workdir = DATA / name
        _wipe(workdir)
        _log(f"== {name}: {title}")
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        entry: dict = {"measured_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")}
        try:
            entry["figures"] = importlib.import_module(module).run(workdir)
        except Exception as exc:  # noqa: BLE001 - one failed section must not hide the others' figures
            failed = True
            traceback.print_exc()
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["seconds"] = time.perf_counter() - t0
        entry["load"] = [load0, os.getloadavg()[0]]
        _log(f"== {name} done in {entry['seconds']:.1f} s")
        results[name] = entry
        RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
        write_doc(results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

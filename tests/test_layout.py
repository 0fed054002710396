"""The project's shape: layering, required files, deployments that resolve."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# devops_mcp (the Developer Mesh guide's client) is an entry point over deployments.client: the top layer.
LAYERS = ["blocks", "tasks", "flows", "deployments", "devops_mcp"]


def test_no_module_imports_from_a_higher_layer():
    offences = []
    for rank, layer in enumerate(LAYERS):
        higher = set(LAYERS[rank + 1 :])
        for path in (ROOT / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                offences += [f"{path.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[0] in higher]
    assert offences == []


def _test_module_imports(path: Path) -> list[str]:
    """The test modules (tests/**/test_*.py) that `path` imports from (conftest's shared_testdata is meant to be
    imported: the brief names it)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out += [m for m in modules if m.startswith("tests.") and m.split(".")[-1].startswith("test_")]
    return out


def test_no_module_imports_a_test_module():
    """Shared test helpers live in modules that are not tests (tests/fakes, tests/factories.py, tests/serving.py,
    tests/rest.py, ...): a test module imported by another runs its imports, and its fixtures, twice. One exception,
    on purpose: tests/external_pg imports chosen tests of other modules so that pytest collects them again, there,
    against the managed server as the least-privilege role (that is what the suite is for)."""
    offences = [f"{path.relative_to(ROOT)} imports {m}" for folder in ("tests", "bench")
                for path in (ROOT / folder).rglob("*.py") for m in _test_module_imports(path)
                if (ROOT / "tests" / "external_pg") not in path.parents]
    assert offences == []


def test_required_top_level_files_exist():
    for name in ["flows", "tasks", "blocks", "deployments", "tests", "prefect.yaml", "pyproject.toml",
                 "README.md", "Makefile", ".ci/run", "requirements.lock"]:
        assert (ROOT / name).exists(), name


def test_every_prefect_yaml_entrypoint_loads_a_flow():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        module, _, name = deployment["entrypoint"].partition(":")
        flow = load_flow_from_entrypoint(str(ROOT / module) + ":" + name)
        assert flow.description, f"{deployment['name']}: flows carry a one-line docstring"
        for key in deployment.get("parameters", {}):
            assert key in flow.parameters.properties, f"{deployment['name']}: unknown parameter {key}"


def _calls(name: str, owner: str | None = None) -> list[str]:
    """Where the code (blocks/, tasks/, flows/, deployments/; not tasks/runtime.py) calls `owner.name` (or `name`)."""
    def matches(node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        if owner is None:
            return (isinstance(node.func, ast.Name) and node.func.id == name) or (
                isinstance(node.func, ast.Attribute) and node.func.attr == name)
        return (isinstance(node.func, ast.Attribute) and node.func.attr == name
                and isinstance(node.func.value, ast.Name) and node.func.value.id == owner)

    return [f"{path.relative_to(ROOT)}:{node.lineno}" for layer in ("blocks", "tasks", "flows", "deployments")
            for path in (ROOT / layer).rglob("*.py") if path != ROOT / "tasks" / "runtime.py"
            for node in ast.walk(ast.parse(path.read_text())) if matches(node)]


def test_only_the_runtime_builds_a_store_from_settings():
    """One Runtime per process (tasks/runtime.py) holds the store and its pool: the entry points (deployments/)
    build it and pass it down; nothing builds its own store from Settings or ensures the schema itself."""
    assert _calls("from_settings", "PgVectorStore") == []
    assert _calls("ensure_schema") == []


def test_the_call_finder_sees_calls():
    assert _calls("ensure_model")  # a function called in flows/ and tasks/
    assert _calls("open_async_pool", "store") == []  # gateway.py calls it on runtime.store: an attribute, not a name
    assert _calls("load", "GitHubConnection")  # a classmethod called on its class name


_SQL = re.compile(r"^\s*(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|WITH\s+\w+\s+AS|CREATE\s|DROP\s|ALTER\s|"
                  r"COPY\s|TRUNCATE\s|LOCK\s|SET\s+\w+|VACUUM|ANALYZE\s)", re.IGNORECASE)


def _sql_in(path: Path) -> list[str]:
    """Where `path` holds SQL: a string constant that starts like a statement, or a call of execute, executemany,
    copy or cursor (a connection's)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.match(node.value):
            out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.strip()[:40]!r}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("execute", "executemany", "copy", "cursor")):
            out.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.func.attr}()")
    return out


def test_flows_and_the_search_and_embeddings_routes_hold_no_sql():
    """Tasks do the work and own the SQL; flows compose them, and the REST routes of search and embeddings call
    flows and tasks."""
    assert _sql_in(ROOT / "tasks" / "store.py")  # the check sees SQL where there is some
    paths = [*sorted((ROOT / "flows").rglob("*.py")), ROOT / "deployments" / "api" / "search.py",
             ROOT / "deployments" / "api" / "embeddings.py"]
    assert [hit for path in paths for hit in _sql_in(path)] == []


VENDORS = {"github", "kubernetes", "urllib3", "botocore", "boto3", "openai", "anthropic", "httpx", "requests",
           "psycopg", "psycopg_pool"}
# Where a flow may still name a vendor's exception, and why (empty is the goal).
VENDOR_EXCEPTIONS_ALLOWED: dict[str, str] = {}


def _vendor_exceptions(path: Path) -> set[str]:
    """The vendor exceptions `path` imports or catches: names imported from a vendor's package that end in Error or
    Exception (or come from its exceptions module), and `except` clauses that name anything of a vendor's."""
    tree = ast.parse(path.read_text())
    bound: dict[str, str] = {}  # local name -> vendor package
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in VENDORS:
                    bound[(a.asname or a.name).split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in VENDORS:
            for a in node.names:
                bound[a.asname or a.name] = node.module.split(".")[0]
                if a.name.endswith(("Error", "Exception")) or "exception" in node.module.lower() \
                        or node.module.endswith(".errors"):
                    found.add(f"{node.module}.{a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            for name in ast.walk(node.type):
                if isinstance(name, ast.Name) and name.id in bound:
                    found.add(f"{bound[name.id]}: except {ast.unparse(node.type)}")
    return found


def test_flows_catch_only_devmeshs_errors():
    """Vendor exceptions are mapped once per vendor in blocks/vendor_errors (map_github_errors, ...): flows compose
    tasks and catch only blocks.errors' tree."""
    offences = {}
    for path in sorted((ROOT / "flows").rglob("*.py")):
        name = str(path.relative_to(ROOT))
        found = _vendor_exceptions(path)
        allowed = VENDOR_EXCEPTIONS_ALLOWED.get(name)
        if allowed is not None:
            found = {f for f in found if not f.startswith(allowed)}
        if found:
            offences[name] = sorted(found)
    assert offences == {}


def test_the_vendor_exception_check_finds_them(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import psycopg\nfrom github.GithubException import UnknownObjectException as Gone\n"
                      "from botocore import exceptions as bc\n"
                      "try:\n    pass\nexcept (psycopg.Error, bc.ClientError):\n    pass\nexcept Gone:\n    pass\n")
    assert _vendor_exceptions(sample) == {
        "github.GithubException.UnknownObjectException", "psycopg: except (psycopg.Error, bc.ClientError)",
        "botocore: except (psycopg.Error, bc.ClientError)", "github: except Gone"}


_SQL = re.compile(r"^\s*(SELECT|INSERT\s+INTO|UPDATE|DELETE\s+FROM|WITH|CREATE|ALTER|DROP|TRUNCATE|GRANT|REVOKE|"
                  r"SHOW|SET|LOCK|COPY|ANALYZE|VACUUM)\s")
# Where deployments/ may still hold SQL ("module" or "module:function"), and why (empty is the goal).
SQL_IN_DEPLOYMENTS_ALLOWED = {
    # The embeddings route's chunk counts go with typed ingest results (the ingest already has them), which the
    # runtime branch builds; it owns this module meanwhile.
    "deployments/api/embeddings.py": "runtime branch",
}


def _sql_statements(path: Path) -> dict[str, list[str]]:
    """String constants (f-strings' literal parts included) of `path` that begin with an SQL statement's keyword,
    and every `.execute(...)` call (a statement run here, wherever its text comes from), by where they are:
    "module" or "module:function" (a top-level function's name)."""
    module = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    found: dict[str, list[tuple[int, str]]] = {}
    for top in ast.parse(path.read_text()).body:
        where = f"{module}:{top.name}" if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) else module
        for node in ast.walk(top):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.match(node.value):
                found.setdefault(where, []).append((node.lineno, f"line {node.lineno}: {node.value.strip()[:60]!r}"))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "execute", "executemany"):
                found.setdefault(where, []).append((node.lineno, f"line {node.lineno}: .{node.func.attr}(...)"))
    return {where: [text for _, text in sorted(items)] for where, items in found.items()}


def test_deployments_hold_no_sql():
    """Tasks own the SQL (tasks/database_status.py, tasks/tenancy.py, tasks/webhooks.py, tasks/contexts.py,
    tasks/operation_log.py ...); entry points call them."""
    offences = {}
    for path in sorted((ROOT / "deployments").rglob("*.py")):
        for where, found in _sql_statements(path).items():
            if where not in SQL_IN_DEPLOYMENTS_ALLOWED and where.split(":")[0] not in SQL_IN_DEPLOYMENTS_ALLOWED:
                offences[where] = found
    assert offences == {}


def test_the_sql_check_finds_statements(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('Q = """\nSELECT 1"""\nDOC = "Select the rows you want"\n'
                      'def f(conn):\n    conn.execute(f"UPDATE t SET a = {1}")\n')
    assert _sql_statements(sample) == {"sample.py": ["line 1: 'SELECT 1'"], "sample.py:f": [
        "line 5: 'UPDATE t SET a ='", "line 5: .execute(...)"]}

"""The project's shape: layering, required files, deployments that resolve."""

from __future__ import annotations

import ast
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


VENDORS = {"github", "kubernetes", "urllib3", "botocore", "boto3", "openai", "anthropic", "httpx", "requests",
           "psycopg", "psycopg_pool"}
# Where a flow may still name a vendor's exception, and why (empty is the goal).
VENDOR_EXCEPTIONS_ALLOWED = {
    # run_ingest turns psycopg's "the database failed" into StoreUnavailable itself; the runtime branch owns this
    # module while it reshapes it, and its place is blocks.vendor_errors.map_postgres_errors (same behaviour).
    "flows/ingest.py": "psycopg",
}


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

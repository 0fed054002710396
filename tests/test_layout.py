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

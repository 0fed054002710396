"""README's `prefect block register -m blocks.catalog` registers every devmesh block type with the Prefect server, so
the UI's Blocks catalog offers each (what `devmesh up` runs against its own server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from blocks.catalog import BLOCK_TYPES

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_register_command_puts_every_block_type_in_the_catalog(prefect_harness):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = "prefect block register -m blocks.catalog"
    assert command in readme
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run([sys.executable, "-m", *command.split()], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        slugs = {t.slug for t in client.read_block_types()}
    wanted = {b.get_block_type_slug() for b in BLOCK_TYPES}
    assert wanted <= slugs, wanted - slugs
    assert {"devmesh-github-connection", "devmesh-kubernetes-connection", "openai-embedder", "voyage-embedder",
            "bedrock-embedder", "openai-chat", "anthropic-chat", "devmesh-operation-policy",
            "devmesh-github-webhook"} <= wanted

"""The Developer Mesh guide (../shared/seeds/000_e7d112de7863c184.txt), run as written against devmesh.

Its Python blocks (sections 1-7) are extracted from the seed file and executed unmodified against a running gateway
(uvicorn on localhost:8081, where the guide's usage example points; embedded PostgreSQL), with the project's fake
OpenAI (chat and embeddings), GitHub and Kubernetes servers, the URLs and keys in the environment variables the guide
reads. Its curl calls run with the real curl. The only things supplied are what the guide leaves undefined
(SUPPLIED); where it cannot work as written (GUIDE_BUGS, the OpenAI Assistants API, an Anthropic model as
embedding model) the test shows the error a user gets, then runs on with the fix README gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import types
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from blocks.embedders import register_embedder
from blocks.embedders.openai import OpenAIEmbedder
from blocks.errors import ConfigError
from blocks.github import GitHubConnection
from blocks.kubernetes import KubernetesConnection
from blocks.policy import OperationPolicy
from blocks.settings import Settings
from tasks.ops.base import Connections
from tests.rest import make_app
from tests.fakes import FakeGitHub, FakeKubernetes, FakeOpenAI, FakeOpenAIChat
from tests.serving import serve

SEED = Path(__file__).resolve().parents[2].parent / "shared" / "seeds" / "000_e7d112de7863c184.txt"
PORT = 8081  # the guide's own URLs: http://localhost:8081/api/v1
BASE = f"http://localhost:{PORT}/api/v1"
REPO = "developer-mesh/developer-mesh"
EMBEDDER_BLOCK = "openai-embedder/guide"
# What the guide uses without defining it (each block is otherwise run exactly as printed):
SUPPLIED = {
    "6. Complete AI Assistant Implementation": "import uuid\n",  # uuid.uuid4() in start_session, never imported
    "7. Usage Example": "from openai import OpenAI\n",  # OpenAI() in main(), never imported
}
# Where the guide's code cannot run as written; README "The Developer Mesh guide" says the same.
GUIDE_BUGS = {
    # main() passes the synchronous OpenAI() client, and section 6 awaits its create(): use AsyncOpenAI
    "sync client awaited": ("7. Usage Example", "openai_client = OpenAI()", "openai_client = AsyncOpenAI()"),
    # _build_system_prompt reads tool['result']['success'], but search_github_code's result is a list
    "list result indexed": ("6. Complete AI Assistant Implementation", "{tool['result']['success']}",
                            "{tool['result']['success'] if isinstance(tool['result'], dict) else bool(tool['result'])}"),
}


def guide() -> dict[str, list[tuple[str, str]]]:
    """{heading: [(language, code), ...]} of the seed's fenced blocks, by the ### heading above them."""
    if not SEED.exists():
        pytest.skip(f"{SEED} not present: ../shared/seeds travels with CI, not with a clone of this repository")
    blocks: dict[str, list[tuple[str, str]]] = {}
    heading, language, lines = "", None, []
    for line in SEED.read_text(encoding="utf-8").splitlines():
        if language is None and line.startswith("### "):
            heading = line[4:].strip()
        elif language is None and line.startswith("```") and len(line) > 3:
            language, lines = line[3:].strip(), []
        elif language is not None and line.startswith("```"):
            blocks.setdefault(heading, []).append((language, "\n".join(lines) + "\n"))
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


def python(blocks, heading: str, *fixes: str) -> str:
    """The section's Python block, with what the guide leaves undefined, and the named GUIDE_BUGS fixed."""
    [(language, code)] = blocks[heading]
    assert language == "python", heading
    for fix in fixes:
        where, old, new = GUIDE_BUGS[fix]
        if where == heading:
            assert code.count(old) == 1, (fix, old)
            code = code.replace(old, new)
            if fix == "sync client awaited":
                code = "from openai import AsyncOpenAI\n" + code
    return SUPPLIED.get(heading, "") + code


SECTIONS = ["1. Initialize Client", "2. Context Management", "3. Vector Embeddings with Multi-Model Support",
            "4. Intelligent Semantic Search", "5. Tool Execution with MCP", "6. Complete AI Assistant Implementation"]


def load(blocks, *fixes: str) -> dict:
    """Sections 1-6 executed into one module, as if pasted into one file (a module of sys.modules: section 6's
    @dataclass looks its module up there)."""
    module = types.ModuleType("devmesh_guide_example")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    for heading in SECTIONS:
        exec(compile(python(blocks, heading, *fixes), f"<guide: {heading}>", "exec"), namespace)
    return namespace


def run_usage(blocks, namespace: dict, *fixes: str) -> str:
    """Section 7 (it ends in asyncio.run(main())); returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(python(blocks, "7. Usage Example", *fixes), "<guide: 7. Usage Example>", "exec"), namespace)
        finally:
            namespace["printed"] = out.getvalue()
    return out.getvalue()


@dataclass
class Stack:
    chat: FakeOpenAIChat
    embeddings: FakeOpenAI
    github: FakeGitHub
    cluster: FakeKubernetes
    settings: Settings
    key: str = ""


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    """The guide's port must be free (another test run may be finishing with it)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"port {port} (the guide's) stayed busy for {timeout} s") from None
        time.sleep(0.2)


CURL_SLUG = "my-ai-company"  # the guide's curl registers it


@pytest.fixture
def stack(pg_home, pool, tenant, monkeypatch):
    with FakeOpenAIChat() as chat, FakeOpenAI(api_key="sk-guide-embed") as embeddings, \
            FakeGitHub(token="ghp_guide_token_0123456789") as github, FakeKubernetes() as cluster:
        github.add_repo(REPO)
        github.add_file(REPO, "pkg/adapters/github.go", "package adapters\n\n// TODO: paginate the search results\n")
        register_embedder(EMBEDDER_BLOCK, OpenAIEmbedder(api_key="sk-guide-embed", base_url=f"{embeddings.url}/v1",
                                                         model="text-embedding-3-small", max_retries=0))
        settings = Settings(home=pg_home, embedder="local", embedders={"text-embedding-3-small": EMBEDDER_BLOCK})
        policy = OperationPolicy(operations=["github.*", "kubernetes.apply"], github_repos=[REPO],
                                 kubernetes_namespaces=["default"], kubernetes_kinds=["Deployment"],
                                 images=["ghcr.io/developer-mesh/*"])
        connections = Connections(
            github=GitHubConnection(base_url=github.url, token=github.token, timeout=5, seconds_between_requests=0,
                                    seconds_between_writes=0),
            kubernetes=KubernetesConnection(kubeconfig=cluster.kubeconfig(), request_timeout=5))
        # the policy and credentials of the organizations the tests register (the operator grants them)
        app = make_app(settings, ops_policy={CURL_SLUG: policy, tenant: policy},
                       ops_connections={CURL_SLUG: connections, tenant: connections})
        _wait_for_port(PORT)
        for name, value in {"MCP_BASE_URL": BASE, "VECTOR_API_URL": BASE, "OPENAI_BASE_URL": f"{chat.url}/v1",
                            "OPENAI_API_KEY": chat.api_key}.items():
            monkeypatch.setenv(name, value)
        with serve(app, port=PORT):
            yield Stack(chat, embeddings, github, cluster, settings)


def register(blocks, monkeypatch, slug: str) -> str:
    """The guide's registration body (its curl's -d) with this test's slug (a tenant that holds data, such as
    append-only audit records, cannot be registered again), posted; the key goes where the guide reads it."""
    [(_, script)] = [b for b in blocks["Obtaining API Keys"] if b[0] == "bash"]
    body = json.loads(re.search(r"-d '(\{.*?\})'", script, re.S).group(1))
    assert body["organization_slug"] == CURL_SLUG
    body["organization_slug"] = slug
    answer = httpx.post(f"{BASE}/auth/register/organization", json=body)
    assert answer.status_code == 201, answer.text
    key = answer.json()["api_key"]
    monkeypatch.setenv("MCP_API_KEY", key)
    monkeypatch.setenv("API_KEY", key)
    return key


def test_the_guides_curl_calls_pass_as_written(stack):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed here: the guide's calls are curl commands")
    [(language, script)] = [b for b in guide()["Obtaining API Keys"] if b[0] == "bash"]
    register_part, _, rest = script.partition("# Response includes your API key:")
    done = subprocess.run(["bash", "-c", register_part], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    registered = json.loads(done.stdout)
    assert registered["api_key"].startswith("devmesh_") and registered["organization"]["tenant"] == CURL_SLUG
    # The guide's `export API_KEY="devmesh_xxxxx"` is its placeholder for the key just returned: fill it in.
    placeholder = 'export API_KEY="devmesh_xxxxx"'
    assert placeholder in rest
    rest = rest.replace(placeholder, f'export API_KEY="{registered["api_key"]}"')
    done = subprocess.run(["bash", "-c", rest], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    context = json.loads(done.stdout)
    assert context["tenant"] == CURL_SLUG and context["message_count"] == 1
    page = httpx.get(f"{BASE}/contexts/{context['id']}",
                     headers={"Authorization": f"Bearer {registered['api_key']}"}).json()
    assert [m["content"] for m in page["messages"]] == ["AI agent context data"]


def _script_turns(chat: FakeOpenAIChat) -> None:
    """What the model answers to section 7's three messages (the guide's example output)."""
    chat.reply_text("Hello! I'd be happy to help with your developer-mesh GitHub project.")
    chat.reply_tools([("search_github_code", {"query": "TODO", "repo": REPO})],
                     text="I'll search for TODO comments in your developer-mesh repository.")
    chat.reply_tools([("create_github_issue", {"repo": REPO, "title": "Track TODO items",
                                               "body": "TODOs found by code search", "labels": ["tech-debt"]})],
                     text="I've created an issue to track the TODO items we found in your codebase.")


def test_the_guides_python_runs_as_written(stack, monkeypatch, tenant):
    blocks = guide()
    stack.key = register(blocks, monkeypatch, tenant)

    # As written: section 7 hands section 6 the synchronous OpenAI() client, whose create() cannot be awaited.
    stack.chat.reply_text("unused: the request is sent, its answer cannot be awaited")
    namespace = load(blocks)
    with pytest.raises(TypeError, match="can't be used in 'await' expression"):
        run_usage(blocks, namespace)

    # With AsyncOpenAI, the first two messages run; the third fails inside the guide's own prompt builder.
    _script_turns(stack.chat)
    namespace = load(blocks)
    with pytest.raises(TypeError, match="list indices must be integers or slices, not str"):
        run_usage(blocks, namespace, "sync client awaited")
    printed = namespace["printed"]
    assert len(stack.chat.turns) == 1  # the third message failed before it reached the model
    stack.chat.turns.clear()
    assert "Assistant: Hello! I'd be happy to help" in printed
    assert "Tool Results: [{'tool': 'search_github_code', 'args': {'query': 'TODO', 'repo': " \
           "'developer-mesh/developer-mesh'}, 'result': [{'file_path': 'pkg/adapters/github.go', " \
           "'repository': 'developer-mesh/developer-mesh'" in printed

    # With both fixes, the whole usage example runs and prints what the guide shows.
    _script_turns(stack.chat)
    namespace = load(blocks, "sync client awaited", "list result indexed")
    printed = run_usage(blocks, namespace, "sync client awaited", "list result indexed")
    lines = printed.splitlines()
    assert lines[0] == "Assistant: Hello! I'd be happy to help with your developer-mesh GitHub project."
    assert lines[-1].startswith("Created Issue: ") and lines[-1].endswith(f"/{REPO}/issues/1")
    [issue] = stack.github.issues(REPO)
    assert issue["title"] == "Track TODO items" and [label["name"] for label in issue["labels"]] == ["tech-debt"]
    sent = stack.chat.bodies()[-1]
    assert sent["model"] == "gpt-4-turbo" and [t["function"]["name"] for t in sent["tools"]] == [
        "create_github_issue", "search_github_code"]

    asyncio.run(_what_the_usage_example_stored(namespace, stack))
    asyncio.run(_search_and_similar_conversations(namespace))
    asyncio.run(_multi_model_and_kubernetes(namespace, stack))


async def _what_the_usage_example_stored(ns: dict, stack: Stack) -> None:
    """The session's context holds the conversation as the guide keeps it (in metadata), indexed for search."""
    mcp = ns["mcp_client"]
    contexts = httpx.get(f"{BASE}/contexts", params={"user_id": "user123"},
                         headers={"Authorization": f"Bearer {stack.key}"}).json()["items"]
    assert len(contexts) == 3  # one per run of main(): stopped at message 1, at message 3, finished
    finished = max(contexts, key=lambda c: c["updated_at"])
    assert finished["name"].startswith("conv-") and finished["type"] == "ai_conversation"
    context = await mcp.get_context(finished["name"])
    assert context.id == finished["name"] and context.metadata["model"] == "gpt-4-turbo"
    assert [m["role"] for m in context.metadata["messages"]] == ["assistant"] * 3  # as section 6 appends them
    assert context.metadata["created_at"] and context.metadata["session_id"] == finished["name"].removeprefix("conv-")
    embeddings = await ns["vector_client"].list_embeddings({"context_id": context.id, "limit": 10})
    assert embeddings and {e["model_id"] for e in embeddings} == {"all-MiniLM-L6-v2-onnx-int8"}
    assert all(len(e["embedding"]) == 384 for e in embeddings)


async def _search_and_similar_conversations(ns: dict) -> None:
    """Section 4's ContextSearcher: enriched results over the usage example's contexts, similar conversations."""
    default_model = ns["VectorClient"](base_url=BASE)  # as section 7 makes it: the server's model
    indexer, searcher = ns["ConversationIndexer"](default_model), ns["ContextSearcher"](default_model)
    user_contexts = []
    for i, (who, words) in enumerate([("user123", "the payments deploy failed with OOMKilled, raise its memory"),
                                      ("user123", "payments pods are OOMKilled after the deploy, memory too low"),
                                      ("someone-else", "payments pods are OOMKilled after the deploy")]):
        context_id = await ns["create_conversation_context"](who, f"extra-{i}")
        messages = [{"role": "user", "content": words}, {"role": "assistant", "content": "Raise the limit to 1Gi."}]
        await indexer.index_conversation(context_id, messages)
        user_contexts.append((context_id, indexer._create_chunks(messages)[0]["text"]))
    (first, first_text), (second, _), (third, third_text) = user_contexts
    found = await searcher.search_conversations(first_text, context_ids=[first, second], limit=5)
    assert found[0]["context_id"] == first and found[0]["similarity"] > 0.99
    assert found[0]["relevance_explanation"] == "Very high relevance - nearly exact match"
    assert found[0]["message_range"] == [0, 1] and found[0]["conversation_metadata"]["type"] == "ai_conversation"
    assert all(r["similarity"] >= 0.75 for r in found)  # the guide's similarity_threshold
    theirs = await searcher.search_conversations(third_text, filters={"user_id": "someone-else"}, limit=5)
    assert {r["context_id"] for r in theirs} == {third}
    mine = await searcher.search_conversations(third_text, filters={"user_id": "user123", "type": "ai_conversation"})
    assert third not in {r["context_id"] for r in mine}
    similar = await searcher.find_similar_conversations(first, user_id="user123")
    assert second in similar and first not in similar and third not in similar


async def _multi_model_and_kubernetes(ns: dict, stack: Stack) -> None:
    """Section 1's text-embedding-3-small client beside the default model; section 5's Kubernetes deploy; and the
    model the guide's comment offers that cannot embed."""
    vector_client, mcp = ns["vector_client"], ns["mcp_client"]
    context_id = await ns["create_conversation_context"]("user123", "multi-model")
    text = "assistant: rolled back payments to revision 41"
    stored = await vector_client.create_embedding({"context_id": context_id, "content_index": 0, "text": text,
                                                   "metadata": {"message_range": [0, 0]}})
    assert stored["model"] == "openai/text-embedding-3-small" and stored["dimensions"] == 1536
    assert stack.embeddings.requests, "embedded by the OpenAI embeddings API (the fake)"
    hits = await vector_client.search({"query": text, "context_ids": [context_id], "similarity_threshold": 0.75})
    assert [h["context_id"] for h in hits] == [context_id] and hits[0]["similarity"] > 0.99
    tools = ns["DevOpsToolExecutor"](mcp)
    deployed = await tools.deploy_to_kubernetes("payments", "ghcr.io/developer-mesh/payments:1.4.2")
    assert deployed["success"] is True and deployed["namespace"] == "default"
    assert stack.cluster.get("deployments", "default", "payments")["spec"]["replicas"] == 3
    refused = await tools.deploy_to_kubernetes("payments", "docker.io/evil/miner:latest")
    assert refused["success"] is False  # the policy's image allowlist; nothing reached the cluster
    with pytest.raises(ConfigError, match="Anthropic has no embeddings API"):
        ns["VectorClient"](base_url=BASE, model_id="claude-3-haiku")


def test_the_guides_advanced_integrations_say_why_they_cannot_run(stack, monkeypatch, tenant):
    """The OpenAI Assistants API was shut down in 2026 (the fake answers as for any unknown route); the Claude
    example calls helpers it never defines."""
    import openai

    blocks = guide()
    register(blocks, monkeypatch, tenant)
    namespace = load(blocks)
    exec(compile(python(blocks, "OpenAI Assistants API Integration"), "<guide: assistants>", "exec"), namespace)
    assistant = namespace["MCPOpenAIAssistant"](namespace["mcp_client"], stack.chat.api_key)
    with pytest.raises(openai.NotFoundError, match="/v1/assistants"):
        asyncio.run(assistant.setup_assistant())
    exec(compile(python(blocks, "Anthropic Claude Integration"), "<guide: claude>", "exec"), namespace)
    claude = namespace["MCPClaudeAssistant"](namespace["mcp_client"], "sk-ant-unused")
    with pytest.raises(AttributeError, match="_format_tools_for_claude"):
        asyncio.run(claude.process_with_tools("hello", "conv-x"))

"""Secret canaries: every secret field of every block in blocks/ gets a unique canary; failure paths that could print
it are exercised (a loopback server that answers 401 echoing the request's headers and body back, refused
connections, REST and MCP error answers, webhook signature failures); then no canary may appear in any captured log
record (DEBUG, library loggers included), exception message, database row (audit_log, operations, every table) or
HTTP response body or header.

The blocks with secrets are found at test time (every Block subclass under blocks/ with a SecretStr / SecretBytes /
SecretDict field, or a nested block that has one); a block without a case here fails the test."""

from __future__ import annotations

import hashlib
import hmac
import importlib
import inspect
import json
import logging
import pkgutil
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import psycopg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from prefect.blocks.core import Block
from prefect.blocks.fields import SecretDict
from prefect_aws import AwsCredentials
from pydantic import BaseModel, SecretBytes, SecretStr

import blocks
from blocks.policy import OperationPolicy
from flows.operate import OperateRequest, run_operation
from tasks.ops.base import Connections
from tests.rest import API, register
from tests.cleanup import dump_all
from tests.rest import gateway
from tests.serving import serve

CANARY = "CANARY" + uuid.uuid4().hex[:12]


def canary(name: str) -> str:
    return f"{CANARY}-{name}-0123456789"


class Echo(BaseHTTPRequestHandler):
    """Answers every request 401 with the request's headers and body in the JSON body: the worst provider."""

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        echoed = {"message": f"Bad credentials: {dict(self.headers)} {body}",
                  "error": {"message": f"invalid key {self.headers.get('authorization')}", "type": "auth",
                            "code": "invalid_api_key"}, "kind": "Status", "status": "Failure", "code": 401,
                  "reason": "Unauthorized"}
        data = json.dumps(echoed).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Echo-Auth", str(self.headers.get("authorization")))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def echo():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()




def _secret_blocks() -> set[type]:
    """Every Block subclass defined under blocks/ whose fields (nested models included) hold a secret type."""
    for info in pkgutil.walk_packages(blocks.__path__, "blocks."):
        importlib.import_module(info.name)
    found = set()

    def secretive(model: type[BaseModel], seen=()) -> bool:
        for field in model.model_fields.values():
            text = repr(field.annotation)
            if any(t in text for t in ("SecretStr", "SecretBytes", "SecretDict")):
                return True
            for arg in getattr(field.annotation, "__args__", ()) + (field.annotation,):
                if inspect.isclass(arg) and issubclass(arg, BaseModel) and arg not in seen and secretive(arg, seen + (arg,)):
                    return True
        return False

    def walk(cls):
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("blocks.") and not inspect.isabstract(sub) and secretive(sub):
                found.add(sub)
            walk(sub)

    walk(Block)
    return found


def _pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_every_block_secret_reaches_no_sink(settings, pool, tenant, echo, caplog):
    from blocks.embedders.bedrock import BedrockEmbedder
    from blocks.embedders.openai import OpenAIEmbedder
    from blocks.embedders.voyage import VoyageEmbedder
    from blocks.github import GitHubConnection
    from blocks.kubernetes import KubernetesConnection
    from blocks.llm import AnthropicChat, ChatMessage, OpenAIChat
    from blocks.postgres import PgVectorStore
    from blocks.webhooks import GitHubWebhook

    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "boto3", "urllib3", "httpx", "httpcore", "github", "kubernetes", "openai", "anthropic",
                 "psycopg", "devmesh"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    pem = _pem()
    secrets: dict[str, str] = {}

    def s(name: str) -> str:
        secrets[name] = canary(name)
        return secrets[name]

    aws = AwsCredentials(aws_access_key_id="AKIA" + CANARY[6:18].upper() + "XXXX", aws_secret_access_key=s("aws"),
                         aws_session_token=s("aws-session"), region_name="us-east-1")
    secrets["aws-key-id"] = aws.aws_access_key_id
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
                  "clusters": [{"name": "k", "cluster": {"server": echo, "insecure-skip-tls-verify": True}}],
                  "users": [{"name": "u", "user": {"token": s("kube-token")}}],
                  "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}
    secrets["github-app-key"] = pem
    webhook_secret = s("webhook")
    cases = {
        OpenAIEmbedder: OpenAIEmbedder(api_key=s("openai"), base_url=f"{echo}/v1", model="text-embedding-3-small"),
        VoyageEmbedder: VoyageEmbedder(api_key=s("voyage"), base_url=echo, model="voyage-3.5"),
        BedrockEmbedder: BedrockEmbedder(aws_credentials=aws, endpoint_url=echo, model="amazon.titan-embed-text-v2:0"),
        OpenAIChat: OpenAIChat(api_key=s("openai-chat"), base_url=f"{echo}/v1", model="gpt-4o-mini", max_retries=0),
        AnthropicChat: AnthropicChat(api_key=s("anthropic"), base_url=echo, model="claude-sonnet-4-5", max_retries=0),
        GitHubConnection: GitHubConnection(base_url=echo, token=s("github"), timeout=2, seconds_between_requests=0,
                                           seconds_between_writes=0),
        KubernetesConnection: KubernetesConnection(kubeconfig=SecretDict(kubeconfig)),
        PgVectorStore: PgVectorStore(url=SecretStr(f"postgresql://devmesh:{s('pg')}@127.0.0.1:9/devmesh")),
        GitHubWebhook: GitHubWebhook(secrets=[SecretStr(webhook_secret)]),
    }
    app_conn = GitHubConnection(base_url=echo, app_id=1, installation_id=2, private_key=pem, timeout=2,
                                seconds_between_requests=0, seconds_between_writes=0)
    found = _secret_blocks()
    missing = sorted(c.__name__ for c in found - set(cases))
    assert not missing, f"add a canary case for the blocks {missing}"
    errors: list[str] = []
    responses: list[str] = []

    def fails(fn, *args, **kw):
        with pytest.raises(Exception) as raised:
            fn(*args, **kw)
        exc = raised.value
        chain = []
        while exc is not None and len(chain) < 10:
            chain.append(f"{type(exc).__name__}: {exc} {getattr(exc, 'args', '')}")
            exc = exc.__cause__ if exc.__cause__ is not None or exc.__suppress_context__ else exc.__context__
        errors.append("\n".join(chain))

    fails(cases[OpenAIEmbedder].embed, ["hello"])
    fails(cases[VoyageEmbedder].embed, ["hello"])
    fails(cases[BedrockEmbedder].embed, ["hello"])
    fails(cases[OpenAIChat].complete, "system", [ChatMessage(role="user", content="hi")], [])
    fails(cases[AnthropicChat].complete, "system", [ChatMessage(role="user", content="hi")], [])
    store = cases[PgVectorStore]

    def connect():  # the pool's first connection, without its 30 s wait for the server: the driver's error, then
        try:        # devmesh's mapping of it (blocks.pg_failure.database_failure)
            psycopg.connect(store.resolve_url(), connect_timeout=2).close()
        except psycopg.OperationalError as exc:
            raise (store.failure(exc) or exc) from exc

    fails(connect)
    policy = OperationPolicy(operations=["github.*", "kubernetes.*"], github_repos=["octo/*"],
                             kubernetes_namespaces=["default"], kubernetes_kinds=["ConfigMap"])
    for conn, op, args in (
        (Connections(github=cases[GitHubConnection]), "github.create_issue", {"repo": "octo/app", "title": "x"}),
        (Connections(github=app_conn), "github.create_issue", {"repo": "octo/app", "title": "x"}),
        (Connections(kubernetes=cases[KubernetesConnection]), "kubernetes.get",
         {"api_version": "v1", "kind": "ConfigMap", "namespace": "default", "name": "x"}),
    ):
        request = OperateRequest(operation=op, arguments=args, tenant=tenant, actor={"agent": "canary"},
                                 dry_run=False)
        fails(run_operation, request, settings, connections=conn, policy=policy)

    # HTTP: the REST and MCP answers of failing operations, and webhook signature failures
    http_tenant = tenant + "-http"
    app, _ = gateway(settings, cases[GitHubWebhook], ops_policy={http_tenant: policy},
                     ops_connections={http_tenant: Connections(github=cases[GitHubConnection])})
    with serve(app) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            org = register(http, http_tenant)
            for body in ({"arguments": {"repo": "octo/app", "title": "x"}},
                         {"arguments": {"repo": "octo/app", "title": "x"}, "dry_run": False}):
                r = http.post(f"{API}/tools/github.create_issue/execute", json=body, headers=org.headers)
                assert r.status_code >= 400, r.text
                responses.append(f"{r.status_code} {dict(r.headers)} {r.text}")
            payload = json.dumps({"zen": "x"}).encode()
            for signature in (None, "sha256=" + "0" * 64,
                              "sha256=" + hmac.new(b"wrong-secret-000000", payload, hashlib.sha256).hexdigest(),
                              "sha1=" + webhook_secret):
                headers = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": str(uuid.uuid4()),
                           "Content-Type": "application/json"}
                if signature:
                    headers["X-Hub-Signature-256"] = signature
                r = http.post("/webhooks/github", content=payload, headers=headers)
                assert r.status_code == 401, r.text
                responses.append(f"{r.status_code} {dict(r.headers)} {r.text}")

            async def mcp():
                headers = {"Authorization": f"Bearer {org.key}"}
                async with Client(streamable_http_client(f"{url}/mcp",
                                                         http_client=create_mcp_http_client(headers=headers))) as c:
                    for extra in ({}, {"dry_run": False}):
                        result = await c.call_tool("github.create_issue", {"repo": "octo/app", "title": "x", **extra})
                        assert result.is_error, result
                        responses.append(result.model_dump_json())

            anyio.run(mcp)
            audit = http.get(f"{API}/audit", headers=org.headers)
            responses.append(audit.text)
            assert "failed" in audit.text or "denied" in audit.text

    rows = dump_all(pool)
    assert "failed" in rows  # the failures were recorded, so the rows were a real sink
    sinks = {"logs": caplog.text + "\n".join(r.getMessage() for r in caplog.records), "errors": "\n".join(errors),
             "database": rows, "http": "\n".join(responses)}
    assert len(errors) == 9 and len(responses) >= 9
    leaks = []
    for where, text in sinks.items():
        for name, secret in secrets.items():
            probe = secret if name != "github-app-key" else secret.splitlines()[5]
            if probe in text:
                at = text.index(probe)
                leaks.append((name, where, text[max(0, at - 300):at + 60]))
    assert not leaks, "\n\n".join(f"{n} in {w}: ...{t}" for n, w, t in leaks)
    assert CANARY not in "".join(sinks.values())

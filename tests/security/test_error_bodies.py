"""Issue 18, errors: every refusal of the served gateway has the documented body
{"error": {"code", "message", "item", "request_id"}} with the request id of its X-Request-ID header — the REST
API's, the webhook endpoint's (401/400/413/415), /metrics' 401 and MCP's HTTP-level refusals (401/403/413/421/429).
The webhook outcomes counted in /metrics keep their names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import httpx
from pydantic import SecretStr

from blocks.webhooks import GitHubWebhook
from deployments.gateway import create_app
from tests.rest import API, no_emit, assert_error, new_key, register
from tests.serving import serve

SECRET = "error-bodies-webhook-secret"
ACCEPT = {"Accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}


def _sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_every_refusal_has_the_one_error_body(settings, tenant):
    guarded = settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"metrics_token": SecretStr(
        "scrape-token-1234")})})
    hook = GitHubWebhook(secrets=[SecretStr(SECRET)], max_body_bytes=2048)
    app = create_app(guarded, webhook=hook, emit=no_emit)
    with serve(app) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            org = register(http, tenant)
            tiny = new_key(http, org, ["read"], rate_per_minute=1, burst=1)
            issue = json.dumps({"action": "opened", "repository": {"full_name": "octo/app"}}).encode()

            def hook_post(body: bytes, *, signature: str | None = "sign", event="issues", content_type=None):
                headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()),
                           "Content-Type": content_type or "application/json"}
                if signature:
                    headers["X-Hub-Signature-256"] = _sign(body) if signature == "sign" else signature
                return http.post("/webhooks/github", content=body, headers=headers)

            def mcp(headers, **kw):
                return http.post("/mcp", headers={**ACCEPT, **headers}, **({"json": INIT} | kw))

            cases = [  # (response, status, code, item)
                (hook_post(issue, signature=None), 401, "invalid_signature", "X-Hub-Signature-256"),
                (hook_post(issue, signature="sha256=" + "0" * 64), 401, "invalid_signature", "X-Hub-Signature-256"),
                (hook_post(issue, event="Bad Event!"), 400, "bad_request", "X-GitHub-Event"),
                (hook_post(issue, content_type="text/plain"), 415, "unsupported_media_type", "Content-Type"),
                (hook_post(b"{not json"), 400, "malformed_json", "body"),
                (hook_post(b"[1, 2]"), 400, "invalid_payload", "body"),
                (hook_post(b'{"x": "' + b"a" * 4096 + b'"}'), 413, "payload_too_large", "body"),
                (http.get("/metrics"), 401, "unauthorized", "Authorization"),
                (http.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized",
                 "Authorization"),
                (mcp({}), 401, "unauthorized", None),
                (mcp({"Authorization": "Bearer devmesh_" + "z" * 43}), 401, "unauthorized", None),
                (mcp({**org.headers, "Host": "rebound.example"}), 421, "misdirected_request", "Host"),
                (mcp({**org.headers, "Origin": "http://rebound.example"}), 403, "forbidden_origin", "Origin"),
                (mcp({**org.headers, "Content-Type": "text/plain"}, content=b"{}", json=None), 400,
                 "unsupported_media_type", "Content-Type"),
                (mcp({**org.headers, "Content-Type": "application/json"}, content=b"{" + b" " * (5 * 1024 * 1024)
                     + b"}", json=None), 413,
                 "payload_too_large", "body"),
                (http.get(f"{API}/contexts"), 401, "unauthorized", None),
                (http.post(f"{API}/keys", json={"name": "x", "scopes": ["read"]}, headers=tiny.headers), 403,
                 "missing_scope", "admin"),
            ]
            cases += [(mcp(tiny.headers), 429, "rate_limited", None)]  # tiny's one token went on the 403 above
            for response, status, code, item in cases:
                error = assert_error(response, status, code)
                assert error["item"] == item, (code, error)
                assert error["message"] and len(error["message"]) < 500
            metrics = http.get("/metrics", headers={"Authorization": "Bearer scrape-token-1234"}).text
            for outcome in ("bad_signature", "bad_request", "bad_content_type", "too_large"):
                assert f'outcome="{outcome}"' in metrics, outcome

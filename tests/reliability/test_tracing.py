"""OpenTelemetry traces (blocks/tracing.py): a flow run's span from Prefect's own run telemetry, provider-call spans
under it with counts and model ids (never texts or keys), failures recorded without secrets; off by default.

In-process tests share one SDK tracer provider with an InMemorySpanExporter (a global provider is set once per
process); the default, console and OTLP configurations run in subprocesses, the OTLP one against a loopback
collector that decodes the real OTLP/HTTP protobuf."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from blocks import tracing
from blocks.embedders import register_embedder
from blocks.embedders.openai import OpenAIEmbedder
from blocks.errors import AuthFailed, TransientError
from blocks.settings import TracingSettings
from tests.fakes import FakeOpenAI
from tests.fakes.server import Fault

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-trace-secret-0123456789"


@pytest.fixture(scope="module")
def exporter():
    memory = InMemorySpanExporter()
    if not tracing.configure(TracingSettings(exporter="console"), exporter=memory):  # pragma: no cover
        raise AssertionError("configure() with an exporter must install a provider")
    if tracing._provider is not None and memory not in _exporters():  # another module configured first
        tracing._provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()  # later tests' spans are dropped, not kept in memory


def _exporters() -> list:
    processors = getattr(tracing._provider._active_span_processor, "_span_processors", ())
    return [getattr(p, "span_exporter", None) for p in processors]


def _everything(span) -> str:
    """Every text a span carries to a collector: name, status, attributes, events."""
    parts = [span.name, span.status.description or "", json.dumps(dict(span.attributes), default=str)]
    for event in span.events:
        parts += [event.name, json.dumps(dict(event.attributes), default=str)]
    return "\n".join(parts)


def _ancestors(span, by_id) -> list:
    out = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        out.append(span)
    return out


def test_ingest_flow_span_is_the_ancestor_of_its_provider_call_spans(exporter, settings, tenant, prefect_harness,
                                                                      monkeypatch):
    from flows.ingest import DocumentSpec, IngestRequest, ingest

    monkeypatch.setenv("DEVMESH_INGEST__STORE_BATCH", "3")  # 3 texts per provider call: several calls
    texts = [f"secret-free? no: note {i} about restarting the billing worker" for i in range(7)]
    exporter.clear()
    with FakeOpenAI(api_key=KEY) as api:
        register_embedder("openai-traced", OpenAIEmbedder(api_key=KEY, base_url=f"{api.url}/v1",
                                                          output_dimensions=32))
        summary = ingest(IngestRequest(tenant=tenant, embedder="openai-traced",
                                       documents=[DocumentSpec(document_id=f"d{i}", text=t)
                                                  for i, t in enumerate(texts)]))
    assert summary["errors"] == [] and summary["texts_embedded"] == 7

    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    [flow] = [s for s in spans if s.attributes.get("prefect.run.type") == "flow"]
    assert flow.status.status_code == StatusCode.OK and flow.parent is None
    embeds = [s for s in spans if s.name == "embed"]
    assert len(embeds) == len(api.requests) == 3  # 3 + 3 + 1 texts
    for span in embeds:
        assert span.context.trace_id == flow.context.trace_id
        chain = _ancestors(span, by_id)
        assert chain[-1] is flow  # the flow span is the root of each provider call
        assert chain[0].attributes.get("prefect.run.type") == "task"  # made by the embed task run
        attributes = dict(span.attributes)
        assert attributes["devmesh.provider"] == "openai" and attributes["devmesh.model"] == "text-embedding-3-small"
        assert attributes["devmesh.texts"] in (3, 1) and attributes["devmesh.tokens"] > 0
        assert attributes["devmesh.outcome"] == "ok" and span.status.status_code != StatusCode.ERROR
    assert sorted(s.attributes["devmesh.texts"] for s in embeds) == [1, 3, 3]
    for span in spans:  # no text of a document, no key, in any span
        carried = _everything(span)
        assert KEY not in carried and "billing worker" not in carried, span.name


def test_a_failing_provider_call_records_the_error_without_the_key(exporter):
    exporter.clear()
    with FakeOpenAI(api_key=KEY) as api:
        embedder = OpenAIEmbedder(api_key=KEY, base_url=f"{api.url}/v1", output_dimensions=32, max_retries=1)
        # both attempts fail, with the key echoed back in the vendor's message
        api.script(Fault.error(503, f"overloaded for {KEY}"), Fault.error(503, f"overloaded for {KEY}"))
        with tracing.span("caller"), pytest.raises(TransientError):
            embedder.embed(["a text about the deploy"])
        api.api_key = "sk-rotated-elsewhere"  # the fake now refuses our key and echoes it (a 401, never retried)
        with pytest.raises(AuthFailed):
            embedder.embed(["another text"])

    spans = exporter.get_finished_spans()
    caller = next(s for s in spans if s.name == "caller")
    failed, refused = [s for s in spans if s.name == "embed"]
    assert failed.parent.span_id == caller.context.span_id
    for span, kind in ((failed, "TransientError"), (refused, "AuthFailed")):
        assert span.status.status_code == StatusCode.ERROR and span.status.description.startswith(kind)
        assert span.attributes["devmesh.outcome"] == "error"
        [exc] = [e for e in span.events if e.name == "exception"]
        assert exc.attributes["exception.type"] == kind and "HTTP" in exc.attributes["exception.message"]
        assert KEY not in _everything(span)
    retries = [e for e in failed.events if e.name == "retry"]
    assert len(retries) == 1 and retries[0].attributes["devmesh.error"] == "TransientError"
    assert not [e for e in refused.events if e.name == "retry"]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DEVMESH_", "OTEL_"))}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


_SPAN = """
from opentelemetry import trace
from blocks import tracing
import blocks.retry  # a provider module: importing blocks configures tracing
with tracing.span("probe", texts=3) as s:
    print("recording", s.is_recording())
print("enabled", tracing.enabled(), type(trace.get_tracer_provider()).__name__)
"""


def test_default_configuration_installs_no_provider_and_exports_nothing():
    done = _python(_SPAN)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["recording", "False", "enabled", "False", "ProxyTracerProvider"]
    assert "probe" not in done.stderr


def test_console_exporter_writes_spans_to_stderr_not_stdout():
    done = _python(_SPAN, DEVMESH_TRACING__EXPORTER="console", DEVMESH_TRACING__SERVICE_NAME="devmesh-test")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["recording", "True", "enabled", "True", "TracerProvider"]
    assert '"name": "probe"' in done.stderr and '"devmesh.texts": 3' in done.stderr
    assert '"service.name": "devmesh-test"' in done.stderr


def test_otlp_exporter_sends_protobuf_with_the_secret_headers_to_the_collector():
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[dict, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = _python(_SPAN, DEVMESH_TRACING__EXPORTER="otlp",
                       DEVMESH_TRACING__ENDPOINT=f"http://127.0.0.1:{server.server_port}/v1/traces",
                       DEVMESH_TRACING__HEADERS=f"authorization=Bearer {KEY}, x-team = core")
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stdout + done.stderr
    [(headers, body)] = received  # the batch processor flushed at exit
    assert headers["authorization"] == f"Bearer {KEY}" and headers["x-team"] == "core"
    assert headers["content-type"] == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    [span] = [s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
    assert span.name == "probe"
    assert {a.key: a.value.int_value for a in span.attributes if a.key == "devmesh.texts"} == {"devmesh.texts": 3}


_BAD = """
from blocks import tracing
from blocks.settings import Settings
print("enabled", tracing.enabled(), "exporter", Settings().tracing.exporter)
"""


def test_malformed_headers_leave_tracing_off_with_one_warning_that_does_not_repeat_them():
    done = _python(_BAD, DEVMESH_TRACING__EXPORTER="otlp", DEVMESH_TRACING__HEADERS=f"authorization=Bearer x,{KEY}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["enabled", "False"]
    assert done.stderr.splitlines() == ["devmesh: tracing is off: DEVMESH_TRACING__HEADERS: pair 2 is not "
                                        "'name=value' (pairs are comma-separated)"]
    assert KEY not in done.stderr + done.stdout


@pytest.mark.parametrize("variable, value, problem", [
    ("EXPORTER", "OTLP-" + KEY, "Input should be 'none', 'console' or 'otlp'"),
    ("TIMEOUT_S", "ten-" + KEY, "Input should be a valid number"),
])
def test_an_invalid_tracing_setting_does_not_break_importing_blocks(variable, value, problem):
    """Every devmesh process imports blocks first (the CLI, the gateway, flow runs): a typo in a tracing setting
    costs the traces, with one warning naming the variable (never its value), not the process."""
    done = _python(_BAD, **{f"DEVMESH_TRACING__{variable}": value})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["enabled", "False", "exporter", "none"]
    [line] = done.stderr.splitlines()
    assert line.startswith(f"devmesh: tracing is off: DEVMESH_TRACING__{variable}: {problem}")
    assert KEY not in done.stderr + done.stdout

"""OpenTelemetry traces: one process-wide tracer provider when DEVMESH_TRACING__EXPORTER is set, and `span()`.

Off by default: `configure()` then installs nothing, OpenTelemetry's API keeps its no-op (proxy) provider and
every `span()` is a non-recording span. Enabled, flows and tasks get spans from Prefect itself (its run telemetry
starts one span per flow and task run through the global provider, nested by run), and devmesh adds one span per
provider call: embedder requests, chat completions and the guarded operation steps, as children of the task run
that made them.

Attributes are counts, model ids, operation names and targets: never texts, arguments or credentials. A failed
call records the exception type and, for devmesh's own errors (whose messages are scrubbed when raised), the
message; other exceptions record their type only (a client library's message may echo a URL with a key).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from blocks.errors import AppError, ConfigError
from blocks.settings import TracingSettings

__all__ = ["TRACER", "configure", "configure_from_environment", "enabled", "event", "set_attributes", "span"]

TRACER = "devmesh"
_lock = threading.Lock()
_provider: Any = None  # the SDK TracerProvider this module installed, once per process


class _TracingEnv(BaseSettings):
    """DEVMESH_TRACING__* alone: configure() runs when a package is imported, where an unrelated bad setting
    must not fail the import (Settings() reports it where it is used)."""

    model_config = SettingsConfigDict(env_prefix="DEVMESH_", env_nested_delimiter="__", extra="ignore")
    tracing: TracingSettings = TracingSettings()


def enabled() -> bool:
    """True once this process exports traces."""
    return _provider is not None


def _headers(settings: TracingSettings) -> dict[str, str] | None:
    if settings.headers is None:
        return None
    out: dict[str, str] = {}
    for i, pair in enumerate(filter(None, (p.strip() for p in settings.headers.get_secret_value().split(","))), 1):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            # the value is a secret: say where, never what
            raise ConfigError(f"DEVMESH_TRACING__HEADERS: pair {i} is not 'name=value' (pairs are comma-separated)")
        out[name.strip()] = value.strip()
    return out


def _exporter(settings: TracingSettings):
    if settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)  # stdout carries the CLI's own output (--json)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=settings.endpoint, headers=_headers(settings), timeout=settings.timeout_s)


def configure(settings: TracingSettings | None = None, *, exporter: Any = None) -> bool:
    """Install the global tracer provider when tracing is enabled; idempotent. True when this process exports.

    `exporter`: a SpanExporter to use instead of the configured one (tests: the SDK's InMemorySpanExporter)."""
    global _provider
    if _provider is not None:
        return True
    settings = settings or _TracingEnv().tracing
    if exporter is None and settings.exporter == "none":
        return False
    with _lock:
        if _provider is not None:
            return True
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        batched = exporter is None and settings.exporter == "otlp"  # network export off the calling thread
        exporter = exporter or _exporter(settings)
        provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        provider.add_span_processor(BatchSpanProcessor(exporter) if batched else SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)  # the SDK flushes and shuts it down at interpreter exit
        _provider = provider
    return True


def _variable(loc: tuple) -> str:
    return "DEVMESH_" + "__".join(str(part).upper() for part in loc)


def configure_from_environment() -> bool:
    """configure() as importing the blocks package runs it, in every devmesh process. A bad DEVMESH_TRACING__*
    setting does not fail the import: one warning names the variable and what is wrong with it (never its value:
    the headers carry a key) and tracing stays off. Settings() then reads the tracing settings as off too."""
    try:
        return configure()
    except ValidationError as exc:
        problem = "; ".join(f"{_variable(e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False))
    except SettingsError:
        problem = "DEVMESH_TRACING is not a JSON object"
    except ConfigError as exc:
        problem = str(exc)
    logging.getLogger("devmesh.tracing").warning("devmesh: tracing is off: %s", problem)
    return False


def _redact(text: str) -> str:
    from blocks.redact import redact  # imports Prefect: only on a recorded failure

    return redact(text)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {f"devmesh.{k}": v for k, v in attributes.items() if v is not None}


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """A span around one provider call, child of the current span (a task run's, when in one).

    Attributes are prefixed `devmesh.`; None values are left out. Pass counts and ids only, never texts or keys.
    Ends with `devmesh.outcome` "ok" (unless the caller set another), or "error": then the span has ERROR status
    and an `exception` event, and the exception propagates."""
    tracer = trace.get_tracer(TRACER)
    with tracer.start_as_current_span(name, attributes=_clean(attributes), record_exception=False,
                                      set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as exc:
            if current.is_recording():
                kind = type(exc).__name__
                message = _redact(str(exc)) if isinstance(exc, AppError) else ""
                current.set_attribute("devmesh.outcome", "error")
                current.set_status(Status(StatusCode.ERROR, f"{kind}: {message}" if message else kind))
                current.add_event("exception", {"exception.type": kind, "exception.message": message})
            raise
        if current.is_recording() and "devmesh.outcome" not in (getattr(current, "attributes", None) or {}):
            current.set_attribute("devmesh.outcome", "ok")


def event(name: str, **attributes: Any) -> None:
    """An event on the current span (a retry); a no-op when tracing is off."""
    current = trace.get_current_span()
    if current.is_recording():
        current.add_event(name, _clean(attributes))


def set_attributes(**attributes: Any) -> None:
    """Add attributes to the current span (an outcome known only at the end); a no-op when tracing is off."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(_clean(attributes))

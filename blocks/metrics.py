"""Prometheus metrics of devmesh (prometheus-client). Every layer counts here; the gateway serves /metrics.

Processes of one host share them when PROMETHEUS_MULTIPROC_DIR is set (`devmesh up` sets it for the server's
children: served flow runs, the gateway), the client library's documented multi-process mode.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["CHUNKS_STORED", "EMBEDDING_COST", "EMBEDDING_TOKENS", "HTTP_LATENCY", "SEARCH_LATENCY",
           "TOOL_EXECUTIONS", "WEBHOOK_DELIVERIES", "exposition"]

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

HTTP_LATENCY = Histogram("devmesh_http_request_seconds", "HTTP requests of the gateway / REST API",
                         ["method", "route", "status"], buckets=_FAST)
SEARCH_LATENCY = Histogram("devmesh_search_seconds", "Search latency (embedding the query included)", ["mode"],
                           buckets=_FAST)
CHUNKS_STORED = Counter("devmesh_chunks_stored_total", "Chunks inserted by ingests", ["tenant"])
EMBEDDING_TOKENS = Counter("devmesh_embedding_tokens_total", "Tokens sent to hosted embedders", ["tenant", "model"])
EMBEDDING_COST = Counter("devmesh_embedding_cost_usd_total", "List-price cost of hosted embeddings",
                         ["tenant", "model"])
TOOL_EXECUTIONS = Counter("devmesh_tool_executions_total", "Guarded operations by final status",
                          ["operation", "status"])
WEBHOOK_DELIVERIES = Counter("devmesh_webhook_deliveries_total", "Webhook deliveries by outcome",
                             ["event", "outcome"])


def exposition() -> tuple[bytes, str]:
    """(body, content type) for GET /metrics: this process, or every process of the multi-process directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST

"""Call a task as a task run inside a flow run, or as a plain function outside one."""

from __future__ import annotations

from prefect.context import FlowRunContext

__all__ = ["call", "in_flow_run"]


def in_flow_run() -> bool:
    """True inside a Prefect flow run."""
    return FlowRunContext.get() is not None


def call(task, *args, **kwargs):
    """task(...) in a flow run (tracked, retried); task.fn(...) outside, so the agent's hot path and plain
    scripts do not need a Prefect server."""
    if in_flow_run():
        return task(*args, **kwargs)
    return task.fn(*args, **kwargs)

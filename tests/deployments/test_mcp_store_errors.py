"""MCP tool errors for a failing database: the tenant gets a generic message, the server log the full one."""

from __future__ import annotations

import logging

from blocks.errors import StoreUnavailable
from deployments import mcp_server
from tests.mcp_clients import client, org, text

DETAIL = ("lost the connection to the database (server closed the connection unexpectedly; the server then "
          "PANICked: could not write to file \"pg_wal/xlogtemp.123\"); embedded PostgreSQL, data in /srv/secret/pgdata")


async def test_a_database_failure_is_a_generic_tool_error(settings, pool, tenant, monkeypatch, caplog):
    def failing(self, principal):
        raise StoreUnavailable(DETAIL)

    monkeypatch.setattr(mcp_server._Tools, "memory", failing)
    with caplog.at_level(logging.WARNING, logger=mcp_server.log.name):
        async with client(settings, pool, org(pool, tenant)) as c:
            result = await c.call_tool("context_create", {})
    assert result.is_error
    assert text(result) == "StoreUnavailable: the database is unavailable; retry later"
    assert "secret" not in text(result) and "PANIC" not in text(result)
    assert any(DETAIL in r.getMessage() for r in caplog.records)

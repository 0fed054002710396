"""`devmesh doctor` on the managed database: the unprivileged app role has all it needs; each privilege an admin
revokes is named, with the GRANT that gives it back (which, run, makes the check pass again)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from deployments.doctor import run_checks
from tasks.privileges import missing_privileges
from tests.external_pg.managed import APP_ROLE


def _privileges(settings):
    return {c.name: c for c in run_checks(settings)}["privileges"]


def test_the_app_role_has_every_privilege_devmesh_needs(settings, session_pool):
    check = _privileges(settings)
    assert check.status == "ok" and APP_ROLE in check.detail, check
    with session_pool.connection() as conn:
        assert missing_privileges(conn) == []


@pytest.fixture
def admin(managed_pg):
    with managed_pg.admin() as conn:
        yield conn
        # whatever a test revoked comes back, so that the rest of the suite runs with the documented grants
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {APP_ROLE}")
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
        conn.execute(f"ALTER TABLE embeddings OWNER TO {APP_ROLE}")


def test_a_revoked_table_privilege_is_named_with_its_grant_and_the_grant_fixes_it(settings, admin):
    admin.execute(f"REVOKE INSERT, DELETE ON webhook_deliveries FROM {APP_ROLE}")
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 1, result.output
    check = next(c for c in json.loads(result.stdout) if c["name"] == "privileges")
    assert check["status"] == "fail"
    assert "INSERT, DELETE on table webhook_deliveries" in check["detail"]
    grant = f"GRANT INSERT, DELETE ON TABLE \"webhook_deliveries\" TO \"{APP_ROLE}\""
    assert grant in check["fix"]
    admin.execute(grant)
    assert _privileges(settings).status == "ok"


def test_schema_create_and_table_ownership_are_optional_once_migrated_and_named(settings, admin):
    admin.execute(f"REVOKE CREATE ON SCHEMA public FROM {APP_ROLE}")
    admin.execute("ALTER TABLE embeddings OWNER TO dbadmin")  # as if the admin had applied the migrations
    admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON embeddings TO {APP_ROLE}")
    check = _privileges(settings)
    assert check.status == "warn", check  # migrations are applied: nothing the app does every day needs them
    assert "CREATE on schema public" in check.detail and "ownership of table embeddings" in check.detail
    assert f'GRANT CREATE ON SCHEMA "public" TO "{APP_ROLE}"' in check.fix
    assert f'ALTER TABLE "embeddings" OWNER TO "{APP_ROLE}"' in check.fix
    for statement in (f'GRANT CREATE ON SCHEMA "public" TO "{APP_ROLE}"',
                      f'ALTER TABLE "embeddings" OWNER TO "{APP_ROLE}"'):
        admin.execute(statement)
    assert _privileges(settings).status == "ok"


def test_append_only_audit_log_needs_no_update_or_delete(settings, admin):
    admin.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM {APP_ROLE}")
    assert _privileges(settings).status == "ok"
    admin.execute(f"REVOKE INSERT ON audit_log FROM {APP_ROLE}")
    check = _privileges(settings)
    assert check.status == "fail" and "INSERT on table audit_log" in check.detail

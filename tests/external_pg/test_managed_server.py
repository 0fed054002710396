"""The managed server is what it claims to be: TLS required and verified, SCRAM, and devmesh's role unprivileged."""

from __future__ import annotations

import psycopg
import pytest

from tests.external_pg.managed import APP_ROLE, make_certificates


def test_the_app_role_is_neither_superuser_nor_owner_and_vector_was_pre_created(managed_pg, session_pool):
    with session_pool.connection() as conn:
        row = conn.execute(
            "SELECT current_user, r.rolsuper, r.rolcreatedb, r.rolcreaterole, pg_get_userbyid(d.datdba),"
            " (SELECT pg_get_userbyid(extowner) FROM pg_extension WHERE extname = 'vector')"
            " FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()"
        ).fetchone()
        assert conn.pgconn.ssl_in_use
    assert row == (APP_ROLE, False, False, False, "dbadmin", "dbadmin")


def test_tls_is_required_and_verified_and_passwords_checked(managed_pg, tmp_path):
    with pytest.raises(psycopg.OperationalError, match="TLS is required"):
        psycopg.connect(managed_pg.app_url.replace("sslmode=verify-full", "sslmode=disable"), connect_timeout=10)
    other_ca = make_certificates(tmp_path)[0]
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(managed_pg.url(APP_ROLE, managed_pg.app_password, ca=other_ca), connect_timeout=10)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(managed_pg.url(APP_ROLE, "not-the-password"), connect_timeout=10)


def test_every_migration_applied_as_the_app_role_which_owns_every_table(session_pool):
    from tasks.migrate import migrations

    with session_pool.connection() as conn:
        applied = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        owners = set(r[0] for r in conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i', 'S', 'u')"
            " AND c.oid NOT IN (SELECT objid FROM pg_depend WHERE deptype = 'e')"))
    assert applied == [v for v, _, _ in migrations()]
    assert owners == {APP_ROLE}

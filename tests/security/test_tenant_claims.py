"""Tenants that cannot be claimed (issue 18, attack 1): a stranger registering an organization through REST or the
Python client never gets a key to a tenant that existed before them — reserved names and their look-alikes, the
operator's tenant (Settings.tenant), the tenants the operator's webhook block routes to, and every tenant that holds
data without an organization answer 409; slugs are normalised (NFKC, case-folded) and unique after that; bidi
controls and mixed-script look-alikes are refused naming the character. Registration can be open, by invite (a
one-time token minted with `devmesh orgs invite`) or closed. Each refusal changes no row (counted as the hostile
corpus does)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from blocks.errors import AppError
from blocks.settings import Settings
from blocks.webhooks import GitHubWebhook
from deployments.cli import app as cli_app
from deployments.client import Mesh
from deployments.gateway import create_app
from deployments.memory import Memory
from deployments.stack import status
from tasks.audit import append_audit
from tasks.claims import mint_invite
from tasks.webhook_events import Routes
from tests.rest import API, PASSWORD, ROOT, admitting, assert_error, make_app
from tests.reliability.hostile import table_counts
from tests.serving import serve

runner = CliRunner()
def unlimited(settings):
    """Registrations without a rate limit: these tests try many slugs from one address."""
    return admitting(settings, register_rate_per_minute=10**6, register_burst=10**6)


def app_of(settings, **state):
    return make_app(unlimited(settings), **state)


def body(slug: str, **extra) -> dict:
    return {"name": f"Org {slug}", "slug": slug, "admin_email": "mallory@evil.example", "admin_name": "Mallory",
            "password": PASSWORD, **extra}


def attempt(client, slug: str, **extra):
    return client.post(f"{API}/auth/register/organization", json=body(slug, **extra))


@pytest.fixture
def client(settings):
    with TestClient(app_of(settings)) as c:
        yield c


def refused_and_nothing_stored(pool, client, slug, status, code, **extra) -> dict:
    before = table_counts(pool)
    error = assert_error(attempt(client, slug, **extra), status, code)
    assert table_counts(pool) == before, "a refused registration changed rows"
    return error


@pytest.mark.parametrize("slug", ["default", "DEFAULT", " Default ", "ｄｅｆａｕｌｔ", "defau1t", "admin", "Admin",
                                  "adrnin", "root", "system", "operator", "devmesh", "devmesh-support", "api"])
def test_reserved_names_and_their_look_alikes_answer_409(pool, client, slug):
    error = refused_and_nothing_stored(pool, client, slug, 409, "slug_reserved")
    assert "reserved" in error["message"], error


def test_the_operators_own_tenant_cannot_be_claimed(pool, settings, monkeypatch):
    """Settings.tenant is the operator's, whatever its name; its look-alikes are refused too."""
    ops = Settings(home=settings.home, embedder="fake", tenant="ops-team")
    with TestClient(app_of(ops)) as client:
        for slug in ("ops-team", "OPS-TEAM", "0ps-team"):
            error = refused_and_nothing_stored(pool, client, slug, 409, "slug_taken")
            assert "already uses this slug" in error["message"]


def test_tenants_the_webhook_block_routes_to_cannot_be_claimed(pool, settings):
    hook = GitHubWebhook(secrets=[SecretStr("claims-webhook-secret-01")], default_tenant="hooks-in",
                         repo_tenants={"acme/*": "acme-private"})
    app = create_app(unlimited(settings), webhook=hook, emit=no_emit,
                     routes=Routes.from_prefect_yaml(ROOT / "prefect.yaml"))
    with TestClient(app) as client:
        for slug in ("acme-private", "hooks-in"):
            refused_and_nothing_stored(pool, client, slug, 409, "slug_taken")


async def no_emit(events):
    pass


def _holds_document(settings, tenant):
    Memory(tenant=tenant, settings=settings).remember("doc-1", "webhook-ingested issue of a private repository")


def _holds_context(settings, tenant):
    Memory(tenant=tenant, settings=settings).create_context(user_id="ana")


def _holds_audit(settings, tenant):
    from blocks.postgres import PgVectorStore

    append_audit(PgVectorStore.from_settings(settings).pool(), tenant=tenant, actor={"via": "cli"},
                 operation="github.create_issue", status="planned")


@pytest.mark.parametrize("holding", [_holds_document, _holds_context, _holds_audit])
def test_a_tenant_holding_data_without_an_organization_cannot_be_claimed(pool, settings, client, tenant, holding):
    holding(settings, tenant)
    error = refused_and_nothing_stored(pool, client, tenant, 409, "slug_taken")
    # the same answer as for an existing organization: a stranger cannot tell whose the data is
    assert error["message"] == "an organization or the operator already uses this slug (or one that looks like it)"


def test_slugs_are_unique_after_normalisation(pool, client, tenant):
    slug = f"{tenant}-farm"
    assert attempt(client, slug).status_code == 201
    for variant in (slug.upper(), f"  {slug} ", slug.replace("t", "ｔ"), slug.replace("m", "rn")):
        refused_and_nothing_stored(pool, client, variant, 409, "slug_taken")
    fold = attempt(client, "CamelCase-Org")
    assert fold.status_code == 201 and fold.json()["organization"]["tenant"] == "camelcase-org", fold.text


@pytest.mark.parametrize("slug, named", [
    ("аcme", "U+0430 CYRILLIC SMALL LETTER A"),          # Cyrillic а among Latin letters
    ("acme\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),     # a bidi override
    ("ac\u200bme", "U+200B ZERO WIDTH SPACE"),            # invisible
    ("\u2067acme", "U+2067 RIGHT-TO-LEFT ISOLATE"),
    ("pаypal-inc", "U+0430 CYRILLIC SMALL LETTER A"),
    ("αβγ-org", "U+03B1 GREEK SMALL LETTER ALPHA"),       # not mixed, but not ASCII either
])
def test_bidi_invisible_and_mixed_script_slugs_are_refused_naming_the_character(pool, client, slug, named):
    error = refused_and_nothing_stored(pool, client, slug, 422, "validation_error")
    assert named in error["message"] and error["item"] == "body.slug", error


def test_closed_registration_refuses_everyone(pool, settings, monkeypatch):
    closed = Settings(home=settings.home, embedder="fake", tenancy={"registration": "closed"})
    with TestClient(app_of(closed)) as client:
        error = refused_and_nothing_stored(pool, client, "newcomer", 403, "registration_closed")
        assert "closed" in error["message"]


def test_invite_mode_needs_a_valid_one_time_token_minted_by_the_operator(pool, settings, monkeypatch, tenant):
    monkeypatch.setenv("DEVMESH_TENANCY__REGISTRATION", "invite")
    minted = runner.invoke(cli_app, ["orgs", "invite", "--slug", tenant, "--expires", "1h"])
    assert minted.exit_code == 0, minted.output
    invite = json.loads(minted.stdout)
    assert invite["slug"] == tenant and invite["token"].startswith("dminvite_")
    with pool.connection() as conn:
        stored = conn.execute("SELECT token_hash, created_by FROM registration_invites").fetchall()
        audit = conn.execute("SELECT operation, status, target, actor FROM audit_log WHERE operation = 'orgs.invite'"
                             " ORDER BY seq DESC LIMIT 1").fetchone()
    assert len(stored) == 1 and invite["token"] not in json.dumps(stored[0], default=str)
    assert audit[:3] == ("orgs.invite", "minted", f"invite:{tenant}") and audit[3]["via"] == "cli"

    with TestClient(app_of(Settings())) as client:
        refused_and_nothing_stored(pool, client, tenant, 403, "invite_required")
        refused_and_nothing_stored(pool, client, tenant, 403, "invalid_invite", invite="dminvite_" + "x" * 43)
        # minted for another slug: refused, and the invite is still unused
        refused_and_nothing_stored(pool, client, f"{tenant}-other", 403, "invalid_invite", invite=invite["token"])
        ok = attempt(client, tenant, invite=invite["token"])
        assert ok.status_code == 201, ok.text
        # one time only
        refused_and_nothing_stored(pool, client, f"{tenant}-again", 403, "invalid_invite", invite=invite["token"])
    with pool.connection() as conn:
        assert conn.execute("SELECT used_by_tenant FROM registration_invites").fetchone()[0] == tenant
    listed = runner.invoke(cli_app, ["orgs", "list"])
    assert listed.exit_code == 0 and '"registration": "invite"' in listed.stdout
    assert invite["token"] not in listed.stdout


def test_an_expired_invite_is_refused(pool, settings, tenant):
    _, token = mint_invite(pool, slug=None, expires_in=timedelta(minutes=1), created_by={"via": "test"})
    with pool.connection() as conn:
        conn.execute("UPDATE registration_invites SET expires_at = now() - interval '1 second'")
    invite_only = Settings(home=settings.home, embedder="fake", tenancy={"registration": "invite"})
    with TestClient(app_of(invite_only)) as client:
        refused_and_nothing_stored(pool, client, tenant, 403, "invalid_invite", invite=token)


def test_one_invite_registers_one_organization_under_concurrency(pool, settings, tenant):
    _, token = mint_invite(pool, slug=None, expires_in=timedelta(hours=1), created_by={"via": "test"})
    invite_only = Settings(home=settings.home, embedder="fake", tenancy={"registration": "invite"})
    app = app_of(invite_only)
    statuses: list[int] = []
    with serve(app) as url:
        import httpx

        def register(n: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                statuses.append(attempt(http, f"{tenant}-{n}", invite=token).status_code)

        threads = [threading.Thread(target=register, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(statuses) == [201] + [403] * 5, statuses
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM organizations").fetchone()[0] == 1


def test_an_invite_for_a_slug_hands_over_a_provisioned_tenant_but_never_the_operators(pool, settings, client, tenant):
    """The operator may prepare a tenant (data, grants) and hand it over with an invite for exactly that slug."""
    _holds_document(settings, tenant)
    refused_and_nothing_stored(pool, client, tenant, 409, "slug_taken")
    _, token = mint_invite(pool, slug=tenant, expires_in=timedelta(hours=1), created_by={"via": "test"})
    assert attempt(client, tenant, invite=token).status_code == 201
    _, token = mint_invite(pool, slug="default", expires_in=timedelta(hours=1), created_by={"via": "test"})
    refused_and_nothing_stored(pool, client, "default", 409, "slug_reserved", invite=token)


def test_the_python_client_gets_the_same_refusals(pool, settings, tenant):
    with serve(app_of(settings)) as url:
        before = table_counts(pool)
        for slug in ("default", "аcme"):
            with pytest.raises(AppError) as caught:
                Mesh.register_organization(url, name="x", slug=slug, admin_email="m@evil.example",
                                           admin_name="M", password=PASSWORD, max_retries=0)
            assert "reserved" in str(caught.value) or "U+0430" in str(caught.value), caught.value
        assert table_counts(pool) == before
        registered, mesh = Mesh.register_organization(url, name="ok", slug=tenant.upper(), admin_email="a@b.example",
                                                      admin_name="A", password=PASSWORD, max_retries=0)
        mesh.close()
        assert registered.organization.tenant == tenant


def test_status_names_the_registration_mode(settings, tmp_path):
    assert status(Settings(home=tmp_path, tenancy={"registration": "invite"}))["registration"].startswith("by invite")
    off = runner.invoke(cli_app, ["status", "--json"], env={"DEVMESH_HOME": str(tmp_path),
                                                           "DEVMESH_TENANCY__REGISTRATION": "closed"})
    assert off.exit_code == 1 and json.loads(off.stdout)["registration"].startswith("closed"), off.output


def test_doctor_names_organizations_that_hold_a_tenant_nobody_may_register_now(pool, settings, client, tenant):
    """A database from before these rules, where a stranger registered 'default': the doctor warns about it."""
    from deployments.doctor import run_checks

    assert attempt(client, tenant).status_code == 201
    ok = next(c for c in run_checks(settings) if c.name == "tenancy")
    assert ok.status == "ok" and "registration open" in ok.detail, ok
    with pool.connection() as conn:
        conn.execute("INSERT INTO organizations (tenant_id, name, admin_email, admin_name, password_hash,"
                     " slug_skeleton) VALUES ('default', 'x', 'm@evil.example', 'M', 'scrypt$x', 'default')")
    warned = next(c for c in run_checks(settings) if c.name == "tenancy")
    assert warned.status == "warn" and warned.detail.endswith(": default") and "devmesh orgs list" in warned.fix


def test_registration_reads_only_indexes_to_find_a_tenants_data(pool):
    """Every table the holdings check reads has an index leading with tenant_id (a new tenant's registration must
    not scan a million embeddings); the tables it leaves out are named, each with why another table covers it."""
    from tasks.claims import _NOT_CHECKED, _holdings_query

    with pool.connection() as conn:
        tables = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.columns WHERE table_schema ="
                                             " current_schema() AND column_name = 'tenant_id'")}
        indexed = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_attribute a ON"
            " a.attrelid = c.oid AND a.attnum = x.indkey[0] WHERE a.attname = 'tenant_id' AND x.indpred IS NULL")}
        query = _holdings_query(conn).as_string(conn)
    checked = tables - _NOT_CHECKED
    assert checked - indexed <= {"model_switches"}, checked - indexed  # a handful of rows per tenant
    assert all(f'FROM "{t}"' in query for t in checked) and not any(f'FROM "{t}"' in query for t in _NOT_CHECKED)

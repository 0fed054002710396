"""`devmesh orgs|tenants|webhooks`: the operator's side of tenancy — registration invites, what each tenant may
operate with (credential and policy blocks), and which tenant each repository's webhook deliveries reach.

Every change is audited in the tenant it concerns (invites: in the operator's tenant, Settings.tenant), with the
operator's login as the actor. Exit codes: 0 done, 2 bad input or nothing to change.
"""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text

from blocks.errors import AppError

orgs_app = typer.Typer(help="Organizations and registration invites.", no_args_is_help=True)
tenants_app = typer.Typer(help="What each tenant may operate with: credential blocks and a policy.",
                          no_args_is_help=True)
webhooks_app = typer.Typer(help="Which tenant a repository's webhook deliveries reach, with which secret.",
                           no_args_is_help=True)
console = Console(stderr=True)
_DURATION = re.compile(r"^\s*(\d{1,6})\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _fail(message: str, code: int = 2) -> None:
    console.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _runtime():
    """The command's Runtime (tasks.runtime): a command is its process's entry point and passes it down."""
    from tasks.runtime import Runtime

    return Runtime()


def operator_actor() -> dict[str, str]:
    """Who changes tenancy from the command line: the operator, by login."""
    return {"via": "cli", "operator": os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"}


def duration(text: str) -> timedelta:
    """'30m', '12h', '7d', '2w' as a timedelta; InputError otherwise."""
    from blocks.errors import InputError

    match = _DURATION.match(text or "")
    if not match:
        raise InputError("expected a duration such as 30m, 12h, 7d or 2w", item=text)
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _print(value) -> None:
    print(json.dumps(value, indent=2, default=str))


@orgs_app.command("invite")
def orgs_invite(slug: Optional[str] = typer.Option(None, help="Only this slug may register with the invite."),
                expires: str = typer.Option("7d", help="Valid for: 30m, 12h, 7d, 2w ...")) -> None:
    """Mint a one-time registration invite; prints its token once (only its hash is stored)."""
    from tasks.audit import append_audit
    from tasks.claims import mint_invite

    runtime = _runtime()
    settings = runtime.settings
    try:
        pool = runtime.pool()
        info, token = mint_invite(pool, slug=slug, expires_in=duration(expires), created_by=operator_actor())
    except AppError as exc:
        _fail(str(exc))
    append_audit(pool, tenant=settings.tenant, actor=operator_actor(), operation="orgs.invite", status="minted",
                 target=f"invite:{info['slug'] or '*'}", result=info)
    if settings.tenancy.registration != "invite":
        console.print(f"note: registration is {settings.tenancy.registration!r}; invites are required only with "
                      "DEVMESH_TENANCY__REGISTRATION=invite (an invite for a slug also hands over a tenant that "
                      "holds data)", highlight=False, markup=False, soft_wrap=True)
    _print({**info, "token": token})


@orgs_app.command("list")
def orgs_list() -> None:
    """Organizations and invites (never a token, key or password)."""
    from tasks.claims import list_invites
    from tasks.tenancy import list_organizations

    runtime = _runtime()
    settings = runtime.settings
    pool = runtime.pool()
    _print({"registration": settings.tenancy.registration, "organizations": list_organizations(pool),
            "invites": list_invites(pool)})


_BLOCK_TYPES = {"policy_block": ("blocks.policy", "OperationPolicy"),
                "github_block": ("blocks.github", "GitHubConnection"),
                "kubernetes_block": ("blocks.kubernetes", "KubernetesConnection"),
                "aws_block": ("prefect_aws", "AwsCredentials")}


def _check_blocks(names: dict[str, str | None]) -> None:
    """Each named block exists with the right type (a typo would otherwise surface at the tenant's first run)."""
    import importlib

    from blocks.errors import InputError

    for column, name in names.items():
        if name is None:
            continue
        module, cls = _BLOCK_TYPES[column]
        try:
            getattr(importlib.import_module(module), cls).load(name)
        except ValueError as exc:
            raise InputError(f"no {cls} block named {name!r} ({exc}); create it first", item=name) from None


@tenants_app.command("grant")
def tenants_grant(
    tenant: str = typer.Argument(..., help="The tenant id (an organization's slug, or one of the operator's)."),
    policy: Optional[str] = typer.Option(None, help="OperationPolicy block (required for a new grant)."),
    github_block: Optional[str] = typer.Option(None, help="GitHubConnection block."),
    kubernetes_block: Optional[str] = typer.Option(None, help="KubernetesConnection block."),
    aws_block: Optional[str] = typer.Option(None, help="prefect-aws AwsCredentials block."),
    check: bool = typer.Option(True, "--check/--no-check", help="Load each block first (needs the Prefect API)."),
) -> None:
    """Let a tenant's operations use these credential blocks under this policy; audited in the tenant's trail."""
    from tasks.grants import set_grant

    runtime = _runtime()
    names = {"policy_block": policy, "github_block": github_block, "kubernetes_block": kubernetes_block,
             "aws_block": aws_block}
    try:
        if check:
            _check_blocks(names)
        grant = set_grant(runtime.pool(), tenant, actor=operator_actor(), **names)
    except AppError as exc:
        _fail(str(exc))
    _print(grant.as_dict())


@tenants_app.command("revoke")
def tenants_revoke(tenant: str = typer.Argument(...),
                   provider: Optional[list[str]] = typer.Option(
                       None, "--provider", help="Only this provider's credentials (github, kubernetes, aws); "
                       "repeat for several. Without: the whole grant.")) -> None:
    """Take a tenant's grant away (or one provider's credentials); its next operation is denied; audited."""
    from tasks.grants import revoke_grant

    runtime = _runtime()
    try:
        left = revoke_grant(runtime.pool(), tenant, actor=operator_actor(), providers=provider or None)
    except AppError as exc:
        _fail(str(exc))
    _print({"tenant": tenant, "grant": left.as_dict() if left else None})


@tenants_app.command("show")
def tenants_show(tenant: Optional[str] = typer.Argument(None, help="One tenant (default: every grant).")) -> None:
    """Grants: which blocks each tenant operates with (the operator's tenant: implicit, from the settings)."""
    from tasks.grants import list_grants, resolve_grant

    runtime = _runtime()
    settings = runtime.settings
    pool = runtime.pool()
    if tenant is not None:
        grant = resolve_grant(pool, tenant, settings)
        _print({"tenant": tenant, "grant": grant.as_dict() if grant else None,
                "note": None if grant else "no grant: this tenant's operations are denied"})
        return
    _print({"operator_tenant": settings.tenant, "grants": list_grants(pool)})


@webhooks_app.command("bind")
def webhooks_bind(
    repository: str = typer.Argument(..., help="'owner/repo' or a glob such as 'owner/*'."),
    tenant: str = typer.Option(..., help="The tenant its deliveries reach."),
    secret_block: Optional[str] = typer.Option(None, help="A Prefect Secret block holding the webhook secret (or a "
                                               "JSON list of secrets while rotating)."),
    webhook_block: Optional[str] = typer.Option(None, help="Or a GitHubWebhook block (its secrets)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Load the secret block first (needs the Prefect "
                               "API)."),
) -> None:
    """Let deliveries of a repository reach a tenant when signed with the secret of this block; audited. The
    gateway picks it up within Settings.tenancy.webhook_cache_s seconds, without a restart."""
    import anyio

    from tasks.webhook_bindings import bind_repository, load_secrets, secret_ref

    runtime = _runtime()
    settings = runtime.settings
    if (secret_block is None) == (webhook_block is None):
        _fail("give --secret-block or --webhook-block (one)")
    try:
        ref = secret_ref("secret", secret_block) if secret_block else secret_ref("devmesh-github-webhook",
                                                                                  webhook_block)
        if webhook_block == settings.gateway.webhook_block:
            raise AppError(f"{webhook_block!r} is the operator's own webhook block (its secret routes the operator's "
                           "tenants); give the tenant a secret of its own")
        if check:
            anyio.run(load_secrets, ref)
        binding = bind_repository(runtime.pool(), repository, tenant, ref, actor=operator_actor())
    except AppError as exc:
        _fail(str(exc))
    _print(binding.__dict__)


@webhooks_app.command("unbind")
def webhooks_unbind(repository: str = typer.Argument(..., help="The pattern as bound."),
                    tenant: Optional[str] = typer.Option(None, help="Only its binding to this tenant.")) -> None:
    """Remove a binding: the repository's deliveries stop reaching that tenant at once; audited."""
    from tasks.webhook_bindings import unbind_repository

    try:
        removed = unbind_repository(_runtime().pool(), repository, actor=operator_actor(), tenant=tenant)
    except AppError as exc:
        _fail(str(exc))
    _print([b.__dict__ for b in removed])


@webhooks_app.command("list")
def webhooks_list() -> None:
    """Every binding: repository pattern, tenant, secret block (never a secret)."""
    from tasks.webhook_bindings import list_bindings

    _print(list_bindings(_runtime().pool()))


def register(app: typer.Typer) -> None:
    app.add_typer(orgs_app, name="orgs")
    app.add_typer(tenants_app, name="tenants")
    app.add_typer(webhooks_app, name="webhooks")

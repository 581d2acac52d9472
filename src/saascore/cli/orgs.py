"""`saascore orgs`: create and list organisations (tenants)."""

from __future__ import annotations

from typing import Annotated

import typer

from saascore.cli._output import new_table, print_table
from saascore.cli._run import cli_actor, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.models import Organization

__all__ = ["app"]

app = typer.Typer(name="orgs", help="Organisations (tenants): create, list.", no_args_is_help=True)


@app.command()
@handle_errors
def create(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The organisation's name.", show_default=False)
    ],
    plan: Annotated[
        str | None,
        typer.Option(
            help="The plan's code. Default: SAASCORE_DEFAULT_PLAN ('free').", show_default=False
        ),
    ] = None,
    external_id: Annotated[
        str | None,
        typer.Option(
            "--external-id",
            help="The organisation's id on the platform that provisions it (unique).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create an organisation and print its id (only the id, so scripts can capture it)."""
    settings = load_settings()

    async def work(core: Saascore) -> Organization:
        return await core.orgs.create(
            name=name, plan=plan, external_id=external_id, actor=cli_actor()
        )

    organization = run_with_core(settings, work)
    typer.echo(str(organization.id))


@app.command("list")
@handle_errors
def list_orgs(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many first.")] = 0,
) -> None:
    """List the organisations, oldest first."""
    settings = load_settings()

    async def work(core: Saascore) -> list[Organization]:
        return list(await core.orgs.list(limit=limit, offset=offset))

    organizations = run_with_core(settings, work)
    if not organizations:
        typer.echo("no organisations; create one with 'saascore orgs create NAME'", err=True)
        return
    table = new_table(
        "id", "name", "slug", "plan", "external id", "status", "created (UTC)", ids=("slug", "plan")
    )
    for organization in organizations:
        table.add_row(
            str(organization.id),
            organization.name,
            organization.slug,
            organization.plan.code,
            organization.external_id or "-",
            organization.status.value,
            organization.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    print_table(table)

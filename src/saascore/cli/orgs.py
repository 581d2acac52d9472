"""`saascore orgs`: create and list organisations (tenants)."""

from __future__ import annotations

from typing import Annotated

import typer

from saascore.cli._output import Column, IdsOption, JsonOption, output_format, print_rows
from saascore.cli._run import cli_actor, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.kit.inputs import INT64_MAX
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
    country: Annotated[
        str | None,
        typer.Option(
            help="ISO 3166-1 alpha-2 code, e.g. SA: it takes that country's standard tax rate.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create an organisation and print its id (only the id, so scripts can capture it)."""
    settings = load_settings()

    async def work(core: Saascore) -> Organization:
        return await core.orgs.create(
            name=name, plan=plan, external_id=external_id, country=country, actor=cli_actor()
        )

    organization = run_with_core(settings, work)
    typer.echo(str(organization.id))


#: An organisation as `orgs list` prints it.
COLUMNS: list[Column[Organization]] = [
    Column("id", lambda o: o.id),
    Column("name", lambda o: o.name),
    Column("slug", lambda o: o.slug, is_id=True),
    Column("plan", lambda o: o.plan.code, is_id=True),
    Column("external_id", lambda o: o.external_id),
    Column("domain", lambda o: o.domain, in_table=False),
    Column("status", lambda o: o.status),
    Column("subscription_status", lambda o: o.subscription_status, in_table=False),
    Column("created_at", lambda o: o.created_at, header="created (UTC)"),
]


@app.command("list")
@handle_errors
def list_orgs(
    limit: Annotated[int, typer.Option(min=1, max=INT64_MAX, help="Show at most this many.")] = 100,
    offset: Annotated[int, typer.Option(min=0, max=INT64_MAX, help="Skip this many first.")] = 0,
    as_json: JsonOption = False,
    only_ids: IdsOption = False,
) -> None:
    """List the organisations, oldest first."""
    output = output_format(as_json, only_ids)
    settings = load_settings()

    async def work(core: Saascore) -> tuple[list[Organization], int | None]:
        found = list(await core.orgs.list(limit=limit, offset=offset))
        # Nothing at a later offset is not the same as nothing at all.
        total = await core.orgs.count() if not found and offset else None
        return found, total

    organizations, total = run_with_core(settings, work)
    print_rows(
        organizations,
        COLUMNS,
        output,
        ids=lambda o: str(o.id),
        empty=(
            f"no organisations at offset {offset:,} ({total:,} in all)"
            if total
            else "no organisations; create one with 'saascore orgs create NAME'"
        ),
    )

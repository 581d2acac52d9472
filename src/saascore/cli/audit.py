"""`saascore audit`: verify the hash chains of the audit log, list an organisation's entries."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from saascore.audit import ChainReport
from saascore.cli._output import Column, JsonOption, output_format, print_rows
from saascore.cli._run import EXIT_ERROR, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.models import AuditLog

__all__ = ["app"]

app = typer.Typer(name="audit", help="The audit log: verify, list.", no_args_is_help=True)

OrgOption = Annotated[
    str | None,
    typer.Option("--org", help="The organisation: its id or external id.", show_default=False),
]


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else (plural or word + 's')}"


@app.command()
@handle_errors
def verify(org: OrgOption = None) -> None:
    """Walk the audit log's hash chains (every organisation's, or one's) and print the first
    broken link of each broken chain. Exits 1 when any chain is broken."""

    async def work(core: Saascore) -> ChainReport:
        org_id = (await core.orgs.resolve(org)).id if org is not None else None
        return await core.audit.check(org_id)

    report = run_with_core(load_settings(), work)
    if report.intact:
        chains = _plural(report.chains, "chain")
        typer.echo(f"{chains} intact, {_plural(report.entries, 'entry', 'entries')} verified")
        return
    for found in report.breaks:
        typer.echo(
            f"organisation {found.organization_id}: entry {found.seq}: {found.reason}", err=True
        )
    typer.echo(f"{len(report.breaks):,} of {_plural(report.chains, 'chain')} broken", err=True)
    raise typer.Exit(EXIT_ERROR)


def _actor(entry: AuditLog) -> str:
    return entry.actor_type + (f" {entry.actor_id}" if entry.actor_id else "")


def _target(entry: AuditLog) -> str | None:
    if not entry.target_type:
        return None
    return f"{entry.target_type} {entry.target_id or ''}".strip()


def _second(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


#: An audit entry as `audit list` prints it.
COLUMNS: list[Column[AuditLog]] = [
    Column("id", lambda e: e.id, in_table=False),
    Column("seq", lambda e: e.seq, text=str),
    Column("created_at", lambda e: e.created_at, header="time (UTC)", text=_second),
    Column("action", lambda e: e.action),
    Column("actor", _actor, is_id=True, in_json=False),
    Column("actor_type", lambda e: e.actor_type, in_table=False),
    Column("actor_id", lambda e: e.actor_id, in_table=False),
    Column("user_id", lambda e: e.user_id, in_table=False),
    Column("target", _target, is_id=True, in_json=False),
    Column("target_type", lambda e: e.target_type, in_table=False),
    Column("target_id", lambda e: e.target_id, in_table=False),
    Column("ip_address", lambda e: e.ip_address, header="ip"),
]


@app.command("list")
@handle_errors
def list_entries(
    org: Annotated[str, typer.Option("--org", help="The organisation: its id or external id.")],
    action: Annotated[
        str | None, typer.Option(help="Only this action, e.g. auth.login_failed.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000, help="Show at most this many.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """An organisation's audit entries, newest first."""
    output = output_format(as_json)

    async def work(core: Saascore) -> list[AuditLog]:
        organization = await core.orgs.resolve(org)
        return list(await core.audit.list(organization.id, limit=limit, action=action))

    entries = run_with_core(load_settings(), work)
    print_rows(entries, COLUMNS, output, empty="no audit entries")

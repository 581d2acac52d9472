"""`saascore credits`: grant credits, refill the plans' credits, show a balance, verify the
ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from saascore.cli._output import (
    Column,
    Output,
    output_format,
    print_json,
    print_rows,
    rows_as_json,
)
from saascore.cli._run import EXIT_ERROR, EXIT_USAGE, cli_actor, fail, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.credits import CreditAccount, LedgerProblem, Refill
from saascore.credits.service import Granted
from saascore.kit.errors import InvalidInput
from saascore.kit.inputs import INT64_MAX, PRIORITY_MAX, PRIORITY_MIN
from saascore.kit.validation import checked_instant
from saascore.models import CreditGrant, CreditSource

__all__ = ["app"]

app = typer.Typer(
    name="credits", help="Credits: grant, refill, balance, verify.", no_args_is_help=True
)


#: `-1` is read as a value (and refused as an amount), not as an unknown option.
_NUMBERS = {"ignore_unknown_options": True}


@app.command(context_settings=_NUMBERS)
@handle_errors
def grant(
    org: Annotated[str, typer.Argument(help="The organisation: its id or external id.")],
    amount: Annotated[
        int, typer.Argument(min=1, max=INT64_MAX, help="How many credits.", show_default=False)
    ],
    source: Annotated[CreditSource, typer.Option(help="Where they come from.")] = (
        CreditSource.MANUAL
    ),
    priority: Annotated[
        int,
        typer.Option(min=PRIORITY_MIN, max=PRIORITY_MAX, help="Draw order: lower is drawn first."),
    ] = 0,
    expires_at: Annotated[
        datetime | None,
        typer.Option(help="When they lapse (UTC), e.g. 2027-01-01 or 2027-01-01T12:00:00."),
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="An idempotency key: granting twice with it grants once.")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Shown in the ledger.")] = None,
) -> None:
    """Grant credits to an organisation; prints the new balance (or "already applied" when
    --key granted before)."""
    expires = expires_at.replace(tzinfo=UTC) if expires_at and not expires_at.tzinfo else expires_at
    if expires is not None:
        try:  # out of range is a mistake on the command line, as for `keys create --expires`
            checked_instant(expires, field="--expires-at")
        except InvalidInput as exc:
            fail(exc.message, EXIT_USAGE)

    async def work(core: Saascore) -> Granted:
        organization = await core.orgs.resolve(org)
        return await core.credits.grant_once(
            organization.id,
            amount,
            source=source,
            priority=priority,
            expires_at=expires,
            idempotency_key=key,
            description=description,
            actor=cli_actor(),
        )

    granted = run_with_core(load_settings(), work)
    transaction = granted.transaction
    if granted.replayed:
        typer.echo(
            f"already applied: key {key!r} granted {transaction.amount}; nothing granted now"
        )
        return
    typer.echo(f"granted {transaction.amount}; balance {transaction.balance_after}")


@app.command()
@handle_errors
def refill(
    org: Annotated[
        str | None, typer.Option("--org", help="One organisation: its id or external id.")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every organisation that is not deleted.")
    ] = False,
) -> None:
    """Grant the month's plan credits: up to each plan's credits_per_period, once a month
    (running it twice grants once; a replay says "already applied")."""
    if (org is None) == (not all_):
        fail("name the organisations: --org ID or --all", EXIT_USAGE)

    async def work(core: Saascore) -> list[Refill]:
        if org is not None:
            organization = await core.orgs.resolve(org)
            return [await core.credits.refill_once(organization.id)]
        return [outcome async for outcome in core.credits.refill_all()]

    outcomes = run_with_core(load_settings(), work)
    granted = 0
    for outcome in outcomes:
        if outcome.granted:
            granted += 1
            assert outcome.transaction is not None
            typer.echo(
                f"{outcome.organization_id}: granted {outcome.granted}; "
                f"balance {outcome.transaction.balance_after}"
            )
        elif outcome.transaction is None:
            typer.echo(f"{outcome.organization_id}: its plan grants no credits")
        else:
            typer.echo(f"{outcome.organization_id}: already applied")
    if all_:
        typer.echo(f"{granted} of {len(outcomes)} organisations granted credits")


def _expires(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "never"


#: A grant as `credits balance` prints it, in draw order.
GRANT_COLUMNS: list[Column[CreditGrant]] = [
    Column("id", lambda g: g.id, header="grant", is_id=True),
    Column("source", lambda g: g.source),
    Column("amount", lambda g: g.amount, justify="right"),
    Column("remaining", lambda g: g.remaining, justify="right"),
    Column("priority", lambda g: g.priority, text=str, justify="right"),
    Column("expires_at", lambda g: g.expires_at, header="expires (UTC)", text=_expires),
    Column("created_at", lambda g: g.created_at, in_table=False),
]


@app.command()
@handle_errors
def balance(
    org: Annotated[str, typer.Argument(help="The organisation: its id or external id.")],
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print {"organization_id", "balance", "grants": [...]} as JSON.',
        ),
    ] = False,
    only_ids: Annotated[
        bool, typer.Option("--ids", help="Print only the grants' ids, one a line.")
    ] = False,
) -> None:
    """An organisation's balance and the grants it is made of, in draw order."""
    output = output_format(as_json, only_ids)

    async def work(core: Saascore) -> CreditAccount:
        organization = await core.orgs.resolve(org)
        return await core.credits.account(organization.id)

    account = run_with_core(load_settings(), work)
    grants = list(account.grants)
    if output is Output.JSON:
        print_json(
            {
                "organization_id": account.organization_id,
                "balance": account.balance,
                "grants": rows_as_json(grants, GRANT_COLUMNS),
            }
        )
        return
    if output is Output.TABLE:
        typer.echo(f"balance {account.balance}")
    print_rows(grants, GRANT_COLUMNS, output, ids=lambda g: str(g.id))


@app.command()
@handle_errors
def verify() -> None:
    """Check every organisation's ledger: the cached balance equals the ledger and the grants,
    and each grant's remaining equals granted minus drawn. Exits 1 on any difference."""

    async def work(core: Saascore) -> list[LedgerProblem]:
        return await core.credits.verify()

    problems = run_with_core(load_settings(), work)
    if not problems:
        typer.echo("credit ledger consistent")
        return
    for problem in problems:
        typer.echo(f"organisation {problem.organization_id}: {problem.message}", err=True)
    typer.echo(f"{len(problems)} difference{'s' if len(problems) != 1 else ''} found", err=True)
    raise typer.Exit(EXIT_ERROR)

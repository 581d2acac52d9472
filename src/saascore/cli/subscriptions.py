"""`saascore subscriptions`: an organisation's subscription: create, show, change-plan,
cancel, resume."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

import typer

from saascore.billing.schemas import SubscriptionOut
from saascore.cli._output import AtOption, Column, instant, print_json, print_rows
from saascore.cli._run import cli_actor, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.kit.money import Money
from saascore.models import Organization, Subscription
from saascore.models.catalog import BillingCycle

__all__ = ["app"]

app = typer.Typer(
    name="subscriptions",
    help="Subscriptions: create, show, change-plan, cancel, resume.",
    no_args_is_help=True,
)

Org = Annotated[str, typer.Argument(help="The organisation: its id or external id.")]
At = AtOption
Json = Annotated[
    bool,
    typer.Option("--json", help="Print the subscription as JSON (as GET /v1/subscription)."),
]


def _time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


COLUMNS: list[Column[Subscription]] = [
    Column("id", lambda s: s.id, header="subscription", is_id=True),
    Column("organization_id", lambda s: s.organization_id, in_table=False),
    Column("plan", lambda s: s.plan.code, is_id=True),
    Column("status", lambda s: s.status),
    Column("billing_cycle", lambda s: s.billing_cycle, header="cycle"),
    Column(
        "unit_amount",
        lambda s: Money(s.unit_amount, s.currency).decimal_text(),
        header="price",
        justify="right",
    ),
    Column("currency", lambda s: s.currency),
    Column("current_period_start", lambda s: s.current_period_start, header="from", text=_time),
    Column("current_period_end", lambda s: s.current_period_end, header="to", text=_time),
    Column("trial_end", lambda s: s.trial_end, header="trial ends", text=_time),
    Column("cancel_at_period_end", lambda s: s.cancel_at_period_end, header="cancels"),
    Column("ends_at", lambda s: s.ends_at, header="ends", text=_time),
    Column(
        "scheduled_plan",
        lambda s: (s.metadata_.get("scheduled_change") or {}).get("plan"),
        header="next plan",
        text=lambda value: value or "-",
    ),
]


def _run(
    org: str,
    as_json: bool,
    action: Callable[[Saascore, Organization], Awaitable[Subscription]],
) -> None:
    async def work(core: Saascore) -> Subscription:
        return await action(core, await core.orgs.resolve(org))

    subscription = run_with_core(load_settings(), work)
    if as_json:
        # One object, in the HTTP document's shape: the price in minor units with its currency.
        print_json(SubscriptionOut.of(subscription).model_dump(mode="json"))
        return
    print_rows([subscription], COLUMNS)


@app.command()
@handle_errors
def create(
    org: Org,
    plan: Annotated[str, typer.Option(help="The plan's code.")],
    cycle: Annotated[BillingCycle, typer.Option(help="The billing cycle.")] = BillingCycle.MONTHLY,
    trial_days: Annotated[
        int | None, typer.Option(min=0, help="Days of trial; the plan's by default.")
    ] = None,
    at: At = None,
    as_json: Json = False,
) -> None:
    """Subscribe an organisation to a plan, at the plan's price in its currency."""
    moment = instant(at)
    _run(
        org,
        as_json,
        lambda core, o: core.subscriptions.create(
            o.id, plan, cycle, trial_days=trial_days, at=moment, actor=cli_actor()
        ),
    )


@app.command()
@handle_errors
def show(org: Org, as_json: Json = False) -> None:
    """An organisation's subscription: the live one, else the last that ended."""
    _run(org, as_json, lambda core, o: core.subscriptions.get(o.id))


@app.command("change-plan")
@handle_errors
def change_plan(
    org: Org,
    plan: Annotated[str, typer.Option(help="The new plan's code.")],
    at: At = None,
    as_json: Json = False,
) -> None:
    """Upgrade at once (prorated on the upcoming invoice) or downgrade at the period's end."""
    moment = instant(at)
    _run(
        org,
        as_json,
        lambda core, o: core.subscriptions.change_plan(o.id, plan, at=moment, actor=cli_actor()),
    )


@app.command()
@handle_errors
def cancel(
    org: Org,
    now: Annotated[
        bool, typer.Option("--now", help="End it now, not at the period's end.")
    ] = False,
    at: At = None,
    as_json: Json = False,
) -> None:
    """Cancel at the period's end (or --now); the plan stays until what was paid ends."""
    moment = instant(at)
    _run(
        org,
        as_json,
        lambda core, o: core.subscriptions.cancel(
            o.id, at_period_end=not now, at=moment, actor=cli_actor()
        ),
    )


@app.command()
@handle_errors
def resume(org: Org, at: At = None, as_json: Json = False) -> None:
    """Withdraw a cancellation at the period's end, before that end."""
    moment = instant(at)
    _run(
        org, as_json, lambda core, o: core.subscriptions.resume(o.id, at=moment, actor=cli_actor())
    )

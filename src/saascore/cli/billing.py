"""`saascore billing`: the billing run, an organisation's billing overview, and reconciliation
with the payment provider."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from saascore.billing.run import ACTIONS, BillingSummary
from saascore.billing.schemas import BillingOverviewOut
from saascore.cli._output import AtOption, console, instant, new_table, print_json, print_table
from saascore.cli._run import EXIT_ERROR, handle_errors, run_with_core
from saascore.cli.invoices import print_upcoming
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.kit.money import Money

if TYPE_CHECKING:
    from saascore.providers.reconcile import Difference, Fix

__all__ = ["app"]

app = typer.Typer(name="billing", help="Billing: run, overview, reconcile.", no_args_is_help=True)

#: The summary's rows, where the action's name alone does not say what was counted.
ACTION_LABELS = {
    "renewed": "subscriptions renewed",
    "trial_will_end": "trial-end notices",
    "canceled": "subscriptions canceled",
    "expired": "subscriptions expired",
    "downgraded": "subscriptions downgraded",
    "returned_to_default": "organizations back on the default plan",
    "credits_expired": "credit grants expired",
    "past_due": "subscriptions past due",
    "suspended": "subscriptions suspended",
    "organization_suspended": "organizations suspended",
    "errors": "organizations failed",
}


@app.command()
@handle_errors
def run(
    at: AtOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be done; write nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Do what is due: end subscriptions, renew and invoice them, end trials, expire credits.

    Running it again at the same moment does nothing. Exits 1 if an organisation failed (the
    others are done).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    moment = instant(at)
    err = console(stderr=True)

    async def work(core: Saascore) -> BillingSummary:
        if not err.is_terminal or as_json:
            return await core.billing_run.run(moment, dry_run=dry_run)
        with Progress(
            TextColumn("billing"), BarColumn(), MofNCompleteColumn(), console=err, transient=True
        ) as progress:
            task = progress.add_task("billing", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return await core.billing_run.run(moment, dry_run=dry_run, progress=advance)

    summary = run_with_core(load_settings(), work)
    if as_json:
        print_json(summary.as_dict())
    else:
        title = "billing run (dry: nothing written)" if dry_run else "billing run"
        table = new_table("action", "count", title=f"{title} at {summary.at:%Y-%m-%d %H:%M}")
        table.add_row("organizations looked at", str(summary.organizations))
        for action in ACTIONS:
            label = ACTION_LABELS.get(action, action.replace("_", " "))
            table.add_row(label, str(summary.counts.get(action, 0)))
        print_table(table)
        for org_id, error in summary.failures:
            err.print(f"organisation {org_id}: {error}", markup=False, highlight=False)
    if summary.failures:
        raise typer.Exit(EXIT_ERROR)


@app.command()
@handle_errors
def overview(
    org: Annotated[str, typer.Argument(help="The organisation: its id or external id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print it as JSON (as GET /v1/billing/overview).")
    ] = False,
) -> None:
    """An organisation's billing at a glance: plan, subscription, usage this period against
    the plan's included amounts, credits, the upcoming invoice and the latest payments."""

    async def work(core: Saascore) -> BillingOverviewOut:
        organization = await core.orgs.resolve(org)
        return BillingOverviewOut.of(await core.billing.overview(organization.id))

    found = run_with_core(load_settings(), work)
    if as_json:
        print_json(found.model_dump(mode="json"))
        return
    sub = found.subscription
    typer.echo(f"organisation {found.organization_id}, plan {found.plan.code} ({found.plan.name})")
    if sub is None:
        typer.echo("no subscription")
    else:
        typer.echo(
            f"subscription {sub.status.value}, {sub.billing_cycle.value}, "
            f"{sub.current_period_start:%Y-%m-%d} to {sub.current_period_end:%Y-%m-%d}"
            + (", cancels at period end" if sub.cancel_at_period_end else "")
            + (f", trial ends {sub.trial_end:%Y-%m-%d}" if sub.trial_end else "")
            + (f", moves to {sub.scheduled_plan}" if sub.scheduled_plan else "")
        )
    table = new_table("meter", "used", "included", "over")
    for meter in found.usage:
        included = "unlimited" if meter.included is None else str(meter.included)
        if meter.included is not None and meter.included_per == "day":
            included += " a day"  # (`used` is the period's total, `over` each day's excess)
        table.add_row(meter.metric, str(meter.used), included, str(meter.over))
    if found.usage:
        print_table(table)
    typer.echo(f"credits {found.credit_balance}")
    if found.upcoming_invoice is not None:
        print_upcoming(found.upcoming_invoice)
    else:
        typer.echo("no upcoming invoice")
    for payment in found.recent_payments:
        amount = Money(payment.amount, payment.currency).decimal_text()
        typer.echo(
            f"payment {payment.created_at:%Y-%m-%d} {amount} {payment.currency} "
            f"{payment.status.value}"
        )


class ReconcileProvider(StrEnum):
    """The providers that keep subscriptions of their own."""

    STRIPE = "stripe"
    LEMONSQUEEZY = "lemonsqueezy"


@app.command()
@handle_errors
def reconcile(
    provider: Annotated[
        ReconcileProvider, typer.Option("--provider", help="The provider to compare with.")
    ],
    fix: Annotated[
        bool,
        typer.Option("--fix", help="Apply the provider's state, as its webhook would (audited)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Compare the provider's subscriptions with saascore's and print the differences.

    Status, plan, period end, cancellation at the period's end, and subscriptions missing on
    either side. With --fix, each subscription that differs is brought to the provider's
    state through the webhook intake, and the audit log names reconciliation as the actor.
    """
    from saascore.providers.registry import provider_of

    source = provider_of(provider.value)

    async def work(core: Saascore) -> tuple[list[Difference], list[Fix] | None]:
        if fix:
            return await core.reconciler.fix(source)
        return await core.reconciler.compare(source), None

    differences, fixes = run_with_core(load_settings(), work)
    if as_json:
        document: dict[str, object] = {
            "provider": provider.value,
            "differences": [d.as_dict() for d in differences],
        }
        if fixes is not None:
            document["fixes"] = [f.as_dict() for f in fixes]
        print_json(document)
        return
    if not differences:
        typer.echo(f"{provider.value}: no differences")
    else:
        table = new_table(
            "subscription",
            "organization",
            "difference",
            provider.value,
            "saascore",
            title=f"{provider.value}: {len(differences)} difference(s)",
        )
        for d in differences:
            table.add_row(
                d.subscription_id,
                str(d.organization_id) if d.organization_id else "-",
                d.kind.value,
                d.provider_value or "-",
                d.saascore_value or "-",
            )
        print_table(table)
    if fixes:
        done = new_table(
            "subscription", "organization", "applied as", "outcome", "reason", title="fixes"
        )
        for f in fixes:
            done.add_row(
                f.subscription_id,
                str(f.organization_id) if f.organization_id else "-",
                f.event.value,
                f.outcome,
                f.reason or "",
            )
        print_table(done)

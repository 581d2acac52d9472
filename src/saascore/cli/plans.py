"""`saascore plans`: load a plan catalog and list the plans."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saascore.cli._output import limit, new_table, print_table
from saascore.cli._run import handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.models import BillingCycle, PlanPrice, SubscriptionPlan
from saascore.plans import CatalogLoadResult, read_catalog

__all__ = ["app", "format_amount"]

app = typer.Typer(name="plans", help="The plan catalog: load, list.", no_args_is_help=True)

#: ISO 4217 currencies whose minor unit is not the cent (most have two decimals).
_DECIMALS = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND",
         "VUV", "XAF", "XOF", "XPF"),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}  # fmt: skip


def format_amount(amount: int, currency: str) -> str:
    """Integer minor units as a decimal amount: `(999, "USD")` -> `USD 9.99`."""
    decimals = _DECIMALS.get(currency, 2)
    if decimals == 0:
        return f"{currency} {amount:,}"
    units, minor = divmod(abs(amount), 10**decimals)
    sign = "-" if amount < 0 else ""
    return f"{currency} {sign}{units:,}.{minor:0{decimals}d}"


def _monthly_price(prices: list[PlanPrice]) -> str:
    monthly = [
        format_amount(price.amount, price.currency)
        for price in prices
        if price.billing_cycle is BillingCycle.MONTHLY and price.is_active
    ]
    return ", ".join(monthly) or "-"


def _storage(megabytes: int | None) -> str:
    if megabytes is not None and megabytes >= 1024 and megabytes % 1024 == 0:
        return limit(megabytes // 1024, " GiB")
    return limit(megabytes, " MiB")


def _rates(plan: SubscriptionPlan) -> str:
    def rate(value: int | None) -> str:
        return "unlimited" if value is None else f"{value:,}"

    return f"{rate(plan.requests_per_minute)} / {rate(plan.requests_per_hour)}"


def _codes(count_label: str, codes: list[str]) -> str:
    return f"{len(codes)} {count_label}" + (f" ({', '.join(codes)})" if codes else "")


@app.command()
@handle_errors
def load(
    file: Annotated[
        Path | None,
        typer.Argument(
            metavar="FILE",
            help="A catalog TOML file. Without it, saascore's default catalog.",
            show_default=False,
            exists=True,  # a missing file is a usage error (exit 2), as for `usage import`
            dir_okay=False,
            readable=True,
        ),
    ] = None,
) -> None:
    """Create or update the meters and plans of a catalog (idempotent: matched by code)."""
    settings = load_settings()
    catalog = read_catalog(file)  # a bad file fails here, before the database is touched

    async def work(core: Saascore) -> CatalogLoadResult:
        return await core.plans.load_catalog(catalog)

    result = run_with_core(settings, work)
    source = str(file) if file is not None else "the default catalog"
    typer.echo(f"Loaded {source}:")
    typer.echo(
        f"  plans:  {_codes('created', result.plans_created)}, "
        f"{_codes('updated', result.plans_updated)}"
    )
    typer.echo(
        f"  meters: {_codes('created', result.meters_created)}, "
        f"{_codes('updated', result.meters_updated)}"
    )
    if result.prices.created or result.prices.updated or result.prices.unchanged:
        prices = result.prices
        typer.echo(
            f"  model prices: {len(prices.created)} created, {len(prices.updated)} updated, "
            f"{len(prices.unchanged)} unchanged"
        )


@app.command("list")
@handle_errors
def list_plans(
    all_plans: Annotated[bool, typer.Option("--all", help="Include inactive plans.")] = False,
) -> None:
    """List the plans with their prices and limits, in catalog order."""
    settings = load_settings()

    async def work(core: Saascore) -> list[SubscriptionPlan]:
        return list(await core.plans.list(include_inactive=all_plans))

    plans = run_with_core(settings, work)
    if not plans:
        typer.echo("no plans; load the default catalog with 'saascore plans load'", err=True)
        return
    table = new_table(
        "code",
        "name",
        "monthly price",
        "token limit",
        "storage",
        "credits/period",
        "rpm / rph",
        "active",
        ids=("code",),
    )
    for column in table.columns[2:7]:
        column.justify = "right"
    for plan in plans:
        table.add_row(
            plan.code,
            plan.name,
            _monthly_price(plan.prices),
            limit(plan.monthly_token_limit),
            _storage(plan.max_storage_mb),
            f"{plan.credits_per_period:,}",
            _rates(plan),
            "yes" if plan.is_active else "no",
        )
    print_table(table)

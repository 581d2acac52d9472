"""`saascore plans`: load a plan catalog and list the plans."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from saascore.cli._output import Column, JsonOption, limit, output_format, print_rows
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
    plans_updated = [c for c in result.plans_updated if c not in result.plans_unchanged]
    meters_updated = [c for c in result.meters_updated if c not in result.meters_unchanged]
    prices = result.prices
    if not (
        result.plans_created
        or result.meters_created
        or plans_updated
        or meters_updated
        or prices.created
        or prices.updated
    ):
        typer.echo(f"{source}: already applied (nothing changed)")
    else:
        typer.echo(f"Loaded {source}:")
    typer.echo(
        f"  plans:  {_codes('created', result.plans_created)}, "
        f"{_codes('updated', plans_updated)}, "
        f"{_codes('already applied', result.plans_unchanged)}"
    )
    typer.echo(
        f"  meters: {_codes('created', result.meters_created)}, "
        f"{_codes('updated', meters_updated)}, "
        f"{_codes('already applied', result.meters_unchanged)}"
    )
    if prices.created or prices.updated or prices.unchanged:
        typer.echo(
            f"  model prices: {len(prices.created)} created, {len(prices.updated)} updated, "
            f"{len(prices.unchanged)} already applied"
        )


def _prices(plan: SubscriptionPlan) -> list[dict[str, Any]]:
    return [
        {
            "billing_cycle": price.billing_cycle.value,
            "currency": price.currency,
            "amount": price.amount,  # minor units (cents)
        }
        for price in plan.prices
        if price.is_active
    ]


def _limits(plan: SubscriptionPlan) -> dict[str, Any]:
    return {item.metric: {"limit": item.limit_value, "hard": item.is_hard} for item in plan.limits}


#: A plan as `plans list` prints it: the table shows the usual limits, JSON every field.
COLUMNS: list[Column[SubscriptionPlan]] = [
    Column("id", lambda p: p.id, in_table=False),
    Column("code", lambda p: p.code, is_id=True),
    Column("name", lambda p: p.name),
    Column("description", lambda p: p.description, in_table=False),
    Column("monthly_price", lambda p: _monthly_price(p.prices), justify="right", in_json=False),
    Column("prices", _prices, in_table=False),
    Column(
        "monthly_token_limit",
        lambda p: p.monthly_token_limit,
        header="token limit",
        text=limit,
        justify="right",
    ),
    Column(
        "max_storage_mb",
        lambda p: p.max_storage_mb,
        header="storage",
        text=_storage,
        justify="right",
    ),
    Column("max_api_calls_per_day", lambda p: p.max_api_calls_per_day, in_table=False),
    Column("max_users", lambda p: p.max_users, in_table=False),
    Column("max_items", lambda p: p.max_items, in_table=False),
    Column("max_secondary", lambda p: p.max_secondary, in_table=False),
    Column(
        "credits_per_period",
        lambda p: p.credits_per_period,
        header="credits/period",
        justify="right",
    ),
    Column("credits_rollover", lambda p: p.credits_rollover, in_table=False),
    Column("rates", _rates, header="rpm / rph", justify="right", in_json=False),
    Column("requests_per_minute", lambda p: p.requests_per_minute, in_table=False),
    Column("requests_per_hour", lambda p: p.requests_per_hour, in_table=False),
    Column("api_access", lambda p: p.api_access, in_table=False),
    Column("trial_days", lambda p: p.trial_days, in_table=False),
    Column("features", lambda p: p.features, in_table=False),
    Column("limits", _limits, in_table=False),
    Column("is_active", lambda p: p.is_active, header="active"),
    Column("is_public", lambda p: p.is_public, header="public"),
]


@app.command("list")
@handle_errors
def list_plans(
    all_plans: Annotated[
        bool,
        typer.Option("--all", help="Every plan: hidden (not public) and inactive ones too."),
    ] = False,
    as_json: JsonOption = False,
    only_codes: Annotated[
        bool, typer.Option("--ids", help="Print only the plans' codes, one a line (for xargs).")
    ] = False,
) -> None:
    """List the plans with their prices and limits, in catalog order: the public, active plans
    (those GET /v1/plans offers), or with --all every plan."""
    output = output_format(as_json, only_codes)
    settings = load_settings()

    async def work(core: Saascore) -> tuple[list[SubscriptionPlan], int]:
        plans = await core.plans.list(include_inactive=all_plans, include_hidden=all_plans)
        if plans or all_plans:
            return list(plans), 0
        return [], len(await core.plans.list(include_inactive=True))

    plans, others = run_with_core(settings, work)
    print_rows(
        plans,
        COLUMNS,
        output,
        ids=lambda p: p.code,
        empty=(
            f"no public, active plans ({others} others: see 'saascore plans list --all')"
            if others
            else "no plans; load the default catalog with 'saascore plans load'"
        ),
    )

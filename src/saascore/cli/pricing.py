"""`saascore pricing`: load a price list of models' token prices and list the prices."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

from saascore.cli._output import Column, output_format, print_rows
from saascore.cli._run import EXIT_USAGE, fail, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.models import ModelPricing
from saascore.plans import PricingLoadResult, read_catalog, read_default_pricing

__all__ = ["COLUMNS", "app", "format_per_million"]

app = typer.Typer(
    name="pricing", help="Model prices (per million tokens): load, list.", no_args_is_help=True
)


def format_per_million(micros: int) -> str:
    """Micro-units per million tokens as units per million: `2_500_000` -> `2.50`,
    `75_000` -> `0.075` (at least two decimals, no trailing zeros beyond them)."""
    units = Decimal(micros).scaleb(-6)
    text = f"{units:,.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def _day_or_time(moment: datetime) -> str:
    """A price's start: the day alone when it starts at midnight."""
    return moment.date().isoformat() if moment.time().isoformat() == "00:00:00" else str(moment)


def _as_of(day: date | None) -> str:
    return day.isoformat() if day is not None else "-"


#: A price version as `pricing list` prints it (JSON: prices in micro-units of the currency
#: per million tokens, as stored).
COLUMNS: list[Column[ModelPricing]] = [
    Column("provider", lambda r: r.provider),
    Column("model", lambda r: r.model, is_id=True),
    Column("input_micros_per_million", lambda r: r.input_micros_per_million, header="input",
           text=format_per_million, justify="right"),
    Column("cached_input_micros_per_million", lambda r: r.cached_input_micros_per_million,
           header="cached input", text=format_per_million, justify="right"),
    Column("output_micros_per_million", lambda r: r.output_micros_per_million,
           header="output", text=format_per_million, justify="right"),
    Column("currency", lambda r: r.currency),
    Column("effective_from", lambda r: r.effective_from, text=_day_or_time),
    Column("effective_to", lambda r: r.effective_to, in_table=False),
    Column("active", lambda r: r.is_active, in_table=False),
    Column("as_of", lambda r: r.as_of, header="as of", text=_as_of),
    Column("source", lambda r: r.source),
]  # fmt: skip


@app.command()
@handle_errors
def load(
    file: Annotated[
        Path | None,
        typer.Argument(
            metavar="FILE",
            help="A TOML file of [[model_pricing]] entries (a catalog's are read, its plans "
            "left alone). Without it, saascore's default price list.",
            show_default=False,
            exists=True,  # a missing file is a usage error (exit 2)
            dir_okay=False,
            readable=True,
        ),
    ] = None,
) -> None:
    """Load model prices: a version per provider, model and effective_from (idempotent: a
    version already stored is unchanged; a later effective_from adds a version)."""
    settings = load_settings()
    catalog = read_default_pricing() if file is None else read_catalog(file)  # fails first
    source = str(file) if file is not None else "the default price list"
    if not catalog.model_pricing:
        fail(f"no [[model_pricing]] entries in {source}; nothing loaded", EXIT_USAGE)

    async def work(core: Saascore) -> PricingLoadResult:
        return await core.pricing.load(catalog.model_pricing)

    result = run_with_core(settings, work)
    typer.echo(f"Loaded {source}: {describe(result)}")
    for outcome in ("created", "updated"):
        for name in getattr(result, outcome):
            typer.echo(f"  {outcome} {name}")


def describe(result: PricingLoadResult) -> str:
    """`3 created, 1 updated, 35 unchanged`, or `already applied (39 unchanged)`."""
    if not result.created and not result.updated:
        return f"already applied ({len(result.unchanged)} unchanged)"
    return (
        f"{len(result.created)} created, {len(result.updated)} updated, "
        f"{len(result.unchanged)} unchanged"
    )


@app.command("list")
@handle_errors
def list_prices(
    provider: Annotated[str | None, typer.Option(help="Only this provider's models.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array (prices in micro-units).")
    ] = False,
) -> None:
    """List every price version, newest first per model, with the day each price was taken
    (as of) and where (source). Prices are per million tokens."""
    settings = load_settings()

    async def work(core: Saascore) -> list[ModelPricing]:
        return list(await core.pricing.list(provider=provider, model=model))

    print_rows(
        run_with_core(settings, work),
        COLUMNS,
        output_format(as_json),
        empty="no model prices; load the default list with 'saascore pricing load'",
        title="Prices per million tokens",
    )

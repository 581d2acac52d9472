"""`saascore packs`: the credit-pack catalog (create, list, deactivate). The price is in major
units of its currency (`9.99` USD, `1500` JPY)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from saascore.cli._output import Column, IdsOption, JsonOption, output_format, print_rows
from saascore.cli._run import EXIT_USAGE, fail, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.kit.errors import InvalidInput
from saascore.kit.money import Money
from saascore.models import CreditPack

__all__ = ["app"]

app = typer.Typer(
    name="packs", help="Credit packs: create, list, deactivate.", no_args_is_help=True
)

COLUMNS: list[Column[CreditPack]] = [
    Column("code", lambda p: p.code, is_id=True),
    Column("name", lambda p: p.name),
    Column("credits", lambda p: p.credits, justify="right", text=str),
    # JSON as GET /v1/admin/credit-packs: the price in minor units with its currency.
    Column("price", lambda p: p.price, in_table=False),
    Column(
        "price_text",
        lambda p: Money(p.price, p.currency).decimal_text(),
        header="price",
        justify="right",
        in_json=False,
    ),
    Column("currency", lambda p: p.currency),
    Column("active", lambda p: p.active),
    Column("stripe_price_id", lambda p: p.stripe_price_id, in_table=False),
    Column("lemon_squeezy_variant_id", lambda p: p.lemon_squeezy_variant_id, in_table=False),
]


@app.command()
@handle_errors
def create(
    code: Annotated[str, typer.Argument(help="The pack's code, e.g. credits-1k.")],
    credits: Annotated[int, typer.Option(help="The credits it grants when paid.")],
    price: Annotated[str, typer.Option(help="Its price in major units, e.g. 9.99.")],
    currency: Annotated[str, typer.Option(help="ISO 4217 code of the price.")] = "USD",
    name: Annotated[str | None, typer.Option(help="A name (default: the code).")] = None,
    stripe_price: Annotated[
        str | None, typer.Option("--stripe-price", help="Its price id at Stripe (price_...).")
    ] = None,
    lemonsqueezy_variant: Annotated[
        str | None,
        typer.Option("--lemonsqueezy-variant", help="Its variant id at Lemon Squeezy."),
    ] = None,
) -> None:
    """Create a credit pack, with its ids at the payment providers it is sold through."""
    try:
        amount = Money.parse(price, currency)
    except InvalidInput as exc:
        fail(f"--price: {exc.message}", EXIT_USAGE)

    async def work(core: Saascore) -> CreditPack:
        return await core.credit_packs.create(
            code,
            credits=credits,
            price=amount,
            name=name,
            stripe_price_id=stripe_price,
            lemon_squeezy_variant_id=lemonsqueezy_variant,
        )

    pack = run_with_core(load_settings(), work)
    typer.echo(
        f"pack {pack.code}: {pack.credits} credits for "
        f"{Money(pack.price, pack.currency).decimal_text()} {pack.currency}"
    )


@app.command("list")
@handle_errors
def list_(
    active: Annotated[
        bool | None, typer.Option("--active/--inactive", help="Only those on sale (or not).")
    ] = None,
    as_json: JsonOption = False,
    only_ids: IdsOption = False,
) -> None:
    """Every credit pack by code."""
    output = output_format(as_json, only_ids)

    async def work(core: Saascore) -> Sequence[CreditPack]:
        return await core.credit_packs.list(active=active)

    packs = list(run_with_core(load_settings(), work))
    print_rows(packs, COLUMNS, output, ids=lambda p: p.code, empty="no credit packs")


@app.command()
@handle_errors
def deactivate(code: Annotated[str, typer.Argument(help="The pack's code.")]) -> None:
    """Take a pack off sale (twice changes nothing); invoices issued for it stay payable."""

    async def work(core: Saascore) -> CreditPack:
        return await core.credit_packs.deactivate(code)

    typer.echo(f"pack {run_with_core(load_settings(), work).code} inactive")

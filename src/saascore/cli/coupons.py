"""`saascore coupons`: the coupon catalog (create, list, deactivate) and redemptions.

A fixed amount is in major units of its currency (`5.00` USD, `500` JPY); a percentage may
have two decimals (`20`, `7.5`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from saascore.cli._output import Column, IdsOption, JsonOption, instant, output_format, print_rows
from saascore.cli._run import EXIT_USAGE, cli_actor, fail, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.kit.errors import InvalidInput
from saascore.kit.money import MAX_DISCOUNT_BASIS_POINTS, BasisPoints, Money
from saascore.models import Coupon, CouponDuration, CouponRedemption

__all__ = ["app"]

app = typer.Typer(
    name="coupons",
    help="Coupons: create, list, deactivate, redeem.",
    no_args_is_help=True,
)


def _off(coupon: Coupon) -> str:
    if coupon.percent_off is not None:
        return str(BasisPoints(coupon.percent_off))
    assert coupon.amount_off is not None
    assert coupon.currency is not None
    return f"{Money(coupon.amount_off, coupon.currency).decimal_text()} {coupon.currency}"


def _duration(coupon: Coupon) -> str:
    if coupon.duration is CouponDuration.REPEATING:
        return f"repeating {coupon.duration_periods}"
    return coupon.duration.value


COLUMNS: list[Column[Coupon]] = [
    Column("code", lambda c: c.code, is_id=True),
    Column("name", lambda c: c.name),
    Column("off", _off),
    Column("percent_off", lambda c: c.percent_off, in_table=False),
    Column("amount_off", lambda c: c.amount_off, in_table=False),
    Column("currency", lambda c: c.currency, in_table=False),
    Column("duration", _duration),
    Column("duration_periods", lambda c: c.duration_periods, in_table=False),
    Column("times_redeemed", lambda c: c.times_redeemed, header="redeemed", justify="right"),
    Column(
        "max_redemptions",
        lambda c: c.max_redemptions,
        header="limit",
        justify="right",
        text=lambda value: "-" if value is None else str(value),
    ),
    Column("expires_at", lambda c: c.expires_at, header="expires"),
    Column("active", lambda c: c.active),
]


def _percent(text: str) -> int:
    """`--percent` as basis points: a percentage above 0 and up to 100 with at most two
    decimals, read exactly (`20.5` is 2050 bp); a third decimal is refused, never rounded."""
    try:
        rate = BasisPoints.parse_percent(text.strip()).value
    except InvalidInput:
        rate = None
    if rate is None or not 0 < rate <= MAX_DISCOUNT_BASIS_POINTS:
        fail(
            f"--percent {text[:20]!r}: a percentage above 0 and up to 100, with at most two "
            "decimals (20, 7.5, 12.25)",
            EXIT_USAGE,
        )
    return rate


@app.command()
@handle_errors
def create(
    code: Annotated[str, typer.Argument(help="The code people type, e.g. SUMMER20.")],
    percent: Annotated[
        str | None, typer.Option(help="A percentage off, e.g. 20 or 7.5 (or --amount).")
    ] = None,
    amount: Annotated[
        str | None, typer.Option(help="A fixed amount off in major units, e.g. 5.00.")
    ] = None,
    currency: Annotated[str | None, typer.Option(help="The ISO 4217 code of --amount.")] = None,
    duration: Annotated[
        CouponDuration, typer.Option(help="once, repeating (--periods) or forever.")
    ] = CouponDuration.ONCE,
    periods: Annotated[
        int | None, typer.Option(help="How many invoices a repeating coupon discounts.")
    ] = None,
    max_redemptions: Annotated[
        int | None, typer.Option(help="How many times it may be redeemed in all.")
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(help="The last moment of redemption, with a time zone: 2027-01-01T00:00Z."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name (default: the code).")] = None,
) -> None:
    """Create a coupon: --percent, or --amount with --currency."""
    if (percent is None) == (amount is None):
        fail("give --percent or --amount (with --currency), not both", EXIT_USAGE)
    if amount is not None and currency is None:
        fail("--amount needs --currency", EXIT_USAGE)
    percent_off = _percent(percent) if percent is not None else None
    expires_at = instant(expires, "--expires")
    try:
        amount_off = (
            Money.parse(amount, currency) if amount is not None and currency is not None else None
        )
    except InvalidInput as exc:
        fail(f"--amount {amount!r}: {exc.message}", EXIT_USAGE)

    async def work(core: Saascore) -> Coupon:
        return await core.coupons.create(
            code,
            name=name,
            percent_off=percent_off,
            amount_off=amount_off,
            duration=duration,
            duration_periods=periods,
            max_redemptions=max_redemptions,
            expires_at=expires_at,
        )

    coupon = run_with_core(load_settings(), work)
    typer.echo(f"coupon {coupon.code}: {_off(coupon)} off, {_duration(coupon)}")


@app.command("list")
@handle_errors
def list_(
    active: Annotated[
        bool | None, typer.Option("--active/--inactive", help="Only active (inactive) ones.")
    ] = None,
    as_json: JsonOption = False,
    only_ids: IdsOption = False,
) -> None:
    """Every coupon by code, with how many times each was redeemed."""
    output = output_format(as_json, only_ids)

    async def work(core: Saascore) -> Sequence[Coupon]:
        return await core.coupons.list(active=active)

    coupons = list(run_with_core(load_settings(), work))
    print_rows(coupons, COLUMNS, output, ids=lambda c: c.code, empty="no coupons")


@app.command()
@handle_errors
def deactivate(code: Annotated[str, typer.Argument(help="The coupon's code.")]) -> None:
    """Stop new redemptions; those made keep applying for their duration."""

    async def work(core: Saascore) -> Coupon:
        return await core.coupons.deactivate(code)

    typer.echo(f"coupon {run_with_core(load_settings(), work).code} inactive")


@app.command()
@handle_errors
def redeem(
    org: Annotated[str, typer.Argument(help="The organisation: its id or external id.")],
    code: Annotated[str, typer.Argument(help="The coupon's code.")],
    invoice: Annotated[
        str | None,
        typer.Option(help="A draft invoice (its id); without it, the live subscription."),
    ] = None,
) -> None:
    """Redeem a coupon for an organisation, on a draft invoice or its subscription."""

    async def work(core: Saascore) -> CouponRedemption:
        organization = await core.orgs.resolve(org)
        invoice_id = None
        if invoice is not None:
            invoice_id = (await core.invoices.resolve(organization.id, invoice)).id
        return await core.coupons.redeem(
            organization.id, code, invoice_id=invoice_id, actor=cli_actor()
        )

    redemption = run_with_core(load_settings(), work)
    target = (
        f"invoice {redemption.invoice_id}"
        if redemption.invoice_id is not None
        else f"subscription {redemption.subscription_id}"
    )
    typer.echo(f"coupon {code.upper()} redeemed on {target} ({redemption.id})")

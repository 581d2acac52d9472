"""`saascore payments`: record a payment against an invoice, refund one, list them.

Amounts on the command line are in major units of the invoice's currency (`12.50` USD, `1500`
JPY); an invoice is named by its id or its number (`INV-2026-0001`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated

import typer

from saascore.billing.payments import method_name
from saascore.billing.schemas import PaymentOut
from saascore.cli._output import (
    Column,
    IdsOption,
    JsonOption,
    Output,
    output_format,
    print_json,
    print_rows,
)
from saascore.cli._run import EXIT_USAGE, cli_actor, fail, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.kit.errors import InvalidInput
from saascore.kit.money import Money
from saascore.models import Payment, PaymentStatus

__all__ = ["app"]

app = typer.Typer(
    name="payments",
    help="Payments: record, refund, list.",
    no_args_is_help=True,
)


def _money(minor: int, payment: Payment) -> str:
    return Money(minor, payment.currency).decimal_text()


def _columns() -> list[Column[Payment]]:
    return [
        Column("id", lambda p: p.id, is_id=True),
        Column("organization_id", lambda p: p.organization_id, header="organisation", is_id=True),
        Column("invoice_id", lambda p: p.invoice_id, header="invoice", is_id=True),
        Column("status", lambda p: p.status),
        Column("method", lambda p: method_name(p) or p.method.value),
        Column("currency", lambda p: p.currency),
        Column("amount", lambda p: _money(p.amount, p), justify="right"),
        Column("refunded", lambda p: _money(p.refunded_amount, p), justify="right"),
        Column("credits_awarded", lambda p: p.credits_awarded, header="credits", justify="right"),
        Column("created_at", lambda p: p.created_at, header="recorded"),
    ]


def _amount(text: str, currency: str) -> Money:
    """`--amount` in major units; its errors quote the amount as typed, not in minor units."""
    try:
        amount = Money.parse(text, currency)
    except InvalidInput as exc:
        fail(f"--amount {text[:60]!r}: {exc.message}", EXIT_USAGE)
    if amount.minor <= 0:
        fail(f"--amount {text[:60]!r}: an amount is more than 0", EXIT_USAGE)
    return amount


KeyOption = Annotated[
    str | None, typer.Option("--key", help="An idempotency key: a retry applies it once.")
]
OrgOption = Annotated[
    str | None,
    typer.Option("--org", help="Its organisation (id or external id), when numbers repeat."),
]


@app.command()
@handle_errors
def record(
    invoice: Annotated[str, typer.Argument(help="The invoice: its number or id.")],
    amount: Annotated[str, typer.Option(help="In major units of the invoice's currency.")],
    method: Annotated[
        str, typer.Option(help="card, bank_transfer, mobile_money, cash, ... or a provider's.")
    ],
    key: KeyOption = None,
    org: OrgOption = None,
    failed: Annotated[
        str | None, typer.Option("--failed", help="It failed, for this reason (nothing applied).")
    ] = None,
) -> None:
    """Record a payment of an invoice: partial payments are allowed, one above the amount due
    is refused; the invoice is paid when nothing is left due."""

    async def work(core: Saascore) -> Payment:
        org_id = (await core.orgs.resolve(org)).id if org is not None else None
        found = await core.invoices.resolve(org_id, invoice)
        return await core.payments.record(
            found.organization_id,
            found.id,
            _amount(amount, found.currency),
            method,
            key=key,
            status=PaymentStatus.FAILED if failed is not None else PaymentStatus.SUCCEEDED,
            failure_reason=failed,
            actor=cli_actor(),
        )

    payment = run_with_core(load_settings(), work)
    typer.echo(
        f"payment {payment.id} {payment.status.value}: {_money(payment.amount, payment)} "
        f"{payment.currency}"
        + (f", {payment.credits_awarded} credits awarded" if payment.credits_awarded else "")
    )


@app.command()
@handle_errors
def refund(
    payment: Annotated[str, typer.Argument(help="The payment's id.")],
    amount: Annotated[str, typer.Option(help="In major units, up to what is left of it.")],
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
    key: KeyOption = None,
) -> None:
    """Refund part or all of a payment; its invoice's amount paid goes down by as much."""
    try:
        payment_id = uuid.UUID(payment)
    except ValueError:
        fail(f"{payment[:60]!r} is not a payment id", EXIT_USAGE)

    async def work(core: Saascore) -> Payment:
        found = await core.payments.get(None, payment_id)
        return await core.payments.refund(
            found.organization_id,
            found.id,
            _amount(amount, found.currency),
            key=key,
            reason=reason,
            actor=cli_actor(),
        )

    done = run_with_core(load_settings(), work)
    typer.echo(
        f"payment {done.id} {done.status.value}: {_money(done.refunded_amount, done)} of "
        f"{_money(done.amount, done)} {done.currency} refunded"
    )


@app.command("list")
@handle_errors
def list_(
    org: Annotated[
        str | None, typer.Option("--org", help="One organisation: its id or external id.")
    ] = None,
    status: Annotated[PaymentStatus | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    as_json: JsonOption = False,
    only_ids: IdsOption = False,
) -> None:
    """Payments, newest first."""
    output = output_format(as_json, only_ids)

    async def work(core: Saascore) -> Sequence[Payment]:
        org_id = (await core.orgs.resolve(org)).id if org is not None else None
        return await core.payments.list(org_id, status=status, limit=limit)

    payments = list(run_with_core(load_settings(), work))
    if output is Output.JSON:
        # As GET /v1/payments answers (minor units beside the currency), plus the organisation:
        # an operator's list spans every tenant.
        print_json(
            [
                {
                    "organization_id": str(p.organization_id),
                    **PaymentOut.of(p).model_dump(mode="json"),
                }
                for p in payments
            ]
        )
        return
    print_rows(payments, _columns(), output, ids=lambda p: str(p.id), empty="no payments")

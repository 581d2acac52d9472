"""`saascore invoices`: list and show invoices, create a one-off draft, finalize and void,
preview the upcoming one, set an organisation's tax rate.

Amounts on the command line are in major units of the currency (`29.99` USD, `1500` JPY);
an invoice is named by its id or its number (`INV-2026-0001`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from saascore.billing.invoices import OWED_STATUSES, LineItem, amount_owed, is_overdue
from saascore.billing.render import checked_locale
from saascore.billing.schemas import InvoiceOut, UpcomingInvoiceOut, UpcomingLineOut
from saascore.cli._output import (
    Column,
    IdsOption,
    JsonOption,
    Output,
    output_format,
    print_json,
    print_rows,
)
from saascore.cli._run import EXIT_ERROR, EXIT_USAGE, cli_actor, fail, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.kit.errors import InvalidInput
from saascore.kit.money import MAX_BASIS_POINTS, BasisPoints, Money
from saascore.kit.time import utcnow
from saascore.models import Invoice, InvoiceLine, InvoiceStatus

__all__ = ["app"]

app = typer.Typer(
    name="invoices",
    help="Invoices: list, show, create, finalize, void, delete a draft, upcoming, tax-rate.",
    no_args_is_help=True,
)

_AMOUNT = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _money(minor: int, invoice: Invoice) -> str:
    return Money(minor, invoice.currency).decimal_text()


def _columns() -> list[Column[Invoice]]:
    today = utcnow().date()
    return [
        # A draft has no number yet: its id is the only way to name it.
        Column("id", lambda i: i.id, is_id=True),
        Column("number", lambda i: i.number, is_id=True),
        Column("organization_id", lambda i: i.organization_id, header="organisation", is_id=True),
        Column("status", lambda i: i.status),
        Column("overdue", lambda i: is_overdue(i, today)),
        Column("currency", lambda i: i.currency),
        Column("total", lambda i: Money(i.total, i.currency).decimal_text(), justify="right"),
        Column(
            "amount_due",
            lambda i: Money(i.amount_due, i.currency).decimal_text(),
            in_table=False,
        ),
        # What is owed: nothing on a draft, a paid, void or refunded invoice.
        Column(
            "amount_owed",
            lambda i: Money(amount_owed(i), i.currency).decimal_text(),
            header="due",
            justify="right",
        ),
        Column("due_date", lambda i: i.due_date, header="due date"),
    ]


def _line_columns(invoice: Invoice) -> list[Column[InvoiceLine]]:
    return [
        Column("description", lambda line: line.description),
        Column("quantity", lambda line: line.quantity, justify="right"),
        Column("unit_amount", lambda line: _money(line.unit_amount, invoice), justify="right"),
        Column("amount", lambda line: _money(line.amount, invoice), justify="right"),
        Column(
            "discount_amount",
            lambda line: _money(line.discount_amount, invoice),
            header="discount",
            justify="right",
        ),
        Column(
            "tax_amount",
            lambda line: _money(line.tax_amount, invoice),
            header="tax",
            justify="right",
        ),
        Column(
            "total",
            lambda line: _money(line.amount - line.discount_amount + line.tax_amount, invoice),
            justify="right",
        ),
    ]


def invoice_document(invoice: Invoice) -> dict[str, object]:
    """The invoice as `GET /v1/invoices/{id}` answers it (amounts in minor units, with the
    currency), plus its organisation: an operator's lists span every tenant."""
    document: dict[str, object] = {"organization_id": str(invoice.organization_id)}
    document.update(InvoiceOut.of(invoice, utcnow().date()).model_dump(mode="json"))
    return document


def _parse_line(text: str) -> tuple[str, str]:
    """`"description:amount"` (the last colon splits) as (description, amount text)."""
    description, colon, amount = text.rpartition(":")
    if not colon or not description.strip() or not _AMOUNT.fullmatch(amount.strip()):
        fail(f"--line {text!r}: write it as DESCRIPTION:AMOUNT, e.g. 'Setup fee:29.99'", EXIT_USAGE)
    return description.strip(), amount.strip()


@app.command("list")
@handle_errors
def list_(
    org: Annotated[
        str | None, typer.Option("--org", help="One organisation: its id or external id.")
    ] = None,
    status: Annotated[
        InvoiceStatus | None,
        typer.Option(help="Only this status; overdue: open and past due."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    as_json: JsonOption = False,
    only_ids: IdsOption = False,
) -> None:
    """Invoices, newest first."""
    output = output_format(as_json, only_ids)

    async def work(core: Saascore) -> Sequence[Invoice]:
        org_id = (await core.orgs.resolve(org)).id if org is not None else None
        overdue = True if status is InvoiceStatus.OVERDUE else None
        return await core.invoices.list(
            org_id, status=None if overdue else status, overdue=overdue, limit=limit
        )

    invoices = list(run_with_core(load_settings(), work))
    if output is Output.JSON:
        print_json([invoice_document(invoice) for invoice in invoices])
        return
    print_rows(invoices, _columns(), output, ids=lambda i: str(i.id), empty="no invoices")


async def _find(core: Saascore, reference: str, org: str | None) -> Invoice:
    org_id = (await core.orgs.resolve(org)).id if org is not None else None
    return await core.invoices.resolve(org_id, reference)


def _show(invoice: Invoice, as_json: bool) -> None:
    if as_json:
        print_json(invoice_document(invoice))
        return
    typer.echo(
        f"{invoice.number or 'draft'} ({invoice.id}) {invoice.status.value}, "
        f"{invoice.currency}, organisation {invoice.organization_id}"
    )
    print_rows(invoice.lines, _line_columns(invoice), empty="no lines")
    # Every total, so that they add up on the page: subtotal - discount + tax = total, and
    # total - paid = due.
    typer.echo(
        f"subtotal {_money(invoice.subtotal, invoice)}  "
        f"discount {_money(invoice.discount_amount, invoice)}  "
        f"tax {_money(invoice.tax_amount, invoice)} "
        f"({BasisPoints(invoice.tax_rate_bps)}, {invoice.tax_rate_bps} bp)  "
        f"total {_money(invoice.total, invoice)}  paid {_money(invoice.amount_paid, invoice)}"
        + (
            f"  due {_money(amount_owed(invoice), invoice)}"
            + (f" by {invoice.due_date}" if invoice.due_date else "")
            if invoice.status in OWED_STATUSES
            else ""
        )
    )


ReferenceArgument = Annotated[str, typer.Argument(help="The invoice: its number or id.")]
OrgOption = Annotated[
    str | None,
    typer.Option("--org", help="Its organisation (id or external id), when numbers repeat."),
]


@app.command()
@handle_errors
def show(
    reference: ReferenceArgument,
    org: OrgOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write the printable page to this file.", dir_okay=False),
    ] = None,
    pdf: Annotated[
        Path | None,
        typer.Option("--pdf", help="Also write the invoice as a PDF to this file.", dir_okay=False),
    ] = None,
    locale: Annotated[
        str | None,
        typer.Option(help="The locale of --html and --pdf (default: the invoice's, e.g. ar-YE)."),
    ] = None,
) -> None:
    """An invoice with its lines and totals; --html and --pdf write its renderings."""
    if locale is not None:
        checked_locale(locale)  # refused with or without a rendering to write

    async def work(core: Saascore) -> tuple[Invoice, str | None, bytes | None]:
        invoice = await _find(core, reference, org)
        page = await core.invoice_renderer.html(invoice, locale=locale) if html else None
        document = await core.invoice_renderer.pdf(invoice, locale=locale) if pdf else None
        return invoice, page, document

    invoice, page, document = run_with_core(load_settings(), work)
    try:
        if html is not None and page is not None:
            html.write_text(page, encoding="utf-8")
        if pdf is not None and document is not None:
            pdf.write_bytes(document)
    except OSError as exc:
        fail(f"cannot write the rendering: {exc.strerror or exc} ({exc.filename})", EXIT_ERROR)
    _show(invoice, as_json)


@app.command()
@handle_errors
def create(
    org: Annotated[str, typer.Argument(help="The organisation: its id or external id.")],
    line: Annotated[
        list[str],
        typer.Option(
            "--line", help="DESCRIPTION:AMOUNT in major units (negative: a credit); repeat it."
        ),
    ],
    currency: Annotated[
        str | None, typer.Option(help="ISO 4217 code (default: the organisation's).")
    ] = None,
    notes: Annotated[str | None, typer.Option(help="Notes shown on the invoice.")] = None,
) -> None:
    """Create a one-off draft invoice (no number until it is finalized)."""
    parsed = [_parse_line(text) for text in line]
    if currency is not None:
        try:
            Money(0, currency)  # an unknown code is --currency's fault, not the lines'
        except InvalidInput as exc:
            fail(f"--currency: {exc.message}", EXIT_USAGE)

    async def work(core: Saascore) -> Invoice:
        organization = await core.orgs.resolve(org)
        code = currency or organization.currency
        try:
            items = [LineItem(text, Money.parse(amount, code)) for text, amount in parsed]
        except InvalidInput as exc:
            fail(f"--line: {exc.message}", EXIT_USAGE)
        return await core.invoices.create_draft(
            organization.id, code, items, notes=notes, actor=cli_actor()
        )

    _show(run_with_core(load_settings(), work), as_json=False)


@app.command()
@handle_errors
def finalize(reference: ReferenceArgument, org: OrgOption = None) -> None:
    """Finalize a draft: it takes its number and due date and is open for payment."""

    async def work(core: Saascore) -> Invoice:
        found = await _find(core, reference, org)
        return await core.invoices.finalize(found.organization_id, found.id, actor=cli_actor())

    invoice = run_with_core(load_settings(), work)
    typer.echo(
        f"{invoice.number} open: total {_money(invoice.total, invoice)} {invoice.currency}, "
        f"due {invoice.due_date}"
    )


@app.command()
@handle_errors
def void(reference: ReferenceArgument, org: OrgOption = None) -> None:
    """Void an open invoice: nothing is owed; it keeps its number."""

    async def work(core: Saascore) -> Invoice:
        found = await _find(core, reference, org)
        return await core.invoices.void(found.organization_id, found.id, actor=cli_actor())

    invoice = run_with_core(load_settings(), work)
    typer.echo(f"{invoice.number} void")


@app.command()
@handle_errors
def delete(
    reference: Annotated[str, typer.Argument(help="The draft: its id (a draft has no number).")],
    org: OrgOption = None,
) -> None:
    """Delete a draft: it has no number, so no gap is left. An issued invoice is voided,
    never deleted; a draft carrying a subscription's proration or a coupon stays."""

    async def work(core: Saascore) -> Invoice:
        found = await _find(core, reference, org)
        await core.invoices.delete_draft(found.organization_id, found.id, actor=cli_actor())
        return found

    invoice = run_with_core(load_settings(), work)
    typer.echo(f"draft {invoice.id} deleted")


@app.command()
@handle_errors
def upcoming(
    org: Annotated[str, typer.Argument(help="The organisation: its id or external id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print it as JSON (as GET /v1/invoices/upcoming).")
    ] = False,
) -> None:
    """Preview the invoice the billing run issues next for the organisation's subscription.

    Nothing is written. Exits 1 when there is no live subscription or no upcoming invoice.
    """

    async def work(core: Saascore) -> UpcomingInvoiceOut:
        organization = await core.orgs.resolve(org)
        return UpcomingInvoiceOut.of(await core.billing.upcoming(organization.id))

    preview = run_with_core(load_settings(), work)
    if as_json:
        print_json(preview.model_dump(mode="json"))
        return
    print_upcoming(preview)


def print_upcoming(preview: UpcomingInvoiceOut) -> None:
    """The preview as lines and totals, amounts in major units."""

    def money(minor: int) -> str:
        return Money(minor, preview.currency).decimal_text()

    start, end = preview.period_start, preview.period_end
    typer.echo(
        f"upcoming invoice, {preview.currency}"
        + (f", {start:%Y-%m-%d} to {end:%Y-%m-%d}" if start and end else "")
        + (f", coupon {preview.coupon}" if preview.coupon else "")
    )
    columns: list[Column[UpcomingLineOut]] = [
        Column("description", lambda line: line.description),
        Column("kind", lambda line: line.kind),
        Column("quantity", lambda line: line.quantity, justify="right"),
        Column("amount", lambda line: money(line.amount), justify="right"),
        Column("discount", lambda line: money(line.discount_amount), justify="right"),
        Column("tax", lambda line: money(line.tax_amount), justify="right"),
    ]
    print_rows(preview.lines, columns, empty="no lines")
    typer.echo(
        f"subtotal {money(preview.subtotal)}  discount {money(preview.discount_amount)}  "
        f"tax {money(preview.tax_amount)} ({preview.tax_rate_bps} bp)  "
        f"total {money(preview.total)}"
    )


@app.command("tax-rate")
@handle_errors
def tax_rate(
    org: Annotated[str, typer.Argument(help="The organisation: its id or external id.")],
    bps: Annotated[
        int,
        typer.Argument(
            metavar="BPS", min=0, max=MAX_BASIS_POINTS, help="Basis points: 1500 is 15 %, 0 none."
        ),
    ],
) -> None:
    """Set the organisation's tax rate: its drafts take it; finalised invoices keep theirs."""

    async def work(core: Saascore) -> int:
        organization = await core.orgs.resolve(org)
        await core.invoices.set_tax_rate(organization.id, bps, actor=cli_actor())
        return bps

    rate = run_with_core(load_settings(), work)
    typer.echo(f"tax rate {BasisPoints(rate)} ({rate} bp)")

"""Invoices: drafts with lines, tax per line, finalisation with a gapless number, void and
uncollectible (docs/billing.md, "Invoices").

- A **draft** has no number. Its lines (one-off items, plan fees, proration credits, which are
  negative) may be added and removed; every change recomputes its totals.
- **Totals** are computed by `compute_totals`, a pure function: each line is rounded once
  (its discount, a coupon's share as `billing.discounts` says, then its tax on what is left,
  half up, with `apply_rate`), and the invoice's
  subtotal, discount, tax and total are sums of the rounded lines, never rounded again.
  `total = subtotal - discount + tax` and `amount_due = total - amount_paid` always hold,
  and the database checks both.
- **Finalising** (`draft -> open`) recomputes the draft at its organisation's tax rate, freezes
  the totals, sets the issue and due dates and takes the next number of its series last, in
  the same transaction. An empty draft, or one whose credits exceed its charges (a negative
  total), is refused: a finalised invoice never owes a negative amount. One that owes
  nothing (a 100 % coupon, lines of 0) is `paid` at once (`invoice.paid` after
  `invoice.finalized`): left open, it could never be paid and dunning would chase it.
- Every other change of status follows `INVOICE_TRANSITIONS`; anything else is refused with
  `InvalidTransition` (409, `invalid_transition`).
- **A payment provider's invoice** (`metadata["tax_source"] == "provider"`, `PROVIDER_TAX`)
  records what the provider charged, its own taxes included: saascore adds no tax and no
  coupon of its own to it, so its total is exactly the provider's amount.
- **Overdue** is computed, never stored: an open invoice with something due whose due date
  has passed (`is_overdue`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

import sqlalchemy as sa
from babel import Locale, UnknownLocaleError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from saascore.audit.service import AuditService, audited_bus
from saascore.billing.discounts import (
    Discount,
    attach_subscription_coupon,
    discount_of,
    has_coupon,
    spread_amount_off,
    use_coupon_period,
)
from saascore.billing.errors import (
    DraftNotDeletable,
    EmptyInvoice,
    InvalidInvoiceLine,
    InvalidTransition,
    InvoiceHasPayments,
    InvoiceNotDraft,
    InvoiceNotFound,
    NegativeInvoiceTotal,
)
from saascore.billing.numbering import (
    allocate_in_series,
    allocate_invoice_number,
    format_invoice_number,
    series_key,
)
from saascore.billing.periods import Period
from saascore.config import Settings
from saascore.events.bus import EventBus
from saascore.events.catalog import (
    InvoiceDraftDeleted,
    InvoiceFinalized,
    InvoiceMarkedUncollectible,
    InvoicePaid,
    InvoiceVoided,
    OrganizationTaxRateChanged,
)
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.ids import new_id
from saascore.kit.money import BasisPoints, Money, apply_rate
from saascore.kit.time import utcnow
from saascore.kit.validation import checked_instant, checked_text, control_character
from saascore.models import (
    CouponRedemption,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Organization,
    Subscription,
)
from saascore.tenancy.errors import OrganizationNotFound
from saascore.tenancy.service import locked_organization

#: Set in a session's info within `InvoiceService.numbers_at_end`: the invoices finalised
#: there, waiting for their numbers (with the moment and actor of their finalisation).
_NUMBERS_AT_END: Final = "saascore.billing.numbers_at_end"
#: One of them: its id and organisation's, the invoice, the moment and the actor.
_Numbering = tuple[uuid.UUID, uuid.UUID, Invoice, datetime, Actor]

__all__ = [
    "INVOICE_TRANSITIONS",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_LINES",
    "MAX_NOTES_LENGTH",
    "MAX_NOTE_LOCALES",
    "MAX_QUANTITY",
    "OWED_STATUSES",
    "PROVIDER_TAX",
    "TAX_SOURCE",
    "InvoiceService",
    "InvoiceTotals",
    "LineItem",
    "LineKind",
    "LineTotals",
    "amount_owed",
    "check_invoice_transition",
    "compute_totals",
    "draft_in",
    "emit_invoice_paid",
    "is_overdue",
    "issued_fields",
    "line_totals",
    "mark_paid",
    "overdue_clause",
    "preview_in",
    "recompute_totals",
]

#: The most lines one invoice holds.
MAX_LINES: Final = 200
#: The key in an invoice's metadata that says whose its taxes are.
TAX_SOURCE: Final = "tax_source"
#: `TAX_SOURCE` of an invoice for a provider's payment: the provider's amount, taxed by it.
PROVIDER_TAX: Final = "provider"
#: The longest description of a line, in characters.
MAX_DESCRIPTION_LENGTH: Final = 500
#: The longest notes, in characters (per locale).
MAX_NOTES_LENGTH: Final = 5000
#: The most locales of localized notes.
MAX_NOTE_LOCALES: Final = 20
#: The largest quantity of one line.
MAX_QUANTITY: Final = 1_000_000_000

S = InvoiceStatus


class LineKind(StrEnum):
    """What a line bills, kept in its `metadata["kind"]`: the billing run, payments (a paid
    credit pack grants its credits) and the renderings read it."""

    #: The plan's fee for a period.
    PLAN = "plan"
    #: A meter's usage above the plan's included amount, at the plan's price per unit.
    USAGE = "usage"
    #: A plan change's credit for unused time, or its charge for the new plan's time.
    PRORATION = "proration"
    #: A credit pack: `metadata["credit_pack"]` is its code, `metadata["credits"]` the credits
    #: a full payment of the invoice grants, once.
    CREDIT_PACK = "credit_pack"
    #: Anything else an operator bills.
    ONE_OFF = "one_off"


#: status -> {status it may go to: what takes it there}. Everything else is refused.
INVOICE_TRANSITIONS: Final[Mapping[InvoiceStatus, Mapping[InvoiceStatus, str]]] = MappingProxyType(
    {
        S.DRAFT: MappingProxyType({S.OPEN: "finalize"}),
        S.OPEN: MappingProxyType(
            {S.PAID: "paid in full", S.VOID: "void", S.UNCOLLECTIBLE: "mark uncollectible"}
        ),
        # Seed 003 stored "overdue"; saascore computes it, but such rows behave as open.
        S.OVERDUE: MappingProxyType(
            {S.PAID: "paid in full", S.VOID: "void", S.UNCOLLECTIBLE: "mark uncollectible"}
        ),
        # Written off, an invoice may still be paid after all, or voided.
        S.UNCOLLECTIBLE: MappingProxyType({S.PAID: "paid in full", S.VOID: "void"}),
        # A payment refunded in full leaves nothing paid (`PaymentService.refund`).
        S.PAID: MappingProxyType({S.REFUNDED: "refunded in full"}),
        S.VOID: MappingProxyType({}),
        S.REFUNDED: MappingProxyType({}),
    }
)

_OPEN_STATUSES: Final = (S.OPEN, S.OVERDUE)


def check_invoice_transition(current: InvoiceStatus, target: InvoiceStatus) -> None:
    """Nothing when `INVOICE_TRANSITIONS` allows `current -> target`, else
    `InvalidTransition`."""
    current, target = InvoiceStatus(current), InvoiceStatus(target)
    if target not in INVOICE_TRANSITIONS[current]:
        raise InvalidTransition(current.value, target.value, subject="invoice")


def is_overdue(invoice: Invoice, today: date) -> bool:
    """An open invoice with something due whose due date is before `today` (a computed
    state, never stored). An invoice owing nothing is never overdue, whatever its status:
    dunning must not suspend an organisation over it."""
    return (
        invoice.status in _OPEN_STATUSES
        and invoice.amount_due > 0
        and invoice.due_date is not None
        and invoice.due_date < today
    )


def overdue_clause(today: date) -> sa.ColumnElement[bool]:
    """`is_overdue` as SQL: what the invoice list, dunning and payments select on."""
    return sa.and_(
        Invoice.status.in_(_OPEN_STATUSES), Invoice.amount_due > 0, Invoice.due_date < today
    )


def mark_paid(invoice: Invoice, at: datetime) -> None:
    """Nothing is left due: the invoice goes `paid` at `at` (along `INVOICE_TRANSITIONS`).
    The caller flushes, then emits `invoice.paid` with `emit_invoice_paid`."""
    check_invoice_transition(invoice.status, InvoiceStatus.PAID)
    invoice.status = InvoiceStatus.PAID
    invoice.paid_at = at


def issued_fields(invoice: Invoice) -> dict[str, Any]:
    """The fields every `invoice.*` event of an issued invoice carries (finalized, paid,
    overdue, voided, marked_uncollectible): its id, number, currency, total and amount due."""
    return {
        "invoice_id": invoice.id,
        "number": invoice.number or "",
        "currency": invoice.currency,
        "total": invoice.total,
        "amount_due": invoice.amount_due,
    }


async def emit_invoice_paid(
    s: AsyncSession, events: EventBus, invoice: Invoice, actor: Actor
) -> None:
    """Emit `invoice.paid` for an invoice `mark_paid` closed, in the transaction `s`: the
    one place it is emitted, by the payment that pays an invoice in full and by the
    finalisation of an invoice that owes nothing."""
    assert invoice.number is not None  # only an issued invoice is paid
    assert invoice.paid_at is not None
    await events.emit(
        s,
        invoice.organization_id,
        InvoicePaid(
            **issued_fields(invoice),
            amount_paid=invoice.amount_paid,
            paid_at=invoice.paid_at,
        ),
        actor=actor,
        target_id=invoice.id,
    )


#: The statuses in which an invoice's `amount_due` is owed: issued and not yet settled.
OWED_STATUSES: Final = (S.OPEN, S.OVERDUE, S.UNCOLLECTIBLE)


def amount_owed(invoice: Invoice) -> int:
    """What the customer owes on `invoice`, in minor units: its `amount_due` while it is open
    or uncollectible, else 0. `amount_due` stays the stored `total - amount_paid` (the
    CHECK's balance), which a void or refunded invoice keeps although nothing is owed on it,
    and a draft has although nothing is owed before it is issued."""
    return invoice.amount_due if invoice.status in OWED_STATUSES else 0


# --- totals: pure ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LineTotals:
    """One line's amounts, each rounded once: `amount - discount + tax` is the line's total."""

    amount: Money
    discount: Money
    tax: Money

    @property
    def total(self) -> Money:
        return self.amount - self.discount + self.tax


@dataclass(frozen=True, slots=True)
class InvoiceTotals:
    """An invoice's totals: sums of its rounded lines, never rounded again."""

    lines: tuple[LineTotals, ...]
    subtotal: Money
    discount: Money
    tax: Money
    total: Money


def line_totals(
    amount: Money,
    tax_rate: BasisPoints,
    discount_rate: BasisPoints | None = None,
    *,
    discount: Money | None = None,
) -> LineTotals:
    """A line's discount (`apply_rate(amount, discount_rate)`, or a share of a fixed
    discount given as `discount`) and its tax on what is left (`apply_rate(amount - discount,
    tax_rate)`), each rounded once, half up. A credit (a negative amount) gets the negative of
    the charge's discount and tax."""
    if discount is None:
        discount = (
            apply_rate(amount, discount_rate)
            if discount_rate is not None
            else Money.zero(amount.currency)
        )
    return LineTotals(amount=amount, discount=discount, tax=apply_rate(amount - discount, tax_rate))


def compute_totals(
    currency: str,
    amounts: Sequence[Money],
    tax_rate: BasisPoints,
    discount_rate: BasisPoints | None = None,
    *,
    amount_off: Money | None = None,
) -> InvoiceTotals:
    """The totals of lines of `amounts` at `tax_rate`, after a coupon's discount: a
    percentage (`discount_rate`, per line) or a fixed `amount_off` (spread over the positive
    lines by `spread_amount_off`). Each line is rounded once; the invoice's amounts are the
    sums of the lines'."""
    if amount_off is not None:
        shares = spread_amount_off(amounts, Money(amount_off.minor, currency))
        lines = tuple(
            line_totals(amount, tax_rate, discount=share)
            for amount, share in zip(amounts, shares, strict=True)
        )
    else:
        lines = tuple(line_totals(amount, tax_rate, discount_rate) for amount in amounts)
    zero = Money.zero(currency)
    subtotal = sum((line.amount for line in lines), zero)
    discount = sum((line.discount for line in lines), zero)
    tax = sum((line.tax for line in lines), zero)
    return InvoiceTotals(
        lines=lines, subtotal=subtotal, discount=discount, tax=tax, total=subtotal - discount + tax
    )


# --- input ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LineItem:
    """A line to add: a description, a unit amount (a `Money`, or minor units of the
    invoice's currency; negative for a credit) and a quantity (at least 1)."""

    description: str
    unit_amount: Money | int
    quantity: int = 1
    period_start: datetime | None = None
    period_end: datetime | None = None
    metric: str | None = None
    kind: LineKind = LineKind.ONE_OFF
    #: Kept on the line beside its kind (JSON values).
    metadata: Mapping[str, Any] | None = None


LineInput = LineItem | tuple[str, Money | int] | tuple[str, Money | int, int]


def _line_item(line: LineInput) -> LineItem:
    if isinstance(line, LineItem):
        return line
    if isinstance(line, tuple) and len(line) in (2, 3):
        return LineItem(*line)
    raise InvalidInvoiceLine(
        "a line is a LineItem or a tuple (description, amount[, quantity])", field="lines"
    )


def _description(text: object) -> str:
    if not isinstance(text, str):
        raise InvalidInvoiceLine("a line's description must be text", field="description")
    text = text.strip()
    if not text:
        raise InvalidInvoiceLine("a line needs a description", field="description")
    if len(text) > MAX_DESCRIPTION_LENGTH:
        raise InvalidInvoiceLine(
            f"a line's description is at most {MAX_DESCRIPTION_LENGTH} characters",
            field="description",
        )
    if control_character(text) is not None:
        raise InvalidInvoiceLine(
            "a line's description may not hold control or bidirectional control characters",
            field="description",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInvoiceLine(
            "a line's description is not valid Unicode", field="description"
        ) from None
    return text


def _quantity(quantity: object) -> int:
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        raise InvalidInvoiceLine("a line's quantity must be an integer", field="quantity")
    if not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidInvoiceLine(
            f"a line's quantity is 1 to {MAX_QUANTITY}, not {quantity}", field="quantity"
        )
    return quantity


def _unit_amount(amount: object, currency: str) -> Money:
    if isinstance(amount, Money):
        if amount.currency != currency:
            raise InvalidInvoiceLine(
                f"a {amount.currency} line on a {currency} invoice",
                field="unit_amount",
                currency=amount.currency,
            )
        return amount
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidInvoiceLine(
            "a line's amount is a Money or an integer of minor units", field="unit_amount"
        )
    return Money(amount, currency)


def _checked_line(line: LineInput, currency: str) -> tuple[LineItem, Money, Money]:
    """The line checked, its unit amount and its amount (`unit * quantity`, within int64)."""
    item = _line_item(line)
    quantity = _quantity(item.quantity)
    unit = _unit_amount(item.unit_amount, currency)
    for moment, name in ((item.period_start, "period_start"), (item.period_end, "period_end")):
        if moment is not None:
            checked_instant(moment, field=name)
    if item.period_start and item.period_end and item.period_end < item.period_start:
        raise InvalidInvoiceLine("a line's period ends before it starts", field="period_end")
    item = LineItem(
        _description(item.description),
        unit,
        quantity,
        item.period_start,
        item.period_end,
        item.metric,
        LineKind(item.kind),
        item.metadata,
    )
    return item, unit, unit * quantity


def _notes(notes: str | None, field: str = "notes") -> str | None:
    if notes is None:
        return None
    if not isinstance(notes, str) or len(notes) > MAX_NOTES_LENGTH:
        raise InvalidInput(f"notes are text of at most {MAX_NOTES_LENGTH} characters", field=field)
    # Printed on a terminal or a rendered invoice: lines and tabs, no other control.
    return checked_text(notes, field=field, multiline=True)


def _locale_key(locale: object) -> str:
    if isinstance(locale, str) and 0 < len(locale) <= 16:
        try:
            Locale.parse(locale.replace("-", "_"))
        except (UnknownLocaleError, ValueError, TypeError):
            pass
        else:
            return locale
    raise InvalidInput(
        f"{str(locale)[:16]!r} is not a locale such as 'ar' or 'ar-YE'", field="notes_localized"
    )


def _localized(notes: Mapping[str, str] | None) -> dict[str, str]:
    if not notes:
        return {}
    if len(notes) > MAX_NOTE_LOCALES:
        raise InvalidInput(f"notes in at most {MAX_NOTE_LOCALES} locales", field="notes_localized")
    checked: dict[str, str] = {}
    for locale, text in notes.items():
        if _notes(text, "notes_localized") is None:
            raise InvalidInput("a note must be text", field="notes_localized")
        checked[_locale_key(locale)] = text
    return checked


def _period(period: Period | tuple[datetime, datetime] | None) -> tuple[datetime, datetime] | None:
    if period is None:
        return None
    start, end = (period.start, period.end) if isinstance(period, Period) else period
    start = checked_instant(start, field="period_start")
    end = checked_instant(end, field="period_end")
    if end < start:
        raise InvalidInput("the period ends before it starts", field="period_end")
    return start, end


# --- the service ---------------------------------------------------------------------------------
class InvoiceService:
    """Drafts, their lines, finalisation and the end of an invoice's life (module docstring).

    Every method takes the organisation: an invoice of another organisation is not found.
    """

    def __init__(
        self,
        database: Database,
        settings: Settings,
        events: EventBus | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.settings = settings
        self.events = events if events is not None else audited_bus(AuditService(database))
        self.clock = clock

    # --- tax ---------------------------------------------------------------------------------
    async def set_tax_rate(
        self,
        org_id: uuid.UUID,
        basis_points: int,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Organization:
        """Set the organisation's tax rate (0 to 100 000 basis points): its drafts are
        recomputed at it in this transaction (`recompute_totals`), so a draft always shows the
        rate it will be issued at; finalised invoices keep theirs. A rate that would overflow
        a draft's totals is refused (`amount_out_of_range`) with nothing changed. The rate is
        then the operator's (`tax_rate_source`): a later change of country leaves it alone."""
        rate = BasisPoints(basis_points)
        async with self.database.scope(session) as s:
            organization = await locked_organization(s, org_id)
            previous = organization.tax_rate_bps
            if organization.tax_rate_source != "operator":
                organization.tax_rate_source = "operator"
                await s.flush()
            if previous != rate.value:
                organization.tax_rate_bps = rate.value
                await s.flush()
                await self._recompute_drafts(s, org_id)
                await self.events.emit(
                    s,
                    org_id,
                    OrganizationTaxRateChanged(from_=previous, to=rate.value),
                    actor=actor,
                    target_id=org_id,
                )
            return organization

    async def _recompute_drafts(self, s: AsyncSession, org_id: uuid.UUID) -> None:
        """Recompute the organisation's drafts at its (new) rate, each row locked."""
        query = (
            _with_lines()
            .where(Invoice.organization_id == org_id, Invoice.status == InvoiceStatus.DRAFT)
            .order_by(Invoice.id)
            .with_for_update(of=Invoice)
            .execution_options(populate_existing=True)
        )
        for draft in (await s.scalars(query)).unique().all():
            await recompute_totals(s, draft)
        await s.flush()

    # --- drafts ------------------------------------------------------------------------------
    async def delete_draft(
        self,
        org_id: uuid.UUID,
        invoice_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> None:
        """Delete a draft with its lines: it has no number, so nothing leaves a gap. Only a
        draft (`invoice_not_draft` otherwise: an issued invoice is voided, never deleted).
        A draft with a subscription's proration lines, or with a coupon redeemed on it, is
        refused (`draft_not_deletable`): the proration is owed on the subscription's next
        invoice, and the redemption counts against the coupon. Audited
        (`invoice.draft_deleted`)."""
        async with self.database.scope(session) as s:
            invoice = await self._locked(s, org_id, invoice_id)
            if invoice.status is not InvoiceStatus.DRAFT:
                raise InvoiceNotDraft(
                    f"invoice {invoice.number or invoice.id} is {invoice.status.value}: only a "
                    "draft is deleted (void an issued invoice)",
                    invoice=str(invoice.id),
                    status=invoice.status.value,
                )
            if any(
                (line.metadata_ or {}).get("kind") == LineKind.PRORATION for line in invoice.lines
            ):
                raise DraftNotDeletable(
                    "the draft carries the subscription's proration, owed on its next invoice",
                    invoice=str(invoice.id),
                    reason="proration",
                )
            redeemed = await s.scalar(
                sa.select(sa.func.count())
                .select_from(CouponRedemption)
                .where(
                    CouponRedemption.organization_id == org_id,
                    CouponRedemption.invoice_id == invoice.id,
                )
            )
            if redeemed:
                raise DraftNotDeletable(
                    "a coupon was redeemed on the draft", invoice=str(invoice.id), reason="coupon"
                )
            payload = InvoiceDraftDeleted(
                invoice_id=invoice.id,
                currency=invoice.currency,
                total=invoice.total,
                lines=len(invoice.lines),
                subscription_id=invoice.subscription_id,
            )
            await s.delete(invoice)
            await s.flush()
            await self.events.emit(s, org_id, payload, actor=actor, target_id=invoice_id)

    async def create_draft(
        self,
        org_id: uuid.UUID,
        currency: str,
        lines: Sequence[LineInput] = (),
        *,
        notes: str | None = None,
        notes_localized: Mapping[str, str] | None = None,
        subscription_id: uuid.UUID | None = None,
        period: Period | tuple[datetime, datetime] | None = None,
        metadata: Mapping[str, Any] | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Invoice:
        """A draft invoice of `org_id` in `currency` with `lines` (one-off items; a negative
        amount is a credit). It has no number until it is finalised. `metadata` is kept on
        the invoice (`TAX_SOURCE`: `PROVIDER_TAX` for a provider's payment).

        By convention (shared with subscriptions), the upcoming invoice of a subscription is
        its draft with that `subscription_id` and `period_start` the next period's start."""
        del actor  # a draft is not an event; finalising it is
        async with self.database.scope(session) as s:
            return await draft_in(
                s,
                org_id,
                currency,
                lines,
                notes=notes,
                notes_localized=notes_localized,
                subscription_id=subscription_id,
                period=period,
                metadata=metadata,
            )

    async def add_line(
        self,
        org_id: uuid.UUID,
        invoice_id: uuid.UUID,
        line: LineInput,
        *,
        session: AsyncSession | None = None,
    ) -> Invoice:
        """Add a line to a draft (`invoice_not_draft` otherwise) and recompute its totals."""
        async with self.database.scope(session) as s:
            invoice = await self._locked(s, org_id, invoice_id)
            _draft_only(invoice)
            item, unit, amount = _checked_line(line, invoice.currency)
            if len(invoice.lines) >= MAX_LINES:
                raise InvalidInvoiceLine(
                    f"an invoice holds at most {MAX_LINES} lines", field="lines"
                )
            position = max((existing.position for existing in invoice.lines), default=-1) + 1
            invoice.lines.append(_line_row(org_id, position, item, unit, amount))
            await recompute_totals(s, invoice)
            await s.flush()
            return invoice

    async def remove_line(
        self,
        org_id: uuid.UUID,
        invoice_id: uuid.UUID,
        line_id: uuid.UUID,
        *,
        session: AsyncSession | None = None,
    ) -> Invoice:
        """Remove a line from a draft and recompute its totals."""
        async with self.database.scope(session) as s:
            invoice = await self._locked(s, org_id, invoice_id)
            _draft_only(invoice)
            line = next((line for line in invoice.lines if line.id == line_id), None)
            if line is None:
                raise InvalidInvoiceLine(
                    f"no line {line_id} on invoice {invoice_id}", field="line_id"
                )
            invoice.lines.remove(line)
            await recompute_totals(s, invoice)
            await s.flush()
            return invoice

    # --- status --------------------------------------------------------------------------------
    async def finalize(
        self,
        org_id: uuid.UUID,
        invoice_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Invoice:
        """`draft -> open`: recompute at the organisation's tax rate, freeze the totals, set
        the issue and due dates (`SAASCORE_INVOICE_DUE_DAYS`) and take the invoice's number,
        last, in this transaction. Emits `invoice.finalized`; an invoice owing nothing is
        then `paid` at once (`invoice.paid`)."""
        async with self.database.scope(session) as s:
            invoice = await self._locked(s, org_id, invoice_id)
            return await self.finalize_locked(s, invoice, actor=actor)

    async def finalize_locked(
        self,
        s: AsyncSession,
        invoice: Invoice,
        *,
        actor: Actor = SYSTEM,
        tax_rate_bps: int | None = None,
        attach: bool = True,
        computed: bool = False,
    ) -> Invoice:
        """`finalize` for a caller whose transaction holds the invoice row already (it created
        the draft in it, or locked it): the same checks and events, without reading it back.
        `tax_rate_bps` and `attach` are `recompute_totals`'s, for a caller that has just read
        the organisation's rate, or the subscription's redemptions (none), in `s`; and
        `computed` says that the caller has just built the draft with `draft_in` from those
        same values, so that its totals are already what `recompute_totals` would set."""
        org_id, invoice_id = invoice.organization_id, invoice.id
        check_invoice_transition(invoice.status, InvoiceStatus.OPEN)
        if not invoice.lines:
            raise EmptyInvoice("a draft without lines cannot be finalised", invoice=str(invoice_id))
        if not computed:
            await recompute_totals(s, invoice, attach=attach, tax_rate_bps=tax_rate_bps)
        # The coupon's period is used now; with none left, the invoice goes without it (and
        # without a coupon there is nothing to recompute).
        if has_coupon(invoice) and not await use_coupon_period(s, invoice):
            await recompute_totals(s, invoice, attach=False)
        if invoice.total < 0:
            raise NegativeInvoiceTotal(
                "the draft's credits exceed its charges: its total would be "
                f"{Money(invoice.total, invoice.currency)}",
                invoice=str(invoice_id),
                total=invoice.total,
            )
        now = self.clock()
        issued = now.date()
        invoice.issue_date = issued
        invoice.due_date = issued + timedelta(days=self.settings.invoice_due_days)
        invoice.status = InvoiceStatus.OPEN
        pending: list[_Numbering] | None = s.sync_session.info.get(_NUMBERS_AT_END)
        if pending is not None:  # numbered, and announced, at the end of `numbers_at_end`
            # Written by the session's next flush (with the others of a billing run's
            # transaction). The keys kept aside: a savepoint that rolls back expires the
            # invoice's attributes, or expunges it if it was never written.
            pending.append((invoice_id, org_id, invoice, now, actor))
            return invoice
        # The series stays locked from here to the commit: the number is taken last, and the
        # invoice is written once with it.
        invoice.number = await allocate_invoice_number(
            s, organization_id=org_id, at=now, settings=self.settings
        )
        await s.flush()
        await self._finalized(s, invoice, actor, now)
        return invoice

    async def _finalized(
        self, s: AsyncSession, invoice: Invoice, actor: Actor, at: datetime
    ) -> None:
        """The numbered invoice is issued: `invoice.finalized`; and one owing nothing (a 100 %
        coupon, lines of 0) is `paid` at once (`invoice.paid`): left open, it could never be
        paid, and dunning would chase it."""
        await self.events.emit(
            s,
            invoice.organization_id,
            InvoiceFinalized(**issued_fields(invoice), due_date=invoice.due_date),
            actor=actor,
            target_id=invoice.id,
        )
        if invoice.amount_due == 0:
            mark_paid(invoice, at)
            await s.flush()
            await emit_invoice_paid(s, self.events, invoice, actor)

    @asynccontextmanager
    async def numbers_at_end(self, s: AsyncSession) -> AsyncIterator[None]:
        """Number the invoices finalised in `s` within the block at its end, when it ends
        without error, still in its transaction: per series, one statement takes as many
        numbers as it has invoices (`allocate_in_series`), given in invoice id order, and
        only then is each `invoice.finalized` emitted (it carries the number). The series
        is so locked from the block's end to the commit, not from its first finalisation:
        many finalisations (the billing run's transaction) hold it for one short moment.
        Numbers stay gapless: a rollback gives them back. Invoices finalised in a savepoint
        that rolled back are left out. Inside the block a finalised invoice has no number."""
        info = s.sync_session.info
        if _NUMBERS_AT_END in info:  # already held by an enclosing block
            yield
            return
        pending: list[_Numbering] = []
        info[_NUMBERS_AT_END] = pending
        try:
            yield
        finally:
            del info[_NUMBERS_AT_END]
        if not pending:
            return
        kept = set(
            await s.scalars(
                sa.select(Invoice.id).where(
                    # By the primary key, whose first column is the organisation's.
                    Invoice.organization_id.in_(list({org_id for _, org_id, _, _, _ in pending})),
                    Invoice.id.in_([invoice_id for invoice_id, _, _, _, _ in pending]),
                    Invoice.status == InvoiceStatus.OPEN,
                    Invoice.number.is_(None),
                )
            )
        )
        series: dict[str, list[tuple[Invoice, datetime, Actor]]] = {}
        for invoice_id, _, invoice, at, actor in sorted(pending, key=lambda item: item[0]):
            if invoice_id in kept:
                key = series_key(self.settings, organization_id=invoice.organization_id, at=at)
                series.setdefault(key, []).append((invoice, at, actor))
        for key in sorted(series):
            members = series[key]
            numbers = await allocate_in_series(s, key, len(members))
            for (invoice, at, _), seq in zip(members, numbers, strict=True):
                invoice.number = format_invoice_number(self.settings, seq=seq, at=at)
        await s.flush()
        async with self.events.deferred(s):
            for members in series.values():
                for invoice, at, actor in members:
                    await self._finalized(s, invoice, actor, at)

    async def void(
        self,
        org_id: uuid.UUID,
        invoice_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Invoice:
        """`open -> void` (or uncollectible -> void): nothing is owed; the number stays.
        An invoice with payments on it is refused (`invoice_has_payments`): they are refunded
        first, so that `amount_due = total - amount_paid` never shows a void invoice owing
        the rest, nor a refund reopening one. Emits `invoice.voided`."""
        return await self._move(
            org_id, invoice_id, InvoiceStatus.VOID, InvoiceVoided, actor=actor, session=session
        )

    async def mark_uncollectible(
        self,
        org_id: uuid.UUID,
        invoice_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Invoice:
        """`open -> uncollectible`: written off; it may still be paid or voided. Audited."""
        return await self._move(
            org_id,
            invoice_id,
            InvoiceStatus.UNCOLLECTIBLE,
            InvoiceMarkedUncollectible,
            actor=actor,
            session=session,
        )

    async def _move(
        self,
        org_id: uuid.UUID,
        invoice_id: uuid.UUID,
        target: InvoiceStatus,
        event: type[InvoiceVoided | InvoiceMarkedUncollectible],
        *,
        actor: Actor,
        session: AsyncSession | None,
    ) -> Invoice:
        """Move an issued invoice to `target` along the table and emit `event` with it."""
        async with self.database.scope(session) as s:
            invoice = await self._locked(s, org_id, invoice_id)
            check_invoice_transition(invoice.status, target)
            if target is InvoiceStatus.VOID and invoice.amount_paid > 0:
                raise InvoiceHasPayments(
                    f"invoice {invoice.number or invoice.id} has "
                    f"{Money(invoice.amount_paid, invoice.currency)} paid on it: refund the "
                    "payments first",
                    invoice=str(invoice.id),
                    amount_paid=invoice.amount_paid,
                )
            invoice.status = target
            await s.flush()
            assert invoice.number is not None  # only issued invoices leave `open`
            await self.events.emit(
                s,
                org_id,
                event(**issued_fields(invoice)),
                actor=actor,
                target_id=invoice.id,
            )
            return invoice

    # --- reads ---------------------------------------------------------------------------------
    async def get(
        self,
        org_id: uuid.UUID | None,
        invoice_id: uuid.UUID,
        *,
        session: AsyncSession | None = None,
    ) -> Invoice:
        """The invoice with its lines; `org_id=None` is an operator's look-up across tenants."""
        query = _with_lines().where(Invoice.id == invoice_id)
        if org_id is not None:
            query = query.where(Invoice.organization_id == org_id)
        return await self._one(query, session, str(invoice_id))

    async def get_by_number(
        self,
        org_id: uuid.UUID | None,
        number: str,
        *,
        session: AsyncSession | None = None,
    ) -> Invoice:
        """The invoice numbered `number` (of `org_id`, or of any organisation for None)."""
        query = _with_lines().where(Invoice.number == number).order_by(Invoice.id).limit(2)
        if org_id is not None:
            query = query.where(Invoice.organization_id == org_id)
        return await self._one(query, session, number)

    async def resolve(
        self, org_id: uuid.UUID | None, reference: str, *, session: AsyncSession | None = None
    ) -> Invoice:
        """An invoice by its id or, failing that, its number (for people typing)."""
        try:
            invoice_id = uuid.UUID(reference)
        except ValueError:
            return await self.get_by_number(org_id, reference, session=session)
        return await self.get(org_id, invoice_id, session=session)

    async def list(
        self,
        org_id: uuid.UUID | None,
        *,
        status: InvoiceStatus | None = None,
        overdue: bool | None = None,
        limit: int = 50,
        before: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Sequence[Invoice]:
        """Invoices newest first with their lines: of `org_id` (or every organisation, for
        None), in `status`, overdue or not (computed: open, owing and past due), before the id
        `before` (a cursor)."""
        query = _with_lines().order_by(Invoice.id.desc()).limit(limit)
        if org_id is not None:
            query = query.where(Invoice.organization_id == org_id)
        if status is not None:
            query = query.where(Invoice.status == InvoiceStatus(status))
        if overdue is not None:
            today = self.clock().date()
            late = overdue_clause(today)
            query = query.where(late if overdue else sa.not_(late))
        if before is not None:
            query = query.where(Invoice.id < before)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).unique().all()

    def overdue(self, invoice: Invoice) -> bool:
        """Whether `invoice` is overdue today (by this service's clock)."""
        return is_overdue(invoice, self.clock().date())

    async def _one(
        self, query: sa.Select[Invoice], session: AsyncSession | None, reference: str
    ) -> Invoice:
        async with self.database.scope(session, readonly=True) as s:
            found = (await s.scalars(query)).unique().all()
        if len(found) != 1:
            raise InvoiceNotFound(f"no invoice {reference}", invoice=reference)
        return found[0]

    async def _locked(self, s: AsyncSession, org_id: uuid.UUID, invoice_id: uuid.UUID) -> Invoice:
        """The invoice with its lines, its row locked until the transaction ends."""
        query = (
            _with_lines()
            .where(Invoice.organization_id == org_id, Invoice.id == invoice_id)
            .with_for_update(of=Invoice)
            .execution_options(populate_existing=True)
        )
        invoice = (await s.scalars(query)).unique().one_or_none()
        if invoice is None:
            raise InvoiceNotFound(f"no invoice {invoice_id}", invoice=str(invoice_id))
        return invoice


def _with_lines() -> sa.Select[Invoice]:
    return sa.select(Invoice).options(selectinload(Invoice.lines))


def _draft_only(invoice: Invoice) -> None:
    if invoice.status is not InvoiceStatus.DRAFT:
        raise InvoiceNotDraft(
            f"invoice {invoice.number or invoice.id} is {invoice.status.value}: only a draft's "
            "lines may change",
            invoice=str(invoice.id),
            status=invoice.status.value,
        )


async def recompute_totals(
    s: AsyncSession, invoice: Invoice, *, attach: bool = True, tax_rate_bps: int | None = None
) -> None:
    """Set a draft's line discounts, taxes and totals from its lines, at its organisation's
    tax rate and after its coupon: the one place totals are computed, for drafts built here
    and by `SubscriptionService`. A subscription's draft without a coupon first takes the
    subscription's live redemption (`attach_subscription_coupon`; not with `attach=False`).
    `tax_rate_bps` is the organisation's rate when the caller has just read it in `s`.
    A provider's invoice (`PROVIDER_TAX`) takes neither: the provider's amount is final."""
    if invoice.metadata_.get(TAX_SOURCE) == PROVIDER_TAX:
        _recompute(invoice, BasisPoints(0), None)
        return
    rate = tax_rate_bps
    if rate is None:
        rate = await s.scalar(
            sa.select(Organization.tax_rate_bps).where(Organization.id == invoice.organization_id)
        )
    if attach:
        await attach_subscription_coupon(s, invoice)
    _recompute(invoice, BasisPoints(rate or 0), await discount_of(s, invoice))


async def draft_in(
    s: AsyncSession,
    org_id: uuid.UUID,
    currency: str,
    lines: Sequence[LineInput] = (),
    *,
    notes: str | None = None,
    notes_localized: Mapping[str, str] | None = None,
    subscription_id: uuid.UUID | None = None,
    period: Period | tuple[datetime, datetime] | None = None,
    organization: Organization | None = None,
    subscription: Subscription | None = None,
    attach: bool = True,
    flush: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> Invoice:
    """A new draft of `org_id` in the session `s`, lines loaded: the one place an invoice is
    begun, by `InvoiceService.create_draft` and by the subscriptions' upcoming invoice, so
    that its defaults (the organisation's locale and tax rate) come from here. Everything is
    checked before anything is written.

    A caller that has read them in `s`'s transaction (the billing run, set-wise) passes the
    `organization` and the `subscription` (instead of `subscription_id`), which are then not
    read again, and `attach=False` when it read that the subscription has no coupon
    redemption (`recompute_totals`), and `flush=False` when it finalises the draft at once:
    the invoice is then inserted once, already open, by the finalisation's flush."""
    currency = Money.zero(currency).currency
    checked = [_checked_line(line, currency) for line in lines]
    if len(checked) > MAX_LINES:
        raise InvalidInvoiceLine(f"an invoice holds at most {MAX_LINES} lines", field="lines")
    text = _notes(notes)
    localized = _localized(notes_localized)
    span = _period(period)
    if organization is None:
        organization = await s.scalar(
            sa.select(Organization)
            .where(Organization.id == org_id)
            .execution_options(populate_existing=True)
        )
    if organization is None or organization.id != org_id:
        raise OrganizationNotFound(f"no organisation {org_id}", organization=str(org_id))
    if subscription is not None:
        if subscription.organization_id != org_id or subscription_id not in (
            None,
            subscription.id,
        ):
            raise InvalidInput(
                f"no subscription {subscription.id} in this organisation",
                field="subscription_id",
            )
        subscription_id = subscription.id
    elif subscription_id is not None:
        found = await s.scalar(
            sa.select(Subscription.id).where(
                Subscription.organization_id == org_id, Subscription.id == subscription_id
            )
        )
        if found is None:
            raise InvalidInput(
                f"no subscription {subscription_id} in this organisation",
                field="subscription_id",
            )
    invoice = Invoice(
        id=new_id(),
        organization_id=org_id,
        currency=currency,
        status=InvoiceStatus.DRAFT,
        subscription_id=subscription_id,
        period_start=span[0] if span else None,
        period_end=span[1] if span else None,
        locale=organization.locale,
        notes=text,
        notes_localized=localized,
        metadata_=dict(metadata or {}),
        amount_paid=0,
    )
    invoice.lines = [
        _line_row(org_id, position, item, unit, amount)
        for position, (item, unit, amount) in enumerate(checked)
    ]
    # A subscription's draft takes the subscription's coupon (`billing.discounts`). Totals
    # first: the invoice and its lines are then inserted once, already computed.
    await recompute_totals(s, invoice, attach=attach, tax_rate_bps=organization.tax_rate_bps)
    s.add(invoice)
    if flush:
        await s.flush()
    return invoice


async def preview_in(
    s: AsyncSession,
    org_id: uuid.UUID,
    currency: str,
    lines: Sequence[LineInput] = (),
    *,
    base: Invoice | None = None,
    subscription_id: uuid.UUID | None = None,
    period: Period | tuple[datetime, datetime] | None = None,
) -> Invoice:
    """A draft that is never added to the session, so nothing of it is written: `base`'s
    lines (copied; a subscription's upcoming draft) followed by `lines`, with its coupon and
    totals set by `recompute_totals`, as finalising it would set them. The upcoming invoice's
    preview is built here so that its totals come from the one path that computes them."""
    currency = Money.zero(currency).currency
    checked = [_checked_line(line, currency) for line in lines]
    span = _period(period)
    organization = await s.get(Organization, org_id)
    if organization is None:
        raise OrganizationNotFound(f"no organisation {org_id}", organization=str(org_id))
    preview = Invoice(
        organization_id=org_id,
        currency=currency,
        status=InvoiceStatus.DRAFT,
        subscription_id=subscription_id,
        period_start=span[0] if span else None,
        period_end=span[1] if span else None,
        locale=base.locale if base is not None else organization.locale,
        notes=base.notes if base is not None else None,
        notes_localized=dict(base.notes_localized or {}) if base is not None else {},
        metadata_=dict(base.metadata_ or {}) if base is not None else {},
        amount_paid=0,
    )
    copied = [
        InvoiceLine(
            organization_id=org_id,
            position=position,
            description=line.description,
            metric=line.metric,
            quantity=line.quantity,
            unit_amount=line.unit_amount,
            amount=line.amount,
            discount_amount=0,
            tax_amount=0,
            period_start=line.period_start,
            period_end=line.period_end,
            metadata_=dict(line.metadata_ or {}),
        )
        for position, line in enumerate(
            sorted(base.lines, key=lambda line: line.position) if base is not None else ()
        )
    ]
    added = [
        _line_row(org_id, len(copied) + index, item, unit, amount)
        for index, (item, unit, amount) in enumerate(checked)
    ]
    preview.lines = copied + added
    await recompute_totals(s, preview)
    return preview


def _line_row(
    org_id: uuid.UUID, position: int, item: LineItem, unit: Money, amount: Money
) -> InvoiceLine:
    metadata: dict[str, Any] = {**(item.metadata or {}), "kind": item.kind.value}
    return InvoiceLine(
        organization_id=org_id,
        position=position,
        description=item.description,
        metric=item.metric,
        quantity=item.quantity,
        unit_amount=unit.minor,
        amount=amount.minor,
        discount_amount=0,
        tax_amount=0,
        period_start=item.period_start,
        period_end=item.period_end,
        metadata_=metadata,
    )


def _recompute(invoice: Invoice, tax_rate: BasisPoints, discount: Discount | None) -> None:
    """Set every line's discount and tax and the invoice's totals from its lines."""
    currency = invoice.currency
    totals = compute_totals(
        currency,
        [Money(line.amount, currency) for line in invoice.lines],
        tax_rate,
        discount.rate if discount else None,
        amount_off=discount.amount_off if discount else None,
    )
    for line, computed in zip(invoice.lines, totals.lines, strict=True):
        line.discount_amount = computed.discount.minor
        line.tax_amount = computed.tax.minor
    invoice.tax_rate_bps = tax_rate.value
    invoice.subtotal = totals.subtotal.minor
    invoice.discount_amount = totals.discount.minor
    invoice.tax_amount = totals.tax.minor
    invoice.total = totals.total.minor
    invoice.amount_due = invoice.total - (invoice.amount_paid or 0)

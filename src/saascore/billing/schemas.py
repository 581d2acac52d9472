"""Request and response bodies of billing's routes: the subscription (`/v1/subscription`), invoices
(`/v1/invoices`), payments (`/v1/payments`) and their operators' routes. Amounts are integers of
minor units of the currency (docs/billing.md, "Money")."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from saascore.billing.discounts import COUPON_KEY
from saascore.billing.invoices import (
    MAX_DESCRIPTION_LENGTH,
    MAX_LINES,
    MAX_NOTE_LOCALES,
    MAX_NOTES_LENGTH,
    MAX_QUANTITY,
    amount_owed,
    is_overdue,
)
from saascore.billing.overview import BillingOverview
from saascore.billing.payments import MAX_KEY_LENGTH, MAX_REASON_LENGTH, method_name
from saascore.billing.subscriptions import MAX_TRIAL_DAYS, SCHEDULED
from saascore.kit.inputs import INT64_MAX, StrictInt
from saascore.kit.money import MAX_BASIS_POINTS
from saascore.kit.validation import Instant
from saascore.models import (
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Payment,
    PaymentMethod,
    PaymentStatus,
    ResetPeriod,
    Subscription,
    SubscriptionStatus,
)
from saascore.models.catalog import BillingCycle

__all__ = [
    "BillingOverviewOut",
    "InvoiceDraftCreate",
    "InvoiceLineIn",
    "InvoiceLineOut",
    "InvoiceOut",
    "MeterUsageOut",
    "PaymentOut",
    "PaymentRecord",
    "PlanSummaryOut",
    "RefundCreate",
    "SubscriptionCancel",
    "SubscriptionCreate",
    "SubscriptionOut",
    "SubscriptionPlanChange",
    "SubscriptionResume",
    "TaxRate",
    "UpcomingInvoiceOut",
    "UpcomingLineOut",
]

_AT = "When it happens (ISO 8601 with a time zone); now when left out"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubscriptionCreate(_Body):
    """A subscription of the organisation to a plan, at the plan's price for the cycle in the
    organisation's currency."""

    plan: str = Field(min_length=1, max_length=50, description="The plan's code", examples=["pro"])
    cycle: BillingCycle = Field(
        default=BillingCycle.MONTHLY, description="monthly, quarterly or yearly"
    )
    trial_days: StrictInt | None = Field(
        default=None,
        ge=0,
        le=MAX_TRIAL_DAYS,
        description="Days of trial; the plan's trial days when left out",
        examples=[14],
    )
    at: Instant | None = Field(default=None, description=_AT)


class SubscriptionPlanChange(_Body):
    """A move to another plan: an upgrade at once (prorated on the upcoming invoice), a
    downgrade at the period's end."""

    plan: str = Field(min_length=1, max_length=50, description="The plan's code", examples=["pro"])
    at: Instant | None = Field(default=None, description=_AT)


class SubscriptionCancel(_Body):
    """A cancellation, at the period's end (the default) or now."""

    at_period_end: bool = Field(
        default=True, description="End at the current period's end (true) or now (false)"
    )
    at: Instant | None = Field(default=None, description=_AT)


class SubscriptionResume(_Body):
    """Withdraw a cancellation at the period's end, before that end."""

    at: Instant | None = Field(default=None, description=_AT)


class SubscriptionOut(BaseModel):
    """An organisation's subscription: its plan, price, status and current period."""

    id: uuid.UUID = Field(description="The subscription's id")
    organization_id: uuid.UUID = Field(description="The organisation's id")
    plan: str = Field(description="The plan's code", examples=["pro"])
    status: SubscriptionStatus = Field(description="The subscription's status")
    billing_cycle: BillingCycle = Field(description="monthly, quarterly or yearly")
    currency: str = Field(description="ISO 4217 code of the price", examples=["USD"])
    unit_amount: int = Field(
        description="The price per period in minor units of `currency`", examples=[2_999]
    )
    started_at: datetime = Field(description="When it started: the anchor of its periods")
    current_period_start: datetime = Field(description="Start of the current period")
    current_period_end: datetime = Field(description="End of the current period (excluded)")
    trial_start: datetime | None = Field(description="When the trial started; null: no trial")
    trial_end: datetime | None = Field(description="When the trial ends; null: no trial")
    cancel_at_period_end: bool = Field(description="Whether it ends at the current period's end")
    canceled_at: datetime | None = Field(description="When it was canceled; null: it was not")
    ended_at: datetime | None = Field(description="When it ended; null: it is live")
    ends_at: datetime | None = Field(
        description="When what was paid for ends, and the organisation returns to the default "
        "plan; null: it renews"
    )
    scheduled_plan: str | None = Field(
        description="A downgrade waiting for the period's end (a plan code); null: none"
    )

    @classmethod
    def of(cls, subscription: Subscription) -> SubscriptionOut:
        scheduled: dict[str, Any] | None = subscription.metadata_.get(SCHEDULED)
        return cls(
            id=subscription.id,
            organization_id=subscription.organization_id,
            plan=subscription.plan.code,
            status=subscription.status,
            billing_cycle=subscription.billing_cycle,
            currency=subscription.currency,
            unit_amount=subscription.unit_amount,
            started_at=subscription.started_at,
            current_period_start=subscription.current_period_start,
            current_period_end=subscription.current_period_end,
            trial_start=subscription.trial_start,
            trial_end=subscription.trial_end,
            cancel_at_period_end=subscription.cancel_at_period_end,
            canceled_at=subscription.canceled_at,
            ended_at=subscription.ended_at,
            ends_at=subscription.ends_at,
            scheduled_plan=scheduled["plan"] if scheduled else None,
        )


_TEXT = r"^[^\x00]*$"
Note = Annotated[str, StringConstraints(max_length=MAX_NOTES_LENGTH, pattern=_TEXT)]
LocaleKey = Annotated[str, StringConstraints(min_length=1, max_length=16)]


class InvoiceLineOut(BaseModel):
    """One line: `amount = unit_amount * quantity` (negative for a credit), its discount and
    its tax each rounded once, and `total = amount - discount_amount + tax_amount`."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="The line's id")
    position: int = Field(description="The line's place on the invoice, from 0", examples=[0])
    description: str = Field(description="What the line is for", examples=["Pro plan, March"])
    quantity: int = Field(description="How many units", examples=[1])
    unit_amount: int = Field(description="The price of one unit, in minor units", examples=[2999])
    amount: int = Field(description="`unit_amount * quantity`, in minor units", examples=[2999])
    discount_amount: int = Field(description="The line's discount, in minor units", examples=[0])
    tax_amount: int = Field(description="The line's tax, in minor units", examples=[450])
    total: int = Field(description="`amount - discount_amount + tax_amount`", examples=[3449])
    period_start: datetime | None = Field(default=None, description="The period it covers")
    period_end: datetime | None = Field(default=None, description="The end of that period")

    @classmethod
    def of(cls, line: InvoiceLine) -> InvoiceLineOut:
        return cls(
            id=line.id,
            position=line.position,
            description=line.description,
            quantity=line.quantity,
            unit_amount=line.unit_amount,
            amount=line.amount,
            discount_amount=line.discount_amount,
            tax_amount=line.tax_amount,
            total=line.amount - line.discount_amount + line.tax_amount,
            period_start=line.period_start,
            period_end=line.period_end,
        )


def coupon_code(invoice: Invoice) -> str | None:
    """The code of the coupon an invoice's discount comes from, if any."""
    coupon: Any = (invoice.metadata_ or {}).get(COUPON_KEY)
    return str(coupon["code"]) if isinstance(coupon, dict) and "code" in coupon else None


class InvoiceOut(BaseModel):
    """An invoice. `total = subtotal - discount_amount + tax_amount` and
    `amount_due = total - amount_paid`, always; amounts are minor units of `currency`.
    `amount_owed` is what the customer owes: `amount_due` while open or uncollectible, else 0
    (a void or refunded invoice keeps its `amount_due`, yet nothing is owed on it)."""

    id: uuid.UUID = Field(description="The invoice's id")
    number: str | None = Field(
        description="The gapless number, given at finalisation; null for a draft",
        examples=["INV-2026-0001"],
    )
    status: InvoiceStatus = Field(
        description="`draft`, `open`, `paid`, `void` or `uncollectible`", examples=["open"]
    )
    overdue: bool = Field(
        description="Open and past its due date (computed, never a status)", examples=[False]
    )
    currency: str = Field(description="ISO 4217 currency code", examples=["USD"])
    subscription_id: uuid.UUID | None = Field(
        default=None, description="The subscription it bills, if any"
    )
    issue_date: date | None = Field(default=None, description="The day it was finalised")
    due_date: date | None = Field(default=None, description="The day it falls due")
    paid_at: datetime | None = Field(default=None, description="When it was paid in full")
    period_start: datetime | None = Field(default=None, description="The period it bills")
    period_end: datetime | None = Field(default=None, description="The end of that period")
    subtotal: int = Field(description="The sum of the lines' amounts", examples=[2999])
    coupon: str | None = Field(
        default=None, description="The code of the coupon whose discount it carries; null: none"
    )
    discount_amount: int = Field(description="The sum of the lines' discounts", examples=[0])
    tax_rate_bps: int = Field(description="The tax rate, in basis points", examples=[1500])
    tax_amount: int = Field(description="The sum of the lines' taxes", examples=[450])
    total: int = Field(description="`subtotal - discount_amount + tax_amount`", examples=[3449])
    amount_paid: int = Field(description="What has been paid", examples=[0])
    amount_due: int = Field(
        description="`total - amount_paid`, the stored balance, whatever the status: read "
        "`amount_owed` for what is owed",
        examples=[3449],
    )
    amount_owed: int = Field(
        description="What the customer owes: `amount_due` while the invoice is open or "
        "uncollectible, 0 for a draft, a paid, void or refunded invoice",
        examples=[3449],
    )
    locale: str = Field(description="The locale the invoice is shown in", examples=["en"])
    notes: str | None = Field(default=None, description="Notes shown on the invoice")
    notes_localized: dict[str, str] = Field(
        description="Notes in other languages, by locale", examples=[{"ar": "شكرا لكم"}]
    )
    lines: list[InvoiceLineOut] = Field(description="The lines, in order")
    created_at: datetime = Field(description="When the draft was made")

    @classmethod
    def of(cls, invoice: Invoice, today: date) -> InvoiceOut:
        return cls(
            id=invoice.id,
            number=invoice.number,
            status=invoice.status,
            overdue=is_overdue(invoice, today),
            currency=invoice.currency,
            subscription_id=invoice.subscription_id,
            issue_date=invoice.issue_date,
            due_date=invoice.due_date,
            paid_at=invoice.paid_at,
            period_start=invoice.period_start,
            period_end=invoice.period_end,
            subtotal=invoice.subtotal,
            coupon=coupon_code(invoice),
            discount_amount=invoice.discount_amount,
            tax_rate_bps=invoice.tax_rate_bps,
            tax_amount=invoice.tax_amount,
            total=invoice.total,
            amount_paid=invoice.amount_paid,
            amount_due=invoice.amount_due,
            amount_owed=amount_owed(invoice),
            locale=invoice.locale,
            notes=invoice.notes,
            notes_localized=dict(invoice.notes_localized or {}),
            lines=[InvoiceLineOut.of(line) for line in invoice.lines],
            created_at=invoice.created_at,
        )


class InvoiceLineIn(BaseModel):
    """A line to put on a draft: a negative `unit_amount` is a credit."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(
        min_length=1,
        max_length=MAX_DESCRIPTION_LENGTH,
        description="What the line is for (no control characters)",
        examples=["Onboarding workshop"],
    )
    unit_amount: StrictInt = Field(
        ge=-INT64_MAX,
        le=INT64_MAX,
        description="The price of one unit, in minor units of the invoice's currency",
        examples=[50000],
    )
    quantity: StrictInt = Field(
        default=1, ge=1, le=MAX_QUANTITY, description="How many units", examples=[1]
    )


class InvoiceDraftCreate(BaseModel):
    """A draft invoice with one-off lines; it gets a number when it is finalised."""

    model_config = ConfigDict(extra="forbid")

    currency: str = Field(
        min_length=3, max_length=3, description="ISO 4217 currency code", examples=["USD"]
    )
    lines: list[InvoiceLineIn] = Field(
        default_factory=list, max_length=MAX_LINES, description="The lines, in order"
    )
    notes: Note | None = Field(default=None, description="Notes shown on the invoice")
    notes_localized: dict[LocaleKey, Note] = Field(
        default_factory=dict,
        max_length=MAX_NOTE_LOCALES,
        description="Notes in other languages, by locale",
        examples=[{"ar": "شكرا لكم"}],
    )


class TaxRate(BaseModel):
    """An organisation's tax rate, applied to each line of its invoices."""

    model_config = ConfigDict(extra="forbid")

    tax_rate_bps: StrictInt = Field(
        ge=0,
        le=MAX_BASIS_POINTS,
        description="Basis points: 1500 is 15 %, 0 no tax",
        examples=[1500],
    )


class PaymentOut(BaseModel):
    """A payment against an invoice (the payment history). Amounts are minor units of
    `currency`."""

    id: uuid.UUID = Field(description="The payment's id")
    invoice_id: uuid.UUID | None = Field(description="The invoice it pays")
    subscription_id: uuid.UUID | None = Field(
        default=None, description="The subscription that invoice bills, if any"
    )
    amount: int = Field(description="The amount paid, in minor units", examples=[1500])
    refunded_amount: int = Field(description="What has been refunded of it", examples=[0])
    currency: str = Field(description="ISO 4217 currency code", examples=["USD"])
    status: PaymentStatus = Field(
        description="`succeeded`, `failed`, `partially_refunded` or `refunded` (`pending` and "
        "`processing` come from providers)",
        examples=["succeeded"],
    )
    method: PaymentMethod = Field(
        description="How it was paid; `other` with a provider's `method_name`",
        examples=["credit_card"],
    )
    method_name: str | None = Field(
        default=None,
        description="The provider-specific method's name (seed 003's `tharwatt`)",
        examples=["tharwatt"],
    )
    transaction_type: str = Field(
        description="`subscription`, `credit_purchase` or `one_time`", examples=["subscription"]
    )
    idempotency_key: str | None = Field(default=None, description="The key it was recorded with")
    provider_payment_id: str | None = Field(
        default=None, description="The provider's id of the payment"
    )
    credits_awarded: int = Field(
        description="Credits its credit packs granted (when it paid the invoice in full)",
        examples=[0],
    )
    failure_reason: str | None = Field(default=None, description="Why it failed")
    paid_at: datetime | None = Field(default=None, description="When it succeeded")
    created_at: datetime = Field(description="When it was recorded")

    @classmethod
    def of(cls, payment: Payment) -> PaymentOut:
        return cls(
            id=payment.id,
            invoice_id=payment.invoice_id,
            subscription_id=payment.subscription_id,
            amount=payment.amount,
            refunded_amount=payment.refunded_amount,
            currency=payment.currency,
            status=payment.status,
            method=payment.method,
            method_name=method_name(payment),
            transaction_type=payment.transaction_type.value,
            idempotency_key=payment.idempotency_key,
            provider_payment_id=payment.provider_payment_id,
            credits_awarded=payment.credits_awarded,
            failure_reason=payment.failure_reason,
            paid_at=payment.paid_at,
            created_at=payment.created_at,
        )


_Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH)]
_Reason = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REASON_LENGTH)]


class PaymentRecord(_Body):
    """A payment received for the invoice (or one that failed), recorded by an operator."""

    amount: StrictInt = Field(
        ge=1,
        le=INT64_MAX,
        description="The amount, in minor units of the invoice's currency",
        examples=[1500],
    )
    method: str = Field(
        min_length=1,
        max_length=50,
        description="card, bank_transfer, mobile_money, cash, wallet, ... or a provider's "
        "method name (kept as `method_name`)",
        examples=["card"],
    )
    status: PaymentStatus = Field(
        default=PaymentStatus.SUCCEEDED,
        description="`succeeded` (applied to the invoice) or `failed` (with its reason)",
    )
    failure_reason: _Reason | None = Field(
        default=None, description="Why it failed (failed payments only)"
    )
    idempotency_key: _Key | None = Field(
        default=None,
        description="A retry with the same key and content answers the first payment",
        examples=["pay-2026-0001"],
    )
    provider_payment_id: _Key | None = Field(
        default=None, description="The provider's id of the payment, if any"
    )


class RefundCreate(_Body):
    """A refund of part or all of a payment."""

    amount: StrictInt = Field(
        ge=1,
        le=INT64_MAX,
        description="The amount to refund, in minor units, up to what is left of the payment",
        examples=[500],
    )
    reason: _Reason | None = Field(default=None, description="Why", examples=["goodwill"])
    idempotency_key: _Key | None = Field(
        default=None,
        description="A retry with the same key and content refunds nothing more",
        examples=["refund-1"],
    )


# --- the overview and the upcoming invoice ---------------------------------------------------
class UpcomingLineOut(BaseModel):
    """A line of the upcoming invoice: `total = amount - discount_amount + tax_amount`."""

    description: str = Field(description="What the line is for", examples=["Pro (monthly)"])
    kind: str = Field(
        description="What it bills: `plan`, `usage`, `proration` or `one_off`", examples=["plan"]
    )
    metric: str | None = Field(default=None, description="The meter a usage line bills")
    quantity: int = Field(description="How many units", examples=[1])
    unit_amount: int = Field(description="The price of one unit, in minor units", examples=[2999])
    amount: int = Field(description="`unit_amount * quantity`, in minor units", examples=[2999])
    discount_amount: int = Field(description="The line's discount, in minor units", examples=[0])
    tax_amount: int = Field(description="The line's tax, in minor units", examples=[450])
    total: int = Field(description="`amount - discount_amount + tax_amount`", examples=[3449])
    period_start: datetime | None = Field(default=None, description="The period it covers")
    period_end: datetime | None = Field(default=None, description="The end of that period")

    @classmethod
    def of(cls, line: InvoiceLine) -> UpcomingLineOut:
        return cls(
            description=line.description,
            kind=str((line.metadata_ or {}).get("kind", "one_off")),
            metric=line.metric,
            quantity=line.quantity,
            unit_amount=line.unit_amount,
            amount=line.amount,
            discount_amount=line.discount_amount,
            tax_amount=line.tax_amount,
            total=line.amount - line.discount_amount + line.tax_amount,
            period_start=line.period_start,
            period_end=line.period_end,
        )


class UpcomingInvoiceOut(BaseModel):
    """The preview of the invoice the billing run issues next for the subscription (never
    stored: it has no id and no number yet). Amounts are minor units of `currency`."""

    subscription_id: uuid.UUID | None = Field(description="The subscription it bills")
    currency: str = Field(description="ISO 4217 currency code", examples=["USD"])
    period_start: datetime | None = Field(description="The period it bills")
    period_end: datetime | None = Field(description="The end of that period")
    coupon: str | None = Field(description="The coupon's code it applies; null: none")
    subtotal: int = Field(description="The sum of the lines' amounts", examples=[2999])
    discount_amount: int = Field(description="The sum of the lines' discounts", examples=[0])
    tax_rate_bps: int = Field(description="The tax rate, in basis points", examples=[1500])
    tax_amount: int = Field(description="The sum of the lines' taxes", examples=[450])
    total: int = Field(description="`subtotal - discount_amount + tax_amount`", examples=[3449])
    amount_due: int = Field(description="What will be owed: the total", examples=[3449])
    lines: list[UpcomingLineOut] = Field(description="The lines, in order")

    @classmethod
    def of(cls, invoice: Invoice) -> UpcomingInvoiceOut:
        return cls(
            subscription_id=invoice.subscription_id,
            currency=invoice.currency,
            period_start=invoice.period_start,
            period_end=invoice.period_end,
            coupon=coupon_code(invoice),
            subtotal=invoice.subtotal,
            discount_amount=invoice.discount_amount,
            tax_rate_bps=invoice.tax_rate_bps,
            tax_amount=invoice.tax_amount,
            total=invoice.total,
            amount_due=invoice.amount_due,
            lines=[UpcomingLineOut.of(line) for line in invoice.lines],
        )


class MeterUsageOut(BaseModel):
    """One meter of the plan in the usage period, against the plan's included amount."""

    metric: str = Field(description="The meter", examples=["tokens"])
    used: int = Field(description="Used in the period", examples=[1_250_000])
    included: int | None = Field(
        description="The plan's included amount; null: unlimited", examples=[1_000_000]
    )
    over: int = Field(description="Units above the included amount, billed next", examples=[0])
    included_per: ResetPeriod | None = Field(
        description="What the included amount is per: `month`, `day` (API calls: each day's "
        "excess counts in `over`, while `used` totals the period) or `none`; null: a metric "
        "without a meter",
        examples=["month"],
    )


class PlanSummaryOut(BaseModel):
    """The plan the organisation is on."""

    code: str = Field(description="The plan's code", examples=["pro"])
    name: str = Field(description="The plan's name", examples=["Pro"])


class BillingOverviewOut(BaseModel):
    """The organisation's billing at a glance (seed 004's billing overview)."""

    organization_id: uuid.UUID = Field(description="The organisation's id")
    plan: PlanSummaryOut = Field(description="The plan: the live subscription's, else the default")
    subscription: SubscriptionOut | None = Field(
        description="The live subscription, else the last that ended; null: never subscribed"
    )
    usage_period_start: datetime | None = Field(
        description="Start of the period the usage is counted in (the subscription's current "
        "one); null: the meters' current periods"
    )
    usage_period_end: datetime | None = Field(description="End of that period")
    usage: list[MeterUsageOut] = Field(description="Per meter of the plan, by metric")
    credit_balance: int = Field(description="The credits available now", examples=[500])
    upcoming_invoice: UpcomingInvoiceOut | None = Field(
        description="The preview of the next invoice; null: none will be issued"
    )
    recent_payments: list[PaymentOut] = Field(description="The latest payments, newest first")

    @classmethod
    def of(cls, overview: BillingOverview) -> BillingOverviewOut:
        period = overview.usage_period
        return cls(
            organization_id=overview.organization.id,
            plan=PlanSummaryOut(code=overview.plan.code, name=overview.plan.name),
            subscription=SubscriptionOut.of(overview.subscription)
            if overview.subscription is not None
            else None,
            usage_period_start=period[0] if period else None,
            usage_period_end=period[1] if period else None,
            usage=[
                MeterUsageOut(
                    metric=m.metric,
                    used=m.used,
                    included=m.included,
                    over=m.over,
                    included_per=m.included_per,
                )
                for m in overview.usage
            ],
            credit_balance=overview.credit_balance,
            upcoming_invoice=UpcomingInvoiceOut.of(overview.upcoming_invoice)
            if overview.upcoming_invoice is not None
            else None,
            recent_payments=[PaymentOut.of(p) for p in overview.recent_payments],
        )

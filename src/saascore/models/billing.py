"""Subscriptions, invoices with gapless numbers, payments and provider webhook events."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from saascore.kit.ids import new_id
from saascore.kit.types import str_enum
from saascore.models.base import Base, TenantMixin, TimestampMixin, non_negative, tenant_fk
from saascore.models.catalog import BillingCycle
from saascore.models.enums import PaymentProvider, SubscriptionStatus

if TYPE_CHECKING:
    from saascore.models.catalog import SubscriptionPlan

__all__ = [
    "LIVE_SUBSCRIPTION_STATUSES",
    "Invoice",
    "InvoiceLine",
    "InvoiceSequence",
    "InvoiceStatus",
    "Payment",
    "PaymentMethod",
    "PaymentProvider",
    "PaymentStatus",
    "Subscription",
    "TransactionType",
    "WebhookEvent",
    "WebhookOutcome",
]


class PaymentMethod(StrEnum):
    CREDIT_CARD = "credit_card"
    BANK_TRANSFER = "bank_transfer"
    MOBILE_MONEY = "mobile_money"
    CASH = "cash"
    WALLET = "wallet"
    CREDITS = "credits"
    OTHER = "other"


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    OVERDUE = "overdue"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"
    REFUNDED = "refunded"


class PaymentStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


class TransactionType(StrEnum):
    SUBSCRIPTION = "subscription"
    CREDIT_PURCHASE = "credit_purchase"
    ONE_TIME = "one_time"
    REFUND = "refund"


class WebhookOutcome(StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


#: The statuses of a subscription that still holds its organisation: it may bill, be paid or
#: resume. An organisation has at most one such subscription (a partial unique index); a new
#: one starts once the last has ended (canceled, expired or incomplete_expired).
LIVE_SUBSCRIPTION_STATUSES: tuple[SubscriptionStatus, ...] = (
    SubscriptionStatus.TRIALING,
    SubscriptionStatus.ACTIVE,
    SubscriptionStatus.PAST_DUE,
    SubscriptionStatus.UNPAID,
    SubscriptionStatus.PAUSED,
    SubscriptionStatus.INCOMPLETE,
    SubscriptionStatus.SUSPENDED,
)
_LIVE = sa.text(
    "status IN (" + ", ".join(f"'{status.value}'" for status in LIVE_SUBSCRIPTION_STATUSES) + ")"
)


class Subscription(TenantMixin, TimestampMixin, Base):
    """An organisation's subscription to a plan (seeds 002, 003, 004 unified)."""

    __tablename__ = "subscriptions"

    plan_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("subscription_plans.id", ondelete="RESTRICT")
    )
    status: Mapped[SubscriptionStatus] = mapped_column(
        str_enum(SubscriptionStatus, "status"), default=SubscriptionStatus.ACTIVE
    )
    billing_cycle: Mapped[BillingCycle] = mapped_column(
        str_enum(BillingCycle, "billing_cycle"), default=BillingCycle.MONTHLY
    )
    currency: Mapped[str] = mapped_column(sa.String(3), default="USD")
    #: The price per cycle when the subscription was made, in minor units.
    unit_amount: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    quantity: Mapped[int] = mapped_column(default=1)
    payment_method: Mapped[PaymentMethod | None] = mapped_column(
        str_enum(PaymentMethod, "payment_method")
    )
    started_at: Mapped[datetime]
    ends_at: Mapped[datetime | None]
    current_period_start: Mapped[datetime]
    current_period_end: Mapped[datetime]
    next_billing_at: Mapped[datetime | None]
    trial_start: Mapped[datetime | None]
    trial_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False)
    canceled_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    provider: Mapped[PaymentProvider] = mapped_column(
        str_enum(PaymentProvider, "provider"), default=PaymentProvider.MOCK
    )
    provider_subscription_id: Mapped[str | None] = mapped_column(sa.String(255))
    provider_customer_id: Mapped[str | None] = mapped_column(sa.String(255))
    provider_price_id: Mapped[str | None] = mapped_column(sa.String(255))
    #: The provider's own time of the last snapshot of it that was applied: an older one,
    #: delivered late, is stored and ignored.
    provider_updated_at: Mapped[datetime | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)

    plan: Mapped[SubscriptionPlan] = relationship(lazy="raise")

    __table_args__ = (
        sa.UniqueConstraint(
            "organization_id",
            "provider",
            "provider_subscription_id",
            name="uq_subscriptions_provider_subscription_id",
        ),
        *non_negative("unit_amount", "quantity"),
        sa.CheckConstraint("current_period_end >= current_period_start", name="period_order"),
        # One live subscription per organisation, whatever races to make a second one.
        sa.Index(
            "uq_subscriptions_live_organization_id",
            "organization_id",
            unique=True,
            postgresql_where=_LIVE,
            sqlite_where=_LIVE,
        ),
        # Seed 003's names.
        sa.Index("idx_subscription_tenant_status", "organization_id", "status"),
        sa.Index("idx_subscription_next_billing", "next_billing_at", "status"),
        sa.Index("ix_subscriptions_plan_id", "plan_id"),
        # Webhooks find a subscription by the provider's id before they know the organisation.
        sa.Index(
            "ix_subscriptions_provider_subscription_id", "provider", "provider_subscription_id"
        ),
    )


class InvoiceSequence(Base):
    """The next number of a gapless invoice series (`INV-2026` -> 1, 2, 3, ...).

    Numbers are taken under this row's lock in the transaction that issues the invoice, so a
    rolled-back invoice gives its number back and the series has no gaps.
    """

    __tablename__ = "invoice_sequences"

    series: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    last_number: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())

    __table_args__ = (*non_negative("last_number"),)


class Invoice(TenantMixin, TimestampMixin, Base):
    """An invoice (seed 003). `number` is assigned at issue from `invoice_sequences`."""

    __tablename__ = "invoices"

    number: Mapped[str | None] = mapped_column(sa.String(64))
    subscription_id: Mapped[uuid.UUID | None]
    status: Mapped[InvoiceStatus] = mapped_column(
        str_enum(InvoiceStatus, "status"), default=InvoiceStatus.DRAFT
    )
    currency: Mapped[str] = mapped_column(sa.String(3))
    issue_date: Mapped[date | None]
    due_date: Mapped[date | None]
    paid_at: Mapped[datetime | None]
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]
    subtotal: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    discount_amount: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: The organisation's tax rate the lines' taxes were computed at, in basis points.
    tax_rate_bps: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    tax_amount: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    total: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    amount_paid: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    amount_due: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    locale: Mapped[str] = mapped_column(sa.String(16), default="en")
    notes: Mapped[str | None] = mapped_column(sa.Text)
    #: Notes in other languages, by locale (seed 003's `notes_ar` is `{"ar": ...}`).
    notes_localized: Mapped[dict[str, Any]] = mapped_column(default=dict)
    provider: Mapped[PaymentProvider | None] = mapped_column(str_enum(PaymentProvider, "provider"))
    provider_invoice_id: Mapped[str | None] = mapped_column(sa.String(255))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)

    lines: Mapped[list[InvoiceLine]] = relationship(
        lazy="raise", order_by="InvoiceLine.position", cascade="all, delete-orphan"
    )

    __table_args__ = (
        sa.UniqueConstraint("organization_id", "number"),
        tenant_fk("subscription_id", "subscriptions"),
        *non_negative("discount_amount", "amount_paid", "tax_rate_bps"),
        sa.CheckConstraint("total = subtotal - discount_amount + tax_amount", name="total_adds_up"),
        sa.CheckConstraint("amount_due = total - amount_paid", name="due_adds_up"),
        # A draft may hold more credit lines than charges while it is being built; an issued
        # invoice never owes a negative amount, and is never paid above its total.
        sa.CheckConstraint(
            "status = 'draft' OR (subtotal >= 0 AND tax_amount >= 0 AND total >= 0 "
            "AND amount_due >= 0)",
            name="issued_totals_non_negative",
        ),
        # Seed 003's names.
        sa.Index("idx_invoice_tenant_status", "organization_id", "status"),
        sa.Index("idx_invoice_due_date_status", "due_date", "status"),
        sa.Index(
            "ix_invoices_organization_id_subscription_id", "organization_id", "subscription_id"
        ),
    )


class InvoiceLine(TenantMixin, Base):
    """A line of an invoice (seed 003's `line_items`, as rows)."""

    __tablename__ = "invoice_lines"

    invoice_id: Mapped[uuid.UUID]
    position: Mapped[int] = mapped_column(default=0)
    description: Mapped[str] = mapped_column(sa.Text)
    metric: Mapped[str | None] = mapped_column(sa.String(100))
    quantity: Mapped[int] = mapped_column(sa.BigInteger, default=1)
    unit_amount: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: `quantity * unit_amount`, in minor units: negative for a credit (a proration credit).
    amount: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: The line's discount, rounded once (0 until coupons come).
    discount_amount: Mapped[int] = mapped_column(
        sa.BigInteger, default=0, server_default=sa.text("0")
    )
    #: The line's tax, `apply_rate(amount - discount_amount, rate)`, rounded once.
    tax_amount: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)

    __table_args__ = (
        tenant_fk("invoice_id", "invoices", ondelete="CASCADE"),
        # A credit (a proration's unused time) is a line with a negative amount.
        *non_negative("quantity"),
        sa.Index("ix_invoice_lines_organization_id_invoice_id", "organization_id", "invoice_id"),
    )


class Payment(TenantMixin, TimestampMixin, Base):
    """A payment (seed 002 payment history, seed 003 payments)."""

    __tablename__ = "payments"

    invoice_id: Mapped[uuid.UUID | None]
    subscription_id: Mapped[uuid.UUID | None]
    plan_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("subscription_plans.id", ondelete="SET NULL")
    )
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    refunded_amount: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    currency: Mapped[str] = mapped_column(sa.String(3))
    status: Mapped[PaymentStatus] = mapped_column(
        str_enum(PaymentStatus, "status"), default=PaymentStatus.PENDING
    )
    method: Mapped[PaymentMethod] = mapped_column(
        str_enum(PaymentMethod, "method"), default=PaymentMethod.CREDIT_CARD
    )
    provider: Mapped[PaymentProvider] = mapped_column(
        str_enum(PaymentProvider, "provider"), default=PaymentProvider.MOCK
    )
    transaction_type: Mapped[TransactionType] = mapped_column(
        str_enum(TransactionType, "transaction_type"), default=TransactionType.SUBSCRIPTION
    )
    #: The provider's id: Stripe payment intent, Lemon Squeezy order, Tharwatt transaction.
    provider_payment_id: Mapped[str | None] = mapped_column(sa.String(255))
    provider_customer_id: Mapped[str | None] = mapped_column(sa.String(255))
    provider_subscription_id: Mapped[str | None] = mapped_column(sa.String(255))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    credits_awarded: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    description: Mapped[str | None] = mapped_column(sa.Text)
    failure_reason: Mapped[str | None] = mapped_column(sa.Text)
    paid_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)

    __table_args__ = (
        sa.UniqueConstraint("organization_id", "provider", "provider_payment_id"),
        sa.UniqueConstraint("organization_id", "idempotency_key"),
        tenant_fk("invoice_id", "invoices"),
        tenant_fk("subscription_id", "subscriptions"),
        *non_negative("amount", "refunded_amount", "credits_awarded"),
        sa.CheckConstraint("refunded_amount <= amount", name="refund_within_amount"),
        # Seed 003's names.
        sa.Index("idx_payment_tenant_status", "organization_id", "status"),
        sa.Index("idx_payment_created", "created_at"),
        sa.Index("ix_payments_organization_id_invoice_id", "organization_id", "invoice_id"),
        sa.Index(
            "ix_payments_organization_id_subscription_id", "organization_id", "subscription_id"
        ),
        sa.Index("ix_payments_plan_id", "plan_id"),
        sa.Index("ix_payments_provider_payment_id", "provider", "provider_payment_id"),
    )


class WebhookEvent(Base):
    """An event received from a payment provider, stored once per provider event id.

    Global, not a tenant table: the organisation is known only once the payload is read.
    """

    __tablename__ = "webhook_events"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    provider: Mapped[PaymentProvider] = mapped_column(str_enum(PaymentProvider, "provider"))
    event_id: Mapped[str] = mapped_column(sa.String(255))
    event_type: Mapped[str] = mapped_column(sa.String(100))
    organization_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="SET NULL"), index=True
    )
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: The event as saascore parsed it from the verified body (`providers.codec`), so that a
    #: replay applies it again without the signature.
    parsed: Mapped[dict[str, Any] | None]
    outcome: Mapped[WebhookOutcome] = mapped_column(
        str_enum(WebhookOutcome, "outcome"), default=WebhookOutcome.RECEIVED
    )
    error: Mapped[str | None] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(default=1)
    received_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())
    processed_at: Mapped[datetime | None]

    __table_args__ = (sa.UniqueConstraint("provider", "event_id"),)

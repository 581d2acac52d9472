"""The one protocol every payment provider implements, and what its webhooks become.

A provider (mock, Stripe, Lemon Squeezy) is an adapter: it starts checkouts and portal
sessions at the provider, changes subscriptions there, and turns the provider's webhooks into
`ProviderEvent`s, saascore's own words for what happened. The billing domain stays the single
source of truth: `providers.webhooks` applies a `ProviderEvent` through billing's services, so
the events, audit entries and tenant notices follow as for any other change.

An adapter does no database work. It talks to its provider, verifies signatures and parses;
everything stateful (which organisation a customer belongs to, whether an event was seen,
whether it is older than the state it would change) is decided above it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from saascore.models.catalog import BillingCycle
from saascore.models.enums import PaymentProvider

__all__ = [
    "CheckoutMode",
    "CheckoutRequest",
    "CheckoutSession",
    "Customer",
    "EventKind",
    "PaymentProviderAdapter",
    "ProviderEvent",
    "ProviderPayment",
    "ProviderSubscription",
    "ProviderSubscriptionStatus",
]


class CheckoutMode(StrEnum):
    """A checkout sells a subscription to a plan, or one payment (a credit pack)."""

    SUBSCRIPTION = "subscription"
    PAYMENT = "payment"


class EventKind(StrEnum):
    """What a provider's webhook means to saascore, whatever the provider calls it.

    Stripe `checkout.session.completed` and Lemon Squeezy `order_created` (for a one-off order)
    are both `ORDER_PAID` when they carry a paid one-off purchase, and `CHECKOUT_COMPLETED` when
    they finish a subscription checkout (the subscription itself follows in its own event)."""

    #: A subscription checkout finished: the customer is linked to the organisation.
    CHECKOUT_COMPLETED = "checkout_completed"
    #: A one-off purchase was paid (a credit pack): `payment` says what, `pack` which.
    ORDER_PAID = "order_paid"
    #: The provider's subscription now looks like `subscription` (created, updated, cancelled
    #: at the period's end, plan changed, resumed): a full snapshot, not a delta.
    SUBSCRIPTION_UPDATED = "subscription_updated"
    #: The provider's subscription ended (Stripe `deleted`, Lemon Squeezy `expired`).
    SUBSCRIPTION_ENDED = "subscription_ended"
    #: A subscription's invoice was paid: `payment` has the amount and the period.
    PAYMENT_SUCCEEDED = "payment_succeeded"
    #: A subscription's payment failed: `payment.failure_reason` says why.
    PAYMENT_FAILED = "payment_failed"
    #: A type saascore does not act on: stored and acknowledged.
    UNHANDLED = "unhandled"


class ProviderSubscriptionStatus(StrEnum):
    """A provider's subscription status, in saascore's words (each adapter maps its own)."""

    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    #: Paused or unpaid at the provider: saascore suspends.
    PAUSED = "paused"
    #: Canceled and ended (a cancellation at the period's end is `ACTIVE` with
    #: `cancel_at_period_end` until it ends).
    CANCELED = "canceled"
    #: Never paid for (Stripe `incomplete`, `incomplete_expired`).
    INCOMPLETE = "incomplete"


@dataclass(frozen=True, slots=True)
class Customer:
    """The organisation as the provider's customer: what a provider needs to make one."""

    organization_id: uuid.UUID
    name: str
    email: str | None = None


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    """A checkout to start at the provider.

    `price_id` is the provider's price (Stripe) or variant (Lemon Squeezy) id, read from the
    plan catalog (`plan_prices`) or the credit pack. The organisation's id goes into the
    checkout's signed custom data (Stripe `metadata` and `client_reference_id`, Lemon Squeezy
    `checkout_data.custom`), so the webhooks that follow name it."""

    organization_id: uuid.UUID
    mode: CheckoutMode
    price_id: str
    success_url: str
    cancel_url: str
    #: The provider's customer when the organisation has one already.
    customer_id: str | None = None
    customer_email: str | None = None
    #: What saascore sells, echoed back in the webhooks' custom data: the plan and cycle of a
    #: subscription, or the credit pack's code.
    plan: str | None = None
    cycle: BillingCycle | None = None
    pack: str | None = None
    #: Sent as the provider's idempotency key where it has one.
    idempotency_key: str | None = None
    #: What the checkout charges, in minor units of `currency`, as saascore prices it (the
    #: mock charges it; real providers charge their own price and ignore it).
    amount: int | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    """A checkout started at the provider: send the customer to `url`."""

    id: str
    url: str


@dataclass(frozen=True, slots=True)
class ProviderSubscription:
    """A provider's subscription as saascore reads it: from a webhook or from its API."""

    id: str
    customer_id: str
    status: ProviderSubscriptionStatus
    #: The provider's price or variant id: the plan and cycle, through the catalog.
    price_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    ended_at: datetime | None = None
    trial_end: datetime | None = None
    #: The organisation named in the subscription's custom data, when the body was signed.
    organization_id: uuid.UUID | None = None
    #: When the provider last changed this object (its own clock), for out-of-order delivery.
    updated_at: datetime | None = None
    #: When the subscription began at the provider, if it says: a period the intake derives
    #: from the period's end never starts before it.
    started_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProviderPayment:
    """A payment at the provider: a paid or failed subscription invoice, or a one-off order."""

    #: The provider's id of the payment (Stripe invoice or payment intent, Lemon Squeezy
    #: order or subscription invoice): recorded once per organisation.
    id: str
    #: Minor units of `currency` (upper case).
    amount: int
    currency: str
    customer_id: str | None = None
    subscription_id: str | None = None
    #: The period the payment pays for: saascore's invoice for that period is the one paid.
    period_start: datetime | None = None
    period_end: datetime | None = None
    failure_reason: str | None = None
    #: A one-off purchase's credit pack code, from signed custom data.
    pack: str | None = None
    price_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A verified webhook, parsed: stored in `webhook_events` and applied once.

    `occurred_at` is the provider's own time for the event (Stripe's `created`, Lemon
    Squeezy's object `updated_at`); with the object's `updated_at` it orders deliveries that
    arrive out of order."""

    provider: PaymentProvider
    #: The provider's event id: unique per provider (Lemon Squeezy has none, so its adapter
    #: derives a stable one from the signed body).
    id: str
    #: The provider's own name for the type (`invoice.paid`, `subscription_created`).
    type: str
    kind: EventKind
    occurred_at: datetime
    #: The organisation named in the event's signed custom data, if any.
    organization_id: uuid.UUID | None = None
    customer_id: str | None = None
    checkout_id: str | None = None
    subscription: ProviderSubscription | None = None
    payment: ProviderPayment | None = None
    #: The parsed body, stored as it came.
    payload: Mapping[str, Any] = field(default_factory=dict)
    #: False when `occurred_at` is saascore's clock, not the provider's (reconciliation
    #: reads a list that carries no update time): such an event never sets the
    #: subscription's provider clock, so a later webhook is never judged older by it.
    provider_timed: bool = True


@runtime_checkable
class PaymentProviderAdapter(Protocol):
    """What saascore asks of a payment provider.

    Failures to reach the provider raise `ProviderUnavailable`; a webhook that fails
    verification raises `WebhookRejected` (both in `providers.errors`)."""

    @property
    def name(self) -> PaymentProvider: ...

    async def create_customer(self, customer: Customer) -> str:
        """Make the organisation a customer at the provider; its id (seed 004's
        `get_or_create_stripe_customer` keeps the id on the organisation and calls this once)."""
        ...

    async def create_checkout(self, request: CheckoutRequest) -> CheckoutSession:
        """Start a checkout for a plan and cycle, or a credit pack."""
        ...

    async def create_portal_session(self, customer_id: str, return_url: str) -> str:
        """A customer-portal session for the customer: its URL."""
        ...

    async def cancel_subscription(self, subscription_id: str, *, at_period_end: bool) -> None:
        """Cancel at the provider, at the period's end or now."""
        ...

    async def resume_subscription(self, subscription_id: str) -> None:
        """Withdraw a cancellation at the period's end."""
        ...

    async def change_plan(self, subscription_id: str, price_id: str) -> None:
        """Move the provider's subscription to another price or variant."""
        ...

    async def list_subscriptions(self) -> Sequence[ProviderSubscription]:
        """Every subscription the provider holds for this account (for reconciliation)."""
        ...

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, *, now: datetime
    ) -> ProviderEvent:
        """Verify the signature over the raw `body` (and its timestamp against `now`), then
        parse it. `headers` have lower-case names. Raises `WebhookRejected` for a missing,
        forged or stale signature, an altered or empty body, or one that is not JSON."""
        ...

    async def aclose(self) -> None:
        """Close the adapter's HTTP connections."""
        ...

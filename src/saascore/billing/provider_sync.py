"""What a payment provider's webhooks become in billing (docs/providers.md).

The provider bills; saascore keeps the books. `providers.webhooks` verifies and parses a
webhook, then calls these operations, which are billing's own rules:

- **A checkout completed**: the provider's customer is linked to the organisation
  (`organizations.billing_provider`, `provider_customer_id`, unique together). A customer
  already linked to another organisation is never moved (`provider_customer_conflict`).
  An organisation already a customer of the same provider takes the signed event's new
  customer in its place (`link_customer(replace=True)`): Lemon Squeezy makes one per email.
- **A subscription's snapshot** (`SubscriptionService.apply_provider_state`).
- **A payment succeeded**: saascore's invoice for the subscription's period pays it (found;
  or, when the billing run has not issued one, issued and finalised now, so the number stays
  saascore's and gapless), through `PaymentService.record` with the provider, its payment id
  and an idempotency key made from that id. The provider's payment pays the invoice up to
  what it owes. An invoice issued here for the provider's amount is that amount exactly:
  the provider charged its taxes already, so saascore adds none (tax source `provider`).
  The last paid moment is kept on the subscription, so a failure reported after a later
  success changes nothing.
- **A payment failed**: a failed payment is recorded on that invoice and the subscription
  goes `past_due`.
- **A one-off order paid**: the credit pack is bought (`CreditPackService.purchase`, with
  no saascore tax: the provider's) and paid; the payment grants its credits once.

Each operation is idempotent: applied again (a replay) it changes nothing.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.billing.errors import CustomerLinkedElsewhere, SubscriptionNotFound
from saascore.billing.invoices import (
    PROVIDER_TAX,
    TAX_SOURCE,
    InvoiceService,
    LineItem,
    LineKind,
)
from saascore.billing.packs import CreditPackService
from saascore.billing.payments import PaymentService
from saascore.billing.periods import as_utc
from saascore.billing.states import Trigger
from saascore.billing.subscriptions import SubscriptionService
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.money import Money
from saascore.models import (
    Invoice,
    InvoiceStatus,
    Organization,
    Payment,
    PaymentProvider,
    PaymentStatus,
    Subscription,
    SubscriptionStatus,
)

__all__ = [
    "PROVIDER_PAID_AT",
    "ProviderBilling",
    "ProviderCharge",
    "ProviderResult",
    "owner_columns",
    "owner_parameters",
]

#: Set in `Subscription.metadata` to the provider's time of the last successful payment.
PROVIDER_PAID_AT: Final = "provider_paid_at"
_KEY_LENGTH: Final = 255


@dataclass(frozen=True)
class ProviderCharge:
    """A payment at the provider, in billing's words."""

    provider: PaymentProvider
    #: The provider's payment id: recorded once per organisation.
    payment_id: str
    #: Minor units of `currency`.
    amount: int
    currency: str
    subscription_id: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    failure_reason: str | None = None
    #: The provider's own time of the payment.
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class ProviderResult:
    """What an operation did: `applied` False, with the `reason`, when it changed nothing."""

    applied: bool
    reason: str | None = None
    payment: Payment | None = None


def payment_key(provider: PaymentProvider, payment_id: str) -> str:
    """The idempotency key of the provider's payment `payment_id`."""
    return f"{provider.value}:{payment_id}"[:_KEY_LENGTH]


class ProviderBilling:
    """`core.provider_billing`: billing's operations for a payment provider's events."""

    def __init__(
        self,
        database: Database,
        subscriptions: SubscriptionService,
        invoices: InvoiceService,
        payments: PaymentService,
        packs: CreditPackService,
    ) -> None:
        self.database = database
        self.subscriptions = subscriptions
        self.invoices = invoices
        self.payments = payments
        self.packs = packs

    # --- customers -----------------------------------------------------------------------------
    async def organization_of_customer(
        self, provider: PaymentProvider, customer_id: str, *, session: AsyncSession | None = None
    ) -> uuid.UUID | None:
        """The organisation the provider's customer is linked to, if any."""
        async with self.database.scope(session, readonly=True) as s:
            return await s.scalar(
                sa.select(Organization.id).where(
                    Organization.billing_provider == provider,
                    Organization.provider_customer_id == customer_id,
                )
            )

    async def organization_of_subscription(
        self,
        provider: PaymentProvider,
        subscription_id: str,
        *,
        session: AsyncSession | None = None,
    ) -> uuid.UUID | None:
        """The organisation whose subscription mirrors the provider's `subscription_id`."""
        async with self.database.scope(session, readonly=True) as s:
            return await s.scalar(
                sa.select(Subscription.organization_id)
                .where(
                    Subscription.provider == provider,
                    Subscription.provider_subscription_id == subscription_id,
                )
                .limit(1)
            )

    async def owners(
        self,
        provider: PaymentProvider,
        customer_id: str | None,
        subscription_id: str | None,
        *,
        session: AsyncSession | None = None,
    ) -> tuple[uuid.UUID | None, uuid.UUID | None]:
        """`organization_of_customer` and `organization_of_subscription` in one query (None
        for an id not given): the webhook intake asks both of every event."""
        if customer_id is None and subscription_id is None:
            return None, None
        async with self.database.scope(session, readonly=True) as s:
            row = (
                await s.execute(_owners(), owner_parameters(provider, customer_id, subscription_id))
            ).one()
        return row[0], row[1]

    async def link_customer(
        self,
        org_id: uuid.UUID,
        provider: PaymentProvider,
        customer_id: str,
        *,
        replace: bool = False,
        session: AsyncSession | None = None,
    ) -> bool:
        """Link the provider's customer to the organisation (True when it was linked now).
        A customer of another organisation, or an organisation that is another customer of
        a provider already, is `provider_customer_conflict`; nothing moves. With `replace`,
        an organisation that is another customer of the SAME provider is linked to this one
        instead (Lemon Squeezy makes a customer per email its buyer types)."""
        async with self.database.scope(session) as s:
            organization = await s.scalar(
                sa.select(Organization).where(Organization.id == org_id).with_for_update()
            )
            if organization is None:
                raise CustomerLinkedElsewhere(f"no organisation {org_id}", organization=str(org_id))
            owner = await self.organization_of_customer(provider, customer_id, session=s)
            if owner is not None and owner != org_id:
                raise CustomerLinkedElsewhere(
                    "the provider's customer belongs to another organisation",
                    customer=customer_id,
                )
            if organization.provider_customer_id is not None:
                if (
                    organization.billing_provider == provider
                    and organization.provider_customer_id == customer_id
                ):
                    return False
                if not (replace and organization.billing_provider == provider):
                    raise CustomerLinkedElsewhere(
                        "the organisation is another customer of a payment provider already",
                        customer=customer_id,
                    )
            organization.billing_provider = provider
            organization.provider_customer_id = customer_id
            await s.flush()
            return True

    # --- payments ------------------------------------------------------------------------------
    async def payment_succeeded(
        self,
        org_id: uuid.UUID,
        charge: ProviderCharge,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> ProviderResult:
        """The provider was paid for the subscription's period (module docstring).
        `subscription_not_found` when the subscription is not known yet: the provider
        retries, and by then its snapshot has made it."""
        key = payment_key(charge.provider, charge.payment_id)
        async with self.database.scope(session) as s:
            subscription = await self._subscription(s, org_id, charge)
            if (found := await self.payments.by_key(org_id, key, session=s)) is not None:
                return ProviderResult(True, payment=found)
            _mark_paid_at(subscription, charge.occurred_at)
            invoice = await self._period_invoice(s, subscription, charge, actor)
            if invoice is None or invoice.status not in (
                InvoiceStatus.OPEN,
                InvoiceStatus.OVERDUE,
                InvoiceStatus.UNCOLLECTIBLE,
            ):
                await s.flush()
                return ProviderResult(True, "nothing owed for the period")
            amount = min(charge.amount, invoice.amount_due)
            if amount <= 0:
                await s.flush()
                return ProviderResult(True, "nothing owed for the period")
            payment = await self.payments.record(
                org_id,
                invoice.id,
                Money(amount, charge.currency.upper()),
                "card",
                key=key,
                provider_payment_id=charge.payment_id,
                provider=charge.provider,
                actor=actor,
                session=s,
            )
            return ProviderResult(True, payment=payment)

    async def payment_failed(
        self,
        org_id: uuid.UUID,
        charge: ProviderCharge,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> ProviderResult:
        """The provider could not collect the period's payment: a failed payment on
        saascore's invoice, and the subscription `past_due`. A failure older than the last
        success changes nothing."""
        key = payment_key(charge.provider, charge.payment_id)
        async with self.database.scope(session) as s:
            subscription = await self._subscription(s, org_id, charge)
            paid_at = subscription.metadata_.get(PROVIDER_PAID_AT)
            if (
                charge.occurred_at is not None
                and isinstance(paid_at, str)
                and as_utc(charge.occurred_at) <= datetime.fromisoformat(paid_at)
            ):
                return ProviderResult(False, "older than the last successful payment")
            payment = await self.payments.by_key(org_id, key, session=s)
            if payment is None:
                invoice = await self._period_invoice(s, subscription, charge, actor)
                if invoice is not None and invoice.status in (
                    InvoiceStatus.OPEN,
                    InvoiceStatus.OVERDUE,
                    InvoiceStatus.UNCOLLECTIBLE,
                ):
                    payment = await self.payments.record(
                        org_id,
                        invoice.id,
                        Money(max(charge.amount, 1), invoice.currency),
                        "card",
                        key=key,
                        status=PaymentStatus.FAILED,
                        failure_reason=(charge.failure_reason or "the provider declined it")[:1000],
                        provider_payment_id=charge.payment_id,
                        provider=charge.provider,
                        actor=actor,
                        session=s,
                    )
            status = subscription.status
            if status is SubscriptionStatus.ACTIVE:
                await self.subscriptions.transition(
                    org_id,
                    SubscriptionStatus.PAST_DUE,
                    Trigger.PAYMENT_FAILS,
                    when=(SubscriptionStatus.ACTIVE,),
                    actor=actor,
                    session=s,
                )
            elif status is SubscriptionStatus.TRIALING:
                await self.subscriptions.transition(
                    org_id,
                    SubscriptionStatus.PAST_DUE,
                    Trigger.TRIAL_ENDS_PAYMENT_FAILS,
                    when=(SubscriptionStatus.TRIALING,),
                    actor=actor,
                    session=s,
                )
            return ProviderResult(True, payment=payment)

    async def order_paid(
        self,
        org_id: uuid.UUID,
        pack: str,
        charge: ProviderCharge,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> ProviderResult:
        """A one-off order of the credit pack `pack` (a code) was paid: the pack is bought
        and its invoice paid, which grants the credits, once."""
        key = payment_key(charge.provider, charge.payment_id)
        async with self.database.scope(session) as s:
            if (found := await self.payments.by_key(org_id, key, session=s)) is not None:
                return ProviderResult(True, payment=found)
            invoice = await self.packs.purchase(
                org_id, pack, provider_taxed=True, actor=actor, session=s
            )
            amount = min(charge.amount, invoice.amount_due)
            if amount <= 0:
                return ProviderResult(True, "nothing owed for the order")
            payment = await self.payments.record(
                org_id,
                invoice.id,
                Money(amount, charge.currency.upper()),
                "card",
                key=key,
                provider_payment_id=charge.payment_id,
                provider=charge.provider,
                actor=actor,
                session=s,
            )
            return ProviderResult(True, payment=payment)

    # --- shared --------------------------------------------------------------------------------
    async def _subscription(
        self, s: AsyncSession, org_id: uuid.UUID, charge: ProviderCharge
    ) -> Subscription:
        subscription = None
        if charge.subscription_id is not None:
            subscription = await self.subscriptions.provider_subscription(
                org_id, charge.provider, charge.subscription_id, session=s
            )
        if subscription is None:
            raise SubscriptionNotFound(
                f"no subscription {charge.subscription_id!r} of {charge.provider.value} in "
                f"organisation {org_id} yet",
                organization=str(org_id),
            )
        return subscription

    async def _period_invoice(
        self, s: AsyncSession, subscription: Subscription, charge: ProviderCharge, actor: Actor
    ) -> Invoice | None:
        """saascore's invoice for the charge's period: the one issued, else one issued now
        for the provider's amount (None for nothing to bill)."""
        start = as_utc(charge.period_start or subscription.current_period_start)
        end = as_utc(charge.period_end or subscription.current_period_end)
        invoice = await s.scalar(
            sa.select(Invoice)
            .where(
                Invoice.organization_id == subscription.organization_id,
                Invoice.subscription_id == subscription.id,
                Invoice.period_start == start,
                Invoice.status.not_in((InvoiceStatus.DRAFT, InvoiceStatus.VOID)),
            )
            .order_by(Invoice.id.desc())
            .limit(1)
        )
        if invoice is not None or charge.amount <= 0:
            return invoice
        plan = subscription.plan
        draft = await self.invoices.create_draft(
            subscription.organization_id,
            subscription.currency,
            [
                LineItem(
                    f"{plan.name} ({subscription.billing_cycle.value}), "
                    f"{start:%Y-%m-%d} to {end:%Y-%m-%d}",
                    Money(charge.amount, charge.currency.upper()),
                    1,
                    start,
                    end,
                    kind=LineKind.PLAN,
                    metadata={
                        "plan": plan.code,
                        "subscription_id": str(subscription.id),
                        "provider": charge.provider.value,
                    },
                )
            ],
            subscription_id=subscription.id,
            period=(start, end),
            metadata={TAX_SOURCE: PROVIDER_TAX, "provider": charge.provider.value},
            session=s,
        )
        return await self.invoices.finalize_locked(s, draft, actor=actor)


def _mark_paid_at(subscription: Subscription, moment: datetime | None) -> None:
    if moment is None:
        return
    moment = as_utc(moment)
    previous = subscription.metadata_.get(PROVIDER_PAID_AT)
    if isinstance(previous, str) and datetime.fromisoformat(previous) >= moment:
        return
    subscription.metadata_ = {**subscription.metadata_, PROVIDER_PAID_AT: moment.isoformat()}


@functools.cache
def _owners() -> sa.Select[uuid.UUID, uuid.UUID]:
    """`ProviderBilling.owners`' statement, built once and run with `owner_parameters`."""
    return sa.select(*owner_columns())


def owner_columns() -> tuple[sa.ColumnElement[uuid.UUID], sa.ColumnElement[uuid.UUID]]:
    """`ProviderBilling.owners` as two scalar subqueries, run with `owner_parameters`: the
    organisation of the provider's customer, and the one whose subscription mirrors the
    provider's. A statement of one's own may carry them (the webhook intake's claim returns
    them), saving the round trip of a query of their own. An id not given is NULL, which
    matches no row."""
    of_customer = sa.select(Organization.id).where(
        Organization.billing_provider == sa.bindparam("owner_provider"),
        Organization.provider_customer_id == sa.bindparam("owner_customer"),
    )
    of_subscription = (
        sa.select(Subscription.organization_id)
        .where(
            Subscription.provider == sa.bindparam("owner_provider"),
            Subscription.provider_subscription_id == sa.bindparam("owner_subscription"),
        )
        .limit(1)
    )
    return (
        sa.type_coerce(of_customer.scalar_subquery(), Organization.id.type),
        sa.type_coerce(of_subscription.scalar_subquery(), Subscription.organization_id.type),
    )


def owner_parameters(
    provider: PaymentProvider, customer_id: str | None, subscription_id: str | None
) -> dict[str, object]:
    """The values of `owner_columns`' parameters."""
    return {
        "owner_provider": provider,
        "owner_customer": customer_id,
        "owner_subscription": subscription_id,
    }

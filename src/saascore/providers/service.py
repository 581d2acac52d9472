"""`PaymentProviderService` (`core.providers`): what a tenant asks of its payment provider.

- **The provider** is the deployment's (`SAASCORE_PAYMENT_PROVIDER`) for an organisation that
  has none yet; an organisation keeps the one it started with
  (`organizations.billing_provider`).
- **The customer** is made at the provider once and its id kept on the organisation (seed
  004's `get_or_create_stripe_customer`), under the organisation's row lock, so two
  checkouts at once make one customer.
- **A checkout** sells a plan at a cycle (its price in the organisation's currency, from the
  catalog's `plan_prices`) or a credit pack, and answers the provider's URL. What it sold
  arrives by webhook (`providers.webhooks`). A plan or pack without an id at the provider is
  422 `provider_price_missing`; a live subscription at a provider is changed, not bought
  again (409 `subscription_exists`). A tenant buys, or moves to, only a plan that is offered:
  active and listed in `/v1/plans`; a retired or unlisted one is 409 `plan_not_offered`, for an
  operator to give (`saascore subscriptions create`, `/v1/admin`).
- **Cancel, resume, change plan**: the provider is told first, then the same billing
  operation is applied here, so the answer shows it and the webhook that follows changes
  nothing. A plan change of a provider's subscription is the provider's to bill: saascore
  does not prorate it. A subscription saascore made itself (no provider's id) takes
  billing's own path.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

from saascore.billing.errors import (
    CreditPackCurrencyMismatch,
    CreditPackNotFound,
    InvalidTransition,
    PlanPriceMissing,
    SubscriptionExists,
    SubscriptionNotFound,
)
from saascore.billing.packs import CreditPackService
from saascore.billing.states import FINAL_STATUSES
from saascore.billing.subscriptions import ProviderState, SubscriptionService
from saascore.config import Settings
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.models import CreditPack, Organization, PlanPrice, Subscription, SubscriptionPlan
from saascore.models.catalog import BillingCycle
from saascore.models.enums import PaymentProvider
from saascore.plans.service import PlanService
from saascore.providers.base import CheckoutMode, CheckoutRequest, CheckoutSession, Customer
from saascore.providers.errors import (
    BillingCustomerMissing,
    PlanNotOffered,
    ProviderPriceMissing,
)
from saascore.providers.mock import pack_price_id, plan_price_id
from saascore.providers.registry import ProviderRegistry, url_name
from saascore.tenancy.errors import OrganizationNotFound
from saascore.tenancy.service import locked_organization

__all__ = ["SOLD_THROUGH", "PaymentProviderService", "StartedCheckout"]

#: The providers saascore sells through (the others are for records only).
SOLD_THROUGH: Final = frozenset(
    {PaymentProvider.MOCK, PaymentProvider.STRIPE, PaymentProvider.LEMON_SQUEEZY}
)


@dataclass(frozen=True)
class StartedCheckout:
    """A checkout started at `provider`: send the customer to `session.url`."""

    provider: PaymentProvider
    session: CheckoutSession


def _offered(plan: SubscriptionPlan) -> SubscriptionPlan:
    """`plan`, when a tenant may buy it or move to it: active and listed."""
    if not (plan.is_active and plan.is_public):
        raise PlanNotOffered(
            f"the {plan.code} plan is not offered: an operator subscribes organisations to it",
            plan=plan.code,
        )
    return plan


def _plan_price_id(provider: PaymentProvider, price: PlanPrice) -> str | None:
    if provider is PaymentProvider.MOCK:
        return plan_price_id(price.id)
    if provider is PaymentProvider.STRIPE:
        return price.stripe_price_id
    return price.lemon_squeezy_variant_id


def _pack_price_id(provider: PaymentProvider, pack: CreditPack) -> str | None:
    if provider is PaymentProvider.MOCK:
        return pack_price_id(pack.code)
    if provider is PaymentProvider.STRIPE:
        return pack.stripe_price_id
    return pack.lemon_squeezy_variant_id


class PaymentProviderService:
    """Checkouts, the customer portal and subscription changes at the provider (module
    docstring). Every method takes the organisation's id."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        registry: ProviderRegistry,
        plans: PlanService,
        packs: CreditPackService,
        subscriptions: SubscriptionService,
    ) -> None:
        self.database = database
        self.settings = settings
        self.registry = registry
        self.plans = plans
        self.packs = packs
        self.subscriptions = subscriptions

    async def customer(self, org_id: uuid.UUID) -> tuple[PaymentProvider, str]:
        """The organisation's provider and its customer id there, made once."""
        async with self.database.transaction() as s:
            organization = await locked_organization(s, org_id)
            provider = organization.billing_provider
            default = self.registry.default
            # An organisation keeps its provider; but the mock serves nobody outside mock mode.
            if (
                provider in SOLD_THROUGH
                and organization.provider_customer_id is not None
                and (provider is not PaymentProvider.MOCK or default is PaymentProvider.MOCK)
            ):
                assert provider is not None
                return provider, organization.provider_customer_id
            provider = default
            adapter = self.registry.get(provider)
            customer_id = await adapter.create_customer(
                Customer(organization.id, organization.name, organization.billing_email)
            )
            organization.billing_provider = provider
            organization.provider_customer_id = customer_id
            await s.flush()
            return provider, customer_id

    async def checkout(
        self,
        org_id: uuid.UUID,
        *,
        plan: str | None = None,
        cycle: BillingCycle | str = BillingCycle.MONTHLY,
        pack: str | None = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
    ) -> StartedCheckout:
        """Start a checkout for `plan` at `cycle`, or for the credit pack `pack`."""
        if (plan is None) == (pack is None):
            raise InvalidInput("a checkout is for a plan or for a credit pack", field="plan")
        cycle = BillingCycle(cycle)
        organization = await self._organization(org_id)
        currency = organization.currency
        plan_row = None
        if plan is not None:
            live = await self._live(org_id)
            if live is not None and live.provider_subscription_id is not None:
                raise SubscriptionExists(
                    "the organisation has a live subscription at its provider: change its plan",
                    subscription=str(live.id),
                )
            plan_row = _offered(await self.plans.get_by_code(plan))
        provider, customer_id = await self.customer(org_id)
        adapter = self.registry.get(provider)
        if plan_row is not None:
            price = next(
                (
                    p
                    for p in plan_row.prices
                    if p.is_active and p.billing_cycle == cycle and p.currency == currency
                ),
                None,
            )
            if price is None:
                raise PlanPriceMissing(
                    f"the {plan_row.code} plan has no {cycle.value} price in {currency}",
                    plan=plan_row.code,
                    billing_cycle=cycle.value,
                    currency=currency,
                )
            price_id = _plan_price_id(provider, price)
            mode, amount, what = CheckoutMode.SUBSCRIPTION, price.amount, plan_row.code
        else:
            assert pack is not None
            pack_row = await self.packs.get(pack)
            if not pack_row.active:
                raise CreditPackNotFound(f"no credit pack {pack} on sale", credit_pack=pack)
            if pack_row.currency != currency:
                raise CreditPackCurrencyMismatch(
                    f"credit pack {pack_row.code} is priced in {pack_row.currency}; this "
                    f"organisation pays in {currency}",
                    credit_pack=pack_row.code,
                    currency=pack_row.currency,
                    organization_currency=currency,
                )
            price_id = _pack_price_id(provider, pack_row)
            mode, amount, what = CheckoutMode.PAYMENT, pack_row.price, pack_row.code
        if price_id is None:
            raise ProviderPriceMissing(
                f"{what} has no price id at {url_name(provider)}: set it in the catalog",
                provider=url_name(provider),
                item=what,
            )
        session = await adapter.create_checkout(
            CheckoutRequest(
                organization_id=org_id,
                mode=mode,
                price_id=price_id,
                success_url=success_url or self.settings.checkout_success_url,
                cancel_url=cancel_url or self.settings.checkout_cancel_url,
                customer_id=customer_id,
                customer_email=organization.billing_email,
                plan=plan,
                cycle=cycle if plan is not None else None,
                pack=pack,
                amount=amount,
                currency=currency,
            )
        )
        return StartedCheckout(provider, session)

    async def portal(self, org_id: uuid.UUID, *, return_url: str | None = None) -> str:
        """A customer-portal session's URL (409 `billing_customer_missing` before the first
        checkout)."""
        organization = await self._organization(org_id)
        provider = organization.billing_provider
        if provider not in SOLD_THROUGH or organization.provider_customer_id is None:
            raise BillingCustomerMissing(
                "the organisation is no payment provider's customer yet: check out first"
            )
        assert provider is not None
        return await self.registry.get(provider).create_portal_session(
            organization.provider_customer_id, return_url or self.settings.checkout_success_url
        )

    async def cancel(
        self, org_id: uuid.UUID, *, at_period_end: bool = True, actor: Actor = SYSTEM
    ) -> Subscription:
        """Cancel at the provider, then here (`SubscriptionService.cancel`)."""
        subscription = await self.subscriptions.get(org_id)
        if self._at_provider(subscription):
            assert subscription.provider_subscription_id is not None
            await self.registry.get(subscription.provider).cancel_subscription(
                subscription.provider_subscription_id, at_period_end=at_period_end
            )
        return await self.subscriptions.cancel(org_id, at_period_end=at_period_end, actor=actor)

    async def resume(self, org_id: uuid.UUID, *, actor: Actor = SYSTEM) -> Subscription:
        """Withdraw a cancellation at the period's end, at the provider, then here."""
        subscription = await self.subscriptions.get(org_id)
        if self._at_provider(subscription) and subscription.cancel_at_period_end:
            assert subscription.provider_subscription_id is not None
            await self.registry.get(subscription.provider).resume_subscription(
                subscription.provider_subscription_id
            )
        return await self.subscriptions.resume(org_id, actor=actor)

    async def change_plan(
        self, org_id: uuid.UUID, plan: str, *, actor: Actor = SYSTEM
    ) -> Subscription:
        """Move the subscription to `plan`, at the same cycle: at the provider and here,
        without proration (the provider bills it). A subscription of saascore's own takes
        `SubscriptionService.change_plan`."""
        subscription = await self.subscriptions.get(org_id)
        plan_row = _offered(await self.plans.get_by_code(plan))
        if subscription.provider_subscription_id is None:
            return await self.subscriptions.change_plan(org_id, plan, actor=actor)
        if subscription.status in FINAL_STATUSES:
            raise InvalidTransition(
                subscription.status.value, subscription.status.value, "plan change"
            )
        price = next(
            (
                p
                for p in plan_row.prices
                if p.is_active
                and p.billing_cycle == subscription.billing_cycle
                and p.currency == subscription.currency
            ),
            None,
        )
        if price is None:
            raise PlanPriceMissing(
                f"the {plan_row.code} plan has no {subscription.billing_cycle.value} price in "
                f"{subscription.currency}",
                plan=plan_row.code,
                billing_cycle=subscription.billing_cycle.value,
                currency=subscription.currency,
            )
        price_id = _plan_price_id(subscription.provider, price)
        if price_id is None:
            raise ProviderPriceMissing(
                f"{plan_row.code} has no price id at {url_name(subscription.provider)}",
                provider=url_name(subscription.provider),
                item=plan_row.code,
            )
        if self._at_provider(subscription):
            await self.registry.get(subscription.provider).change_plan(
                subscription.provider_subscription_id, price_id
            )
        done = await self.subscriptions.apply_provider_state(
            org_id,
            ProviderState(
                provider=subscription.provider,
                subscription_id=subscription.provider_subscription_id,
                plan=plan_row.code,
                cycle=subscription.billing_cycle,
                status=subscription.status,
                current_period_start=subscription.current_period_start,
                current_period_end=subscription.current_period_end,
                customer_id=subscription.provider_customer_id,
                price_id=price_id,
                cancel_at_period_end=subscription.cancel_at_period_end,
                canceled_at=subscription.canceled_at,
                trial_end=subscription.trial_end,
            ),
            actor=actor,
        )
        assert done.subscription is not None
        return done.subscription

    # --- shared --------------------------------------------------------------------------------
    def _at_provider(self, subscription: Subscription) -> bool:
        """Whether the subscription lives at a real provider (the mock's is saascore's)."""
        return (
            subscription.provider_subscription_id is not None
            and subscription.provider in SOLD_THROUGH
            and subscription.provider is not PaymentProvider.MOCK
            and subscription.status not in FINAL_STATUSES
        )

    async def _organization(self, org_id: uuid.UUID) -> Organization:
        async with self.database.session(readonly=True) as s:
            organization = await s.get(Organization, org_id)
        if organization is None:
            raise OrganizationNotFound(f"no organisation {org_id}", organization=str(org_id))
        return organization

    async def _live(self, org_id: uuid.UUID) -> Subscription | None:
        try:
            subscription = await self.subscriptions.get(org_id)
        except SubscriptionNotFound:
            return None
        return None if subscription.status in FINAL_STATUSES else subscription

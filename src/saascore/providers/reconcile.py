"""Reconciliation: the provider's subscriptions beside saascore's, and the provider's word applied.

A webhook can be lost (an endpoint down past the provider's retries, a secret rotated, a
deployment that started late). `Reconciler.compare(provider)` lists the provider's
subscriptions (`adapter.list_subscriptions()`) and saascore's of that provider, matched by
the provider's subscription id, and reports every `Difference`: the status, the plan (the
provider's price or variant id, through the plan catalog, against saascore's plan and cycle),
the period's end (where the provider tells the whole period, as the intake takes it only
then), `cancel_at_period_end`, and a subscription missing on either side.

`Reconciler.fix(provider)` applies the provider's state of each subscription that differs
through the webhook intake's own apply path (`ProviderWebhooks.apply`): a provider snapshot
becomes a `SUBSCRIPTION_UPDATED` event (`SUBSCRIPTION_ENDED` when it has ended), and a live
subscription of saascore's that the provider no longer has becomes a `SUBSCRIPTION_ENDED`.
The rules (which organisation may be trusted, which snapshot is older, what ending means)
are the intake's and billing's, written once; the actor is `reconciliation`, so every change
is audited as reconciliation's. Each subscription is fixed in a transaction of its own, and
a snapshot the intake refuses (an organisation it cannot trust, a subscription that ended in
saascore) is reported with the intake's reason, not forced. A fix never moves the
subscription's provider clock (`provider_updated_at`) past what the provider said: the
provider's list carries no update time, and saascore's clock, were it ahead of the
provider's, would make a later webhook look older.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import joinedload

from saascore.billing.periods import as_utc
from saascore.billing.states import FINAL_STATUSES
from saascore.kit.actors import Actor
from saascore.kit.db import Database
from saascore.kit.time import utcnow
from saascore.models import Subscription
from saascore.models.enums import PaymentProvider, SubscriptionStatus
from saascore.plans.errors import ProviderPriceUnknown
from saascore.plans.service import PlanService
from saascore.providers.base import (
    EventKind,
    ProviderEvent,
    ProviderSubscription,
    ProviderSubscriptionStatus,
)
from saascore.providers.errors import UnknownProvider
from saascore.providers.registry import ProviderRegistry, url_name
from saascore.providers.webhooks import PROVIDER_STATUS, ProviderWebhooks

__all__ = ["Difference", "DifferenceKind", "Fix", "Reconciler", "reconciliation_actor"]


class DifferenceKind(StrEnum):
    """What differs between the provider's subscription and saascore's."""

    MISSING_IN_SAASCORE = "missing_in_saascore"
    MISSING_AT_PROVIDER = "missing_at_provider"
    STATUS = "status"
    PLAN = "plan"
    PERIOD_END = "current_period_end"
    CANCEL_AT_PERIOD_END = "cancel_at_period_end"


@dataclass(frozen=True, slots=True)
class Difference:
    """One difference of one subscription: the provider's value beside saascore's (None
    where that side has no subscription)."""

    subscription_id: str
    kind: DifferenceKind
    provider_value: str | None
    saascore_value: str | None
    organization_id: uuid.UUID | None = None

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found["kind"] = self.kind.value
        found["organization_id"] = str(self.organization_id) if self.organization_id else None
        return found


@dataclass(frozen=True, slots=True)
class Fix:
    """What applying the provider's state of one subscription did: `outcome` is the intake's
    (`processed`, or `ignored` with its `reason`)."""

    subscription_id: str
    event: EventKind
    outcome: str
    reason: str | None = None
    organization_id: uuid.UUID | None = None

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found["event"] = self.event.value
        found["organization_id"] = str(self.organization_id) if self.organization_id else None
        return found


def reconciliation_actor(provider: PaymentProvider) -> Actor:
    """Who the audit log says made a change that reconciliation applied."""
    return Actor("reconciliation", provider.value)


def _reconcilable(provider: PaymentProvider | str) -> PaymentProvider:
    provider = PaymentProvider(provider)
    if provider not in (PaymentProvider.STRIPE, PaymentProvider.LEMON_SQUEEZY):
        raise UnknownProvider(
            f"{provider.value} keeps no subscriptions to reconcile: stripe or lemonsqueezy",
            provider=provider.value,
        )
    return provider


def _second(moment: datetime | None) -> str | None:
    """A period's end to the second (providers keep whole seconds), in UTC."""
    return as_utc(moment).replace(microsecond=0).isoformat() if moment is not None else None


@dataclass(frozen=True, slots=True)
class _Side:
    provider: Mapping[str, ProviderSubscription]
    saascore: Mapping[str, Subscription]


class Reconciler:
    """`core.reconciler`: compare a provider's subscriptions with saascore's, and fix them."""

    def __init__(
        self,
        database: Database,
        registry: ProviderRegistry,
        plans: PlanService,
        intake: ProviderWebhooks,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.registry = registry
        self.plans = plans
        self.intake = intake
        self.clock = clock

    async def compare(self, provider: PaymentProvider | str) -> list[Difference]:
        """Every difference between the provider's subscriptions and saascore's of that
        provider (`provider_not_configured` without its settings, `provider_unavailable`
        when it cannot be listed)."""
        return await self._differences(_reconcilable(provider), await self._sides(provider))

    async def fix(self, provider: PaymentProvider | str) -> tuple[list[Difference], list[Fix]]:
        """The differences, then the provider's state of each subscription that differs
        applied through the webhook intake (module docstring)."""
        source = _reconcilable(provider)
        sides = await self._sides(source)
        differences = await self._differences(source, sides)
        fixes: list[Fix] = []
        actor = reconciliation_actor(source)
        for subscription_id in dict.fromkeys(d.subscription_id for d in differences):
            event = self._event(source, subscription_id, sides)
            receipt = await self.intake.apply(event, actor=actor)
            fixes.append(
                Fix(
                    subscription_id,
                    event.kind,
                    receipt.outcome.value,
                    receipt.reason,
                    receipt.organization_id,
                )
            )
        return differences, fixes

    # --- reading both sides --------------------------------------------------------------------
    async def _sides(self, provider: PaymentProvider | str) -> _Side:
        source = _reconcilable(provider)
        listed = await self.registry.get(source).list_subscriptions()
        async with self.database.session(readonly=True) as s:
            rows = (
                await s.scalars(
                    sa.select(Subscription)
                    .where(
                        Subscription.provider == source,
                        Subscription.provider_subscription_id.is_not(None),
                    )
                    .options(joinedload(Subscription.plan))
                    .order_by(Subscription.id)
                )
            ).all()
        ours: dict[str, Subscription] = {}
        for row in rows:
            assert row.provider_subscription_id is not None
            # A provider id kept by more than one row (a restart): the latest speaks for it.
            ours[row.provider_subscription_id] = row
        return _Side({sub.id: sub for sub in listed}, ours)

    async def _differences(self, provider: PaymentProvider, sides: _Side) -> list[Difference]:
        found: list[Difference] = []
        for subscription_id in sorted(set(sides.provider) | set(sides.saascore)):
            theirs = sides.provider.get(subscription_id)
            ours = sides.saascore.get(subscription_id)
            if theirs is None:
                assert ours is not None
                if ours.status not in FINAL_STATUSES:
                    found.append(
                        Difference(
                            subscription_id,
                            DifferenceKind.MISSING_AT_PROVIDER,
                            None,
                            ours.status.value,
                            ours.organization_id,
                        )
                    )
                continue
            status = PROVIDER_STATUS[theirs.status]
            if ours is None:
                if status not in FINAL_STATUSES:
                    found.append(
                        Difference(
                            subscription_id,
                            DifferenceKind.MISSING_IN_SAASCORE,
                            status.value,
                            None,
                            theirs.organization_id,
                        )
                    )
                continue
            found.extend(await self._compare(provider, theirs, status, ours))
        return found

    async def _compare(
        self,
        provider: PaymentProvider,
        theirs: ProviderSubscription,
        status: SubscriptionStatus,
        ours: Subscription,
    ) -> list[Difference]:
        org = ours.organization_id

        def differs(kind: DifferenceKind, provider_value: str | None, value: str | None) -> None:
            if provider_value != value:
                found.append(Difference(theirs.id, kind, provider_value, value, org))

        found: list[Difference] = []
        ended = status in FINAL_STATUSES
        if ended and ours.status in FINAL_STATUSES:
            return found  # both ended: how each recorded it no longer matters
        differs(DifferenceKind.STATUS, status.value, ours.status.value)
        if ended:
            return found
        differs(
            DifferenceKind.PLAN,
            await self._plan(provider, theirs.price_id),
            f"{ours.plan.code} {ours.billing_cycle.value}",
        )
        if theirs.current_period_start is not None and theirs.current_period_end is not None:
            # Only a provider that tells the whole period has its end taken by the intake (Lemon
            # Squeezy tells `renews_at` alone, and saascore keeps a period of its own).
            differs(
                DifferenceKind.PERIOD_END,
                _second(theirs.current_period_end),
                _second(ours.current_period_end),
            )
        differs(
            DifferenceKind.CANCEL_AT_PERIOD_END,
            str(theirs.cancel_at_period_end).lower(),
            str(ours.cancel_at_period_end).lower(),
        )
        return found

    async def _plan(self, provider: PaymentProvider, price_id: str | None) -> str:
        """The plan and cycle the provider's price is, or what saascore cannot read of it."""
        try:
            price = await self.plans.resolve_price_id(provider, price_id or "")
        except ProviderPriceUnknown:
            return f"unknown price {str(price_id)[:100]!r}"
        return f"{price.plan.code} {price.billing_cycle.value}"

    # --- fixing --------------------------------------------------------------------------------
    def _event(
        self, provider: PaymentProvider, subscription_id: str, sides: _Side
    ) -> ProviderEvent:
        """The event a webhook would have carried for the provider's state of it."""
        now = self.clock()
        theirs = sides.provider.get(subscription_id)
        if theirs is None:
            ours = sides.saascore[subscription_id]
            theirs = ProviderSubscription(
                id=subscription_id,
                customer_id=ours.provider_customer_id or "",
                status=ProviderSubscriptionStatus.CANCELED,
                price_id=ours.provider_price_id,
                current_period_start=ours.current_period_start,
                current_period_end=ours.current_period_end,
                ended_at=now,
                organization_id=ours.organization_id,
            )
        ended = theirs.status is ProviderSubscriptionStatus.CANCELED
        return ProviderEvent(
            provider=provider,
            id=f"reconcile_{uuid.uuid4().hex}",
            type=f"reconcile.{url_name(provider)}",
            kind=EventKind.SUBSCRIPTION_ENDED if ended else EventKind.SUBSCRIPTION_UPDATED,
            occurred_at=now,
            organization_id=theirs.organization_id,
            customer_id=theirs.customer_id or None,
            subscription=theirs,
            # The time is saascore's: the subscription keeps the provider's last (its own
            # `updated_at` is taken when the provider gives one).
            provider_timed=False,
        )

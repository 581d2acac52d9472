"""Request and response bodies of the subscription routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from saascore.billing.subscriptions import MAX_TRIAL_DAYS, SCHEDULED
from saascore.kit.inputs import StrictInt
from saascore.kit.validation import Instant
from saascore.models import Subscription, SubscriptionStatus
from saascore.models.catalog import BillingCycle

__all__ = [
    "SubscriptionCancel",
    "SubscriptionCreate",
    "SubscriptionOut",
    "SubscriptionPlanChange",
    "SubscriptionResume",
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

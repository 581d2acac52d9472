"""Response bodies of `/v1/plans`, the public plan catalog."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from saascore.models import BillingCycle, SubscriptionPlan

__all__ = [
    "PlanCredits",
    "PlanLimits",
    "PlanOut",
    "PlanPriceOut",
    "PlanRateLimitsOut",
    "PlanUsageLimit",
    "PlansResponse",
]


class PlanPriceOut(BaseModel):
    billing_cycle: BillingCycle
    currency: str = Field(description="ISO 4217", examples=["USD"])
    amount: int = Field(
        description="Integer minor units of the currency (999 is $9.99)", examples=[999]
    )


class PlanUsageLimit(BaseModel):
    """A limit on a metered metric beyond the plan's own columns."""

    limit: int | None = Field(description="null: unlimited", examples=[500])
    hard: bool = Field(description="A hard limit refuses; a soft one only flags", examples=[True])


class PlanLimits(BaseModel):
    """What the plan allows; null means unlimited."""

    monthly_tokens: int | None = Field(examples=[1_000_000])
    storage_mb: int | None = Field(examples=[1024])
    api_calls_per_day: int | None = Field(examples=[1000])
    products_per_batch: int | None = Field(examples=[25])
    items: int | None = Field(examples=[1000])
    secondary: int | None = Field(examples=[3])
    users: int | None = Field(examples=[5])
    #: Limits on other metrics, by metric code.
    metrics: dict[str, PlanUsageLimit] = Field(default_factory=dict, examples=[{}])


class PlanRateLimitsOut(BaseModel):
    """Requests each user or API key may make; null means unlimited."""

    requests_per_minute: int | None = Field(examples=[20])
    requests_per_hour: int | None = Field(examples=[500])


class PlanCredits(BaseModel):
    per_period: int = Field(description="Credits granted each month", examples=[100])
    rollover: bool = Field(description="Unused credits carry over to the next month")


class PlanOut(BaseModel):
    code: str = Field(examples=["starter"])
    name: str = Field(examples=["Starter"])
    description: str | None = Field(examples=["Enhanced generation and e-mail support."])
    prices: list[PlanPriceOut]
    limits: PlanLimits
    rate_limits: PlanRateLimitsOut
    credits: PlanCredits
    api_access: bool
    trial_days: int = Field(examples=[14])
    features: dict[str, Any] = Field(examples=[{"ai_generation": True, "email_support": True}])

    @classmethod
    def of(cls, plan: SubscriptionPlan) -> PlanOut:
        """A plan with its prices and limits loaded (`PlanService.list` loads them)."""
        return cls(
            code=plan.code,
            name=plan.name,
            description=plan.description,
            prices=[
                PlanPriceOut(
                    billing_cycle=price.billing_cycle, currency=price.currency, amount=price.amount
                )
                for price in sorted(plan.prices, key=lambda p: (p.billing_cycle, p.currency))
                if price.is_active
            ],
            limits=PlanLimits(
                monthly_tokens=plan.monthly_token_limit,
                storage_mb=plan.max_storage_mb,
                api_calls_per_day=plan.max_api_calls_per_day,
                products_per_batch=plan.max_products_per_batch,
                items=plan.max_items,
                secondary=plan.max_secondary,
                users=plan.max_users,
                metrics={
                    limit.metric: PlanUsageLimit(limit=limit.limit_value, hard=limit.is_hard)
                    for limit in sorted(plan.limits, key=lambda limit: limit.metric)
                },
            ),
            rate_limits=PlanRateLimitsOut(
                requests_per_minute=plan.requests_per_minute,
                requests_per_hour=plan.requests_per_hour,
            ),
            credits=PlanCredits(per_period=plan.credits_per_period, rollover=plan.credits_rollover),
            api_access=plan.api_access,
            trial_days=plan.trial_days,
            features=plan.features,
        )


class PlansResponse(BaseModel):
    """The plans anyone may subscribe to, cheapest tier first."""

    plans: list[PlanOut]

"""Response bodies of `/v1/plans`, the public plan catalog."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from saascore.kit.inputs import StrictBool, StrictInt
from saascore.kit.validation import JSONObject, Label, Note
from saascore.models import BillingCycle, ModelPricing, SubscriptionPlan
from saascore.plans.catalog import INT32, INT64, LIMIT_FIELDS
from saascore.plans.pricing import PriceOutcome

__all__ = [
    "AdminPlanOut",
    "CatalogLoaded",
    "LimitSetting",
    "ModelPriceOut",
    "ModelPriceWritten",
    "ModelPricesResponse",
    "PlanCredits",
    "PlanLimits",
    "PlanOut",
    "PlanPriceOut",
    "PlanRateLimitsOut",
    "PlanUpdate",
    "PlanUsageLimit",
    "PlansResponse",
]


class PlanPriceOut(BaseModel):
    billing_cycle: BillingCycle = Field(
        description="How often the price is charged: `monthly` or `yearly`"
    )
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

    monthly_tokens: int | None = Field(description="AI tokens a month", examples=[1_000_000])
    storage_mb: int | None = Field(description="Storage, in MiB", examples=[1024])
    api_calls_per_day: int | None = Field(description="API calls a day", examples=[1000])
    products_per_batch: int | None = Field(description="Products in one batch", examples=[25])
    items: int | None = Field(
        description="Items (a countable limit for host apps: the `items` meter)", examples=[1000]
    )
    secondary: int | None = Field(
        description=("Secondary objects (a countable limit for host apps: the `secondary` meter)"),
        examples=[3],
    )
    users: int | None = Field(description="Users in the organisation", examples=[5])
    #: Limits on other metrics, by metric code.
    metrics: dict[str, PlanUsageLimit] = Field(
        description="Limits on other metrics, by metric code.", default_factory=dict, examples=[{}]
    )


class PlanRateLimitsOut(BaseModel):
    """Requests each user or API key may make; null means unlimited."""

    requests_per_minute: int | None = Field(description="Requests a minute", examples=[20])
    requests_per_hour: int | None = Field(description="Requests an hour", examples=[500])


class PlanCredits(BaseModel):
    per_period: int = Field(description="Credits granted each month", examples=[100])
    rollover: bool = Field(description="Unused credits carry over to the next month")


class PlanOut(BaseModel):
    code: str = Field(description="The plan's code, unique", examples=["starter"])
    name: str = Field(description="The plan's name", examples=["Starter"])
    description: str | None = Field(
        description="What the plan is for", examples=["Enhanced generation and e-mail support."]
    )
    prices: list[PlanPriceOut] = Field(description="Its prices, by billing cycle and currency")
    limits: PlanLimits = Field(description="What it allows")
    rate_limits: PlanRateLimitsOut = Field(description="Requests each user or key may make")
    credits: PlanCredits = Field(description="The credits it grants")
    api_access: bool = Field(description="Whether its organisations may create API keys")
    trial_days: int = Field(description="Days of free trial before the first charge", examples=[14])
    features: dict[str, Any] = Field(
        description="Feature flags and settings, checked with `RequireFeature`",
        examples=[{"ai_generation": True, "email_support": True}],
    )

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

    plans: list[PlanOut] = Field(description="The public, active plans, in their sort order")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitSetting(_Body):
    """A plan's limit on one meter, in `PlanUpdate.limits`."""

    limit: StrictInt | None = Field(
        ge=0, le=INT64, description="null: unlimited", examples=[250_000]
    )
    hard: StrictBool = Field(
        default=True, description="A hard limit refuses; a soft one only flags"
    )


class CatalogLoaded(BaseModel):
    """The codes a catalog load created and updated."""

    plans_created: list[str] = Field(description="Codes of the plans created", examples=[["team"]])
    plans_updated: list[str] = Field(
        description="Codes of the plans updated", examples=[["free", "pro"]]
    )
    meters_created: list[str] = Field(description="Codes of the meters created", examples=[[]])
    meters_updated: list[str] = Field(
        description="Codes of the meters updated", examples=[["tokens"]]
    )


class PlanUpdate(_Body):
    """The fields to change; those left out stay as they are. On a limit, null or -1 means
    unlimited; on `description`, null clears it; on the other fields null changes nothing.
    `limits` (on other meters) is merged: a metric set to null loses its limit."""

    name: Label | None = Field(
        description="The plan's name", default=None, min_length=1, max_length=255, examples=["Pro"]
    )
    description: Note | None = Field(
        description="What the plan is for; null clears it",
        default=None,
        examples=["Full API access."],
    )
    sort_order: StrictInt | None = Field(
        description="Its place in listings, lowest first",
        default=None,
        ge=-INT32,
        le=INT32,
        examples=[20],
    )
    is_active: StrictBool | None = Field(
        default=None, description="Offered to new customers", examples=[True]
    )
    is_public: StrictBool | None = Field(
        default=None, description="Listed in /v1/plans", examples=[True]
    )
    monthly_token_limit: StrictInt | None = Field(
        description="AI tokens a month; null or -1: unlimited",
        default=None,
        le=INT64,
        examples=[5_000_000],
    )
    max_storage_mb: StrictInt | None = Field(
        description="Storage in MiB; null or -1: unlimited",
        default=None,
        le=INT64 // (1024 * 1024),
        examples=[10_240],
    )
    max_api_calls_per_day: StrictInt | None = Field(
        description="API calls a day; null or -1: unlimited",
        default=None,
        le=INT64,
        examples=[10_000],
    )
    max_products_per_batch: StrictInt | None = Field(
        description="Products in one batch; null or -1: unlimited",
        default=None,
        le=INT32,
        examples=[100],
    )
    max_items: StrictInt | None = Field(
        description="The `items` limit; null or -1: unlimited",
        default=None,
        le=INT32,
        examples=[10_000],
    )
    max_secondary: StrictInt | None = Field(
        description="The `secondary` limit; null or -1: unlimited",
        default=None,
        le=INT32,
        examples=[10],
    )
    max_users: StrictInt | None = Field(
        description="Users in an organisation; null or -1: unlimited",
        default=None,
        le=INT32,
        examples=[20],
    )
    requests_per_minute: StrictInt | None = Field(
        description="Requests a minute per user or key; null or -1: unlimited",
        default=None,
        le=INT32,
        examples=[60],
    )
    requests_per_hour: StrictInt | None = Field(
        description="Requests an hour per user or key; null or -1: unlimited",
        default=None,
        le=INT32,
        examples=[2_000],
    )
    credits_per_period: StrictInt | None = Field(
        description="Credits granted each period", default=None, ge=0, le=INT64, examples=[1_000]
    )
    credits_rollover: StrictBool | None = Field(
        description="Whether unused credits carry over", default=None, examples=[True]
    )
    api_access: StrictBool | None = Field(
        description="Whether its organisations may create API keys", default=None, examples=[True]
    )
    trial_days: StrictInt | None = Field(
        description="Days of free trial", default=None, ge=0, le=INT32, examples=[14]
    )
    features: JSONObject | None = Field(
        description="Feature flags and settings; replaces the whole object",
        default=None,
        examples=[{"custom_templates": True}],
    )
    limits: dict[str, LimitSetting | None] | None = Field(
        description=("Limits on other meters by metric code, merged; null removes one"),
        default=None,
        examples=[{"api_calls": {"limit": 20_000, "hard": True}}],
    )

    def changes(self) -> dict[str, Any]:
        """The fields the request sets, as `PlanService.update` takes them."""
        return {
            field: value
            for field, value in self.model_dump(exclude_unset=True).items()
            if value is not None or field in _NULLABLE_PLAN_FIELDS
        }


_NULLABLE_PLAN_FIELDS = frozenset({"description", *LIMIT_FIELDS})


class AdminPlanOut(PlanOut):
    """A plan as operators see it, whether or not it is offered."""

    is_active: bool = Field(description="Offered to new customers")
    is_public: bool = Field(description="Listed in `/v1/plans`")
    sort_order: int = Field(description="Its place in listings, lowest first")

    @classmethod
    def of(cls, plan: SubscriptionPlan) -> AdminPlanOut:
        return cls(
            **PlanOut.of(plan).model_dump(),
            is_active=plan.is_active,
            is_public=plan.is_public,
            sort_order=plan.sort_order,
        )


class ModelPriceOut(BaseModel):
    """One price version of a model: integer micro-units of the currency per million tokens."""

    provider: str = Field(description="The model's provider", examples=["openai"])
    model: str = Field(description="The model's name, as events report it", examples=["gpt-4o"])
    currency: str = Field(description="ISO 4217", examples=["USD"])
    input_micros_per_million: int = Field(
        description="Micro-units per million input tokens (2_500_000 is $2.50)",
        examples=[2_500_000],
    )
    cached_input_micros_per_million: int = Field(
        description="Micro-units per million cached input tokens", examples=[1_250_000]
    )
    output_micros_per_million: int = Field(
        description="Micro-units per million output tokens", examples=[10_000_000]
    )
    effective_from: datetime = Field(description="From when the price applies")
    effective_to: datetime | None = Field(description="Until when, if it was ended")
    active: bool = Field(description="Whether the version prices usage")
    as_of: date | None = Field(description="The day the price was taken at its source")
    source: str | None = Field(
        description="Where it was taken: the provider's pricing page",
        examples=["https://openai.com/api/pricing/"],
    )

    @classmethod
    def of(cls, row: ModelPricing) -> ModelPriceOut:
        return cls(
            provider=row.provider,
            model=row.model,
            currency=row.currency,
            input_micros_per_million=row.input_micros_per_million,
            cached_input_micros_per_million=row.cached_input_micros_per_million,
            output_micros_per_million=row.output_micros_per_million,
            effective_from=row.effective_from,
            effective_to=row.effective_to,
            active=row.is_active,
            as_of=row.as_of,
            source=row.source,
        )


class ModelPriceWritten(ModelPriceOut):
    """The stored price version, and what the request did to it."""

    outcome: PriceOutcome = Field(
        description="`created`, `updated` (a value differed) or `unchanged` (a replay)"
    )


class ModelPricesResponse(BaseModel):
    prices: list[ModelPriceOut] = Field(
        description="Every price version, by provider and model, the newest version first"
    )

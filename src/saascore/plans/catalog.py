"""Plan catalogs as TOML files, validated before anything is written."""

from __future__ import annotations

import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from saascore.kit.errors import InvalidInput
from saascore.kit.inputs import INT64_MAX, StrictBool, StrictInt
from saascore.kit.validation import JSONObject
from saascore.models import Aggregation, BillingCycle, ResetPeriod

__all__ = ["Catalog", "MeterSpec", "PlanSpec", "PriceSpec", "read_catalog"]

Code = str


def _unlimited(value: int | None) -> int | None:
    """-1 (or any negative number) in a catalog means unlimited, stored as NULL."""
    return None if value is None or value < 0 else value


#: The largest values the integer columns hold (BIGINT and INTEGER).
INT64, INT32 = INT64_MAX, 2**31 - 1

#: The plan columns that are limits: None (or -1 in a file) means unlimited.
LIMIT_FIELDS = (
    "monthly_token_limit",
    "max_storage_mb",
    "max_api_calls_per_day",
    "max_products_per_batch",
    "max_items",
    "max_secondary",
    "max_users",
    "requests_per_minute",
    "requests_per_hour",
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceSpec(_Spec):
    billing_cycle: BillingCycle = Field(
        description="How often the price is charged: `monthly` or `yearly`"
    )
    currency: str = Field(
        description="ISO 4217 currency code, upper case", examples=["USD"], pattern=r"^[A-Z]{3}$"
    )
    amount: StrictInt = Field(
        description="Integer minor units of the currency (999 is $9.99)",
        examples=[999],
        ge=0,
        le=INT64,
    )
    stripe_price_id: str | None = Field(
        default=None, description="The Stripe price it maps to", examples=["price_1Nx..."]
    )
    stripe_product_id: str | None = Field(default=None, description="The Stripe product it maps to")
    lemon_squeezy_variant_id: str | None = Field(
        default=None, description="The Lemon Squeezy variant it maps to"
    )
    lemon_squeezy_product_id: str | None = Field(
        default=None, description="The Lemon Squeezy product it maps to"
    )


class LimitSpec(_Spec):
    limit: StrictInt | None = Field(
        description="The limit; null: unlimited", examples=[250000], default=None, le=INT64
    )
    hard: StrictBool = Field(
        default=True, description="A hard limit refuses; a soft one only flags"
    )

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: int | None) -> int | None:
        return _unlimited(value)


class PlanSpec(_Spec):
    name: str = Field(description="The plan's name", examples=["Pro"], min_length=1, max_length=255)
    description: str | None = Field(default=None, description="What the plan is for")
    sort_order: StrictInt = Field(
        description="Its place in listings, lowest first", default=0, ge=-INT32, le=INT32
    )
    monthly_token_limit: StrictInt | None = Field(
        description="AI tokens a month; null: unlimited", default=None, le=INT64
    )
    max_storage_mb: StrictInt | None = Field(
        description="Storage in MiB; null: unlimited", default=None, le=INT64 // (1024 * 1024)
    )
    max_api_calls_per_day: StrictInt | None = Field(
        description="API calls a day; null: unlimited", default=None, le=INT64
    )
    max_products_per_batch: StrictInt | None = Field(
        description="Products in one batch; null: unlimited", default=None, le=INT32
    )
    max_items: StrictInt | None = Field(
        description="The `items` limit; null: unlimited", default=None, le=INT32
    )
    max_secondary: StrictInt | None = Field(
        description="The `secondary` limit; null: unlimited", default=None, le=INT32
    )
    max_users: StrictInt | None = Field(
        description="Users in an organisation; null: unlimited", default=None, le=INT32
    )
    requests_per_minute: StrictInt | None = Field(
        description="Requests a minute per user or key; null: unlimited", default=None, le=INT32
    )
    requests_per_hour: StrictInt | None = Field(
        description="Requests an hour per user or key; null: unlimited", default=None, le=INT32
    )
    credits_per_period: StrictInt = Field(
        description="Credits granted each period", default=0, ge=0, le=INT64
    )
    credits_rollover: StrictBool = Field(
        default=False, description="Whether unused credits carry over"
    )
    api_access: StrictBool = Field(
        default=False, description="Whether its organisations may create API keys"
    )
    trial_days: StrictInt = Field(description="Days of free trial", default=0, ge=0, le=INT32)
    is_active: StrictBool = Field(default=True, description="Offered to new customers")
    is_public: StrictBool = Field(default=True, description="Listed in `/v1/plans`")
    features: JSONObject = Field(description="Feature flags and settings", default_factory=dict)
    prices: list[PriceSpec] = Field(
        description="Its prices, by billing cycle and currency", default_factory=list
    )
    #: Limits on other meters: `{metric = {limit = N, hard = true}}`.
    limits: dict[Code, LimitSpec] = Field(
        description=("Limits on other meters: `{metric = {limit = N, hard = true}}`."),
        default_factory=dict,
    )

    @field_validator(*LIMIT_FIELDS)
    @classmethod
    def _limits(cls, value: int | None) -> int | None:
        return _unlimited(value)

    @field_validator("prices")
    @classmethod
    def _one_price_per_cycle_and_currency(cls, prices: list[PriceSpec]) -> list[PriceSpec]:
        keys = [(price.billing_cycle, price.currency) for price in prices]
        if len(set(keys)) != len(keys):
            raise ValueError("two prices for the same billing cycle and currency")
        return prices


class MeterSpec(_Spec):
    name: str = Field(
        description="The meter's name", examples=["AI tokens"], min_length=1, max_length=255
    )
    description: str | None = Field(default=None, description="What it measures")
    aggregation: Aggregation = Field(
        default=Aggregation.SUM, description="How events add up in a period"
    )
    unit: str = Field(default="unit", description="The unit of its quantities", examples=["token"])
    reset_period: ResetPeriod = Field(
        default=ResetPeriod.MONTH, description="When its counters start again"
    )


class Catalog(_Spec):
    version: Literal[1] = Field(default=1, description="The catalog format's version")
    meters: dict[Code, MeterSpec] = Field(description="Meters by metric code", default_factory=dict)
    plans: dict[Code, PlanSpec] = Field(description="Plans by code", default_factory=dict)

    @field_validator("plans", "meters")
    @classmethod
    def _codes(cls, entries: dict[str, Any]) -> dict[str, Any]:
        for code, entry in entries.items():
            if isinstance(entry, PlanSpec):
                for metric in entry.limits:
                    if not 0 < len(metric) <= 100:
                        raise ValueError(f"limit metric {metric!r}: 1 to 100 characters")
            if not code or len(code) > 50 or not code.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"bad code {code!r}: use letters, digits, '-' and '_'")
        return entries


DEFAULT_CATALOG = "default_catalog.toml"


def read_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog file; with no path, saascore's default catalog."""
    try:
        if path is None:
            text = files("saascore.plans").joinpath(DEFAULT_CATALOG).read_text("utf-8")
            where = "the default catalog"
        else:
            text = Path(path).read_text("utf-8")
            where = str(path)
    except OSError as exc:
        raise InvalidInput(f"cannot read catalog {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"catalog {path} is not UTF-8 text") from None
    try:
        return Catalog.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{where} is not valid TOML: {exc}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(part) for part in error["loc"])
        raise InvalidInput(f"{where}: {loc}: {error['msg']}") from None

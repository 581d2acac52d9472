"""Plan catalogs as TOML files, validated before anything is written."""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime, time
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from saascore.kit.errors import InvalidCharacter, InvalidInput
from saascore.kit.inputs import INT64_MAX, StrictBool, StrictInt
from saascore.kit.money import Money
from saascore.kit.validation import Day, Instant, JSONObject, Label, Note
from saascore.models import Aggregation, BillingCycle, ResetPeriod

__all__ = [
    "Catalog",
    "MeterSpec",
    "ModelPriceSpec",
    "PlanSpec",
    "PriceSpec",
    "read_catalog",
    "read_default_pricing",
]

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


def spec_error(error: Any) -> type[InvalidInput]:
    """The error a catalog's validation error is raised as: `InvalidCharacter` for a control
    character in a name or a description, `InvalidInput` for anything else."""
    return InvalidCharacter if error.get("type") == "invalid_character" else InvalidInput


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
    overage: dict[str, StrictInt] = Field(
        default_factory=dict,
        description=(
            "The price of usage above the limit, per ISO 4217 currency, in minor units per "
            "`overage_per` units (billed at each renewal); empty: no overage"
        ),
        examples=[{"USD": 2}],
        max_length=50,
    )
    overage_per: StrictInt = Field(
        default=1, ge=1, le=INT64, description="How many units `overage` prices", examples=[1000]
    )

    @field_validator("overage")
    @classmethod
    def _overage(cls, value: dict[str, int]) -> dict[str, int]:
        for currency, price in value.items():
            try:
                Money(price, currency)  # a known currency, within int64
            except InvalidInput as error:
                raise ValueError(str(error)) from None
            if price < 0:
                raise ValueError(f"an overage price is not negative, not {price}")
        return value

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: int | None) -> int | None:
        return _unlimited(value)


class PlanSpec(_Spec):
    name: Label = Field(
        description="The plan's name", examples=["Pro"], min_length=1, max_length=255
    )
    description: Note | None = Field(default=None, description="What the plan is for")
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
    name: Label = Field(
        description="The meter's name", examples=["AI tokens"], min_length=1, max_length=255
    )
    description: Note | None = Field(default=None, description="What it measures")
    aggregation: Aggregation = Field(
        default=Aggregation.SUM, description="How events add up in a period"
    )
    unit: Label = Field(
        default="unit", description="The unit of its quantities", examples=["token"]
    )
    reset_period: ResetPeriod = Field(
        default=ResetPeriod.MONTH, description="When its counters start again"
    )


#: Texts PostgreSQL can store (no NUL), with something in them besides spaces.
_NAME = r"^[^\x00\s]([^\x00]*[^\x00\s])?$"
_MICROS = Field(
    ge=0,
    le=INT64,
    description="Integer micro-units of the currency (USD) per million tokens: "
    "2_500_000 is $2.50 per million tokens",
    examples=[2_500_000],
)


def _midnight_utc(value: Any) -> Any:
    """A day (`2025-06-01`) means its start in UTC; a date-time is taken as it is."""
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            value = date.fromisoformat(value.strip())
        except ValueError:
            return value
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime.combine(value, time(), tzinfo=UTC)
    return value


class ModelPriceSpec(_Spec):
    """One price version of a model: what a million tokens cost from `effective_from` on.

    Prices are integer micro-units of USD per million tokens (`model_pricing` stores them
    as they are): $2.50 per million tokens is `2_500_000`. Usage events' costs are USD
    micro-units, so a price in another currency is refused until costs carry theirs.
    """

    provider: str = Field(
        description="The model's provider",
        min_length=1,
        max_length=50,
        pattern=_NAME,
        examples=["openai"],
    )
    model: str = Field(
        description="The model's name, exactly as usage events report it",
        min_length=1,
        max_length=255,
        pattern=_NAME,
        examples=["gpt-4o"],
    )
    currency: Literal["USD"] = Field(
        default="USD", description="USD only: usage events' costs are USD micro-units"
    )
    input_micros_per_million: StrictInt = _MICROS
    output_micros_per_million: StrictInt = _MICROS
    #: Cached prompt tokens; left out, they cost what other input tokens cost.
    cached_input_micros_per_million: StrictInt | None = Field(
        default=None,
        ge=0,
        le=INT64,
        description="Cached input tokens, in the same unit; default: the input price",
        examples=[1_250_000],
    )
    effective_from: Instant = Field(
        description="From when the price applies (a day means its start in UTC); a later "
        "effective_from is a new price version, the earlier ones keep pricing the past",
        examples=["2025-06-01"],
    )
    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        pattern=_NAME,
        description="Where the price was read: the provider's pricing page",
        examples=["https://openai.com/api/pricing/"],
    )
    as_of: Day | None = Field(
        default=None, description="The day the price was read there", examples=["2025-06-01"]
    )

    @field_validator("effective_from", mode="before")
    @classmethod
    def _day(cls, value: Any) -> Any:
        return _midnight_utc(value)

    @property
    def key(self) -> tuple[str, str, datetime]:
        """The price version's identity: one price per provider, model and start."""
        return self.provider, self.model, self.effective_from

    def columns(self) -> dict[str, Any]:
        """The `model_pricing` columns this price sets (besides its key)."""
        cached = self.cached_input_micros_per_million
        return {
            "currency": self.currency,
            "input_micros_per_million": self.input_micros_per_million,
            "output_micros_per_million": self.output_micros_per_million,
            "cached_input_micros_per_million": (
                self.input_micros_per_million if cached is None else cached
            ),
            "source": self.source,
            "as_of": self.as_of,
        }


class Catalog(_Spec):
    version: Literal[1] = Field(default=1, description="The catalog format's version")
    meters: dict[Code, MeterSpec] = Field(description="Meters by metric code", default_factory=dict)
    plans: dict[Code, PlanSpec] = Field(description="Plans by code", default_factory=dict)
    model_pricing: list[ModelPriceSpec] = Field(
        description="Token prices: one version per provider, model and effective_from",
        default_factory=list,
    )

    @field_validator("model_pricing")
    @classmethod
    def _one_price_per_version(cls, prices: list[ModelPriceSpec]) -> list[ModelPriceSpec]:
        seen: set[tuple[str, str, datetime]] = set()
        for price in prices:
            if price.key in seen:
                raise ValueError(
                    f"two prices of {price.provider} {price.model} from "
                    f"{price.effective_from.isoformat()}"
                )
            seen.add(price.key)
        return prices

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
#: saascore's price list: the `[[model_pricing]]` of the default catalog, in a file of its own.
DEFAULT_PRICING = "default_pricing.toml"


def read_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog file; with no path, saascore's default catalog (its plans
    and meters, with the model prices of the default price list)."""
    if path is None:
        catalog = _read(None, DEFAULT_CATALOG, "the default catalog")
        prices = _read(None, DEFAULT_PRICING, "the default price list")
        return catalog.model_copy(
            update={"model_pricing": [*catalog.model_pricing, *prices.model_pricing]}
        )
    return _read(Path(path), "", str(path))


def read_default_pricing() -> Catalog:
    """The default price list alone (a catalog of `[[model_pricing]]` entries)."""
    return _read(None, DEFAULT_PRICING, "the default price list")


def _read(path: Path | None, resource: str, where: str) -> Catalog:
    try:
        if path is None:
            text = files("saascore.plans").joinpath(resource).read_text("utf-8")
        else:
            text = path.read_text("utf-8")
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
        raise spec_error(error)(f"{where}: {loc}: {error['msg']}") from None

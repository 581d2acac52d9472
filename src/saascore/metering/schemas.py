"""Request and response bodies of `/v1/usage`, and usage events as they arrive from outside
(the HTTP API, `saascore usage import`)."""

from __future__ import annotations

import uuid
from dataclasses import asdict, replace
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from saascore.kit.inputs import StrictBool, StrictInt
from saascore.kit.validation import MAX_JSON_DEPTH, Instant, JSONObject
from saascore.metering.values import (
    BIGINT_MAX,
    BatchOutcome,
    CheckResult,
    RecordResult,
    SummaryBy,
    SummaryRow,
    UsageEventIn,
    UsageSnapshot,
)
from saascore.models import ReservationStatus, UsageReservation
from saascore.plans.catalog import INT64

__all__ = [
    "MAX_BATCH_EVENTS",
    "PLAIN_TEXT",
    "LimitOut",
    "LimitOverride",
    "ReservationCreate",
    "ReservationOut",
    "ReservationSettle",
    "UsageBatch",
    "UsageBatchOutcome",
    "UsageBatchRecorded",
    "UsageCheckRequest",
    "UsageCheckResponse",
    "UsageEventPayload",
    "UsageEventRecorded",
    "UsageEventRequest",
    "UsageEventsBody",
    "UsageLimitOut",
    "UsageLimitsResponse",
    "UsageMetric",
    "UsageResponse",
    "UsageSummaryResponse",
    "UsageSummaryRowOut",
]

#: The most events one `POST /v1/usage/events` may carry.
MAX_BATCH_EVENTS = 1_000
#: The longest a reservation may hold quota.
MAX_RESERVATION_SECONDS = 86_400
#: Texts PostgreSQL can store: it refuses NUL characters in text and JSON.
PLAIN_TEXT = r"^[^\x00]*$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _EventFields(_Body):
    """What an event says beyond its metric and quantity (also given when settling)."""

    user_id: uuid.UUID | None = Field(
        default=None,
        description="The user the usage is for, if any: a user of the organisation",
    )
    feature: str | None = Field(
        description="The product feature that used it, for summaries by feature",
        default=None,
        max_length=100,
        pattern=PLAIN_TEXT,
        examples=["summarize"],
    )
    model: str | None = Field(
        description=("The AI model used; priced from the model price list when known"),
        default=None,
        max_length=255,
        pattern=PLAIN_TEXT,
        examples=["gpt-4o"],
    )
    provider: str | None = Field(
        description="The model's provider",
        default=None,
        max_length=50,
        pattern=PLAIN_TEXT,
        examples=["openai"],
    )
    input_tokens: StrictInt = Field(
        description="Tokens sent to the model", default=0, ge=0, le=BIGINT_MAX, examples=[1200]
    )
    output_tokens: StrictInt = Field(
        description="Tokens the model produced", default=0, ge=0, le=BIGINT_MAX, examples=[350]
    )
    cached_tokens: StrictInt = Field(
        default=0,
        ge=0,
        le=BIGINT_MAX,
        description="The part of `input_tokens` the provider served from its cache",
        examples=[0],
    )
    properties: JSONObject = Field(
        default_factory=dict,
        description=f"Free-form JSON kept with the event (finite numbers, at most "
        f"{MAX_JSON_DEPTH} levels deep)",
    )


class UsageEventRequest(_EventFields):
    """One usage event. `id` is the client's idempotency key: sending it again records nothing
    new and answers the first result; the same `id` with a different event is a conflict.
    The organisation is the caller's: an event cannot name one."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "evt_01J9ZK3Q8X",
                    "metric": "tokens",
                    "quantity": 1550,
                    "model": "gpt-4o",
                    "provider": "openai",
                    "feature": "summarize",
                    "input_tokens": 1200,
                    "output_tokens": 350,
                }
            ]
        }
    )

    id: str = Field(
        min_length=1,
        max_length=255,
        pattern=PLAIN_TEXT,
        description="Idempotency key of the event",
        examples=["evt_01J9ZK3Q8X"],
    )
    metric: str = Field(
        description="The meter's code: a metric of the plan catalog",
        min_length=1,
        max_length=100,
        pattern=PLAIN_TEXT,
        examples=["tokens"],
    )
    quantity: StrictInt = Field(
        description="How much was used, in the meter's unit", ge=0, le=BIGINT_MAX, examples=[1550]
    )
    occurred_at: Instant | None = Field(
        default=None, description="When the usage happened (default: when it is recorded)"
    )

    def to_event(self) -> UsageEventIn:
        return UsageEventIn(
            metric=self.metric,
            quantity=self.quantity,
            idempotency_key=self.id,
            occurred_at=self.occurred_at,
            user_id=self.user_id,
            feature=self.feature,
            model=self.model,
            provider=self.provider,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_tokens=self.cached_tokens,
            properties=self.properties,
        )


class UsageEventPayload(UsageEventRequest):
    """A usage event of an import (`saascore usage import`), which names its organisation."""

    organization_id: uuid.UUID | None = Field(
        default=None, description="Only for imports: the API takes it from the caller"
    )

    def to_event(self) -> UsageEventIn:
        return replace(super().to_event(), organization_id=self.organization_id)


class UsageBatch(_Body):
    """Up to 1,000 events, recorded in one transaction, each on its own terms."""

    events: list[UsageEventRequest] = Field(
        description="The events, each recorded or refused on its own",
        min_length=1,
        max_length=MAX_BATCH_EVENTS,
    )


def _body_kind(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "events" in value else "event"


#: `POST /v1/usage/events` takes one event or `{"events": [...]}`.
UsageEventsBody = Annotated[
    Annotated[UsageEventRequest, Tag("event")] | Annotated[UsageBatch, Tag("batch")],
    Discriminator(_body_kind),
]


class UsageEventRecorded(BaseModel):
    """A recorded event (201 `accepted`) or the first result of its key (200 `duplicate`), and
    the organisation's counter for the event's metric and period after it."""

    id: str = Field(description="The event's idempotency key", examples=["evt_01J9ZK3Q8X"])
    event_id: uuid.UUID = Field(description="saascore's id of the stored event")
    status: Literal["accepted", "duplicate"] = Field(
        description=("`accepted`: recorded now; `duplicate`: recorded before under this key"),
        examples=["accepted"],
    )
    metric: str = Field(description="The event's metric", examples=["tokens"])
    quantity: int = Field(description="The event's quantity", examples=[1550])
    cost_micros: int = Field(
        description="The event's cost in micro-units of USD, from the model's price",
        examples=[4375],
    )
    used: int = Field(
        description="The metric's usage this period once the event counted", examples=[81550]
    )
    limit: int | None = Field(description="The metric's limit; null: unlimited", examples=[100000])
    over_soft_limit: bool = Field(
        description="The usage has passed a soft limit (a hard one refuses instead)",
        examples=[False],
    )

    @classmethod
    def of(cls, key: str, result: RecordResult) -> UsageEventRecorded:
        return cls(
            id=key,
            event_id=result.event_id,
            status=result.status,
            metric=result.metric,
            quantity=result.quantity,
            cost_micros=result.cost_micros,
            used=result.used,
            limit=result.limit,
            over_soft_limit=result.over_soft_limit,
        )


class UsageBatchOutcome(BaseModel):
    """What became of one event of a batch. `refused`: a hard limit refused it
    (`limit_exceeded`); `invalid`: the event itself is wrong (`unknown_metric`,
    `idempotency_conflict`, `invalid_input`, ...). Neither recorded anything."""

    index: int = Field(description="The event's position in the batch", examples=[0])
    id: str = Field(description="The event's idempotency key", examples=["evt_01J9ZK3Q8X"])
    status: Literal["accepted", "duplicate", "refused", "invalid"] = Field(
        description=("`accepted`, `duplicate`, `refused` (a hard limit) or `invalid`"),
        examples=["accepted"],
    )
    event_id: uuid.UUID | None = Field(
        default=None,
        description=("saascore's id of the stored event; null when refused or invalid"),
    )
    code: str | None = Field(
        description="The error code of a refused or invalid event",
        default=None,
        examples=[None, "limit_exceeded"],
    )
    message: str | None = Field(
        description="Why the event was refused or invalid", default=None, examples=[None]
    )

    @classmethod
    def of(cls, outcome: BatchOutcome) -> UsageBatchOutcome:
        return cls(
            index=outcome.index,
            id=outcome.idempotency_key,
            status=outcome.status,
            event_id=outcome.event_id,
            code=outcome.code,
            message=outcome.message,
        )


class UsageBatchRecorded(BaseModel):
    """One outcome per event of a batch, in the batch's order, and how many of each."""

    accepted: int = Field(description="Events recorded now", examples=[998])
    duplicate: int = Field(description="Events recorded before under the same key", examples=[1])
    refused: int = Field(description="Events a hard limit refused", examples=[1])
    invalid: int = Field(description="Events that are wrong in themselves", examples=[0])
    results: list[UsageBatchOutcome] = Field(
        description="One outcome per event, in the batch's order"
    )

    @classmethod
    def of(cls, outcomes: list[BatchOutcome]) -> UsageBatchRecorded:
        results = [UsageBatchOutcome.of(outcome) for outcome in outcomes]
        tally = {"accepted": 0, "duplicate": 0, "refused": 0, "invalid": 0}
        for outcome in outcomes:
            tally[outcome.status] += 1
        return cls(**tally, results=results)


class UsageCheckRequest(_Body):
    metric: str = Field(
        description="The meter's code",
        min_length=1,
        max_length=100,
        pattern=PLAIN_TEXT,
        examples=["tokens"],
    )
    quantity: StrictInt = Field(
        description="The quantity you are about to use", ge=0, le=BIGINT_MAX, examples=[5000]
    )


class UsageCheckResponse(BaseModel):
    """Whether `requested` more would be allowed now (nothing is recorded or held)."""

    allowed: bool = Field(
        description="Whether the quantity fits under the limit now", examples=[True]
    )
    metric: str = Field(description="The meter's code", examples=["tokens"])
    requested: int = Field(description="The quantity asked about", examples=[5000])
    used: int = Field(description="Usage recorded this period", examples=[81550])
    reserved: int = Field(description="Held by open reservations", examples=[0])
    limit: int | None = Field(
        description="The limit this period; null: unlimited", examples=[100000]
    )
    hard: bool = Field(description="A hard limit refuses; a soft one only flags", examples=[True])
    remaining: int | None = Field(
        description="What is left after usage and reservations; null: unlimited", examples=[18450]
    )

    @classmethod
    def of(cls, result: CheckResult) -> UsageCheckResponse:
        return cls(**asdict(result))


class ReservationCreate(_Body):
    """Hold quota before slow work (an LLM call), then settle it with the real amount or
    release it. A reservation not settled within `ttl_seconds` expires and frees its quota."""

    metric: str = Field(
        description="The meter's code",
        min_length=1,
        max_length=100,
        pattern=PLAIN_TEXT,
        examples=["tokens"],
    )
    quantity: StrictInt = Field(
        description="The quantity to hold", gt=0, le=BIGINT_MAX, examples=[4000]
    )
    ttl_seconds: StrictInt = Field(
        description=("Seconds before an unsettled reservation expires and frees its quota"),
        default=300,
        ge=1,
        le=MAX_RESERVATION_SECONDS,
        examples=[300],
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=PLAIN_TEXT,
        description="Sending it again answers the first reservation",
        examples=["job-4417"],
    )


class ReservationSettle(_EventFields):
    """The real amount of a held reservation, recorded as a usage event of its metric."""

    quantity: StrictInt = Field(
        description=(
            "The quantity really used, recorded as a usage event (may differ from the held one)"
        ),
        ge=0,
        le=BIGINT_MAX,
        examples=[3620],
    )


class ReservationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="The reservation's id, to settle or release it")
    metric: str = Field(description="The meter's code", examples=["tokens"])
    quantity: int = Field(description="The quantity held", examples=[4000])
    status: ReservationStatus = Field(description="`held`, then `settled`, `released` or `expired`")
    settled_quantity: int | None = Field(
        description="The quantity recorded when it was settled", default=None, examples=[None]
    )
    idempotency_key: str | None = Field(
        description="The key it was created with, if any", default=None, examples=["job-4417"]
    )
    period_start: datetime = Field(description="The start of the meter period it holds quota in")
    expires_at: datetime = Field(description="When it expires unless settled or released")
    created_at: datetime = Field(description="When it was created")
    finished_at: datetime | None = Field(
        default=None, description="When it was settled, released or expired"
    )

    @classmethod
    def of(cls, reservation: UsageReservation) -> ReservationOut:
        return cls.model_validate(reservation)


class UsageLimitOut(BaseModel):
    """A metric's usage and limit in its current period."""

    metric: str = Field(description="The meter's code", examples=["tokens"])
    period_start: datetime = Field(description="The start of the current period")
    period_end: datetime | None = Field(description="null: the meter never resets")
    used: int = Field(description="Usage recorded this period", examples=[81550])
    reserved: int = Field(description="Held by open reservations", examples=[4000])
    limit: int | None = Field(description="null: unlimited", examples=[100000])
    hard: bool = Field(description="A hard limit refuses; a soft one only flags", examples=[True])
    remaining: int | None = Field(
        description="What is left after usage and reservations; null: unlimited", examples=[14450]
    )

    @classmethod
    def of(cls, snapshot: UsageSnapshot) -> UsageLimitOut:
        return cls(
            metric=snapshot.metric,
            period_start=snapshot.period_start,
            period_end=snapshot.period_end,
            used=snapshot.used,
            reserved=snapshot.reserved,
            limit=snapshot.limit,
            hard=snapshot.hard,
            remaining=snapshot.remaining,
        )


class UsageLimitsResponse(BaseModel):
    """Every active meter's usage and limit, by metric code."""

    limits: list[UsageLimitOut] = Field(description="One entry per active meter")


_UNBOUNDED = (
    "; exact, and may exceed int64 (2^63 - 1) when added up over days and rows: read it as an"
    " arbitrary-precision integer"
)


class UsageSummaryRowOut(BaseModel):
    """One group's usage of one metric: different metrics are never added together. The sums
    are exact integers of any size (JSON numbers past int64 when they add up that far)."""

    key: str = Field(
        description="The day (YYYY-MM-DD), metric, model or feature; '' for none",
        examples=["2025-03-14"],
    )
    metric: str = Field(description="The metric the row's quantity counts", examples=["tokens"])
    unit: str = Field(
        description="The unit of that metric's quantity ('unit' for a metric without a meter)",
        examples=["tokens"],
    )
    quantity: int = Field(
        description="The sum of the events' quantities" + _UNBOUNDED, examples=[81550]
    )
    event_count: int = Field(description="How many events" + _UNBOUNDED, examples=[42])
    input_tokens: int = Field(description="Tokens sent to models" + _UNBOUNDED, examples=[60000])
    output_tokens: int = Field(
        description="Tokens produced by models" + _UNBOUNDED, examples=[21550]
    )
    total_tokens: int = Field(
        description="Input and output tokens together" + _UNBOUNDED, examples=[81550]
    )
    cost_micros: int = Field(
        description="The events' cost in micro-units of USD" + _UNBOUNDED, examples=[237500]
    )

    @classmethod
    def of(cls, row: SummaryRow) -> UsageSummaryRowOut:
        fields = asdict(row)
        return cls(**{**fields, "metric": row.metric or row.key, "unit": row.unit or "unit"})


class UsageSummaryResponse(BaseModel):
    """Usage between two days (inclusive, UTC), grouped by day, metric, model or feature, and
    always by metric: a row per group and metric."""

    start: date = Field(description="The first day, inclusive (UTC)")
    end: date = Field(description="The last day, inclusive (UTC)")
    by: SummaryBy = Field(
        description=("What the rows are grouped by: `day`, `metric`, `model` or `feature`")
    )
    metric: str | None = Field(
        description=(
            "The metric the summary is limited to; null: every metric (grouped by metric)"
        ),
        default=None,
        examples=[None],
    )
    rows: list[UsageSummaryRowOut] = Field(
        description="One row per group and metric, ordered by group, then metric"
    )


class LimitOverride(_Body):
    limit: StrictInt | None = Field(
        ge=0, le=INT64, description="null: unlimited", examples=[250_000]
    )
    hard: StrictBool = Field(
        default=True, description="A hard limit refuses; a soft one only flags", examples=[True]
    )


class LimitOut(BaseModel):
    """The limit that applies to the organisation on a metric now."""

    metric: str = Field(description="The meter's code", examples=["tokens"])
    limit: int | None = Field(description="null: unlimited", examples=[250_000])
    hard: bool = Field(description="A hard limit refuses; a soft one only flags", examples=[True])
    overridden: bool = Field(description="Set for this organisation, not by its plan")


class UsageMetric(BaseModel):
    """One metric of `GET /v1/usage`: how much was used, of how much (seed 004's shape)."""

    metric: str = Field(description="What is counted", min_length=1, examples=["research_runs"])
    used: int = Field(description="How much was used in the period", examples=[12])
    limit: int | None = Field(default=None, description="null: unlimited", examples=[50])
    reserved: int = Field(default=0, description="Held by reservations", examples=[0])
    period_start: datetime | None = Field(default=None, description="null: not periodic")
    period_end: datetime | None = Field(default=None, description="null: never resets")


class UsageResponse(BaseModel):
    """`GET /v1/usage`: the organisation's usage, as the app's usage function counts it."""

    metrics: list[UsageMetric] = Field(description="One entry per metric")

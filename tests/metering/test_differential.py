"""The paths of recording usage against each other (a differential Hypothesis test).

One random sequence of operations (`record`, `record_many`, `reserve`, `settle`, `release`,
`set_limit`, `clear_limit`, and the clock moving on across days and months) runs through each
way of recording, each on organisations of its own, and every path must answer each operation
alike and leave the same counters, day rollups, threshold alerts, events and reservations:

- `statement`: the service's own transactions, one event at a time. On PostgreSQL that is the
  one-statement path (`postgres.RECORD`; a `max` meter takes the batch engine); `record_many`
  is played as one `record` per event, which is what it promises to equal.
- `batch`: the batch engine in the service's own transaction (`PostgresStore` on PostgreSQL),
  a `record` being a `record_many` of one.
- `session`: everything in a caller's session (`SessionStore`: SQLite, or PostgreSQL through
  SQLAlchemy).

On SQLite all three go through `SessionStore`, in different transactions and batches.

What is compared is what a client can see: answers (a record's result with its counter and
limit, a batch's outcomes, an error's code and message), and the rows. Ids are replaced by the
keys they stand for. A counter row at zero is left out: the batch engine creates the rows it
locks, the one statement only the rows it counts in.

Hypothesis settings: 60 short sequences (some ten seconds a backend); the run's profile
(tests/helpers.py) derandomizes them on CI, and `make fuzz` draws ten times as many with fresh
seeds. A failing sequence found that way is added as an `@example`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.db import Database
from saascore.kit.errors import DomainError
from saascore.metering import BatchOutcome, Limit, RecordResult, UsageEventIn, UsageService
from saascore.models import (
    Aggregation,
    Meter,
    ModelPricing,
    PlanLimit,
    ResetPeriod,
    SubscriptionPlan,
    UsageAlert,
    UsageCounter,
    UsageDailySummary,
    UsageEvent,
    UsageReservation,
)
from tests.factories import create_organization, create_plan, random_code
from tests.helpers import CLOCK_START, Clock, examples

T = TypeVar("T")
SETTINGS = settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PATHS = ("statement", "batch", "session")
MODEL = "differential-model"
#: Where a sequence starts: near a month's end, so that a few steps reach the next month.
START = CLOCK_START.replace(day=28, hour=20)
ORGS = ("a", "b")
#: Keys of retried events (the same content each time), and of events drawn afresh (a key
#: used again is most often a conflict).
KEYS = tuple(f"k{n}" for n in range(6))
FRESH_KEYS = tuple(f"r{n}" for n in range(6))


# --- the operations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    org: str
    key: str
    metric: str  # "tokens", "api_calls", "count" or "peak" (the module's meters)
    quantity: int
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None


@dataclass(frozen=True)
class Record:
    event: Event


@dataclass(frozen=True)
class RecordMany:
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Reserve:
    org: str
    metric: str
    quantity: int
    minutes: int  # its time to live


@dataclass(frozen=True)
class Settle:
    reservation: int  # which of the sequence's reservations, modulo their number
    quantity: int


@dataclass(frozen=True)
class Release:
    reservation: int


@dataclass(frozen=True)
class SetLimit:
    org: str
    metric: str
    limit: int | None
    hard: bool


@dataclass(frozen=True)
class ClearLimit:
    org: str
    metric: str


@dataclass(frozen=True)
class Advance:
    minutes: int


Operation = Record | RecordMany | Reserve | Settle | Release | SetLimit | ClearLimit | Advance
METRICS = st.sampled_from(("tokens", "api_calls", "count", "peak"))
RESERVABLE = st.sampled_from(("tokens", "api_calls", "count"))
EVENTS = st.builds(
    Event,
    org=st.sampled_from(ORGS),
    key=st.sampled_from(FRESH_KEYS),
    metric=METRICS,
    quantity=st.integers(0, 60),
)
#: The same key always with the same content: retries, answered as duplicates.
RETRIES = st.builds(
    lambda org, n: Event(org, KEYS[n], ("tokens", "api_calls", "count", "peak")[n % 4], 9 * n + 3),
    st.sampled_from(ORGS),
    st.integers(0, len(KEYS) - 1),
)
PRICED_EVENTS = st.builds(
    Event,
    org=st.sampled_from(ORGS),
    key=st.sampled_from(FRESH_KEYS),
    metric=st.just("tokens"),
    quantity=st.integers(0, 60),
    input_tokens=st.integers(0, 3000),
    output_tokens=st.integers(0, 3000),
    model=st.just(MODEL),
)
ANY_EVENT = st.one_of(EVENTS, RETRIES, RETRIES, PRICED_EVENTS)
OPERATIONS: st.SearchStrategy[Operation] = st.one_of(
    st.builds(Record, ANY_EVENT),
    st.builds(Record, ANY_EVENT),
    st.builds(RecordMany, st.lists(ANY_EVENT, min_size=1, max_size=6).map(tuple)),
    st.builds(RecordMany, st.lists(ANY_EVENT, min_size=1, max_size=6).map(tuple)),
    st.builds(
        Reserve, st.sampled_from(ORGS), RESERVABLE, st.integers(1, 60), st.sampled_from((5, 120))
    ),
    st.builds(Settle, st.integers(0, 7), st.integers(0, 80)),
    st.builds(Release, st.integers(0, 7)),
    st.builds(
        SetLimit,
        st.sampled_from(ORGS),
        METRICS,
        st.none() | st.integers(0, 150),
        st.booleans(),
    ),
    st.builds(ClearLimit, st.sampled_from(ORGS), METRICS),
    st.builds(Advance, st.sampled_from((10, 180, 60 * 24, 60 * 24 * 12))),
)
SEQUENCES = st.lists(OPERATIONS, min_size=1, max_size=18)


# --- the catalog the sequences run on ------------------------------------------------------------
@dataclass(frozen=True)
class Catalog:
    """The module's meters and plan: `count` and `peak` meters of their own, the plan's
    `tokens` and `api_calls` columns and `plan_limits` rows on the two meters."""

    meters: dict[str, str]  # name in the operations -> meter code
    plan_id: uuid.UUID


_catalogs: dict[int, Catalog] = {}


async def catalog(database: Database) -> Catalog:
    found = _catalogs.get(id(database))
    if found is not None:
        return found
    count, peak = random_code("count"), random_code("peak")
    async with database.transaction() as s:
        for code, aggregation in ((count, Aggregation.COUNT), (peak, Aggregation.MAX)):
            s.add(
                Meter(code=code, name=code, aggregation=aggregation, reset_period=ResetPeriod.MONTH)
            )
        s.add(
            ModelPricing(
                provider="acme",
                model=MODEL,
                input_micros_per_million=1_500_000,
                cached_input_micros_per_million=0,
                output_micros_per_million=2_000_000,
                effective_from=datetime(1970, 1, 1, tzinfo=UTC),
            )
        )
        await s.flush()
        plan = await create_plan(s, monthly_token_limit=120, max_api_calls_per_day=60)
        s.add(PlanLimit(plan_id=plan.id, metric=count, limit_value=6, is_hard=True))
        s.add(PlanLimit(plan_id=plan.id, metric=peak, limit_value=40, is_hard=False))
    made = Catalog(
        {"tokens": "tokens", "api_calls": "api_calls", "count": count, "peak": peak}, plan.id
    )
    _catalogs[id(database)] = made
    return made


# --- running a sequence through one path ---------------------------------------------------------
@dataclass
class Run:
    """One path's run of a sequence: its own service, clock and organisations."""

    path: str
    database: Database
    catalog: Catalog
    orgs: dict[str, uuid.UUID]
    clock: Clock = field(default_factory=lambda: Clock(START))
    reservations: list[uuid.UUID] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.usage = UsageService(self.database, clock=self.clock, group_commit=False)

    def event_in(self, event: Event) -> UsageEventIn:
        return UsageEventIn(
            self.catalog.meters[event.metric],
            event.quantity,
            event.key,
            organization_id=self.orgs[event.org],
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            model=event.model,
            provider="acme" if event.model else None,
        )

    async def in_scope(self, call: Callable[[AsyncSession | None], Awaitable[T]]) -> T:
        """`call(session)`: in a caller's session on the `session` path, which commits what
        the service flushed even when it raised (as a caller that goes on after the error
        would), else in the service's own transaction (`session=None`)."""
        if self.path != "session":
            return await call(None)
        refused: DomainError | None = None
        async with self.database.transaction() as s:
            try:
                return await call(s)
            except DomainError as error:
                refused = error
        raise refused

    async def apply(self, operation: Operation) -> None:
        try:
            answer = await self._apply(operation)
        except DomainError as error:
            answer = ("error", error.code, error.message)
        self.answers.append(answer)

    async def _apply(self, operation: Operation) -> Any:
        usage = self.usage
        match operation:
            case Record(event):
                return await self.record(self.event_in(event))
            case RecordMany(events):
                return await self.record_many([self.event_in(event) for event in events])
            case Reserve(org, metric, quantity, minutes):
                code, ttl = self.catalog.meters[metric], timedelta(minutes=minutes)
                held = await self.in_scope(
                    lambda s: usage.reserve(self.orgs[org], code, quantity, ttl=ttl, session=s)
                )
                self.reservations.append(held.id)
                return ("held", len(self.reservations) - 1, held.metric, held.quantity)
            case Settle(which, quantity):
                if not self.reservations:
                    return None
                reservation = self.reservations[which % len(self.reservations)]
                result = await self.in_scope(
                    lambda s: usage.settle(reservation, quantity, session=s)
                )
                return self.result(result)
            case Release(which):
                if not self.reservations:
                    return None
                reservation = self.reservations[which % len(self.reservations)]
                released = await self.in_scope(lambda s: usage.release(reservation, session=s))
                return ("released", released.status.value)
            case SetLimit(org, metric, limit, hard):
                code = self.catalog.meters[metric]
                return await self.in_scope(
                    lambda s: usage.set_limit(self.orgs[org], code, limit, hard=hard, session=s)
                )
            case ClearLimit(org, metric):
                code = self.catalog.meters[metric]
                return await self.in_scope(
                    lambda s: usage.clear_limit(self.orgs[org], code, session=s)
                )
            case Advance(minutes):
                self.clock.advance(minutes=minutes)
                return None
        raise AssertionError(operation)  # pragma: no cover

    async def record(self, event: UsageEventIn) -> Any:
        usage, org = self.usage, event.organization_id
        assert org is not None
        fields = {
            "input_tokens": event.input_tokens,
            "output_tokens": event.output_tokens,
            "model": event.model,
            "provider": event.provider,
        }
        if self.path == "statement":
            result = await usage.record(
                org, event.metric, event.quantity, idempotency_key=event.idempotency_key, **fields
            )
            return self.result(result)
        if self.path == "batch":
            (outcome,) = await usage.record_many([event])
            return self.outcome(outcome)
        result = await self.in_scope(
            lambda s: usage.record(
                org,
                event.metric,
                event.quantity,
                idempotency_key=event.idempotency_key,
                session=s,
                **fields,
            )
        )
        return self.result(result)

    async def record_many(self, events: Sequence[UsageEventIn]) -> Any:
        if self.path == "statement":  # one `record` after another
            outcomes: list[Any] = []
            for event in events:
                try:
                    result = await self.record(event)
                except DomainError as error:
                    status = "refused" if error.code == "limit_exceeded" else "invalid"
                    result = (status, error.code, error.message)
                outcomes.append(result[:4] if result[0] in ("accepted", "duplicate") else result)
            return outcomes
        found = await self.in_scope(lambda s: self.usage.record_many(events, session=s))
        return [self.outcome(outcome)[:4] for outcome in found]

    def result(self, result: RecordResult) -> tuple[Any, ...]:
        """A record's answer: what `record_many` would say of it, then the rest."""
        return (
            result.status,
            None,
            None,
            result.event_id,
            result.metric,
            result.quantity,
            result.used,
            result.limit,
            result.over_soft_limit,
            result.cost_micros,
        )

    def outcome(self, outcome: BatchOutcome) -> tuple[Any, ...]:
        if outcome.status in ("accepted", "duplicate"):
            return (outcome.status, None, None, outcome.event_id)
        return (outcome.status, outcome.code, outcome.message)


async def rows(run: Run) -> dict[str, Any]:
    """What the run left: counters, rollups, alerts, events and reservations, with
    organisations as their labels and ids as the keys they stand for."""
    labels = {org: label for label, org in run.orgs.items()}
    orgs = list(labels)
    async with run.database.session(readonly=True) as s:
        counters = (
            await s.execute(
                sa.select(
                    UsageCounter.organization_id,
                    UsageCounter.metric,
                    UsageCounter.period_start,
                    UsageCounter.used,
                    UsageCounter.reserved,
                ).where(UsageCounter.organization_id.in_(orgs))
            )
        ).all()
        rollups = (
            await s.execute(
                sa.select(
                    UsageDailySummary.organization_id,
                    UsageDailySummary.day,
                    UsageDailySummary.metric,
                    UsageDailySummary.model,
                    UsageDailySummary.provider,
                    UsageDailySummary.feature,
                    UsageDailySummary.quantity,
                    UsageDailySummary.event_count,
                    UsageDailySummary.input_tokens,
                    UsageDailySummary.output_tokens,
                    UsageDailySummary.total_tokens,
                    UsageDailySummary.cost_micros,
                ).where(UsageDailySummary.organization_id.in_(orgs))
            )
        ).all()
        alerts = (
            await s.execute(
                sa.select(
                    UsageAlert.organization_id,
                    UsageAlert.metric,
                    UsageAlert.period_start,
                    UsageAlert.threshold_percent,
                    UsageAlert.limit_value,
                    UsageAlert.used,
                ).where(UsageAlert.organization_id.in_(orgs))
            )
        ).all()
        events = (
            await s.execute(
                sa.select(
                    UsageEvent.organization_id,
                    UsageEvent.id,
                    UsageEvent.idempotency_key,
                    UsageEvent.payload_hash,
                    UsageEvent.metric,
                    UsageEvent.quantity,
                    UsageEvent.cost_micros,
                    UsageEvent.occurred_at,
                ).where(UsageEvent.organization_id.in_(orgs))
            )
        ).all()
        reservations = (
            await s.execute(
                sa.select(
                    UsageReservation.id,
                    UsageReservation.metric,
                    UsageReservation.period_start,
                    UsageReservation.quantity,
                    UsageReservation.status,
                    UsageReservation.settled_quantity,
                ).where(UsageReservation.organization_id.in_(orgs))
            )
        ).all()
    names = {code: name for name, code in run.catalog.meters.items()}
    held_ids: dict[Any, str] = {held: f"reservation {n}" for n, held in enumerate(run.reservations)}
    held_ids.update({str(held): name for held, name in held_ids.items()})
    ids: dict[Any, str] = dict(held_ids)
    ids.update({row[1]: _named(f"{labels[row[0]]}:{row[2]}", held_ids, {}, {}) for row in events})
    return {
        "answers": [_named(answer, ids, names, labels) for answer in run.answers],
        "counters": sorted(
            (labels[org], names[metric], _utc(start), used, reserved)
            for org, metric, start, used, reserved in counters
            if used or reserved
        ),
        "rollups": sorted((labels[row[0]], row[1], names[row[2]], *row[3:]) for row in rollups),
        "alerts": sorted(
            (labels[org], names[metric], _utc(start), *rest) for org, metric, start, *rest in alerts
        ),
        "events": sorted(
            (
                ids[event_id],
                names[metric],
                quantity,
                cost,
                _utc(occurred),
                # A settled reservation's event names the reservation in its properties.
                None if key.startswith("reservation:") else payload_hash,
            )
            for _, event_id, key, payload_hash, metric, quantity, cost, occurred in events
        ),
        "reservations": sorted(
            (ids[held], names[metric], _utc(start), quantity, status.value, settled)
            for held, metric, start, quantity, status, settled in reservations
        ),
    }


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _named(value: Any, ids: dict[Any, str], names: dict[str, str], labels: dict[Any, str]) -> Any:
    """`value` with ids, meter codes and organisations replaced by what they stand for."""
    if isinstance(value, (list, tuple)):
        return type(value)(_named(item, ids, names, labels) for item in value)
    if isinstance(value, uuid.UUID):
        return ids.get(value, labels.get(value, "an unknown id"))
    if isinstance(value, str):
        for old, new in (*ids.items(), *names.items(), *labels.items()):
            if isinstance(old, str) and old in value:
                value = value.replace(old, new)
            elif isinstance(old, uuid.UUID) and str(old) in value:
                value = value.replace(str(old), str(new))
        return value
    if isinstance(value, Limit):
        return ("limit", value.value, value.hard)
    return value


async def run_through(path: str, database: Database, operations: Sequence[Operation]) -> Run:
    found = await catalog(database)
    orgs: dict[str, uuid.UUID] = {}
    async with database.transaction() as s:
        plan = await s.get(SubscriptionPlan, found.plan_id)
        for label in ORGS:
            orgs[label] = (await create_organization(s, plan=plan)).id
    run = Run(path, database, found, orgs)
    for operation in operations:
        await run.apply(operation)
    return run


# --- the test -------------------------------------------------------------------------------------
@SETTINGS
@given(operations=SEQUENCES)
async def test_every_path_answers_and_writes_alike(
    scratch: Database, operations: list[Operation]
) -> None:
    found = {path: await rows(await run_through(path, scratch, operations)) for path in PATHS}
    reference = found["session"]
    for path in ("statement", "batch"):
        other = found[path]
        for name in ("counters", "rollups", "alerts", "events", "reservations"):
            assert other[name] == reference[name], (path, name)
        for step, (ours, theirs) in enumerate(
            zip(other["answers"], reference["answers"], strict=True)
        ):
            if path == "batch" and isinstance(operations[step], Record):
                theirs = theirs[:4] if theirs and theirs[0] in ("accepted", "duplicate") else theirs
                if theirs and theirs[0] == "error":  # a batch of one reports what record raises
                    theirs = (
                        "refused" if theirs[1] == "limit_exceeded" else "invalid",
                        *theirs[1:],
                    )
            assert ours == theirs, (path, step, operations[step])

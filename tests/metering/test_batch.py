"""The batch engine (`metering/batch.py`) behind `record_many` and group commit (`group.py`).

A batch is locked, decided in Python in event order and written set-wise, by one of two stores:
`PostgresStore` (asyncpg arrays: `record_many` on PostgreSQL without `session=`, and group
commit) and `SessionStore` (SQLAlchemy Core: SQLite, and any call with `session=`). The first
part checks that both decide and write the same things, on both backends: outcomes, counters,
events, day rollups, threshold alerts, lapsed reservations and periods. `PATHS` runs a test once
in the service's own transaction ("own") and once in a caller's ("caller").

The second part races committed transactions on PostgreSQL, in the style of `test_races.py`:
group commit against a hard limit, copies of one event, overlapping batches, conflicting copies,
cancelled callers and a database that goes away (behind a TCP proxy the test stops).

Every test commits, into this module's own database (`scratch`), with organisations of its own.
Some tests interleave transactions deterministically: `Probe` wraps the real stores so that a
test can run code of its own before a step (lock, expire, write) of a batch, and `until_waiting`
watches `pg_stat_activity` until a session of the module's engine waits for a lock. The
interleavings are the ones that deadlocked or misanswered before they were fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import secrets
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url

from saascore.kit.db import Database
from saascore.kit.errors import IdempotencyConflict
from saascore.metering import service as service_module
from saascore.metering.batch import Raced
from saascore.metering.decision import Decision
from saascore.metering.errors import LimitExceeded
from saascore.metering.postgres import PostgresStore
from saascore.metering.service import BatchOutcome, RecordResult, UsageEventIn, UsageService
from saascore.metering.session_store import SessionStore
from saascore.models import (
    Aggregation,
    Meter,
    ModelPricing,
    ReservationStatus,
    ResetPeriod,
    UsageAlert,
    UsageCounter,
    UsageDailySummary,
    UsageEvent,
    UsageReservation,
)
from tests.factories import create_organization, create_plan, random_code
from tests.helpers import CLOCK_START, Clock, only_postgresql

START = CLOCK_START  # 2025-03-10 12:00 UTC
FEBRUARY = datetime(2025, 2, 1, tzinfo=UTC)
MARCH = datetime(2025, 3, 1, tzinfo=UTC)
APRIL = datetime(2025, 4, 1, tzinfo=UTC)
TODAY = date(2025, 3, 10)
#: As `test_races.py`: twenty transactions at once at most, per engine.
POOL = {"db_pool_size": 10, "db_max_overflow": 10, "db_pool_timeout": 60.0}
#: The nonexistent organisation of the batches (the same in every run, so messages compare).
NOBODY = uuid.UUID("00000000-0000-4000-8000-00000000dead")


# --- the scratch database ----------------------------------------------------------------------
@pytest_asyncio.fixture(loop_scope="session")
async def scratch(scratch: Database) -> AsyncIterator[Database]:
    """The module's committed database, on an engine of its own: a pool sized for the races,
    and an `application_name` of its own so that `until_waiting` sees only its sessions."""
    name = f"saascore-batch-{secrets.token_hex(4)}"
    database = Database(scratch.settings.model_copy(update={**POOL, "service_name": name}))
    try:
        yield database
    finally:
        await database.dispose()


async def new_org(database: Database, **limits: int | tuple[int, bool]) -> uuid.UUID:
    """A committed organisation on a plan without limits, with overrides for `limits`: a hard
    limit, or (limit, hard)."""
    async with database.transaction() as session:
        organization = await create_organization(session, plan=await create_plan(session))
    usage = UsageService(database)
    for metric, limit in limits.items():
        value, hard = limit if isinstance(limit, tuple) else (limit, True)
        await usage.set_limit(organization.id, metric, value, hard=hard)
    return organization.id


async def new_meter(database: Database, aggregation: Aggregation) -> str:
    code = random_code(f"meter_{aggregation.value}")
    async with database.transaction() as session:
        session.add(
            Meter(code=code, name=code, aggregation=aggregation, reset_period=ResetPeriod.MONTH)
        )
    return code


async def new_price(database: Database, model: str, **micros: int) -> None:
    """An active price of `model` at provider "acme", in force since 1970."""
    async with database.transaction() as session:
        session.add(
            ModelPricing(
                provider="acme",
                model=model,
                input_micros_per_million=micros.get("input", 0),
                output_micros_per_million=micros.get("output", 0),
                cached_input_micros_per_million=micros.get("cached", 0),
                effective_from=datetime(1970, 1, 1, tzinfo=UTC),
            )
        )


def ev(key: str, quantity: int, metric: str = "tokens", **fields: Any) -> UsageEventIn:
    return UsageEventIn(metric=metric, quantity=quantity, idempotency_key=key, **fields)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- reading the committed state -----------------------------------------------------------------
@dataclass(frozen=True)
class State:
    """Everything the metering wrote for one organisation (no ids, no organisation)."""

    events: list[tuple[Any, ...]]
    counters: list[tuple[Any, ...]]
    rollups: list[tuple[Any, ...]]
    alerts: list[tuple[Any, ...]]
    reservations: list[tuple[Any, ...]]


async def state(database: Database, org_id: uuid.UUID) -> State:
    e, c, d, a, r = UsageEvent, UsageCounter, UsageDailySummary, UsageAlert, UsageReservation

    async def select(model: Any, *columns: Any) -> list[tuple[Any, ...]]:
        query = sa.select(*columns).where(model.organization_id == org_id).order_by(*columns)
        async with database.session(readonly=True) as session:
            return [tuple(row) for row in await session.execute(query)]

    return State(
        events=await select(
            e,
            e.idempotency_key,
            e.metric,
            e.quantity,
            e.input_tokens,
            e.output_tokens,
            e.cached_tokens,
            e.total_tokens,
            e.cost_micros,
            e.model,
            e.provider,
            e.feature,
            e.occurred_at,
            e.recorded_at,
        ),
        counters=await select(c, c.metric, c.period_start, c.period_end, c.used, c.reserved),
        rollups=await select(
            d,
            d.day,
            d.metric,
            d.model,
            d.provider,
            d.feature,
            d.quantity,
            d.event_count,
            d.input_tokens,
            d.output_tokens,
            d.cached_tokens,
            d.total_tokens,
            d.cost_micros,
        ),
        alerts=await select(
            a, a.metric, a.period_start, a.threshold_percent, a.limit_value, a.used, a.crossed_at
        ),
        reservations=await select(r, r.id, r.status, r.quantity, r.finished_at),
    )


async def event_ids(database: Database, org_id: uuid.UUID) -> dict[str, uuid.UUID]:
    """The organisation's stored events: key -> id."""
    async with database.session(readonly=True) as session:
        rows = await session.execute(
            sa.select(UsageEvent.idempotency_key, UsageEvent.id).where(
                UsageEvent.organization_id == org_id
            )
        )
        return dict(rows.all())


def counters_of(found: State) -> dict[tuple[str, datetime], tuple[int, int]]:
    """(metric, period start) -> (used, reserved)."""
    return {(m, start): (used, reserved) for m, start, _, used, reserved in found.counters}


def alerts_of(found: State) -> list[tuple[Any, ...]]:
    """(metric, period start, percent, limit, used) of each alert."""
    return [row[:5] for row in found.alerts]


# --- the two ways into a batch -----------------------------------------------------------------
#: The service's own transaction (on PostgreSQL, `PostgresStore`) or a caller's (`SessionStore`).
PATHS = pytest.mark.parametrize("path", ["own", "caller"])


async def record_many(
    usage: UsageService,
    path: str,
    events: Sequence[UsageEventIn],
    org_id: uuid.UUID | None = None,
    *,
    backfill: bool = False,
) -> list[BatchOutcome]:
    if path == "own":
        return await usage.record_many(events, org_id=org_id, backfill=backfill)
    async with usage.database.transaction() as session:
        return await usage.record_many(events, org_id=org_id, backfill=backfill, session=session)


# --- instrumenting the stores --------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    store: str  # "postgres" or "session"
    number: int  # which store instance (one per batch transaction)
    name: str  # "lock", "expire", "write" or "raced"
    size: int  # keys looked up with the locks (none on an optimistic first try), events written


Pause = Callable[[Step], Awaitable[None]]


@dataclass
class Probe:
    """The real stores, logging each step of each batch and awaiting `pause` (when set) before
    it, so that a test can interleave a transaction of its own at a known point."""

    steps: list[Step] = field(default_factory=list)
    pause: Pause | None = None

    def stores(self, name: str) -> set[int]:
        return {step.number for step in self.steps if step.store == name}

    def of(self, name: str) -> list[Step]:
        return [step for step in self.steps if step.name == name]


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Probe:
    found = Probe()
    numbers = itertools.count()

    async def step(store: Any, name: str, size: int) -> None:
        taken = Step(store.kind, store.number, name, size)
        found.steps.append(taken)
        if found.pause is not None:
            await found.pause(taken)

    def probed(base: type[Any], kind: str) -> type[Any]:
        class Probed(base):  # type: ignore[valid-type, misc]
            def __init__(self, *args: Any) -> None:
                super().__init__(*args)
                self.kind, self.number = kind, next(numbers)

            async def lock(self, periods: Any, keys: Sequence[Any], now: datetime) -> Any:
                await step(self, "lock", len(keys))
                return await super().lock(periods, keys, now)

            async def expire_lapsed(self, counters: Any, now: datetime) -> Any:
                counters = list(counters)
                await step(self, "expire", len(counters))
                return await super().expire_lapsed(counters, now)

            async def write(self, decision: Decision, now: datetime, meanwhile: Any = None) -> None:
                await step(self, "write", len(decision.events))
                try:
                    await super().write(decision, now, meanwhile)
                except Raced:
                    found.steps.append(Step(kind, self.number, "raced", 0))
                    raise

        return Probed

    monkeypatch.setattr(service_module, "PostgresStore", probed(PostgresStore, "postgres"))
    monkeypatch.setattr(service_module, "SessionStore", probed(SessionStore, "session"))
    return found


async def until_waiting(database: Database, count: int = 1) -> int:
    """Wait (up to about five seconds) until `count` sessions of `database`'s engine wait for a
    lock; the number found. The caller goes on either way: a fixed engine may never wait."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = :name AND wait_event_type = 'Lock'"
    )
    found = 0
    for _ in range(250):
        async with database.session(readonly=True) as session:
            found = int(await session.scalar(query, {"name": database.settings.service_name}) or 0)
        if found >= count:
            break
        await asyncio.sleep(0.02)
    return found


# =================================================================================================
# The two stores decide and write alike
# =================================================================================================
class TestTheTwoStores:
    async def test_the_same_batches_give_the_same_outcomes_and_rows(
        self, scratch: Database, backend: str, probe: Probe
    ) -> None:
        count = await new_meter(scratch, Aggregation.COUNT)
        peak = await new_meter(scratch, Aggregation.MAX)
        priced, unpriced = random_code("model"), random_code("unpriced")
        # 1 micro per input token, 0.1 per cached one, 2 per output token
        await new_price(scratch, priced, input=1_000_000, cached=100_000, output=2_000_000)

        async def run(path: str) -> tuple[list[tuple[Any, ...]], dict[str, State]]:
            usage = UsageService(scratch, clock=Clock())
            a = await new_org(scratch, tokens=100, **{count: 2, peak: 10})
            b = await new_org(scratch, tokens=(50, False))

            def of(
                org: uuid.UUID, key: str, quantity: int, metric: str = "tokens", **f: Any
            ) -> UsageEventIn:
                return ev(key, quantity, metric, organization_id=org, **f)

            first = await record_many(usage, path, [of(a, "e1", 30), of(b, "e1", 30)])
            unpriced_before = sample(
                "saascore_usage_unpriced_model_total", provider="acme", model="other"
            )
            second = await record_many(
                usage,
                path,
                [
                    of(a, "e1", 30),  # 0: a retry of the first batch
                    of(NOBODY, "m1", 1),  # 1: no such organisation
                    of(a, "u1", 1, "nope"),  # 2: no such meter
                    of(a, "neg", -5),  # 3: negative
                    of(a, "e2", 60),  # 4: 90 of 100
                    of(a, "e2", 60),  # 5: a copy inside the batch
                    of(a, "e2", 61),  # 6: the key again, another event
                    of(a, "e1", 31),  # 7: the first batch's key, another event
                    of(a, "big", 20),  # 8: 110 > 100
                    of(a, "small", 10),  # 9: still fits: 100 of 100
                    of(b, "s1", 40),  # 10: 70 of a soft 50
                    of(b, "s2", 1000),  # 11: a soft limit never refuses
                    of(a, "c1", 5, count),  # 12: a count meter counts events: 1
                    of(a, "c2", 7, count),  # 13: 2 of 2
                    of(a, "c3", 1, count),  # 14: refused
                    of(a, "x1", 9, peak),  # 15: a max meter keeps the peak: 9
                    of(a, "x2", 4, peak),  # 16: still 9
                    of(a, "x3", 11, peak),  # 17: 11 > 10
                    of(
                        b,
                        "p1",
                        1500,
                        model=priced,
                        provider="acme",
                        feature="chat",
                        input_tokens=1000,
                        cached_tokens=200,
                        output_tokens=500,
                    ),  # 18: 800·1 + 200·0.1 + 500·2 = 1,820 micros
                    of(
                        b,
                        "p2",
                        30,
                        model=unpriced,
                        provider="acme",
                        input_tokens=10,
                        output_tokens=20,
                    ),  # 19: no price: cost 0, counted
                    of(a, "big", 20),  # 20: refused again (the refusal stored nothing)
                    of(b, "e1", 30),  # 21: b's own e1, a retry
                ],
            )
            assert sample(
                "saascore_usage_unpriced_model_total", provider="acme", model="other"
            ) == (unpriced_before + 1)
            ids = {
                event_id: f"{label}:{key}"
                for org, label in ((a, "a"), (b, "b"))
                for key, event_id in (await event_ids(scratch, org)).items()
            }
            outcomes = [
                (o.index, o.idempotency_key, o.status, o.code, o.message, ids.get(o.event_id))
                for o in [*first, *second]
            ]
            assert all(o.event_id is None or o.event_id in ids for o in [*first, *second])
            return outcomes, {"a": await state(scratch, a), "b": await state(scratch, b)}

        own, caller = await run("own"), await run("caller")

        # The stores: PostgresStore for the own transaction on PostgreSQL, SessionStore else.
        # (One store per transaction; an optimistic one locks again after a race.)
        stores = [
            store for store, _ in dict.fromkeys((s.store, s.number) for s in probe.of("lock"))
        ]
        if backend == "postgresql":
            assert stores == ["postgres", "postgres", "session", "session"]
        else:
            assert stores == ["session"] * 4

        outcomes, rows = own
        assert [o[2:] for o in outcomes] == [
            ("accepted", None, None, "a:e1"),
            ("accepted", None, None, "b:e1"),
            ("duplicate", None, None, "a:e1"),
            ("invalid", "not_found", f"no organisation {NOBODY}", None),
            ("invalid", "unknown_metric", "no meter 'nope'", None),
            ("invalid", "invalid_input", "the quantity must not be negative", None),
            ("accepted", None, None, "a:e2"),
            ("duplicate", None, None, "a:e2"),
            (
                "invalid",
                "idempotency_conflict",
                "idempotency key 'e2' was used for a different event",
                None,
            ),
            (
                "invalid",
                "idempotency_conflict",
                "idempotency key 'e1' was used for a different event",
                None,
            ),
            ("refused", "limit_exceeded", "tokens: 20 requested, 90 of 100 used", None),
            ("accepted", None, None, "a:small"),
            ("accepted", None, None, "b:s1"),
            ("accepted", None, None, "b:s2"),
            ("accepted", None, None, "a:c1"),
            ("accepted", None, None, "a:c2"),
            ("refused", "limit_exceeded", f"{count}: 1 requested, 2 of 2 used", None),
            ("accepted", None, None, "a:x1"),
            ("accepted", None, None, "a:x2"),
            ("refused", "limit_exceeded", f"{peak}: 11 requested, 9 of 10 used", None),
            ("accepted", None, None, "b:p1"),
            ("accepted", None, None, "b:p2"),
            ("refused", "limit_exceeded", "tokens: 20 requested, 100 of 100 used", None),
            ("duplicate", None, None, "b:e1"),
        ]
        keys = ["e1", "m1", "u1", "neg", "e2", "e2", "e2", "e1", "big", "small", "s1", "s2"]
        keys += ["c1", "c2", "c3", "x1", "x2", "x3", "p1", "p2", "big", "e1"]
        assert [o[:2] for o in outcomes] == [(0, "e1"), (1, "e1"), *enumerate(keys)]
        a, b = rows["a"], rows["b"]
        assert [(row[0], row[1], row[2], row[7]) for row in a.events] == [
            ("c1", count, 5, 0),
            ("c2", count, 7, 0),
            ("e1", "tokens", 30, 0),
            ("e2", "tokens", 60, 0),
            ("small", "tokens", 10, 0),
            ("x1", peak, 9, 0),
            ("x2", peak, 4, 0),
        ]
        assert [row[:8] for row in b.events] == [
            ("e1", "tokens", 30, 0, 0, 0, 0, 0),
            ("p1", "tokens", 1500, 1000, 500, 200, 1500, 1820),
            ("p2", "tokens", 30, 10, 20, 0, 30, 0),
            ("s1", "tokens", 40, 0, 0, 0, 0, 0),
            ("s2", "tokens", 1000, 0, 0, 0, 0, 0),
        ]
        assert {row[-2:] for row in [*a.events, *b.events]} == {(START, START)}
        assert counters_of(a) == {
            ("tokens", MARCH): (100, 0),
            (count, MARCH): (2, 0),
            (peak, MARCH): (9, 0),
        }
        assert counters_of(b) == {("tokens", MARCH): (2600, 0)}
        assert {row[2] for row in [*a.counters, *b.counters]} == {APRIL}  # period_end
        assert sorted(a.rollups) == sorted(
            [
                (TODAY, "tokens", "", "", "", 100, 3, 0, 0, 0, 0, 0),
                (TODAY, count, "", "", "", 12, 2, 0, 0, 0, 0, 0),
                (TODAY, peak, "", "", "", 13, 2, 0, 0, 0, 0, 0),
            ]
        )
        assert b.rollups == [
            (TODAY, "tokens", "", "", "", 1070, 3, 0, 0, 0, 0, 0),
            (TODAY, "tokens", priced, "acme", "chat", 1500, 1, 1000, 500, 200, 1500, 1820),
            (TODAY, "tokens", unpriced, "acme", "", 30, 1, 10, 20, 0, 30, 0),
        ]
        assert sorted(a.alerts) == sorted(
            [
                ("tokens", MARCH, 80, 100, 90, START),
                ("tokens", MARCH, 100, 100, 100, START),
                (count, MARCH, 80, 2, 2, START),  # one event crossed both
                (count, MARCH, 100, 2, 2, START),
                (peak, MARCH, 80, 10, 9, START),
            ]
        )
        assert b.alerts == [
            ("tokens", MARCH, 80, 50, 70, START),  # a soft limit is crossed too
            ("tokens", MARCH, 100, 50, 70, START),
        ]

        # And the other path, event for event and row for row.
        assert caller == own


# =================================================================================================
# Threshold alerts
# =================================================================================================
class TestThresholds:
    @PATHS
    async def test_each_threshold_is_recorded_once_per_period(
        self, scratch: Database, path: str
    ) -> None:
        clock = Clock()
        usage = UsageService(scratch, clock=clock)
        stepwise, at_once = await new_org(scratch, tokens=10), await new_org(scratch, tokens=10)

        outcomes = await record_many(
            usage, path, [ev("a", 5), ev("b", 3), ev("c", 2), ev("d", 1)], stepwise
        )
        assert [o.status for o in outcomes] == ["accepted", "accepted", "accepted", "refused"]
        assert [o.status for o in await record_many(usage, path, [ev("a", 10)], at_once)] == [
            "accepted"
        ]
        assert alerts_of(await state(scratch, stepwise)) == [
            ("tokens", MARCH, 80, 10, 8),  # crossed by b, at 8
            ("tokens", MARCH, 100, 10, 10),  # crossed by c, at 10
        ]
        assert alerts_of(await state(scratch, at_once)) == [
            ("tokens", MARCH, 80, 10, 10),  # one event crossed both
            ("tokens", MARCH, 100, 10, 10),
        ]

        # A higher limit crossed again in the same period, in one batch: nothing new.
        clock.advance(minutes=5)
        await usage.set_limit(stepwise, "tokens", 20, hard=False)
        outcomes = await record_many(usage, path, [ev("e", 7), ev("f", 5), ev("g", 30)], stepwise)
        assert [o.status for o in outcomes] == ["accepted"] * 3
        found = await state(scratch, stepwise)
        assert counters_of(found) == {("tokens", MARCH): (52, 0)}
        assert [row[-1] for row in found.alerts] == [START, START]

        # A new period crosses afresh, both thresholds in one batch.
        clock.set(APRIL + timedelta(hours=1))
        await record_many(usage, path, [ev("h", 16), ev("i", 1), ev("j", 4)], stepwise)
        assert alerts_of(await state(scratch, stepwise))[2:] == [
            ("tokens", APRIL, 80, 20, 16),
            ("tokens", APRIL, 100, 20, 21),
        ]

    @PATHS
    async def test_no_alert_without_a_limit(self, scratch: Database, path: str) -> None:
        usage = UsageService(scratch, clock=Clock())
        org = await new_org(scratch)
        await record_many(usage, path, [ev("a", 10**9), ev("b", 10**9)], org)
        assert (await state(scratch, org)).alerts == []


# =================================================================================================
# Lapsed reservations
# =================================================================================================
class TestLapsedReservations:
    @PATHS
    async def test_a_refusal_expires_lapsed_reservations_and_decides_again(
        self, scratch: Database, path: str
    ) -> None:
        clock = Clock()
        usage = UsageService(scratch, clock=clock)
        org = await new_org(scratch, tokens=100)
        lapsing = await usage.reserve(org, "tokens", 80, ttl=timedelta(minutes=1))
        kept = await usage.reserve(org, "tokens", 10, ttl=timedelta(hours=1))
        clock.advance(minutes=2)

        # "a" fits beside both holds (95); "b" does only once the lapsed one is expired.
        outcomes = await record_many(usage, path, [ev("a", 5), ev("b", 60)], org)

        assert [o.status for o in outcomes] == ["accepted", "accepted"]
        found = await state(scratch, org)
        assert found.reservations == sorted(
            [
                (lapsing.id, ReservationStatus.EXPIRED, 80, clock.now),
                (kept.id, ReservationStatus.HELD, 10, None),
            ]
        )
        assert counters_of(found) == {("tokens", MARCH): (65, 10)}
        assert [row[:3] for row in found.events] == [("a", "tokens", 5), ("b", "tokens", 60)]

    @PATHS
    async def test_an_unexpired_reservation_still_refuses(
        self, scratch: Database, path: str
    ) -> None:
        clock = Clock()
        usage = UsageService(scratch, clock=clock)
        org = await new_org(scratch, tokens=100)
        held = await usage.reserve(org, "tokens", 80, ttl=timedelta(hours=1))
        clock.advance(minutes=2)

        outcomes = await record_many(usage, path, [ev("b", 60), ev("c", 20)], org)

        assert [(o.status, o.message) for o in outcomes] == [
            ("refused", "tokens: 60 requested, 80 of 100 used"),
            ("accepted", None),
        ]
        found = await state(scratch, org)
        assert found.reservations == [(held.id, ReservationStatus.HELD, 80, None)]
        assert counters_of(found) == {("tokens", MARCH): (20, 80)}

    @PATHS
    async def test_a_refusal_that_expiring_cannot_cure_still_gives_the_quota_back(
        self, scratch: Database, path: str
    ) -> None:
        clock = Clock()
        usage = UsageService(scratch, clock=clock)
        org = await new_org(scratch, tokens=100)
        lapsing = await usage.reserve(org, "tokens", 80, ttl=timedelta(minutes=1))
        clock.advance(minutes=2)

        outcomes = await record_many(usage, path, [ev("huge", 101)], org)

        assert [(o.status, o.message) for o in outcomes] == [
            ("refused", "tokens: 101 requested, 0 of 100 used")
        ]
        found = await state(scratch, org)
        assert found.reservations == [(lapsing.id, ReservationStatus.EXPIRED, 80, clock.now)]
        assert counters_of(found) == {("tokens", MARCH): (0, 0)}
        assert found.events == []


# =================================================================================================
# Periods
# =================================================================================================
class TestPeriods:
    @PATHS
    async def test_events_of_one_batch_land_in_the_counters_of_their_periods(
        self, scratch: Database, path: str
    ) -> None:
        usage = UsageService(scratch, clock=Clock())
        org = await new_org(scratch, tokens=15)
        plus_two = timezone(timedelta(hours=2))
        outcomes = await record_many(
            usage,
            path,
            [
                ev("feb", 10, occurred_at=datetime(2025, 2, 28, 23, 59, 59, tzinfo=UTC)),
                ev("mar", 10, occurred_at=MARCH),
                # 01:30 on 1 March at UTC+2 is 23:30 on 28 February in UTC: February's.
                ev("feb-tz", 5, occurred_at=datetime(2025, 3, 1, 1, 30, tzinfo=plus_two)),
                ev("feb-over", 1, occurred_at=datetime(2025, 2, 3, tzinfo=UTC)),  # Feb is full
                ev("mar-2", 5, occurred_at=datetime(2025, 3, 1, 10, tzinfo=UTC)),  # March isn't
                ev("d9", 1, "api_calls", occurred_at=datetime(2025, 3, 9, 23, 59, tzinfo=UTC)),
                ev("d10", 2, "api_calls", occurred_at=datetime(2025, 3, 10, tzinfo=UTC)),
                ev("now", 3, "api_calls"),  # the clock's: 10 March
                ev("feb", 10, occurred_at=datetime(2025, 2, 28, 23, 59, 59, tzinfo=UTC)),
            ],
            org,
            backfill=True,
        )

        assert [(o.idempotency_key, o.status) for o in outcomes] == [
            ("feb", "accepted"),
            ("mar", "accepted"),
            ("feb-tz", "accepted"),
            ("feb-over", "refused"),
            ("mar-2", "accepted"),
            ("d9", "accepted"),
            ("d10", "accepted"),
            ("now", "accepted"),
            ("feb", "duplicate"),
        ]
        found = await state(scratch, org)
        march_9, march_10, march_11 = (datetime(2025, 3, d, tzinfo=UTC) for d in (9, 10, 11))
        assert found.counters == [
            ("api_calls", march_9, march_10, 1, 0),
            ("api_calls", march_10, march_11, 5, 0),
            ("tokens", FEBRUARY, MARCH, 15, 0),
            ("tokens", MARCH, APRIL, 15, 0),
        ]
        assert [(row[0], row[1], row[5], row[6]) for row in found.rollups] == [
            (date(2025, 2, 28), "tokens", 15, 2),
            (date(2025, 3, 1), "tokens", 15, 2),
            (date(2025, 3, 9), "api_calls", 1, 1),
            (TODAY, "api_calls", 5, 2),
        ]
        assert alerts_of(found) == [
            ("tokens", FEBRUARY, 80, 15, 15),
            ("tokens", FEBRUARY, 100, 15, 15),
            ("tokens", MARCH, 80, 15, 15),
            ("tokens", MARCH, 100, 15, 15),
        ]

    @PATHS
    async def test_a_retry_from_an_earlier_period_reports_that_periods_counter(
        self, scratch: Database, backend: str, path: str, probe: Probe
    ) -> None:
        clock = Clock()
        usage = UsageService(scratch, clock=clock)
        org = await new_org(scratch, api_calls=10)

        async def record(*events: tuple[str, int]) -> list[RecordResult]:
            if path == "own":  # on PostgreSQL: one group-commit batch of them all
                return list(
                    await asyncio.gather(
                        *(usage.record(org, "api_calls", q, idempotency_key=k) for k, q in events)
                    )
                )
            async with scratch.transaction() as session:
                return [
                    await usage.record(org, "api_calls", q, idempotency_key=k, session=session)
                    for k, q in events
                ]

        await usage.usage(org, "api_calls")  # the meters are cached: the calls queue together
        first = await record(("r", 4), ("s", 3))
        clock.set(datetime(2025, 3, 11, 0, 30, tzinfo=UTC))  # a new day, a new counter
        await usage.usage(org, "api_calls")  # (the jump made the cached meters stale)
        retry, fresh = await record(("r", 4), ("n", 2))

        assert (retry.status, retry.event_id, retry.used) == ("duplicate", first[0].event_id, 7)
        assert (fresh.status, fresh.used) == ("accepted", 2)
        if (backend, path) == ("postgresql", "own"):  # batches of two, not the fast path
            assert {s.store for s in probe.of("lock")} == {"postgres"}
            assert next(s.size for s in probe.of("write") if s.store == "postgres") == 2
        assert [row[1:4] for row in (await state(scratch, org)).counters] == [
            (datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 11, tzinfo=UTC), 7),
            (datetime(2025, 3, 11, tzinfo=UTC), datetime(2025, 3, 12, tzinfo=UTC), 2),
        ]

    @only_postgresql
    @pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "one-by-one"])
    async def test_a_retry_alone_from_an_earlier_period_reports_that_periods_counter(
        self, scratch: Database, group_commit: bool
    ) -> None:
        clock = Clock()
        usage = UsageService(scratch, clock=clock, group_commit=group_commit)
        org = await new_org(scratch, api_calls=10)
        first = await usage.record(org, "api_calls", 4, idempotency_key="r")
        await usage.record(org, "api_calls", 3, idempotency_key="s")
        clock.set(datetime(2025, 3, 11, 0, 30, tzinfo=UTC))

        retry = await usage.record(org, "api_calls", 4, idempotency_key="r")

        assert (retry.status, retry.event_id) == ("duplicate", first.event_id)
        assert retry.used == 7  # as the batch engine and `session=` answer (the test above)


# =================================================================================================
# Races: committed transactions on PostgreSQL
# =================================================================================================
WORKERS = 64


async def ledger(database: Database, org_id: uuid.UUID) -> tuple[dict[str, int], int, int]:
    """(stored key -> quantity, summed rollup quantity, summed rollup events)."""
    async with database.session(readonly=True) as session:
        rows = await session.execute(
            sa.select(UsageEvent.idempotency_key, UsageEvent.quantity).where(
                UsageEvent.organization_id == org_id
            )
        )
        events = dict(rows.all())
        summed, counted = (
            await session.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(UsageDailySummary.quantity), 0),
                    sa.func.coalesce(sa.func.sum(UsageDailySummary.event_count), 0),
                ).where(UsageDailySummary.organization_id == org_id)
            )
        ).one()
    return events, int(summed), int(counted)


@only_postgresql
class TestRaces:
    @pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "one-by-one"])
    async def test_racing_records_never_pass_a_hard_limit(
        self, scratch: Database, group_commit: bool
    ) -> None:
        limit = 1_000
        org = await new_org(scratch, tokens=limit)
        # Two services: two processes, each with its queue, racing for one counter.
        services = [
            UsageService(
                scratch, clock=Clock(), group_commit=group_commit, group_commit_max_events=8
            )
            for _ in range(2)
        ]
        for usage in services:
            await usage.usage(org, "tokens")  # cached meters: calls queue as they arrive
        rng = random.Random(f"group-race-{group_commit}")
        quantities = [rng.randint(1, 40) for _ in range(WORKERS)]
        arrivals = [rng.randint(0, 3) for _ in range(WORKERS)]  # turns of the loop
        assert sum(quantities) > limit + 40

        async def worker(n: int) -> RecordResult | LimitExceeded:
            for _ in range(arrivals[n]):
                await asyncio.sleep(0)
            try:
                return await services[n % 2].record(
                    org, "tokens", quantities[n], idempotency_key=f"w{n}"
                )
            except LimitExceeded as refusal:
                return refusal

        outcomes = await asyncio.gather(*(worker(n) for n in range(WORKERS)))

        accepted = {
            f"w{n}": (quantities[n], r)
            for n, r in enumerate(outcomes)
            if isinstance(r, RecordResult)
        }
        refused = [
            (quantities[n], r) for n, r in enumerate(outcomes) if not isinstance(r, RecordResult)
        ]
        assert accepted
        assert refused
        assert all(r.status == "accepted" for _, r in accepted.values())
        used, reserved = counters_of(await state(scratch, org))[("tokens", MARCH)]
        assert reserved == 0
        assert used == sum(q for q, _ in accepted.values())
        assert used <= limit
        events, summed, counted = await ledger(scratch, org)
        assert events == {key: q for key, (q, _) in accepted.items()}
        assert (summed, counted) == (used, len(accepted))
        for q, refusal in refused:
            assert isinstance(refusal, LimitExceeded)
            assert (refusal.metric, refusal.limit, refusal.requested) == ("tokens", limit, q)
            assert refusal.used + refusal.requested > refusal.limit  # no room when refused
            assert q > limit - used  # and there is still none
        # The accepted ones line up one after another, each seeing the one before.
        total = 0
        for q, result in sorted(accepted.values(), key=lambda pair: pair[1].used):
            total += q
            assert result.used == total

    @pytest.mark.parametrize("services", [1, 2], ids=["one-queue", "two-queues"])
    async def test_ten_copies_at_once_through_group_commit_are_counted_once(
        self, scratch: Database, services: int, probe: Probe
    ) -> None:
        org = await new_org(scratch, tokens=10_000)
        queues = [UsageService(scratch, clock=Clock()) for _ in range(services)]
        for usage in queues:
            await usage.usage(org, "tokens")

        results = await asyncio.gather(
            *(
                queues[n % services].record(org, "tokens", 700, idempotency_key="the-one")
                for n in range(10)
            )
        )

        assert sorted(r.status for r in results) == ["accepted"] + ["duplicate"] * 9
        assert len({r.event_id for r in results}) == 1
        assert (await event_ids(scratch, org)) == {"the-one": results[0].event_id}
        assert counters_of(await state(scratch, org)) == {("tokens", MARCH): (700, 0)}
        assert (await ledger(scratch, org))[1:] == (700, 1)
        # One batch per queue, through the batch store (not the fast path of a batch of one).
        assert len(probe.stores("postgres")) == services

    @pytest.mark.parametrize("mixed", [False, True], ids=["postgres-store", "both-stores"])
    async def test_racing_batches_with_overlapping_keys_add_up(
        self, scratch: Database, mixed: bool
    ) -> None:
        usage = UsageService(scratch, clock=Clock())
        orgs = [
            await new_org(scratch, tokens=100, api_calls=4),
            await new_org(scratch, tokens=(300, False)),
            await new_org(scratch),
        ]
        limits = {(orgs[0], "tokens"): 100, (orgs[0], "api_calls"): 4}
        rng = random.Random(f"overlap-{mixed}")
        moments = [
            datetime(2025, 2, 28, 22, tzinfo=UTC),
            datetime(2025, 3, 1, 1, tzinfo=UTC),
            datetime(2025, 3, 9, 8, tzinfo=UTC),
            START,
        ]
        # Every key is one event: the same payload whichever batch carries it.
        pool = [
            ev(
                f"k{n}",
                rng.randint(1, 3) if n % 3 == 0 else rng.randint(1, 40),
                "api_calls" if n % 3 == 0 else "tokens",
                organization_id=org,
                occurred_at=rng.choice(moments),
            )
            for org in orgs
            for n in range(30)
        ]
        # Five at once: a batch is undone (`Raced`) at most once per other batch that commits
        # one of its keys, four times here, within the engine's five attempts (beyond them,
        # see test_a_batch_that_keeps_losing_the_race_for_its_keys_still_completes).
        batches = [[rng.choice(pool) for _ in range(30)] for _ in range(5)]

        async def send(n: int, batch: list[UsageEventIn]) -> list[BatchOutcome]:
            path = "caller" if mixed and n % 2 else "own"
            return await record_many(usage, path, batch, backfill=True)

        results = await asyncio.gather(*(send(n, batch) for n, batch in enumerate(batches)))

        said: dict[tuple[uuid.UUID, str], list[BatchOutcome]] = defaultdict(list)
        for batch, outcomes in zip(batches, results, strict=True):
            assert [o.idempotency_key for o in outcomes] == [e.idempotency_key for e in batch]
            for event, outcome in zip(batch, outcomes, strict=True):
                assert event.organization_id is not None
                said[(event.organization_id, event.idempotency_key)].append(outcome)
        stored: dict[tuple[uuid.UUID, str], uuid.UUID] = {}
        for org in orgs:
            stored |= {(org, key): i for key, i in (await event_ids(scratch, org)).items()}
        assert stored  # and, by the dict, no key twice
        for key, outcomes in said.items():
            statuses = Counter(o.status for o in outcomes)
            if key in stored:
                assert statuses["accepted"] == 1, (key, statuses)
                assert {o.event_id for o in outcomes if o.status != "refused"} == {stored[key]}
            else:
                assert set(statuses) == {"refused"}, (key, statuses)
        assert any(o.status == "refused" for outcomes in said.values() for o in outcomes)

        # Counters and rollups are the sums of the stored events.
        by_key = {(e.organization_id, e.idempotency_key): e for e in pool}
        periods: Counter[tuple[Any, ...]] = Counter()
        days: Counter[tuple[Any, ...]] = Counter()
        for key in stored:
            event = by_key[key]
            assert event.occurred_at is not None
            if event.metric == "tokens":
                start = event.occurred_at.replace(day=1, hour=0)
            else:
                start = event.occurred_at.replace(hour=0, minute=0)
            periods[(key[0], event.metric, start)] += event.quantity
            days[(key[0], event.occurred_at.date(), event.metric, "q")] += event.quantity
            days[(key[0], event.occurred_at.date(), event.metric, "n")] += 1
        counted: Counter[tuple[Any, ...]] = Counter()
        rolled: Counter[tuple[Any, ...]] = Counter()
        for org in orgs:
            found = await state(scratch, org)
            for metric, start, _, used, reserved in found.counters:
                assert reserved == 0
                counted[(org, metric, start)] += used
                if (org, metric) in limits:
                    assert used <= limits[(org, metric)]
            for day, metric, *_, quantity, events, _, _, _, _, _ in found.rollups:
                rolled[(org, day, metric, "q")] += quantity
                rolled[(org, day, metric, "n")] += events
        assert +counted == +periods
        assert +rolled == +days

    async def test_a_batch_that_keeps_losing_the_race_for_its_keys_still_completes(
        self, scratch: Database, probe: Probe
    ) -> None:
        """Before each attempt of the batch to lock its counter, another transaction holds the
        counter with one of the batch's events, and commits once the batch waits for it."""
        org = await new_org(scratch)
        usage = UsageService(scratch, clock=Clock())
        keys = [f"k{n}" for n in range(6)]
        copies: list[asyncio.Task[None]] = []

        async def copy_of(key: str, holding: asyncio.Event) -> None:
            async with scratch.transaction() as session:
                await usage.record(org, "tokens", 1, idempotency_key=key, session=session)
                holding.set()
                await until_waiting(scratch)  # the batch waits for the counter: commit

        async def another_copy_first(step: Step) -> None:
            if step.store == "postgres" and step.name == "lock" and len(copies) < 5:
                holding = asyncio.Event()
                copies.append(asyncio.create_task(copy_of(keys[len(copies)], holding)))
                await holding.wait()

        probe.pause = another_copy_first
        [outcomes] = await asyncio.gather(
            usage.record_many([ev(key, 1) for key in keys], org_id=org), return_exceptions=True
        )
        await asyncio.gather(*copies)

        assert not isinstance(outcomes, BaseException), outcomes
        stored = await event_ids(scratch, org)
        assert set(stored) == set(keys)
        assert [o.event_id for o in outcomes] == [stored[key] for key in keys]
        assert {o.status for o in outcomes} <= {"accepted", "duplicate"}
        assert counters_of(await state(scratch, org)) == {("tokens", MARCH): (len(keys), 0)}

    @pytest.mark.parametrize("path", ["own", "caller"])
    async def test_conflicting_copies_racing_one_is_stored_the_other_conflicts(
        self, scratch: Database, path: str, probe: Probe
    ) -> None:
        """Two batches with the same key for two metrics lock two counters, so neither waits
        for the other: both decide before either writes (a barrier holds them), one write
        finds the other's event and is undone (`Raced`), and that batch is decided again."""
        usage = UsageService(scratch, clock=Clock())
        org = await new_org(scratch)
        await usage.usage(org, "tokens")
        barrier = asyncio.Barrier(2)

        async def both_decided(step: Step) -> None:
            if step.name == "write" and len(probe.of("write")) <= 2:
                await barrier.wait()

        probe.pause = both_decided
        tokens, calls = await asyncio.gather(
            record_many(usage, path, [ev("x", 5), ev("t", 1)], org),
            record_many(usage, path, [ev("x", 5, "api_calls"), ev("c", 1, "api_calls")], org),
        )

        assert len(probe.of("raced")) == 1
        statuses = {(o.idempotency_key, o.status, o.code) for o in [*tokens, *calls]}
        winner = "tokens" if tokens[0].status == "accepted" else "api_calls"
        assert statuses == {
            ("x", "accepted", None),
            ("x", "invalid", "idempotency_conflict"),
            ("t", "accepted", None),
            ("c", "accepted", None),
        }
        found = await state(scratch, org)
        assert sorted((key, metric) for key, metric, *_ in found.events) == [
            ("c", "api_calls"),
            ("t", "tokens"),
            ("x", winner),
        ]
        used = {metric: used for (metric, _), (used, _) in counters_of(found).items()}
        assert used == {metric: 6 if metric == winner else 1 for metric in ("tokens", "api_calls")}

    async def test_conflicting_copies_through_record_raise_idempotency_conflict(
        self, scratch: Database, probe: Probe
    ) -> None:
        """The same through `record` and two group-commit queues (two processes)."""
        org = await new_org(scratch)
        queues = [UsageService(scratch, clock=Clock()) for _ in range(2)]
        for usage in queues:
            await usage.usage(org, "tokens")
        barrier = asyncio.Barrier(2)

        async def both_decided(step: Step) -> None:
            if step.name == "write" and len(probe.of("write")) <= 2:
                await barrier.wait()

        probe.pause = both_decided

        async def send(usage: UsageService, metric: str) -> list[RecordResult | Exception]:
            return list(
                await asyncio.gather(
                    usage.record(org, metric, 5, idempotency_key="x"),
                    usage.record(org, metric, 1, idempotency_key=f"other-{metric}"),
                    return_exceptions=True,
                )
            )

        first, second = await asyncio.gather(
            send(queues[0], "tokens"), send(queues[1], "api_calls")
        )

        assert len(probe.of("raced")) == 1
        copies = [first[0], second[0]]
        assert sorted(type(r).__name__ for r in copies) == ["IdempotencyConflict", "RecordResult"]
        [stored] = [r for r in copies if isinstance(r, RecordResult)]
        [conflict] = [r for r in copies if isinstance(r, IdempotencyConflict)]
        assert (stored.status, conflict.code) == ("accepted", "idempotency_conflict")
        assert isinstance(first[1], RecordResult)
        assert isinstance(second[1], RecordResult)
        assert await event_ids(scratch, org) == {
            "x": stored.event_id,
            "other-tokens": first[1].event_id,
            "other-api_calls": second[1].event_id,
        }


# =================================================================================================
# Group commit on PostgreSQL
# =================================================================================================
@only_postgresql
class TestGroupCommit:
    async def test_no_batch_takes_more_than_max_events(
        self, scratch: Database, probe: Probe
    ) -> None:
        org = await new_org(scratch)
        usage = UsageService(scratch, clock=Clock(), group_commit_max_events=4)
        await usage.usage(org, "tokens")

        results = await asyncio.gather(
            *(usage.record(org, "tokens", n, idempotency_key=f"k{n}") for n in range(1, 11))
        )

        assert [r.status for r in results] == ["accepted"] * 10
        assert len(probe.of("lock")) == 3
        assert [(step.store, step.size) for step in probe.of("write")] == [
            ("postgres", 4),
            ("postgres", 4),
            ("postgres", 2),
        ]
        # Decided in arrival order: each saw the ones before it.
        assert [r.used for r in results] == list(itertools.accumulate(range(1, 11)))
        assert counters_of(await state(scratch, org)) == {("tokens", MARCH): (55, 0)}

    async def test_without_group_commit_every_record_takes_the_fast_path(
        self, scratch: Database, probe: Probe
    ) -> None:
        org = await new_org(scratch, tokens=10)
        usage = UsageService(scratch, clock=Clock(), group_commit=False)
        await usage.usage(org, "tokens")

        results = await asyncio.gather(
            *(usage.record(org, "tokens", 3, idempotency_key=f"k{n}") for n in range(4)),
            return_exceptions=True,
        )

        assert probe.steps == []  # no batch store at all
        assert sorted(type(r).__name__ for r in results) == ["LimitExceeded"] + ["RecordResult"] * 3
        assert counters_of(await state(scratch, org)) == {("tokens", MARCH): (9, 0)}

    async def test_a_cancelled_caller_does_not_disturb_its_batch(
        self, scratch: Database, probe: Probe
    ) -> None:
        org = await new_org(scratch, tokens=100)
        usage = UsageService(scratch, clock=Clock())
        await usage.usage(org, "tokens")
        writing, go_on = asyncio.Event(), asyncio.Event()

        async def hold_the_write(step: Step) -> None:
            if step.name == "write" and not writing.is_set():
                writing.set()
                await go_on.wait()

        probe.pause = hold_the_write
        callers = [
            asyncio.create_task(usage.record(org, "tokens", 10 + n, idempotency_key=f"k{n}"))
            for n in range(4)
        ]
        await writing.wait()  # the batch of four is decided and about to be written
        callers[1].cancel()
        queued = asyncio.create_task(usage.record(org, "tokens", 1, idempotency_key="late"))
        late_cancelled = asyncio.create_task(
            usage.record(org, "tokens", 2, idempotency_key="late-cancelled")
        )
        await asyncio.sleep(0)
        late_cancelled.cancel()  # cancelled before its batch even started
        go_on.set()

        results = await asyncio.gather(*callers, queued, late_cancelled, return_exceptions=True)

        assert isinstance(results[1], asyncio.CancelledError)
        assert isinstance(results[5], asyncio.CancelledError)
        others = [results[0], results[2], results[3], results[4]]
        assert all(isinstance(r, RecordResult) and r.status == "accepted" for r in others)
        # A cancelled caller learns what became of its event by retrying it.
        retried = await usage.record(org, "tokens", 11, idempotency_key="k1")
        assert retried.status in {"accepted", "duplicate"}
        events, summed, counted = await ledger(scratch, org)
        assert {"k0", "k1", "k2", "k3", "late"} <= set(events)
        used, reserved = counters_of(await state(scratch, org))[("tokens", MARCH)]
        assert (used, reserved, summed, counted) == (sum(events.values()), 0, used, len(events))


# --- a database that goes away -----------------------------------------------------------------
class Proxy:
    """A TCP proxy to the PostgreSQL server that the test can stop (dropping every connection,
    as a failover or a network cut would) and start again on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.BaseTransport] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for transport in self.transports:
            transport.abort()
        self.transports.clear()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.transports |= {writer.transport, upstream_writer.transport}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65_536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest_asyncio.fixture(loop_scope="session")
async def proxy(scratch: Database) -> AsyncIterator[Proxy]:
    url = make_url(scratch.settings.database_url or "")
    found = Proxy(url.host or "127.0.0.1", url.port or 5432)
    await found.start()
    try:
        yield found
    finally:
        if found.server is not None:
            await found.stop()


@asynccontextmanager
async def through(scratch: Database, proxy: Proxy) -> AsyncIterator[Database]:
    """The module's database, reached through `proxy`, on an engine (and pool) of its own. Its
    sessions have the same `application_name` as `scratch`'s, for `until_waiting`."""
    url = make_url(scratch.settings.database_url or "").set(port=proxy.port)
    database = Database(
        scratch.settings.model_copy(
            update={"database_url": url.render_as_string(hide_password=False), "db_pool_size": 3}
        )
    )
    try:
        yield database
    finally:
        await database.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def proxied(scratch: Database, proxy: Proxy) -> AsyncIterator[Database]:
    async with through(scratch, proxy) as database:
        yield database


@only_postgresql
class TestTheDatabaseGoesAway:
    async def test_every_waiting_caller_gets_the_error(
        self, scratch: Database, proxied: Database, proxy: Proxy
    ) -> None:
        org = await new_org(scratch)
        usage = UsageService(proxied, clock=Clock())
        assert (await usage.record(org, "tokens", 1, idempotency_key="before")).used == 1

        # Between calls: the connections are gone, and so is the server.
        await proxy.stop()
        results = await asyncio.gather(
            *(usage.record(org, "tokens", 1, idempotency_key=f"down{n}") for n in range(5)),
            usage.record(org, "tokens", 1, idempotency_key="alone"),
            return_exceptions=True,
        )
        assert all(isinstance(r, Exception) for r in results), results
        assert set(await event_ids(scratch, org)) == {"before"}

    async def test_a_batch_losing_its_connection_fails_every_caller_and_commits_nothing(
        self, scratch: Database, proxied: Database, proxy: Proxy
    ) -> None:
        org = await new_org(scratch)
        usage = UsageService(proxied, clock=Clock())
        assert (await usage.record(org, "tokens", 1, idempotency_key="before")).used == 1

        # The batch waits for a counter another transaction holds, and its connection drops.
        async with scratch.transaction() as holder:
            await holder.execute(
                sa.select(UsageCounter.used)
                .where(UsageCounter.organization_id == org)
                .with_for_update()
            )
            waiting = [
                asyncio.create_task(usage.record(org, "tokens", 1, idempotency_key=f"mid{n}"))
                for n in range(5)
            ]
            assert await until_waiting(scratch) == 1  # one batch of five, not five calls
            await proxy.stop()
            results = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(isinstance(r, Exception) for r in results), results
        assert set(await event_ids(scratch, org)) == {"before"}
        assert counters_of(await state(scratch, org)) == {("tokens", MARCH): (1, 0)}

    @pytest.mark.parametrize("call", ["record-group-commit", "record_many"])
    async def test_calls_work_again_once_the_database_is_back(
        self, scratch: Database, proxied: Database, proxy: Proxy, call: str
    ) -> None:
        org = await new_org(scratch)
        usage = UsageService(proxied, clock=Clock())
        await usage.usage(org, "tokens")

        async def batch(prefix: str) -> list[Any]:
            keys = [f"{prefix}-{n}" for n in range(3)]
            if call == "record_many":
                return list(await usage.record_many([ev(k, 1) for k in keys], org_id=org))
            return list(
                await asyncio.gather(
                    *(usage.record(org, "tokens", 1, idempotency_key=k) for k in keys)
                )
            )

        # Three transactions at once: three connections in the pool.
        await asyncio.gather(
            *(usage.record_many([ev(f"warm{n}", 1)], org_id=org) for n in range(3))
        )
        await proxy.stop()
        await proxy.start()

        # A connection found dead is discarded: at worst each pooled one fails one call.
        failures = []
        for attempt in range(proxied.settings.db_pool_size + proxied.settings.db_max_overflow + 1):
            try:
                outcomes = await batch(f"after{attempt}")
            except Exception as error:
                failures.append(error)
                continue
            assert [o.status for o in outcomes] == ["accepted"] * 3
            break
        else:
            raise AssertionError(f"never recovered: {failures[-3:]}")

    @pytest.mark.parametrize("call", ["record-group-commit", "record-one-by-one", "record_many"])
    async def test_one_failed_call_at_most_once_the_database_is_back(
        self, scratch: Database, proxied: Database, proxy: Proxy, call: str
    ) -> None:
        org = await new_org(scratch)
        usage = UsageService(proxied, clock=Clock(), group_commit=call == "record-group-commit")
        # Three transactions at once: three connections in the pool.
        await asyncio.gather(
            *(usage.record_many([ev(f"warm{n}", 1)], org_id=org) for n in range(3))
        )
        await proxy.stop()
        await proxy.start()

        async def call_once(key: str) -> None:
            if call == "record_many":
                [outcome] = await usage.record_many([ev(key, 1)], org_id=org)
                assert outcome.status == "accepted"
            else:
                assert (await usage.record(org, "tokens", 1, idempotency_key=key)).used > 0

        with contextlib.suppress(Exception):
            await call_once("first")  # may find a dead connection, and discard the pool
        await call_once("second")
        await call_once("third")


# =================================================================================================
# Deadlocks: transactions interleaved at a known point
# =================================================================================================
def deadlocked(results: Sequence[Any]) -> list[str]:
    return [type(r).__name__ for r in results if isinstance(r, BaseException)]


@only_postgresql
class TestLockOrder:
    async def test_a_copy_taking_the_fast_path_while_its_batch_is_written(
        self, scratch: Database, probe: Probe
    ) -> None:
        org = await new_org(scratch)
        usage = UsageService(scratch, clock=Clock())
        await usage.usage(org, "tokens")
        copy: list[asyncio.Task[RecordResult]] = []

        async def send_a_copy(step: Step) -> None:
            if step.name == "write" and not copy:
                # The first batch holds the counter: a batch of one may start, the copy.
                copy.append(
                    asyncio.create_task(usage.record(org, "tokens", 5, idempotency_key="x"))
                )
                await until_waiting(scratch)

        probe.pause = send_a_copy
        results = await asyncio.gather(
            usage.record(org, "tokens", 5, idempotency_key="x"),
            usage.record(org, "tokens", 7, idempotency_key="y"),
            return_exceptions=True,
        )
        results += await asyncio.gather(*copy, return_exceptions=True)

        assert deadlocked(results) == []
        first, _, again = results
        assert (again.status, again.event_id) == ("duplicate", first.event_id)
        assert counters_of(await state(scratch, org)) == {("tokens", MARCH): (12, 0)}

    async def test_conflicting_copies_in_opposite_orders(self, scratch: Database) -> None:
        org = await new_org(scratch)
        usage = UsageService(scratch, clock=Clock())
        await usage.usage(org, "tokens")
        # Two transactions hold the keys "z" and "w" (uncommitted events), so that each batch
        # stops after its first event until the test lets it go on.
        async with scratch.session() as z, scratch.session() as w:
            for session, key in ((z, "z"), (w, "w")):
                session.add(
                    UsageEvent(
                        organization_id=org,
                        idempotency_key=key,
                        payload_hash="held",
                        metric="tokens",
                        quantity=1,
                        occurred_at=START,
                    )
                )
                await session.flush()
            first = asyncio.create_task(
                usage.record_many([ev("x", 1), ev("z", 1), ev("y", 1)], org_id=org)
            )
            await until_waiting(scratch, 1)  # holds x, waits for z
            second = asyncio.create_task(
                usage.record_many(
                    [ev("y", 1, "api_calls"), ev("w", 1, "api_calls"), ev("x", 1, "api_calls")],
                    org_id=org,
                )
            )
            await until_waiting(scratch, 2)  # holds y, waits for w
            await z.rollback()  # first: z, then waits for y
            await until_waiting(scratch, 2)
            await w.rollback()  # second: w, then x: held by the first
        results = await asyncio.gather(first, second, return_exceptions=True)

        assert deadlocked(results) == []
        statuses = sorted((o.idempotency_key, o.status) for r in results for o in r)
        assert statuses == [
            ("w", "accepted"),
            ("x", "accepted"),
            ("x", "invalid"),
            ("y", "accepted"),
            ("y", "invalid"),
            ("z", "accepted"),
        ]

    async def test_a_sweep_racing_a_batch_for_the_same_lapsed_reservation(
        self, scratch: Database, probe: Probe
    ) -> None:
        org = await new_org(scratch, tokens=100)
        clock = Clock()
        usage = UsageService(scratch, clock=clock)
        lapsed = await usage.reserve(org, "tokens", 80, ttl=timedelta(minutes=1))
        clock.advance(minutes=2)
        sweep: list[asyncio.Task[int]] = []

        async def sweep_meanwhile(step: Step) -> None:
            if step.name == "expire" and not sweep:
                # The batch holds the counter; the sweep takes the reservation, then waits.
                sweep.append(asyncio.create_task(usage.sweep(org_id=org)))
                await until_waiting(scratch)

        probe.pause = sweep_meanwhile
        results: list[Any] = list(
            await asyncio.gather(
                usage.record_many([ev("a", 60)], org_id=org), return_exceptions=True
            )
        )
        if not sweep:  # a fixed engine may not stop there: sweep after it, then
            sweep.append(asyncio.create_task(usage.sweep(org_id=org)))
        results += await asyncio.gather(*sweep, return_exceptions=True)

        # No deadlock. The batch skips the reservation the sweep holds (never waits for it),
        # and while that one may still settle it, it counts as held: the batch refuses.
        assert deadlocked(results) == []
        assert [o.status for o in results[0]] == ["refused"]
        assert results[1] == 1
        found = await state(scratch, org)
        assert found.reservations == [(lapsed.id, ReservationStatus.EXPIRED, 80, clock.now)]
        assert counters_of(found) == {("tokens", MARCH): (0, 0)}

    async def test_a_retry_from_yesterday_racing_a_late_event_of_yesterday(
        self, scratch: Database, probe: Probe
    ) -> None:
        org = await new_org(scratch)
        clock = Clock()
        usage = UsageService(scratch, clock=clock)
        await usage.record_many([ev("r", 1, "api_calls")], org_id=org)  # today, 10 March
        clock.set(datetime(2025, 3, 11, 0, 30, tzinfo=UTC))
        late: list[asyncio.Task[list[BatchOutcome]]] = []

        def send_the_late_event() -> None:
            yesterday = datetime(2025, 3, 10, 20, tzinfo=UTC)
            events = [ev("late", 1, "api_calls", occurred_at=yesterday), ev("n2", 1, "api_calls")]
            late.append(asyncio.create_task(usage.record_many(events, org_id=org, backfill=True)))

        async def late_event_meanwhile(step: Step) -> None:
            if step.name == "lock" and step.size == 0 and not late:
                # The retry's batch holds today's counter and is about to lock yesterday's.
                send_the_late_event()
                await until_waiting(scratch)

        probe.pause = late_event_meanwhile
        results: list[Any] = list(
            await asyncio.gather(
                usage.record_many([ev("n1", 1, "api_calls"), ev("r", 1, "api_calls")], org_id=org),
                return_exceptions=True,
            )
        )
        if not late:  # a fixed engine may not stop there: send the late event after, then
            send_the_late_event()
        results += await asyncio.gather(*late, return_exceptions=True)

        assert deadlocked(results) == []
        assert [o.status for r in results for o in r] == [
            "accepted",
            "duplicate",
            "accepted",
            "accepted",
        ]


# =================================================================================================
# Found in review: a settle racing a batch, one bad event in a shared batch, cancellations
# =================================================================================================
@only_postgresql
class TestFoundInReview:
    async def test_a_settle_racing_a_batch_for_a_lapsing_reservation_never_overspends(
        self, scratch: Database, probe: Probe
    ) -> None:
        # Clocks disagree by two seconds around the reservation's expiry: to the settle it is
        # still live, to the batch it has lapsed. The settle claims it while the batch holds
        # the counter, then waits for the counter.
        org = await new_org(scratch, tokens=100)
        start = Clock()
        hold = await UsageService(scratch, clock=start).reserve(
            org, "tokens", 80, ttl=timedelta(minutes=1)
        )
        settler = UsageService(scratch, clock=Clock(start.now + timedelta(seconds=59)))
        batcher = UsageService(scratch, clock=Clock(start.now + timedelta(seconds=61)))
        settle: list[asyncio.Task[RecordResult]] = []

        async def settle_meanwhile(step: Step) -> None:
            if step.name == "expire" and not settle:
                settle.append(asyncio.create_task(settler.settle(hold.id, 80)))
                await until_waiting(scratch)

        probe.pause = settle_meanwhile
        [outcome] = await batcher.record_many([ev("a", 60)], org_id=org)
        settled = await settle[0]

        assert outcome.status == "refused"  # the reservation it could not claim still holds
        assert settled.status == "accepted"
        found = counters_of(await state(scratch, org))
        assert found == {("tokens", MARCH): (80, 0)}

    async def test_an_event_the_database_refuses_fails_its_own_caller_alone(
        self, scratch: Database
    ) -> None:
        # A subscription that does not exist passes every check in Python, but not the
        # foreign key: the shared transaction fails, and its events are recorded one by one.
        org = await new_org(scratch)
        usage = UsageService(scratch, clock=Clock())
        await usage.usage(org, "tokens")
        calls = [usage.record(org, "tokens", 1, idempotency_key=f"ok{n}") for n in range(6)]
        calls.insert(
            3, usage.record(org, "tokens", 1, idempotency_key="bad", subscription_id=NOBODY)
        )

        results = await asyncio.gather(*calls, return_exceptions=True)

        assert [type(r).__name__ for r in results].count("RecordResult") == 6
        assert not isinstance(results[3], RecordResult)
        assert counters_of(await state(scratch, org)) == {("tokens", MARCH): (6, 0)}

    async def test_events_the_columns_cannot_hold_are_invalid_not_errors(
        self, scratch: Database
    ) -> None:
        org = await new_org(scratch)
        usage = UsageService(scratch, clock=Clock())

        outcomes = await usage.record_many(
            [
                ev("fine", 1),
                ev("huge", 2**63),
                ev("long", 1, feature="f" * 101),
                ev("half", 2**62),
                ev("overflow", 2**62),  # the counter would pass a BIGINT
            ],
            org_id=org,
        )

        assert [(o.idempotency_key, o.status) for o in outcomes] == [
            ("fine", "accepted"),
            ("huge", "invalid"),
            ("long", "invalid"),
            ("half", "accepted"),
            ("overflow", "invalid"),
        ]
        assert counters_of(await state(scratch, org)) == {("tokens", MARCH): (2**62 + 1, 0)}

    async def test_cancelled_batches_leave_no_connection_inside_a_transaction(
        self, scratch: Database
    ) -> None:
        org = await new_org(scratch)
        usage = UsageService(scratch, clock=Clock(), group_commit=False)
        await usage.usage(org, "tokens")
        chance = random.Random(7)
        for n in range(150):  # cancelled at random points of their transactions
            task = asyncio.create_task(usage.record_many([ev(f"c{n}", 1)], org_id=org))
            await asyncio.sleep(chance.random() * 0.003)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        answered = [await usage.record_many([ev(f"after{n}", 1)], org_id=org) for n in range(10)]

        assert all(outcome.status == "accepted" for [outcome] in answered)
        found = await state(scratch, org)  # read on another connection: every one committed
        keys = {row[0] for row in found.events}
        assert {f"after{n}" for n in range(10)} <= keys

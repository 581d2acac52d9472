"""The UsageService one operation at a time: record, check, limits and overrides, idempotency,
batches, aggregations, pricing, threshold alerts, reservations, seed 000's storage and token
calls, the queries, the facade and the non-blocking token log.

Most tests run in the rolled-back `session` and pass it to the service; `TestInItsOwnTransaction`
calls the service without a session, so it commits, into a database of this module's own. The
default catalog is loaded; organisations are on its `free` plan (100,000 tokens a month, 100 API
calls a day, 100 MiB of storage) unless a test says otherwise. State is read back with column
selects, never from the session's identity map.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.core import Saascore
from saascore.kit.db import Database
from saascore.kit.errors import IdempotencyConflict, InvalidInput, NotFound
from saascore.metering.errors import (
    LimitExceeded,
    ReservationNotFound,
    ReservationNotHeld,
    StorageUnderflow,
    UnknownMetric,
    UnknownUser,
)
from saascore.metering.service import (
    Limit,
    StorageLimitResult,
    TokenLimitResult,
    UsageEventIn,
    UsageService,
    UsageSnapshot,
)
from saascore.models import (
    Aggregation,
    Meter,
    ModelPricing,
    Organization,
    PlanLimit,
    ReservationStatus,
    ResetPeriod,
    UsageAlert,
    UsageCounter,
    UsageDailySummary,
    UsageEvent,
    UsageLimits,
    UsageReservation,
)
from saascore.plans import PlanService, read_catalog
from tests.factories import create_organization, create_plan, create_user, random_code
from tests.helpers import CLOCK_START, Clock, make_settings

START = CLOCK_START
MARCH = datetime(2025, 3, 1, tzinfo=UTC)
APRIL = datetime(2025, 4, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIB = 1024 * 1024
FREE_TOKENS, FREE_API_CALLS, FREE_STORAGE = 100_000, 100, 100 * MIB


# --- reading the database back ---------------------------------------------------------------
@dataclass(frozen=True)
class Rows:
    """Everything the metering writes for one organisation, straight from the database."""

    events: list[tuple[str, str, int]]
    counters: list[tuple[str, datetime, int, int]]
    summary: list[tuple[date, str, str, str, int, int, int]]
    alerts: list[tuple[str, datetime, int]]
    reservations: list[tuple[uuid.UUID, ReservationStatus, int]]
    storage: int


async def rows(session: AsyncSession, org_id: uuid.UUID) -> Rows:
    async def select(model: type, *columns: Any) -> list[tuple[Any, ...]]:
        query = (
            sa.select(*columns)
            .where(model.organization_id == org_id)  # type: ignore[attr-defined]
            .order_by(*columns)
        )
        return [tuple(row) for row in await session.execute(query)]

    e, c, d, a, r = UsageEvent, UsageCounter, UsageDailySummary, UsageAlert, UsageReservation
    storage = await session.scalar(
        sa.select(UsageLimits.storage_used_bytes).where(UsageLimits.organization_id == org_id)
    )
    return Rows(
        events=await select(e, e.idempotency_key, e.metric, e.quantity),
        counters=await select(c, c.metric, c.period_start, c.used, c.reserved),
        summary=await select(
            d, d.day, d.metric, d.model, d.feature, d.quantity, d.event_count, d.cost_micros
        ),
        alerts=await select(a, a.metric, a.period_start, a.threshold_percent),
        reservations=await select(r, r.id, r.status, r.quantity),
        storage=int(storage or 0),
    )


async def counter(
    session: AsyncSession, org_id: uuid.UUID, metric: str = "tokens", period: datetime = MARCH
) -> tuple[int, int] | None:
    """(used, reserved) of the organisation's counter for `metric` in the period starting at
    `period`, or None when there is no counter row."""
    row = (
        await session.execute(
            sa.select(UsageCounter.used, UsageCounter.reserved).where(
                UsageCounter.organization_id == org_id,
                UsageCounter.metric == metric,
                UsageCounter.period_start == period,
            )
        )
    ).one_or_none()
    return None if row is None else (int(row[0]), int(row[1]))


async def reservation_state(
    session: AsyncSession, reservation_id: uuid.UUID
) -> tuple[ReservationStatus, int | None, datetime | None]:
    row = (
        await session.execute(
            sa.select(
                UsageReservation.status,
                UsageReservation.settled_quantity,
                UsageReservation.finished_at,
            ).where(UsageReservation.id == reservation_id)
        )
    ).one()
    return row[0], row[1], row[2]


def sample(name: str, **labels: str) -> float:
    """A Prometheus sample of this process, 0 when it was never incremented."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- fixtures and factories ------------------------------------------------------------------
@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def usage(database: Database, clock: Clock) -> UsageService:
    """The service on the test's clock; tests pass it `session=session`."""
    return UsageService(database, clock=clock)


@pytest_asyncio.fixture(loop_scope="session")
async def plans(database: Database, session: AsyncSession) -> PlanService:
    """The plan service, with saascore's default catalog loaded into the test's session."""
    service = PlanService(database)
    await service.load_catalog(read_catalog(), session=session)
    return service


async def org_on(session: AsyncSession, plans: PlanService, code: str) -> Organization:
    plan = await plans.get_by_code(code, session=session)
    return await create_organization(session, plan=plan)


@pytest_asyncio.fixture(loop_scope="session")
async def org(session: AsyncSession, plans: PlanService) -> Organization:
    return await org_on(session, plans, "free")


async def create_meter(
    session: AsyncSession,
    aggregation: Aggregation = Aggregation.SUM,
    reset_period: ResetPeriod = ResetPeriod.MONTH,
) -> str:
    code = random_code("meter")
    session.add(Meter(code=code, name=code, aggregation=aggregation, reset_period=reset_period))
    await session.flush()
    return code


async def create_price(
    session: AsyncSession,
    model: str,
    *,
    effective_from: datetime = EPOCH,
    effective_to: datetime | None = None,
    provider: str = "acme",
    input: int = 0,
    output: int = 0,
    cached: int = 0,
) -> None:
    session.add(
        ModelPricing(
            provider=provider,
            model=model,
            input_micros_per_million=input,
            output_micros_per_million=output,
            cached_input_micros_per_million=cached,
            effective_from=effective_from,
            effective_to=effective_to,
        )
    )
    await session.flush()


# --- record ------------------------------------------------------------------------------------
class TestRecord:
    async def test_accepted_writes_counter_event_and_summary_in_the_callers_transaction(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        savepoint = await session.begin_nested()
        result = await usage.record(
            org.id,
            "tokens",
            1200,
            idempotency_key="call-1",
            feature="chat",
            properties={"conversation": "c1"},
            session=session,
        )
        assert (result.status, result.metric, result.quantity, result.used, result.limit) == (
            "accepted",
            "tokens",
            1200,
            1200,
            FREE_TOKENS,
        )
        assert result.over_soft_limit is False
        event = (
            await session.execute(
                sa.select(
                    UsageEvent.id,
                    UsageEvent.metric,
                    UsageEvent.quantity,
                    UsageEvent.feature,
                    UsageEvent.properties,
                    UsageEvent.occurred_at,
                    UsageEvent.recorded_at,
                ).where(UsageEvent.organization_id == org.id)
            )
        ).one()
        assert tuple(event) == (
            result.event_id,
            "tokens",
            1200,
            "chat",
            {"conversation": "c1"},
            START,
            START,
        )
        period = (
            await session.execute(
                sa.select(UsageCounter.period_end).where(UsageCounter.organization_id == org.id)
            )
        ).scalar_one()
        assert period == APRIL
        assert await counter(session, org.id) == (1200, 0)
        assert (await rows(session, org.id)).summary == [
            (date(2025, 3, 10), "tokens", "", "chat", 1200, 1, 0)
        ]

        # All three were written in the caller's transaction: undoing it undoes all of them.
        await savepoint.rollback()
        after = await rows(session, org.id)
        assert (after.events, after.counters, after.summary) == ([], [], [])

    async def test_the_counter_adds_up_successive_records(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        used = [
            (await usage.record(org.id, "tokens", q, idempotency_key=f"k{q}", session=session)).used
            for q in (100, 250, 650)
        ]
        assert used == [100, 350, 1000]
        assert await counter(session, org.id) == (1000, 0)
        summary = (await rows(session, org.id)).summary
        assert summary == [(date(2025, 3, 10), "tokens", "", "", 1000, 3, 0)]

    async def test_over_a_hard_limit_raises_and_writes_nothing(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", 1000, session=session)
        await usage.record(org.id, "tokens", 700, idempotency_key="a", session=session)
        before = await rows(session, org.id)
        refused = sample("saascore_usage_refused_total", metric="tokens")

        with pytest.raises(LimitExceeded) as info:
            await usage.record(org.id, "tokens", 301, idempotency_key="b", session=session)

        error = info.value
        assert (error.metric, error.limit, error.used, error.requested) == (
            "tokens",
            1000,
            700,
            301,
        )
        assert (error.code, error.status_code) == ("limit_exceeded", 402)
        assert await rows(session, org.id) == before
        assert sample("saascore_usage_refused_total", metric="tokens") == refused + 1

    async def test_exactly_up_to_a_hard_limit_is_allowed(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", 1000, session=session)
        await usage.record(org.id, "tokens", 700, idempotency_key="a", session=session)
        result = await usage.record(org.id, "tokens", 300, idempotency_key="b", session=session)
        assert (result.status, result.used, result.limit) == ("accepted", 1000, 1000)
        with pytest.raises(LimitExceeded) as info:
            await usage.record(org.id, "tokens", 1, idempotency_key="c", session=session)
        assert (info.value.used, info.value.requested) == (1000, 1)
        assert await counter(session, org.id) == (1000, 0)

    async def test_the_plans_own_limit_applies(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.record(org.id, "tokens", FREE_TOKENS - 10, idempotency_key="a", session=session)
        with pytest.raises(LimitExceeded) as info:
            await usage.record(org.id, "tokens", 11, idempotency_key="b", session=session)
        assert (info.value.limit, info.value.used) == (FREE_TOKENS, FREE_TOKENS - 10)

    async def test_a_soft_limit_allows_and_flags(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        assert await usage.set_limit(org.id, "tokens", 1000, hard=False, session=session) == Limit(
            1000, hard=False
        )
        within = await usage.record(org.id, "tokens", 900, idempotency_key="a", session=session)
        over = await usage.record(org.id, "tokens", 200, idempotency_key="b", session=session)

        assert (within.status, within.over_soft_limit) == ("accepted", False)
        assert (over.status, over.used, over.limit, over.over_soft_limit) == (
            "accepted",
            1100,
            1000,
            True,
        )
        check = await usage.check(org.id, "tokens", 5000, session=session)
        assert (check.allowed, check.hard, check.remaining) == (True, False, 0)
        assert await counter(session, org.id) == (1100, 0)

    async def test_a_plan_without_a_limit_is_unlimited(
        self, usage: UsageService, session: AsyncSession, plans: PlanService
    ) -> None:
        enterprise = await org_on(session, plans, "enterprise")  # no monthly_token_limit
        assert await usage.limit(enterprise.id, "tokens", session=session) == Limit(None)
        result = await usage.record(
            enterprise.id, "tokens", 10**12, idempotency_key="a", session=session
        )
        assert (result.status, result.used, result.limit) == ("accepted", 10**12, None)
        check = await usage.check(enterprise.id, "tokens", 10**15, session=session)
        assert (check.allowed, check.limit, check.remaining) == (True, None, None)

    @pytest.mark.parametrize("override", [-1, None])
    async def test_a_negative_or_none_override_is_unlimited(
        self, usage: UsageService, session: AsyncSession, org: Organization, override: int | None
    ) -> None:
        assert await usage.set_limit(org.id, "tokens", override, session=session) == Limit(None)
        assert await usage.limit(org.id, "tokens", session=session) == Limit(None)
        result = await usage.record(org.id, "tokens", 10**9, idempotency_key="a", session=session)
        assert (result.status, result.used, result.limit) == ("accepted", 10**9, None)

    async def test_set_limit_and_clear_limit_override_the_plan(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", 50, session=session)
        overrides = await session.scalar(
            sa.select(UsageLimits.overrides).where(UsageLimits.organization_id == org.id)
        )
        assert overrides == {"tokens": {"limit": 50, "hard": True}}
        assert await usage.limit(org.id, "tokens", session=session) == Limit(50)
        assert await usage.limit(org.id, "api_calls", session=session) == Limit(FREE_API_CALLS)
        with pytest.raises(LimitExceeded):
            await usage.record(org.id, "tokens", 60, idempotency_key="a", session=session)

        assert await usage.clear_limit(org.id, "tokens", session=session) == Limit(FREE_TOKENS)
        result = await usage.record(org.id, "tokens", 60, idempotency_key="a", session=session)
        assert (result.status, result.limit) == ("accepted", FREE_TOKENS)

    async def test_plan_limits_rows_limit_other_meters(
        self, usage: UsageService, session: AsyncSession, plans: PlanService
    ) -> None:
        hard, soft, unlimited = [await create_meter(session) for _ in range(3)]
        plan = await create_plan(session, monthly_token_limit=1000)
        session.add_all(
            [
                PlanLimit(plan_id=plan.id, metric=hard, limit_value=5, is_hard=True),
                PlanLimit(plan_id=plan.id, metric=soft, limit_value=5, is_hard=False),
                PlanLimit(plan_id=plan.id, metric=unlimited, limit_value=None),
                PlanLimit(plan_id=plan.id, metric="tokens", limit_value=10),  # wins over 1000
            ]
        )
        await session.flush()
        org = await create_organization(session, plan=plan)

        assert await usage.limit(org.id, hard, session=session) == Limit(5, hard=True)
        assert await usage.limit(org.id, soft, session=session) == Limit(5, hard=False)
        assert await usage.limit(org.id, unlimited, session=session) == Limit(None)
        assert await usage.limit(org.id, "tokens", session=session) == Limit(10)

        await usage.record(org.id, hard, 3, idempotency_key="h1", session=session)
        await usage.record(org.id, hard, 2, idempotency_key="h2", session=session)
        with pytest.raises(LimitExceeded) as info:
            await usage.record(org.id, hard, 1, idempotency_key="h3", session=session)
        assert (info.value.metric, info.value.limit, info.value.used) == (hard, 5, 5)
        flagged = await usage.record(org.id, soft, 6, idempotency_key="s1", session=session)
        assert (flagged.status, flagged.over_soft_limit) == ("accepted", True)
        free = await usage.record(org.id, unlimited, 10**6, idempotency_key="u1", session=session)
        assert (free.status, free.limit) == ("accepted", None)
        with pytest.raises(LimitExceeded):
            await usage.record(org.id, "tokens", 11, idempotency_key="t1", session=session)

        # A per-organisation override wins over the plan_limits row.
        await usage.set_limit(org.id, hard, 6, session=session)
        await usage.record(org.id, hard, 1, idempotency_key="h3", session=session)
        assert await counter(session, org.id, hard) == (6, 0)

    async def test_check_decides_without_recording(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        await usage.record(org.id, "tokens", 60, idempotency_key="a", session=session)
        before = await rows(session, org.id)

        refused = await usage.check(org.id, "tokens", 41, session=session)
        allowed = await usage.check(org.id, "tokens", 40, session=session)

        assert (refused.allowed, refused.requested, refused.used, refused.reserved) == (
            False,
            41,
            60,
            0,
        )
        assert (refused.limit, refused.hard, refused.remaining) == (100, True, 40)
        assert (allowed.allowed, allowed.requested, allowed.remaining) == (True, 40, 40)
        assert await rows(session, org.id) == before

    async def test_unknown_metric(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        with pytest.raises(UnknownMetric) as info:
            await usage.record(org.id, "nope", 1, idempotency_key="a", session=session)
        assert info.value.code == "unknown_metric"
        with pytest.raises(UnknownMetric):
            await usage.check(org.id, "nope", 1, session=session)
        assert (await rows(session, org.id)).events == []

    async def test_an_unknown_organisation(
        self, usage: UsageService, session: AsyncSession
    ) -> None:
        await PlanService(usage.database).load_catalog(read_catalog(), session=session)
        with pytest.raises(NotFound):
            await usage.record(uuid.uuid4(), "tokens", 1, idempotency_key="a", session=session)

    @pytest.mark.parametrize(
        ("metric", "quantity", "extra", "field"),
        [
            ("tokens", -1, {}, "quantity"),
            ("tokens", 1, {"occurred_at": datetime(2025, 3, 10)}, "occurred_at"),  # noqa: DTZ001
            ("tokens", 1, {"occurred_at": datetime(9999, 6, 1, tzinfo=UTC)}, "occurred_at"),
            ("tokens", 1, {"occurred_at": datetime(1969, 12, 31, tzinfo=UTC)}, "occurred_at"),
            ("storage_bytes", 1, {}, None),
        ],
        ids=["negative", "naive-time", "past-the-calendar", "before-1970", "gauge"],
    )
    async def test_invalid_events_write_nothing(
        self,
        usage: UsageService,
        session: AsyncSession,
        org: Organization,
        metric: str,
        quantity: int,
        extra: dict,
        field: str | None,
    ) -> None:
        with pytest.raises(InvalidInput) as info:
            await usage.record(
                org.id, metric, quantity, idempotency_key="a", session=session, **extra
            )
        assert info.value.details.get("field") == field
        assert await rows(session, org.id) == Rows([], [], [], [], [], 0)


# --- idempotency -------------------------------------------------------------------------------
class TestIdempotency:
    async def test_the_same_key_twice_is_a_duplicate_of_the_first(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        first = await usage.record(
            org.id, "tokens", 500, idempotency_key="k", feature="chat", session=session
        )
        before = await rows(session, org.id)
        again = await usage.record(
            org.id, "tokens", 500, idempotency_key="k", feature="chat", session=session
        )
        assert first.status == "accepted"
        assert (again.status, again.event_id, again.quantity, again.used) == (
            "duplicate",
            first.event_id,
            500,
            500,
        )
        assert await rows(session, org.id) == before
        assert await counter(session, org.id) == (500, 0)

    @pytest.mark.parametrize(
        "changed",
        [{"quantity": 501}, {"feature": "search"}, {"properties": {"x": 1}}],
        ids=["quantity", "feature", "properties"],
    )
    async def test_the_same_key_with_another_payload_is_a_conflict(
        self, usage: UsageService, session: AsyncSession, org: Organization, changed: dict
    ) -> None:
        event = {"quantity": 500, "feature": "chat", "properties": {}}
        await usage.record(org.id, "tokens", idempotency_key="k", session=session, **event)
        before = await rows(session, org.id)
        with pytest.raises(IdempotencyConflict) as info:
            await usage.record(
                org.id, "tokens", idempotency_key="k", session=session, **{**event, **changed}
            )
        assert info.value.code == "idempotency_conflict"
        assert await rows(session, org.id) == before

    async def test_a_retry_is_a_duplicate_even_when_the_quota_is_full(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        first = await usage.record(org.id, "tokens", 100, idempotency_key="k", session=session)
        retry = await usage.record(org.id, "tokens", 100, idempotency_key="k", session=session)
        assert (retry.status, retry.event_id, retry.used, retry.limit) == (
            "duplicate",
            first.event_id,
            100,
            100,
        )
        with pytest.raises(LimitExceeded):
            await usage.record(org.id, "tokens", 100, idempotency_key="other", session=session)
        assert await counter(session, org.id) == (100, 0)

    async def test_keys_belong_to_one_organisation(
        self, usage: UsageService, session: AsyncSession, org: Organization, plans: PlanService
    ) -> None:
        other = await org_on(session, plans, "free")
        mine = await usage.record(org.id, "tokens", 5, idempotency_key="k", session=session)
        theirs = await usage.record(other.id, "tokens", 7, idempotency_key="k", session=session)
        assert (mine.status, theirs.status) == ("accepted", "accepted")
        assert mine.event_id != theirs.event_id
        assert (await counter(session, org.id), await counter(session, other.id)) == (
            (5, 0),
            (7, 0),
        )


# --- record_many -------------------------------------------------------------------------------
def ev(key: str, quantity: int, metric: str = "tokens", **fields: object) -> UsageEventIn:
    return UsageEventIn(metric=metric, quantity=quantity, idempotency_key=key, **fields)  # type: ignore[arg-type]


class TestRecordMany:
    async def test_duplicates_inside_the_batch_and_against_an_earlier_batch(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        first = await usage.record_many([ev("a", 10), ev("b", 20)], org_id=org.id, session=session)
        second = await usage.record_many(
            [ev("a", 10), ev("c", 30), ev("c", 30), ev("d", 40), ev("b", 20)],
            org_id=org.id,
            session=session,
        )
        assert [o.status for o in first] == ["accepted", "accepted"]
        assert [(o.index, o.idempotency_key, o.status) for o in second] == [
            (0, "a", "duplicate"),
            (1, "c", "accepted"),
            (2, "c", "duplicate"),
            (3, "d", "accepted"),
            (4, "b", "duplicate"),
        ]
        assert second[0].event_id == first[0].event_id
        assert second[4].event_id == first[1].event_id
        assert second[2].event_id == second[1].event_id
        assert await counter(session, org.id) == (100, 0)
        state = await rows(session, org.id)
        assert state.events == [
            ("a", "tokens", 10),
            ("b", "tokens", 20),
            ("c", "tokens", 30),
            ("d", "tokens", 40),
        ]
        assert state.summary == [(date(2025, 3, 10), "tokens", "", "", 100, 4, 0)]

    async def test_refusals_mid_batch_leave_later_events_evaluated_in_order(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", 10, session=session)
        outcomes = await usage.record_many(
            [ev("a", 6), ev("b", 6), ev("c", 4), ev("d", 1)], org_id=org.id, session=session
        )
        assert [(o.status, o.code) for o in outcomes] == [
            ("accepted", None),
            ("refused", "limit_exceeded"),
            ("accepted", None),
            ("refused", "limit_exceeded"),
        ]
        assert outcomes[1].event_id is None
        assert await counter(session, org.id) == (10, 0)
        assert [key for key, _, _ in (await rows(session, org.id)).events] == ["a", "c"]

    async def test_invalid_events_do_not_stop_the_batch(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.record(org.id, "tokens", 5, idempotency_key="taken", session=session)
        outcomes = await usage.record_many(
            [
                ev("a", 1, metric="nope"),
                ev("taken", 6),  # the key was used for 5
                ev("b", -1),
                ev("c", 2),
            ],
            org_id=org.id,
            session=session,
        )
        assert [(o.status, o.code) for o in outcomes] == [
            ("invalid", "unknown_metric"),
            ("invalid", "idempotency_conflict"),
            ("invalid", "invalid_input"),
            ("accepted", None),
        ]
        assert all(o.message for o in outcomes[:3])
        assert await counter(session, org.id) == (7, 0)

    async def test_an_event_without_an_organisation_is_invalid(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        outcomes = await usage.record_many(
            [ev("a", 1), ev("b", 1, organization_id=org.id)], session=session
        )
        assert [(o.status, o.code) for o in outcomes] == [
            ("invalid", "invalid_input"),
            ("accepted", None),
        ]

    async def test_limits_are_enforced_per_organisation(
        self, usage: UsageService, session: AsyncSession, org: Organization, plans: PlanService
    ) -> None:
        other = await org_on(session, plans, "free")
        await usage.set_limit(org.id, "tokens", 10, session=session)
        await usage.set_limit(other.id, "tokens", 20, session=session)
        outcomes = await usage.record_many(
            [
                ev("a", 8, organization_id=org.id),
                ev("a", 8, organization_id=other.id),
                ev("b", 8, organization_id=org.id),
                ev("b", 8, organization_id=other.id),
                ev("c", 2, organization_id=org.id),
            ],
            session=session,
        )
        assert [o.status for o in outcomes] == [
            "accepted",
            "accepted",
            "refused",
            "accepted",
            "accepted",
        ]
        assert (await counter(session, org.id), await counter(session, other.id)) == (
            (10, 0),
            (16, 0),
        )


# --- aggregations ------------------------------------------------------------------------------
class TestAggregation:
    async def test_a_count_meter_counts_events_not_quantities(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        meter = await create_meter(session, Aggregation.COUNT)
        await usage.set_limit(org.id, meter, 3, session=session)
        used = [
            (await usage.record(org.id, meter, q, idempotency_key=f"k{q}", session=session)).used
            for q in (5, 7, 100)
        ]
        assert used == [1, 2, 3]
        with pytest.raises(LimitExceeded) as info:
            await usage.record(org.id, meter, 1, idempotency_key="k1", session=session)
        assert (info.value.limit, info.value.used, info.value.requested) == (3, 3, 1)
        assert await counter(session, org.id, meter) == (3, 0)
        state = await rows(session, org.id)
        assert sum(q for _, _, q in state.events) == 112  # the events keep their quantities
        assert [(s[4], s[5]) for s in state.summary] == [(112, 3)]

    async def test_a_max_meter_keeps_the_peak(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        meter = await create_meter(session, Aggregation.MAX)
        await usage.set_limit(org.id, meter, 10, session=session)
        used = [
            (await usage.record(org.id, meter, q, idempotency_key=f"k{q}", session=session)).used
            for q in (5, 9, 3)
        ]
        assert used == [5, 9, 9]
        with pytest.raises(LimitExceeded) as info:
            await usage.record(org.id, meter, 11, idempotency_key="k11", session=session)
        assert (info.value.limit, info.value.used, info.value.requested) == (10, 9, 11)
        peak = await usage.record(org.id, meter, 10, idempotency_key="k10", session=session)
        assert peak.used == 10
        assert await counter(session, org.id, meter) == (10, 0)
        assert len((await rows(session, org.id)).events) == 4


# --- pricing -----------------------------------------------------------------------------------
class TestPricing:
    async def test_the_price_in_force_when_the_usage_occurred(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        model = random_code("model")
        january, march = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC)
        await create_price(
            session,
            model,
            effective_from=january,
            input=3_000_000,
            output=15_000_000,
            cached=300_000,
        )
        await create_price(
            session, model, effective_from=march, input=2_500_000, output=10_000_000, cached=250_000
        )
        # Ended before any of the events: never chosen.
        await create_price(
            session,
            model,
            effective_from=datetime(2024, 1, 1, tzinfo=UTC),
            effective_to=january,
            input=99_000_000,
            output=99_000_000,
        )
        tokens = {"input_tokens": 1000, "cached_tokens": 200, "output_tokens": 500}

        async def cost(key: str, occurred_at: datetime) -> int:
            result = await usage.record(
                org.id,
                "tokens",
                1500,
                idempotency_key=key,
                model=model,
                provider="acme",
                occurred_at=occurred_at,
                backfill=True,
                session=session,
                **tokens,
            )
            stored = await session.scalar(
                sa.select(UsageEvent.cost_micros).where(UsageEvent.id == result.event_id)
            )
            assert stored == result.cost_micros
            return result.cost_micros

        # (800·3 + 200·0.3 + 500·15) micros = 9,960; at March's prices 800·2.5 + 200·0.25 + 500·10.
        assert await cost("feb", datetime(2025, 2, 15, tzinfo=UTC)) == 9_960
        assert await cost("mar", datetime(2025, 3, 5, tzinfo=UTC)) == 7_050
        assert await cost("edge", march) == 7_050  # effective_from is inclusive
        summary = await usage.summary(
            org.id, start=date(2025, 2, 1), end=date(2025, 3, 31), by="model", session=session
        )
        assert [(row.key, row.cost_micros, row.quantity) for row in summary] == [
            (model, 9_960 + 7_050 * 2, 4500)
        ]

    @pytest.mark.parametrize(
        ("prices", "tokens", "expected"),
        [
            ({"input": 2_500_000}, {"input_tokens": 1}, 3),  # 2.5 -> 3 (half up, not even)
            ({"input": 500_000}, {"input_tokens": 1}, 1),  # 0.5 -> 1
            ({"input": 1_499_999}, {"input_tokens": 1}, 1),  # 1.499999 -> 1
            ({"output": 1_500_001}, {"output_tokens": 1}, 2),  # 1.500001 -> 2
            ({"cached": 499}, {"input_tokens": 1000, "cached_tokens": 1000}, 0),  # 0.499 -> 0
            (
                {"input": 333_333, "output": 666_667, "cached": 100_000},
                {"input_tokens": 3, "cached_tokens": 1, "output_tokens": 1},
                # (2·333,333 + 1·100,000 + 1·666,667) / 10⁶ = 1.433333 -> 1: rounded once
                1,
            ),
        ],
        ids=["2.5", "0.5", "1.499999", "1.500001", "0.499", "once-at-the-end"],
    )
    async def test_cost_is_rounded_half_up_once(
        self,
        usage: UsageService,
        session: AsyncSession,
        org: Organization,
        prices: dict[str, int],
        tokens: dict[str, int],
        expected: int,
    ) -> None:
        model = random_code("model")
        await create_price(session, model, **prices)
        result = await usage.record(
            org.id, "tokens", 1, idempotency_key="k", model=model, session=session, **tokens
        )
        assert result.cost_micros == expected

    async def test_an_unknown_model_costs_zero_and_is_counted(
        self,
        usage: UsageService,
        session: AsyncSession,
        org: Organization,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        model = random_code("unpriced")
        # A model and a provider the catalog does not name are labelled `other`.
        labels = {"provider": "other", "model": "other"}
        before = sample("saascore_usage_unpriced_model_total", **labels)
        with caplog.at_level(logging.WARNING, logger="saascore.metering"):
            result = await usage.record(
                org.id,
                "tokens",
                30,
                idempotency_key="k",
                model=model,
                provider="nobody",
                input_tokens=10,
                output_tokens=20,
                session=session,
            )
        assert (result.status, result.cost_micros, result.used) == ("accepted", 0, 30)
        assert sample("saascore_usage_unpriced_model_total", **labels) == before + 1
        assert any(model in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert (await rows(session, org.id)).events == [("k", "tokens", 30)]


# --- threshold alerts --------------------------------------------------------------------------
async def alerts(session: AsyncSession, org_id: uuid.UUID) -> list[tuple]:
    query = (
        sa.select(
            UsageAlert.metric,
            UsageAlert.period_start,
            UsageAlert.threshold_percent,
            UsageAlert.limit_value,
            UsageAlert.used,
            UsageAlert.crossed_at,
        )
        .where(UsageAlert.organization_id == org_id)
        .order_by(UsageAlert.period_start, UsageAlert.threshold_percent)
    )
    return [tuple(row) for row in await session.execute(query)]


class TestThresholds:
    async def test_80_and_100_percent_are_recorded_once_per_period(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        await usage.set_limit(org.id, "tokens", 10, session=session)

        async def record(key: str, quantity: int) -> None:
            await usage.record(org.id, "tokens", quantity, idempotency_key=key, session=session)

        await record("a", 7)
        assert await alerts(session, org.id) == []
        clock.advance(minutes=1)
        await record("b", 1)  # 8 of 10
        eighty = ("tokens", MARCH, 80, 10, 8, clock.now)
        assert await alerts(session, org.id) == [eighty]
        await record("c", 1)  # 9: nothing new
        assert await alerts(session, org.id) == [eighty]
        clock.advance(minutes=1)
        await record("d", 1)  # 10
        hundred = ("tokens", MARCH, 100, 10, 10, clock.now)
        assert await alerts(session, org.id) == [eighty, hundred]

        # Raised limit, crossed again in the same period: nothing more.
        await usage.set_limit(org.id, "tokens", 20, session=session)
        await record("e", 9)  # 19 of 20
        await usage.set_limit(org.id, "tokens", 25, hard=False, session=session)
        await record("f", 10)  # 29 of 25
        assert await alerts(session, org.id) == [eighty, hundred]

        # A new period crosses afresh.
        clock.now = APRIL + timedelta(hours=1)
        await record("g", 25)
        assert await alerts(session, org.id) == [
            eighty,
            hundred,
            ("tokens", APRIL, 80, 25, 25, clock.now),
            ("tokens", APRIL, 100, 25, 25, clock.now),
        ]

    async def test_no_alerts_without_a_limit(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", None, session=session)
        await usage.record(org.id, "tokens", 10**9, idempotency_key="a", session=session)
        assert await alerts(session, org.id) == []

    async def test_reserve_and_settle_record_the_thresholds_they_cross(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        reservation = await usage.reserve(org.id, "tokens", 85, session=session)
        await usage.settle(reservation.id, 85, session=session)
        assert await counter(session, org.id) == (85, 0)
        assert [row[2] for row in await alerts(session, org.id)] == [80]


# --- reservations ------------------------------------------------------------------------------
class TestReservations:
    async def test_a_reservation_holds_quota(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        reservation = await usage.reserve(
            org.id, "tokens", 60, ttl=timedelta(minutes=2), session=session
        )
        assert (reservation.status, reservation.quantity, reservation.metric) == (
            ReservationStatus.HELD,
            60,
            "tokens",
        )
        assert (reservation.period_start, reservation.expires_at) == (
            MARCH,
            START + timedelta(minutes=2),
        )
        assert await counter(session, org.id) == (0, 60)

        check = await usage.check(org.id, "tokens", 41, session=session)
        assert (check.allowed, check.used, check.reserved, check.remaining) == (False, 0, 60, 40)
        with pytest.raises(LimitExceeded) as info:
            await usage.record(org.id, "tokens", 41, idempotency_key="a", session=session)
        assert (info.value.used, info.value.requested) == (60, 41)  # used + reserved
        with pytest.raises(LimitExceeded):
            await usage.reserve(org.id, "tokens", 41, session=session)
        await usage.record(org.id, "tokens", 40, idempotency_key="b", session=session)

        snapshot = await usage.usage(org.id, "tokens", session=session)
        assert (snapshot.used, snapshot.reserved, snapshot.limit, snapshot.remaining) == (
            40,
            60,
            100,
            0,
        )

    async def test_settle_refuses_fields_the_database_cannot_hold_and_keeps_the_hold(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        reservation = await usage.reserve(org.id, "tokens", 60, session=session)
        with pytest.raises(InvalidInput) as info:
            await usage.settle(reservation.id, 45, feature="f" * 101, session=session)
        assert info.value.details["field"] == "feature"
        assert await counter(session, org.id) == (0, 60)
        result = await usage.settle(reservation.id, 45, feature="chat", session=session)
        assert result.status == "accepted"

    async def test_settle_records_the_actual_amount_and_frees_the_reservation(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        reservation = await usage.reserve(org.id, "tokens", 60, session=session)
        clock.advance(seconds=30)

        result = await usage.settle(reservation.id, 45, feature="chat", session=session)

        assert (result.status, result.quantity, result.used, result.limit) == (
            "accepted",
            45,
            45,
            100,
        )
        assert await counter(session, org.id) == (45, 0)
        assert await reservation_state(session, reservation.id) == (
            ReservationStatus.SETTLED,
            45,
            clock.now,
        )
        event = (
            await session.execute(
                sa.select(
                    UsageEvent.id,
                    UsageEvent.idempotency_key,
                    UsageEvent.quantity,
                    UsageEvent.feature,
                ).where(UsageEvent.organization_id == org.id)
            )
        ).one()
        assert tuple(event) == (result.event_id, f"reservation:{reservation.id}", 45, "chat")
        assert (await rows(session, org.id)).summary == [
            (date(2025, 3, 10), "tokens", "", "chat", 45, 1, 0)
        ]
        assert (await usage.check(org.id, "tokens", 55, session=session)).allowed

    async def test_settle_above_the_reservation_within_the_limit(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        reservation = await usage.reserve(org.id, "tokens", 60, session=session)
        result = await usage.settle(reservation.id, 100, session=session)
        assert (result.used, result.over_soft_limit) == (100, False)
        assert await counter(session, org.id) == (100, 0)

    async def test_settle_beyond_a_hard_limit_in_the_callers_session_leaves_it_held(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        reservation = await usage.reserve(org.id, "tokens", 60, session=session)
        await usage.record(org.id, "tokens", 30, idempotency_key="a", session=session)
        with pytest.raises(LimitExceeded):
            await usage.settle(reservation.id, 81, session=session)
        assert (await reservation_state(session, reservation.id))[0] is ReservationStatus.HELD
        await usage.settle(reservation.id, 60, session=session)  # the caller falls back
        assert await counter(session, org.id) == (90, 0)

    async def test_release_frees_the_quota(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        reservation = await usage.reserve(org.id, "tokens", 60, session=session)
        clock.advance(seconds=5)
        released = await usage.release(reservation.id, session=session)
        assert released.id == reservation.id
        assert await reservation_state(session, reservation.id) == (
            ReservationStatus.RELEASED,
            None,
            clock.now,
        )
        assert await counter(session, org.id) == (0, 0)
        assert (await rows(session, org.id)).events == []
        await usage.record(org.id, "tokens", 100, idempotency_key="a", session=session)

    @pytest.mark.parametrize(
        ("first", "second", "status"),
        [
            ("settle", "settle", "settled"),
            ("release", "release", "released"),
            ("settle", "release", "settled"),
            ("release", "settle", "released"),
        ],
    )
    async def test_a_finished_reservation_is_not_held(
        self,
        usage: UsageService,
        session: AsyncSession,
        org: Organization,
        first: str,
        second: str,
        status: str,
    ) -> None:
        reservation = await usage.reserve(org.id, "tokens", 60, session=session)

        async def finish(how: str) -> object:
            if how == "settle":
                return await usage.settle(reservation.id, 50, session=session)
            return await usage.release(reservation.id, session=session)

        await finish(first)
        before = await rows(session, org.id)
        with pytest.raises(ReservationNotHeld) as info:
            await finish(second)
        assert (info.value.code, info.value.details["status"]) == ("reservation_not_held", status)
        assert await rows(session, org.id) == before

    async def test_an_unknown_reservation(
        self, usage: UsageService, session: AsyncSession, org: Organization, plans: PlanService
    ) -> None:
        with pytest.raises(ReservationNotFound):
            await usage.settle(uuid.uuid4(), 1, session=session)
        with pytest.raises(ReservationNotFound):
            await usage.release(uuid.uuid4(), session=session)
        # Another organisation's reservation is not found either.
        reservation = await usage.reserve(org.id, "tokens", 5, session=session)
        other = await org_on(session, plans, "free")
        with pytest.raises(ReservationNotFound) as info:
            await usage.release(reservation.id, org_id=other.id, session=session)
        assert info.value.code == "reservation_not_found"
        await usage.release(reservation.id, org_id=org.id, session=session)

    async def test_an_expired_reservation_stops_holding_quota_when_swept(
        self,
        usage: UsageService,
        session: AsyncSession,
        org: Organization,
        plans: PlanService,
        clock: Clock,
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        short = await usage.reserve(org.id, "tokens", 60, ttl=timedelta(minutes=1), session=session)
        long = await usage.reserve(org.id, "tokens", 10, ttl=timedelta(hours=1), session=session)
        other = await org_on(session, plans, "free")
        elsewhere = await usage.reserve(
            other.id, "tokens", 7, ttl=timedelta(minutes=1), session=session
        )
        clock.advance(minutes=1)  # expires_at is exclusive: now == expires_at is expired

        assert await usage.sweep(org_id=org.id, session=session) == 1
        assert await reservation_state(session, short.id) == (
            ReservationStatus.EXPIRED,
            None,
            clock.now,
        )
        assert (await reservation_state(session, long.id))[0] is ReservationStatus.HELD
        assert await counter(session, org.id) == (0, 10)
        assert await usage.sweep(org_id=org.id, session=session) == 0
        assert await usage.sweep(session=session) == 1  # the other organisation's
        assert (await reservation_state(session, elsewhere.id))[0] is ReservationStatus.EXPIRED
        assert await counter(session, other.id) == (0, 0)

        with pytest.raises(ReservationNotHeld) as info:
            await usage.settle(short.id, 60, session=session)
        assert info.value.details["status"] == "expired"
        await usage.record(org.id, "tokens", 90, idempotency_key="a", session=session)

    async def test_settling_an_expired_reservation_sweeps_it(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        reservation = await usage.reserve(
            org.id, "tokens", 60, ttl=timedelta(minutes=1), session=session
        )
        clock.advance(minutes=2)
        with pytest.raises(ReservationNotHeld) as info:
            await usage.settle(reservation.id, 60, session=session)
        assert info.value.details["status"] == "expired"
        assert (await reservation_state(session, reservation.id))[0] is ReservationStatus.EXPIRED
        assert await counter(session, org.id) == (0, 0)

    async def test_reserving_sweeps_expired_reservations(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        expired = await usage.reserve(
            org.id, "tokens", 60, ttl=timedelta(minutes=1), session=session
        )
        clock.advance(minutes=2)
        fresh = await usage.reserve(org.id, "tokens", 80, session=session)
        assert (await reservation_state(session, expired.id))[0] is ReservationStatus.EXPIRED
        assert fresh.status is ReservationStatus.HELD
        assert await counter(session, org.id) == (0, 80)

    async def test_an_expired_reservation_stops_holding_quota_on_access(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        await usage.reserve(org.id, "tokens", 80, ttl=timedelta(minutes=1), session=session)
        clock.advance(minutes=2)
        check = await usage.check(org.id, "tokens", 50, session=session)
        assert (check.allowed, check.reserved) == (True, 0)
        result = await usage.record(org.id, "tokens", 50, idempotency_key="a", session=session)
        assert result.status == "accepted"

    async def test_a_reservation_key_makes_reserve_idempotent(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        first = await usage.reserve(org.id, "tokens", 60, idempotency_key="r", session=session)
        again = await usage.reserve(org.id, "tokens", 60, idempotency_key="r", session=session)
        assert again.id == first.id
        assert await counter(session, org.id) == (0, 60)
        with pytest.raises(IdempotencyConflict):
            await usage.reserve(org.id, "tokens", 61, idempotency_key="r", session=session)
        assert len((await rows(session, org.id)).reservations) == 1

    async def test_a_refused_reservation_holds_nothing(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "tokens", 100, session=session)
        await usage.reserve(org.id, "tokens", 60, session=session)
        before = await rows(session, org.id)
        with pytest.raises(LimitExceeded) as info:
            await usage.reserve(org.id, "tokens", 41, session=session)
        assert (info.value.limit, info.value.used, info.value.requested) == (100, 60, 41)
        assert await rows(session, org.id) == before
        for quantity, ttl in ((0, timedelta(minutes=1)), (1, timedelta(0))):
            with pytest.raises(InvalidInput):
                await usage.reserve(org.id, "tokens", quantity, ttl=ttl, session=session)


# --- seed 000's storage and token calls ----------------------------------------------------------
class TestStorage:
    async def test_check_storage_limit(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        assert await usage.check_storage_limit(org.id, FREE_STORAGE, session=session) == (
            StorageLimitResult(True, 0, FREE_STORAGE, FREE_STORAGE)
        )
        await usage.update_storage_used(org.id, 1000, session=session)
        assert await usage.check_storage_limit(org.id, FREE_STORAGE - 1000, session=session) == (
            StorageLimitResult(True, 1000, FREE_STORAGE, FREE_STORAGE - 1000)
        )
        assert await usage.check_storage_limit(org.id, FREE_STORAGE - 999, session=session) == (
            StorageLimitResult(False, 1000, FREE_STORAGE, FREE_STORAGE - 1000)
        )

    async def test_update_storage_used_adds_and_subtracts(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        totals = [
            await usage.update_storage_used(org.id, delta, session=session)
            for delta in (1000, 500, -700, 0)
        ]
        assert totals == [1000, 1500, 800, 800]
        assert (await rows(session, org.id)).storage == 800
        assert (await usage.usage(org.id, "storage_bytes", session=session)).used == 800

    async def test_a_decrement_below_zero_is_refused(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.update_storage_used(org.id, 800, session=session)
        with pytest.raises(StorageUnderflow) as info:
            await usage.update_storage_used(org.id, -801, session=session)
        assert isinstance(info.value, InvalidInput)
        assert info.value.code == "storage_underflow"
        assert info.value.details == {"used_bytes": 800, "delta_bytes": -801}
        assert (await rows(session, org.id)).storage == 800
        assert await usage.update_storage_used(org.id, -800, session=session) == 0

    async def test_over_the_plans_storage_limit_is_refused(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.update_storage_used(org.id, FREE_STORAGE - 10, session=session)
        with pytest.raises(LimitExceeded) as info:
            await usage.update_storage_used(org.id, 11, session=session)
        assert (info.value.metric, info.value.limit, info.value.used, info.value.requested) == (
            "storage_bytes",
            FREE_STORAGE,
            FREE_STORAGE - 10,
            11,
        )
        assert (await rows(session, org.id)).storage == FREE_STORAGE - 10
        assert await usage.update_storage_used(org.id, 10, session=session) == FREE_STORAGE
        # Freeing is always allowed, even when a lowered limit is already passed.
        await usage.set_limit(org.id, "storage_bytes", 100, session=session)
        assert await usage.update_storage_used(org.id, -1, session=session) == FREE_STORAGE - 1

    async def test_a_soft_storage_limit_allows_more(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.set_limit(org.id, "storage_bytes", 100, hard=False, session=session)
        assert await usage.update_storage_used(org.id, 150, session=session) == 150
        check = await usage.check_storage_limit(org.id, 1, session=session)
        assert (check.allowed, check.used_bytes, check.remaining_bytes) == (True, 150, 0)

    async def test_an_organisation_without_a_usage_limits_row(
        self, usage: UsageService, session: AsyncSession, plans: PlanService
    ) -> None:
        plan = await plans.get_by_code("free", session=session)
        org = Organization(plan_id=plan.id, slug=random_code("org"), name="bare")
        session.add(org)
        await session.flush()
        assert (await usage.check_storage_limit(org.id, 1, session=session)).used_bytes == 0
        assert await usage.update_storage_used(org.id, 10, session=session) == 10
        assert (await rows(session, org.id)).storage == 10

    async def test_check_token_limit(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.record(org.id, "tokens", 30_000, idempotency_key="a", session=session)
        await usage.reserve(org.id, "tokens", 20_000, session=session)
        assert await usage.check_token_limit(org.id, 50_000, session=session) == (
            TokenLimitResult(True, 50_000, FREE_TOKENS, 50_000)
        )
        assert await usage.check_token_limit(org.id, 50_001, session=session) == (
            TokenLimitResult(False, 50_000, FREE_TOKENS, 50_000)
        )
        assert await counter(session, org.id) == (30_000, 20_000)


# --- queries -----------------------------------------------------------------------------------
class TestQueries:
    async def test_summary_by_day_metric_model_and_feature(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        def at(day: int) -> datetime:
            return datetime(2025, 3, day, 9, tzinfo=UTC)

        events = [
            ("e1", "tokens", 100, at(8), "a", "chat", 60, 40),
            ("e2", "tokens", 200, at(9), "b", "search", 150, 50),
            ("e3", "api_calls", 5, at(9), None, "chat", 0, 0),
            ("e4", "tokens", 300, at(10), "a", "chat", 200, 100),
            ("e5", "tokens", 400, at(7), "a", "chat", 400, 0),
        ]
        for key, metric, quantity, occurred_at, model, feature, inp, out in events:
            await usage.record(
                org.id,
                metric,
                quantity,
                idempotency_key=key,
                occurred_at=occurred_at,
                backfill=True,
                model=model,
                feature=feature,
                input_tokens=inp,
                output_tokens=out,
                session=session,
            )

        async def summary(by: str, **options: object) -> list[tuple]:
            result = await usage.summary(
                org.id,
                start=date(2025, 3, 8),
                end=date(2025, 3, 9),
                by=by,  # type: ignore[arg-type]
                session=session,
                **options,  # type: ignore[arg-type]
            )
            return [
                (r.key, r.metric, r.quantity, r.event_count, r.input_tokens, r.output_tokens)
                for r in result
            ]

        # Never 205 on the 9th: 5 calls and 200 tokens are not added together.
        assert await summary("day") == [
            ("2025-03-08", "tokens", 100, 1, 60, 40),
            ("2025-03-09", "api_calls", 5, 1, 0, 0),
            ("2025-03-09", "tokens", 200, 1, 150, 50),
        ]
        assert await summary("metric") == [
            ("api_calls", "api_calls", 5, 1, 0, 0),
            ("tokens", "tokens", 300, 2, 210, 90),
        ]
        assert await summary("model") == [
            ("", "api_calls", 5, 1, 0, 0),
            ("a", "tokens", 100, 1, 60, 40),
            ("b", "tokens", 200, 1, 150, 50),
        ]
        assert await summary("feature") == [
            ("chat", "api_calls", 5, 1, 0, 0),
            ("chat", "tokens", 100, 1, 60, 40),
            ("search", "tokens", 200, 1, 150, 50),
        ]
        assert await summary("day", metric="tokens") == [
            ("2025-03-08", "tokens", 100, 1, 60, 40),
            ("2025-03-09", "tokens", 200, 1, 150, 50),
        ]
        everything = await usage.summary(
            org.id, start=date(2025, 3, 1), end=date(2025, 3, 31), by="metric", session=session
        )
        assert [(r.key, r.quantity, r.total_tokens) for r in everything] == [
            ("api_calls", 5, 0),
            ("tokens", 1000, 1000),
        ]

    async def test_summary_totals_past_int64_are_exact(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        """Each stored counter fits in int64, their sum need not: SQLite's SUM raised
        "integer overflow" (and the summary failed for good) where Python's ints are exact."""
        top = 2**63 - 1
        await usage.set_limit(org.id, "tokens", None, session=session)
        events = [
            ("a", top, datetime(2025, 1, 10, tzinfo=UTC), "m1", top),
            ("b", top, datetime(2025, 2, 10, tzinfo=UTC), "m2", top),
            ("c", 1, datetime(2025, 3, 10, tzinfo=UTC), "m1", 1),
        ]
        for key, quantity, occurred_at, model, inputs in events:
            result = await usage.record(
                org.id,
                "tokens",
                quantity,
                idempotency_key=key,
                occurred_at=occurred_at,
                backfill=True,
                model=model,
                input_tokens=inputs,
                session=session,
            )
            assert result.status == "accepted", result

        async def summary(by: str) -> list[tuple[str, int, int, int, int]]:
            rows = await usage.summary(
                org.id,
                start=date(1970, 1, 1),
                end=date(9998, 12, 31),
                by=by,
                session=session,
            )
            return [
                (r.key, r.quantity, r.event_count, r.input_tokens, r.total_tokens) for r in rows
            ]

        assert await summary("metric") == [("tokens", 2 * top + 1, 3, 2 * top + 1, 2 * top + 1)]
        assert await summary("model") == [
            ("m1", top + 1, 2, top + 1, top + 1),
            ("m2", top, 1, top, top),
        ]
        assert [row[:2] for row in await summary("day")] == [
            ("2025-01-10", top),
            ("2025-02-10", top),
            ("2025-03-10", 1),
        ]

    async def test_summary_refuses_an_unknown_metric(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        start, end = date(2025, 3, 1), date(2025, 3, 31)
        with pytest.raises(UnknownMetric) as info:
            await usage.summary(org.id, start=start, end=end, metric="nosuch", session=session)
        assert (info.value.code, info.value.message) == ("unknown_metric", "no meter 'nosuch'")
        # A metric with a meter but no usage in the range is an empty summary, not a refusal.
        empty = await usage.summary(org.id, start=start, end=end, metric="tokens", session=session)
        assert empty == []

    async def test_limits_lists_every_meter(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await usage.record(org.id, "tokens", 1234, idempotency_key="a", session=session)
        await usage.record(org.id, "api_calls", 3, idempotency_key="b", session=session)
        await usage.update_storage_used(org.id, 4096, session=session)
        await usage.reserve(org.id, "tokens", 66, session=session)

        day = datetime(2025, 3, 10, tzinfo=UTC)
        assert await usage.limits(org.id, session=session) == [
            UsageSnapshot("api_calls", day, day + timedelta(days=1), 3, 0, FREE_API_CALLS, True),
            UsageSnapshot("storage_bytes", EPOCH, None, 4096, 0, FREE_STORAGE, True),
            UsageSnapshot("tokens", MARCH, APRIL, 1234, 66, FREE_TOKENS, True),
        ]

    async def test_usage_of_storage_reads_the_usage_limits_row(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        await session.execute(
            sa.update(UsageLimits)
            .where(UsageLimits.organization_id == org.id)
            .values(storage_used_bytes=12_345)
        )
        snapshot = await usage.usage(org.id, "storage_bytes", session=session)
        assert snapshot == UsageSnapshot(
            "storage_bytes", EPOCH, None, 12_345, 0, FREE_STORAGE, True
        )
        assert snapshot.remaining == FREE_STORAGE - 12_345


# --- the service's own transactions --------------------------------------------------------------
# Called without `session=`, the service commits on its own; on PostgreSQL `record` and
# `log_token_usage` then take a separate path (one statement, `RECORD` in `metering/postgres.py`),
# so their contract is checked again here. These tests commit: they use a database of this module's
# own (`scratch`, one per backend, migrated by the real migrations) and a new organisation each.
@pytest.fixture
def own(scratch: Database, clock: Clock) -> UsageService:
    """The service on the scratch database; tests call it without a session."""
    return UsageService(scratch, clock=clock)


async def committed_org(database: Database, **plan_values: Any) -> uuid.UUID:
    """A committed organisation: on the `free` plan, or on a new plan made of `plan_values`."""
    async with database.transaction() as session:
        if plan_values:
            plan = await create_plan(session, **plan_values)
        else:
            plan = await PlanService(database).get_by_code("free", session=session)
        return (await create_organization(session, plan=plan)).id


async def committed_user(database: Database, org_id: uuid.UUID) -> uuid.UUID:
    """A committed user of the organisation (a usage event's `user_id` must be one)."""
    async with database.transaction() as session:
        organization = await session.get(Organization, org_id)
        assert organization is not None
        return (await create_user(session, organization)).id


async def committed_rows(database: Database, org_id: uuid.UUID) -> Rows:
    async with database.session(readonly=True) as session:
        return await rows(session, org_id)


class TestInItsOwnTransaction:
    async def test_an_accepted_record_commits_counter_event_and_summary(
        self, own: UsageService, scratch: Database
    ) -> None:
        org_id = await committed_org(scratch)
        user_id = await committed_user(scratch, org_id)
        result = await own.record(
            org_id,
            "tokens",
            1200,
            idempotency_key="call-1",
            user_id=user_id,
            feature="chat",
            properties={"conversation": "c1"},
        )
        assert (result.status, result.quantity, result.used, result.limit) == (
            "accepted",
            1200,
            1200,
            FREE_TOKENS,
        )
        assert result.over_soft_limit is False
        state = await committed_rows(scratch, org_id)
        assert state.events == [("call-1", "tokens", 1200)]
        assert state.counters == [("tokens", MARCH, 1200, 0)]
        assert state.summary == [(date(2025, 3, 10), "tokens", "", "chat", 1200, 1, 0)]
        async with scratch.session(readonly=True) as session:
            event = (
                await session.execute(
                    sa.select(
                        UsageEvent.id,
                        UsageEvent.user_id,
                        UsageEvent.properties,
                        UsageEvent.occurred_at,
                        UsageEvent.recorded_at,
                    ).where(UsageEvent.organization_id == org_id)
                )
            ).one()
        assert tuple(event) == (result.event_id, user_id, {"conversation": "c1"}, START, START)
        second = await own.record(org_id, "tokens", 300, idempotency_key="call-2")
        assert second.used == 1500
        assert (await committed_rows(scratch, org_id)).counters == [("tokens", MARCH, 1500, 0)]

    async def test_over_a_hard_limit_raises_and_commits_nothing(
        self, own: UsageService, scratch: Database
    ) -> None:
        org_id = await committed_org(scratch)
        await own.set_limit(org_id, "tokens", 1000)
        await own.record(org_id, "tokens", 700, idempotency_key="a")
        before = await committed_rows(scratch, org_id)
        refused = sample("saascore_usage_refused_total", metric="tokens")

        with pytest.raises(LimitExceeded) as info:
            await own.record(org_id, "tokens", 301, idempotency_key="b")

        error = info.value
        assert (error.metric, error.limit, error.used, error.requested) == (
            "tokens",
            1000,
            700,
            301,
        )
        assert await committed_rows(scratch, org_id) == before
        assert sample("saascore_usage_refused_total", metric="tokens") == refused + 1
        assert (await own.record(org_id, "tokens", 300, idempotency_key="b")).used == 1000

    async def test_limits_come_from_overrides_plan_limits_and_plan_columns(
        self, own: UsageService, scratch: Database
    ) -> None:
        async with scratch.transaction() as session:
            hard, soft, unlimited = [await create_meter(session) for _ in range(3)]
        org_id = await committed_org(scratch, monthly_token_limit=1000, max_api_calls_per_day=3)
        async with scratch.transaction() as session:
            plan_id = await session.scalar(
                sa.select(Organization.plan_id).where(Organization.id == org_id)
            )
            session.add_all(
                [
                    PlanLimit(plan_id=plan_id, metric=hard, limit_value=5, is_hard=True),
                    PlanLimit(plan_id=plan_id, metric=soft, limit_value=5, is_hard=False),
                    PlanLimit(plan_id=plan_id, metric=unlimited, limit_value=None),
                    PlanLimit(plan_id=plan_id, metric="tokens", limit_value=10),
                ]
            )

        async def refused(metric: str, quantity: int, key: str) -> tuple[int, int, int]:
            with pytest.raises(LimitExceeded) as info:
                await own.record(org_id, metric, quantity, idempotency_key=key)
            return info.value.limit, info.value.used, info.value.requested

        # plan columns, and a plan_limits row winning over its plan's column
        for n in range(3):
            await own.record(org_id, "api_calls", 1, idempotency_key=f"call{n}")
        assert await refused("api_calls", 1, "call3") == (3, 3, 1)
        assert await refused("tokens", 11, "t1") == (10, 0, 11)
        # plan_limits rows: hard, soft (flags), none (unlimited)
        assert (await own.record(org_id, hard, 5, idempotency_key="h1")).used == 5
        assert await refused(hard, 1, "h2") == (5, 5, 1)
        flagged = await own.record(org_id, soft, 6, idempotency_key="s1")
        assert (flagged.status, flagged.limit, flagged.over_soft_limit) == ("accepted", 5, True)
        free = await own.record(org_id, unlimited, 10**12, idempotency_key="u1")
        assert (free.status, free.limit) == ("accepted", None)
        # overrides win over everything; None and negative are unlimited
        await own.set_limit(org_id, hard, 7)
        assert (await own.record(org_id, hard, 2, idempotency_key="h2")).used == 7
        await own.set_limit(org_id, "tokens", -1)
        assert (await own.record(org_id, "tokens", 10**9, idempotency_key="t1")).limit is None
        await own.set_limit(org_id, "tokens", 20, hard=False)
        soft_tokens = await own.record(org_id, "tokens", 1, idempotency_key="t2")
        assert (soft_tokens.limit, soft_tokens.over_soft_limit) == (20, True)
        await own.clear_limit(org_id, "tokens")
        assert await refused("tokens", 1, "t3") == (10, 10**9 + 1, 1)

    async def test_idempotency(self, own: UsageService, scratch: Database) -> None:
        org_id = await committed_org(scratch)
        await own.set_limit(org_id, "tokens", 100)
        first = await own.record(org_id, "tokens", 100, idempotency_key="k", feature="chat")
        before = await committed_rows(scratch, org_id)

        retry = await own.record(org_id, "tokens", 100, idempotency_key="k", feature="chat")
        assert (retry.status, retry.event_id, retry.used, retry.limit) == (
            "duplicate",
            first.event_id,
            100,
            100,
        )  # even though the quota is now full
        with pytest.raises(IdempotencyConflict):
            await own.record(org_id, "tokens", 100, idempotency_key="k", feature="search")
        with pytest.raises(IdempotencyConflict):
            await own.record(org_id, "tokens", 99, idempotency_key="k", feature="chat")
        assert await committed_rows(scratch, org_id) == before

    async def test_count_and_max_meters(self, own: UsageService, scratch: Database) -> None:
        async with scratch.transaction() as session:
            count = await create_meter(session, Aggregation.COUNT)
            peak = await create_meter(session, Aggregation.MAX)
        org_id = await committed_org(scratch)
        await own.set_limit(org_id, count, 2)
        await own.set_limit(org_id, peak, 10)

        assert [
            (await own.record(org_id, count, q, idempotency_key=f"c{q}")).used for q in (5, 7)
        ] == [1, 2]
        with pytest.raises(LimitExceeded) as info:
            await own.record(org_id, count, 1, idempotency_key="c1")
        assert (info.value.limit, info.value.used, info.value.requested) == (2, 2, 1)
        assert [
            (await own.record(org_id, peak, q, idempotency_key=f"p{q}")).used for q in (5, 9, 3)
        ] == [5, 9, 9]
        with pytest.raises(LimitExceeded):
            await own.record(org_id, peak, 11, idempotency_key="p11")
        counters = (await committed_rows(scratch, org_id)).counters
        assert sorted((metric, used) for metric, _, used, _ in counters) == sorted(
            [(count, 2), (peak, 9)]
        )

    async def test_pricing(self, own: UsageService, scratch: Database) -> None:
        org_id = await committed_org(scratch)
        model, halves, unpriced = random_code("model"), random_code("model"), random_code("none")
        async with scratch.transaction() as session:
            january = datetime(2025, 1, 1, tzinfo=UTC)
            await create_price(
                session,
                model,
                effective_from=january,
                input=3_000_000,
                output=15_000_000,
                cached=300_000,
            )
            await create_price(
                session,
                model,
                effective_from=MARCH,
                input=2_500_000,
                output=10_000_000,
                cached=250_000,
            )
            await create_price(
                session,
                model,
                effective_from=datetime(2024, 1, 1, tzinfo=UTC),
                effective_to=january,
                input=99_000_000,
            )
            await create_price(session, halves, input=2_500_000)
        tokens = {"input_tokens": 1000, "cached_tokens": 200, "output_tokens": 500}

        async def cost(key: str, **fields: Any) -> int:
            result = await own.record(org_id, "tokens", 1, idempotency_key=key, **fields)
            return result.cost_micros

        february = datetime(2025, 2, 15, tzinfo=UTC)
        assert (
            await cost("feb", model=model, occurred_at=february, backfill=True, **tokens) == 9_960
        )
        assert await cost("mar", model=model, provider="acme", **tokens) == 7_050
        assert await cost("half", model=halves, input_tokens=1) == 3  # 2.5 rounds up
        assert await cost("other-provider", model=model, provider="elsewhere", **tokens) == 0
        labels = {"provider": "other", "model": "other"}
        before = sample("saascore_usage_unpriced_model_total", **labels)
        assert await cost("unpriced", model=unpriced, provider="nobody", input_tokens=5) == 0
        assert sample("saascore_usage_unpriced_model_total", **labels) == before + 1
        summary = await own.summary(org_id, start=date(2025, 2, 1), end=date(2025, 3, 31))
        assert [(row.key, row.cost_micros) for row in summary] == [
            ("2025-02-15", 9_960),
            ("2025-03-10", 7_050 + 3),
        ]

    async def test_thresholds_once_per_period(
        self, own: UsageService, scratch: Database, clock: Clock
    ) -> None:
        org_id = await committed_org(scratch)
        await own.set_limit(org_id, "tokens", 10)
        for key, quantity in (("a", 7), ("b", 1), ("c", 1), ("d", 1)):
            await own.record(org_id, "tokens", quantity, idempotency_key=key)
        await own.set_limit(org_id, "tokens", 20)
        await own.record(org_id, "tokens", 9, idempotency_key="e")  # 19 of 20: crossed again
        clock.now = APRIL
        await own.record(org_id, "tokens", 16, idempotency_key="f")  # 80 % of April
        async with scratch.session(readonly=True) as session:
            found = [row[:5] for row in await alerts(session, org_id)]
        assert found == [
            ("tokens", MARCH, 80, 10, 8),
            ("tokens", MARCH, 100, 10, 10),
            ("tokens", APRIL, 80, 20, 16),
        ]

    async def test_refusals_of_bad_events(self, own: UsageService, scratch: Database) -> None:
        org_id = await committed_org(scratch)
        with pytest.raises(NotFound):
            await own.record(uuid.uuid4(), "tokens", 1, idempotency_key="a")
        with pytest.raises(UnknownMetric):
            await own.record(org_id, "nope", 1, idempotency_key="a")
        with pytest.raises(InvalidInput):
            await own.record(org_id, "tokens", -1, idempotency_key="a")
        with pytest.raises(InvalidInput):
            await own.record(org_id, "storage_bytes", 1, idempotency_key="a")
        naive = datetime(2025, 3, 10)  # noqa: DTZ001
        with pytest.raises(InvalidInput):
            await own.record(org_id, "tokens", 1, idempotency_key="a", occurred_at=naive)
        assert await committed_rows(scratch, org_id) == Rows([], [], [], [], [], 0)

    async def test_an_expired_reservation_stops_holding_quota(
        self, own: UsageService, scratch: Database, clock: Clock
    ) -> None:
        org_id = await committed_org(scratch)
        await own.set_limit(org_id, "tokens", 100)
        await own.reserve(org_id, "tokens", 80, ttl=timedelta(minutes=1))
        clock.advance(minutes=2)
        result = await own.record(org_id, "tokens", 50, idempotency_key="a")
        assert (result.status, result.used) == ("accepted", 50)
        assert (await committed_rows(scratch, org_id)).counters == [("tokens", MARCH, 50, 0)]

    async def test_log_token_usage_records_input_plus_output_with_cost(
        self, own: UsageService, scratch: Database
    ) -> None:
        org_id = await committed_org(scratch)
        model = random_code("model")
        async with scratch.transaction() as session:
            await create_price(session, model, input=1_000_000, output=2_000_000, cached=100_000)

        result = await own.log_token_usage(
            org_id=org_id,
            feature="chat",
            model=model,
            provider="acme",
            input_tokens=1000,
            output_tokens=500,
            cached_tokens=400,
        )

        assert result is not None
        # 600·1 + 400·0.1 + 500·2 = 1,640 micros
        assert (result.status, result.metric, result.quantity, result.cost_micros) == (
            "accepted",
            "tokens",
            1500,
            1640,
        )
        async with scratch.session(readonly=True) as session:
            event = (
                await session.execute(
                    sa.select(
                        UsageEvent.quantity,
                        UsageEvent.input_tokens,
                        UsageEvent.output_tokens,
                        UsageEvent.cached_tokens,
                        UsageEvent.total_tokens,
                        UsageEvent.cost_micros,
                        UsageEvent.model,
                        UsageEvent.provider,
                        UsageEvent.feature,
                    ).where(UsageEvent.id == result.event_id)
                )
            ).one()
        assert tuple(event) == (1500, 1000, 500, 400, 1500, 1640, model, "acme", "chat")
        assert (await committed_rows(scratch, org_id)).counters == [("tokens", MARCH, 1500, 0)]

    async def test_log_token_usage_never_refuses(
        self, own: UsageService, scratch: Database
    ) -> None:
        org_id = await committed_org(scratch)
        await own.set_limit(org_id, "tokens", 1000)
        result = await own.log_token_usage(org_id=org_id, input_tokens=1200, output_tokens=300)
        assert result is not None
        assert (result.status, result.used, result.limit, result.over_soft_limit) == (
            "accepted",
            1500,
            1000,
            True,
        )
        assert (await committed_rows(scratch, org_id)).counters == [("tokens", MARCH, 1500, 0)]

    async def test_settle_beyond_a_hard_limit_raises_and_leaves_it_held(
        self, own: UsageService, scratch: Database
    ) -> None:
        org_id = await committed_org(scratch)
        await own.set_limit(org_id, "tokens", 100)
        reservation = await own.reserve(org_id, "tokens", 60)
        await own.record(org_id, "tokens", 30, idempotency_key="a")
        before = await committed_rows(scratch, org_id)

        with pytest.raises(LimitExceeded) as info:
            await own.settle(reservation.id, 81)  # 30 + 60 + 21 > 100

        assert (info.value.limit, info.value.used, info.value.requested) == (100, 90, 21)
        assert await committed_rows(scratch, org_id) == before  # still held, nothing recorded
        result = await own.settle(reservation.id, 70)  # 30 + 60 + 10: fits exactly
        assert result.used == 100
        state = await committed_rows(scratch, org_id)
        assert state.counters == [("tokens", MARCH, 100, 0)]
        assert state.reservations == [(reservation.id, ReservationStatus.SETTLED, 60)]

    async def test_a_reservation_is_settled_by_another_process_and_crosses_thresholds(
        self, own: UsageService, scratch: Database, clock: Clock
    ) -> None:
        org_id = await committed_org(scratch)
        user_id = await committed_user(scratch, org_id)
        await own.set_limit(org_id, "tokens", 100)
        reservation = await own.reserve(org_id, "tokens", 50, idempotency_key="r")
        assert (await own.reserve(org_id, "tokens", 50, idempotency_key="r")).id == reservation.id
        with pytest.raises(IdempotencyConflict):
            await own.reserve(org_id, "tokens", 51, idempotency_key="r")
        other = UsageService(scratch, clock=clock)  # it did not make the reservation
        with pytest.raises(UnknownUser):
            await other.settle(reservation.id, 60, user_id=uuid.uuid4())
        with pytest.raises(ReservationNotFound):
            await other.settle(reservation.id, 60, org_id=uuid.uuid4())

        result = await other.settle(reservation.id, 85, user_id=user_id, feature="chat")

        assert (result.status, result.used, result.limit) == ("accepted", 85, 100)
        state = await committed_rows(scratch, org_id)
        assert state.counters == [("tokens", MARCH, 85, 0)]
        assert state.alerts == [("tokens", MARCH, 80)]
        assert state.reservations == [(reservation.id, ReservationStatus.SETTLED, 50)]
        assert state.events == [(f"reservation:{reservation.id}", "tokens", 85)]
        with pytest.raises(ReservationNotHeld):
            await own.settle(reservation.id, 85)

    async def test_release_gives_the_quota_back_once(
        self, own: UsageService, scratch: Database, clock: Clock
    ) -> None:
        org_id = await committed_org(scratch)
        await own.set_limit(org_id, "tokens", 100)
        reservation = await own.reserve(org_id, "tokens", 60, idempotency_key="r")
        with pytest.raises(ReservationNotFound):
            await own.release(reservation.id, org_id=uuid.uuid4())
        clock.advance(seconds=5)

        released = await own.release(reservation.id, org_id=org_id)

        assert (released.id, released.status, released.quantity, released.finished_at) == (
            reservation.id,
            ReservationStatus.RELEASED,
            60,
            clock.now,
        )
        state = await committed_rows(scratch, org_id)
        assert state.counters == [("tokens", MARCH, 0, 0)]
        assert state.reservations == [(reservation.id, ReservationStatus.RELEASED, 60)]
        with pytest.raises(ReservationNotHeld) as info:
            await own.release(reservation.id)
        assert info.value.details["status"] == "released"
        with pytest.raises(ReservationNotHeld):
            await own.settle(reservation.id, 60)

    async def test_a_refused_reservation_sweeps_lapsed_ones_and_holds(
        self, own: UsageService, scratch: Database, clock: Clock
    ) -> None:
        org_id = await committed_org(scratch)
        await own.set_limit(org_id, "tokens", 100)
        lapsed = await own.reserve(org_id, "tokens", 70, ttl=timedelta(minutes=1))
        clock.advance(minutes=2)
        fresh = await own.reserve(org_id, "tokens", 60)
        with pytest.raises(LimitExceeded) as info:
            await own.reserve(org_id, "tokens", 41)
        assert (info.value.used, info.value.requested) == (60, 41)
        state = await committed_rows(scratch, org_id)
        assert state.counters == [("tokens", MARCH, 0, 60)]
        assert sorted(state.reservations) == sorted(
            [(lapsed.id, ReservationStatus.EXPIRED, 70), (fresh.id, ReservationStatus.HELD, 60)]
        )
        with pytest.raises(ReservationNotHeld) as expired:
            await own.settle(lapsed.id, 70)
        assert expired.value.details["status"] == "expired"

    async def test_the_facade_serves_the_usage_service(self, scratch: Database) -> None:
        org_id = await committed_org(scratch)
        core = Saascore(scratch.settings, database=scratch)
        assert isinstance(core.usage, UsageService)
        assert core.usage.database is scratch
        assert await core.usage.set_limit(org_id, "tokens", 500) == Limit(500)
        await core.usage.record(org_id, "tokens", 120, idempotency_key="a")
        await core.usage.reserve(org_id, "tokens", 80)
        snapshot = await core.usage.usage(org_id, "tokens")
        assert (snapshot.used, snapshot.reserved, snapshot.limit, snapshot.hard) == (
            120,
            80,
            500,
            True,
        )
        await core.close()  # leaves the database it was given open
        assert (await core.usage.check(org_id, "tokens", 300)).allowed


# --- the non-blocking token log ------------------------------------------------------------------
class TestLogTokenUsageWithoutADatabase:
    @pytest_asyncio.fixture(loop_scope="session")
    async def unreachable(self, backend: str, tmp_path: Path) -> AsyncIterator[Database]:
        if backend == "sqlite":
            blocker = tmp_path / "a-file"
            blocker.write_text("not a directory")
            url = f"sqlite:///{blocker / 'data' / 'saascore.db'}"
        else:
            url = "postgresql://postgres@127.0.0.1:1/x"  # nothing listens on port 1
        database = Database(make_settings(database_url=url))
        yield database
        await database.dispose()

    async def test_returns_none_counts_and_logs_the_event(
        self, unreachable: Database, caplog: pytest.LogCaptureFixture
    ) -> None:
        usage = UsageService(unreachable, clock=Clock())
        org_id, user_id = uuid.uuid4(), uuid.uuid4()
        failures = sample("saascore_usage_log_failures_total")

        with caplog.at_level(logging.ERROR, logger="saascore.metering"):
            result = await usage.log_token_usage(
                org_id=org_id,
                user_id=user_id,
                feature="summarise",
                model="gpt-test",
                provider="openai",
                input_tokens=1234,
                output_tokens=567,
                idempotency_key="lost-call-1",
            )

        assert result is None
        assert sample("saascore_usage_log_failures_total") == failures + 1
        [record] = [r for r in caplog.records if r.name == "saascore.metering"]
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        message = record.getMessage()
        for part in (
            str(org_id),
            str(user_id),
            "summarise",
            "gpt-test",
            "openai",
            "'input_tokens': 1234",
            "'output_tokens': 567",
            "'quantity': 1801",
            "lost-call-1",
        ):
            assert part in message

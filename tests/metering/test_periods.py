"""Periods: usage lands in the period (and the summary day) it occurred in, in UTC; counters are
keyed by period, so a new month or day starts at zero without any reset job; storage is a gauge
that no period touches.

Every test runs in the rolled-back `session` with the default catalog loaded (`tokens` monthly,
`api_calls` daily, `storage_bytes` a gauge) and an organisation on the `free` plan.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.db import Database
from saascore.metering.errors import LimitExceeded
from saascore.metering.service import UsageService
from saascore.models import Organization, UsageCounter, UsageDailySummary, UsageEvent
from saascore.plans import PlanService, read_catalog
from tests.factories import create_organization
from tests.helpers import Clock

JAN, FEB, MAR, APR = (datetime(2025, month, 1, tzinfo=UTC) for month in (1, 2, 3, 4))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_SECOND_OF_JANUARY = datetime(2025, 1, 31, 23, 59, 59, tzinfo=UTC)
FREE_API_CALLS, FREE_STORAGE = 100, 100 * 1024 * 1024


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2025, 2, 1, 0, 0, 30, tzinfo=UTC))


@pytest.fixture
def usage(database: Database, clock: Clock) -> UsageService:
    return UsageService(database, clock=clock)


@pytest_asyncio.fixture(loop_scope="session")
async def org(database: Database, session: AsyncSession) -> Organization:
    plans = PlanService(database)
    await plans.load_catalog(read_catalog(), session=session)
    return await create_organization(session, plan=await plans.get_by_code("free", session=session))


async def counters(
    session: AsyncSession, org_id: uuid.UUID, metric: str = "tokens"
) -> list[tuple[datetime, datetime | None, int, int]]:
    """(period_start, period_end, used, reserved) of every counter of the metric."""
    result = await session.execute(
        sa.select(
            UsageCounter.period_start,
            UsageCounter.period_end,
            UsageCounter.used,
            UsageCounter.reserved,
        )
        .where(UsageCounter.organization_id == org_id, UsageCounter.metric == metric)
        .order_by(UsageCounter.period_start)
    )
    return [tuple(row) for row in result]  # type: ignore[misc]


async def days(session: AsyncSession, org_id: uuid.UUID) -> list[tuple[date, str, int, int]]:
    """(day, metric, quantity, event_count) of the organisation's daily summary."""
    result = await session.execute(
        sa.select(
            UsageDailySummary.day,
            UsageDailySummary.metric,
            UsageDailySummary.quantity,
            UsageDailySummary.event_count,
        )
        .where(UsageDailySummary.organization_id == org_id)
        .order_by(UsageDailySummary.day, UsageDailySummary.metric)
    )
    return [tuple(row) for row in result]  # type: ignore[misc]


class TestMonthBoundary:
    async def test_either_side_of_midnight_lands_in_its_own_month_and_day(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        january = await usage.record(
            org.id,
            "tokens",
            100,
            idempotency_key="late",
            occurred_at=LAST_SECOND_OF_JANUARY,
            backfill=True,
            session=session,
        )
        february = await usage.record(
            org.id,
            "tokens",
            200,
            idempotency_key="early",
            occurred_at=FEB,
            backfill=True,
            session=session,
        )

        assert (january.used, february.used) == (100, 200)
        assert await counters(session, org.id) == [(JAN, FEB, 100, 0), (FEB, MAR, 200, 0)]
        assert await days(session, org.id) == [
            (date(2025, 1, 31), "tokens", 100, 1),
            (date(2025, 2, 1), "tokens", 200, 1),
        ]
        assert (await usage.usage(org.id, "tokens", session=session)).used == 200  # February
        by_day = await usage.summary(
            org.id, start=date(2025, 1, 31), end=date(2025, 2, 1), session=session
        )
        assert [(row.key, row.quantity) for row in by_day] == [
            ("2025-01-31", 100),
            ("2025-02-01", 200),
        ]

    async def test_times_in_other_zones_are_placed_in_utc(
        self, usage: UsageService, session: AsyncSession, org: Organization
    ) -> None:
        paris = timezone(timedelta(hours=1))
        new_york = timezone(timedelta(hours=-5))
        # 00:30 on 1 February in Paris is still January in UTC; 20:00 on 31 January in New York
        # is already February.
        await usage.record(
            org.id,
            "tokens",
            7,
            idempotency_key="paris",
            occurred_at=datetime(2025, 2, 1, 0, 30, tzinfo=paris),
            backfill=True,
            session=session,
        )
        await usage.record(
            org.id,
            "tokens",
            11,
            idempotency_key="new-york",
            occurred_at=datetime(2025, 1, 31, 20, 0, tzinfo=new_york),
            backfill=True,
            session=session,
        )
        assert await counters(session, org.id) == [(JAN, FEB, 7, 0), (FEB, MAR, 11, 0)]
        assert await days(session, org.id) == [
            (date(2025, 1, 31), "tokens", 7, 1),
            (date(2025, 2, 1), "tokens", 11, 1),
        ]
        occurred = await session.scalars(
            sa.select(UsageEvent.occurred_at)
            .where(UsageEvent.organization_id == org.id)
            .order_by(UsageEvent.occurred_at)
        )
        assert list(occurred) == [
            datetime(2025, 1, 31, 23, 30, tzinfo=UTC),
            datetime(2025, 2, 1, 1, 0, tzinfo=UTC),
        ]

    async def test_the_year_turns(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        december = datetime(2024, 12, 1, tzinfo=UTC)
        clock.now = JAN
        await usage.record(
            org.id,
            "tokens",
            3,
            idempotency_key="old",
            occurred_at=datetime(2024, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
            backfill=True,
            session=session,
        )
        await usage.record(
            org.id,
            "tokens",
            5,
            idempotency_key="new",
            occurred_at=JAN,
            backfill=True,
            session=session,
        )
        assert await counters(session, org.id) == [(december, JAN, 3, 0), (JAN, FEB, 5, 0)]

    async def test_a_reservation_settled_after_the_month_turned_counts_in_its_month(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        clock.now = LAST_SECOND_OF_JANUARY - timedelta(seconds=30)
        reservation = await usage.reserve(org.id, "tokens", 500, session=session)
        clock.now = FEB + timedelta(seconds=30)
        await usage.settle(reservation.id, 400, session=session)

        # The quota was held in January, so the usage is January's: the counter, the event's
        # time and the summary day all say so.
        assert await counters(session, org.id) == [(JAN, FEB, 400, 0)]
        occurred = await session.scalar(
            sa.select(UsageEvent.occurred_at).where(UsageEvent.organization_id == org.id)
        )
        assert occurred is not None
        assert JAN <= occurred < FEB
        assert await days(session, org.id) == [(date(2025, 1, 31), "tokens", 400, 1)]
        assert (await usage.usage(org.id, "tokens", session=session)).used == 0  # February

    async def test_a_reservation_settled_within_its_day_is_dated_now(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        reservation = await usage.reserve(org.id, "api_calls", 5, session=session)
        clock.now += timedelta(minutes=3)
        await usage.settle(reservation.id, 4, session=session)
        occurred = await session.scalar(
            sa.select(UsageEvent.occurred_at).where(UsageEvent.organization_id == org.id)
        )
        assert occurred == clock.now
        assert await counters(session, org.id, "api_calls") == [
            (FEB, FEB + timedelta(days=1), 4, 0)
        ]


class TestDailyMeter:
    async def test_api_calls_start_again_every_day(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        monday, tuesday = datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 11, tzinfo=UTC)
        clock.now = tuesday - timedelta(hours=1)
        await usage.record(
            org.id, "api_calls", FREE_API_CALLS, idempotency_key="a", session=session
        )
        with pytest.raises(LimitExceeded) as info:
            await usage.record(org.id, "api_calls", 1, idempotency_key="b", session=session)
        assert (info.value.limit, info.value.used) == (FREE_API_CALLS, FREE_API_CALLS)
        assert not (await usage.check(org.id, "api_calls", 1, session=session)).allowed

        clock.now = tuesday
        snapshot = await usage.usage(org.id, "api_calls", session=session)
        assert (snapshot.period_start, snapshot.period_end, snapshot.used, snapshot.limit) == (
            tuesday,
            tuesday + timedelta(days=1),
            0,
            FREE_API_CALLS,
        )
        result = await usage.record(org.id, "api_calls", 1, idempotency_key="b", session=session)
        assert (result.status, result.used) == ("accepted", 1)
        assert await counters(session, org.id, "api_calls") == [
            (monday, tuesday, FREE_API_CALLS, 0),
            (tuesday, tuesday + timedelta(days=1), 1, 0),
        ]

    async def test_a_late_event_counts_against_the_day_it_occurred(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        monday, tuesday = datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 11, tzinfo=UTC)
        clock.now = monday + timedelta(hours=12)
        await usage.record(
            org.id, "api_calls", FREE_API_CALLS, idempotency_key="a", session=session
        )
        clock.now = tuesday + timedelta(hours=1)
        with pytest.raises(LimitExceeded):  # Monday is full, whenever the event arrives
            await usage.record(
                org.id,
                "api_calls",
                1,
                idempotency_key="late",
                occurred_at=tuesday - timedelta(seconds=1),
                backfill=True,
                session=session,
            )
        await usage.record(
            org.id,
            "api_calls",
            1,
            idempotency_key="on-time",
            occurred_at=tuesday,
            backfill=True,
            session=session,
        )
        assert [row[2] for row in await counters(session, org.id, "api_calls")] == [
            FREE_API_CALLS,
            1,
        ]


class TestNewPeriod:
    async def test_a_limit_full_in_one_month_allows_again_in_the_next(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        await usage.set_limit(org.id, "tokens", 1000, session=session)
        clock.now = APR - timedelta(seconds=1)
        await usage.record(org.id, "tokens", 1000, idempotency_key="march", session=session)
        with pytest.raises(LimitExceeded):
            await usage.record(org.id, "tokens", 1, idempotency_key="more", session=session)
        with pytest.raises(LimitExceeded):
            await usage.reserve(org.id, "tokens", 1, session=session)

        clock.now = APR  # no reset job runs in between
        check = await usage.check(org.id, "tokens", 1000, session=session)
        assert (check.allowed, check.used, check.remaining) == (True, 0, 1000)
        await usage.reserve(org.id, "tokens", 400, session=session)
        result = await usage.record(org.id, "tokens", 600, idempotency_key="april", session=session)
        assert (result.status, result.used) == ("accepted", 600)
        assert await counters(session, org.id) == [
            (MAR, APR, 1000, 0),
            (APR, datetime(2025, 5, 1, tzinfo=UTC), 600, 400),
        ]
        snapshots = {s.metric: s for s in await usage.limits(org.id, session=session)}
        assert (snapshots["tokens"].period_start, snapshots["tokens"].used) == (APR, 600)


class TestStorageGauge:
    async def test_storage_is_not_touched_by_periods(
        self, usage: UsageService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        clock.now = FEB - timedelta(seconds=1)
        assert await usage.update_storage_used(org.id, 4096, session=session) == 4096

        for moment in (FEB, FEB + timedelta(days=1), APR + timedelta(days=40)):
            clock.now = moment
            snapshot = await usage.usage(org.id, "storage_bytes", session=session)
            assert (snapshot.period_start, snapshot.period_end, snapshot.used) == (
                EPOCH,
                None,
                4096,
            )
            check = await usage.check_storage_limit(org.id, 0, session=session)
            assert (check.used_bytes, check.remaining_bytes) == (4096, FREE_STORAGE - 4096)

        assert await usage.update_storage_used(org.id, -96, session=session) == 4000
        assert await counters(session, org.id, "storage_bytes") == []  # kept in usage_limits

"""Gapless invoice numbers (issue 12, item 3) and one live subscription per organisation
(item 2), on SQLite and PostgreSQL.

The races commit, so they use `race_database`; the platform-scope race gets a database of its
own (`fresh=True`), since its series is shared by every organisation.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.billing.numbering import (
    allocate_invoice_number,
    format_invoice_number,
    next_in_series,
    series_key,
)
from saascore.config import InvoiceSequenceScope, Settings, load_settings
from saascore.kit.db import Database
from saascore.kit.errors import ConfigurationError
from saascore.migrations import migrate
from saascore.models import (
    LIVE_SUBSCRIPTION_STATUSES,
    Invoice,
    InvoiceSequence,
    InvoiceStatus,
    Subscription,
    SubscriptionStatus,
)
from tests.factories import create_organization, create_organization_row, create_plan

AT = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
ORG = uuid.UUID("01936f3a-0000-7000-8000-000000000001")
WORKERS = 32


def numbering(**values: Any) -> Settings:
    """Settings with the given invoice settings (init values win over the environment)."""
    return Settings(**values)


PLATFORM = numbering(invoice_sequence_scope="platform")
PER_ORG = numbering(invoice_sequence_scope="organization")


class TestTemplate:
    def test_the_default_template(self) -> None:
        settings = numbering()
        assert settings.invoice_number_template == "{prefix}-{year}-{seq:04d}"
        assert settings.invoice_prefix == "INV"
        assert settings.invoice_sequence_scope is InvoiceSequenceScope.PLATFORM
        assert format_invoice_number(settings, seq=1, at=AT) == "INV-2025-0001"
        assert format_invoice_number(settings, seq=12345, at=AT) == "INV-2025-12345"

    def test_seed_003_numbers(self) -> None:
        settings = numbering(invoice_prefix="SAH")
        assert format_invoice_number(settings, seq=1, at=AT) == "SAH-2025-0001"

    def test_a_custom_template(self) -> None:
        settings = numbering(invoice_number_template="{year}/{prefix}{seq:06d}", invoice_prefix="F")
        assert format_invoice_number(settings, seq=42, at=AT) == "2025/F000042"

    def test_the_year_is_the_utc_year(self) -> None:
        new_year_in_tokyo = datetime(2026, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=9)))
        assert format_invoice_number(PLATFORM, seq=7, at=new_year_in_tokyo) == "INV-2025-0007"
        assert series_key(PLATFORM, organization_id=ORG, at=new_year_in_tokyo) == "platform/2025"

    def test_a_naive_time_is_refused(self) -> None:
        with pytest.raises(ValueError, match="naive datetime"):
            series_key(PLATFORM, organization_id=ORG, at=datetime(2025, 1, 1))  # noqa: DTZ001

    def test_series_keys(self) -> None:
        assert series_key(PLATFORM, organization_id=ORG, at=AT) == "platform/2025"
        assert series_key(PER_ORG, organization_id=ORG, at=AT) == f"org/{ORG}/2025"
        yearless = numbering(invoice_number_template="{prefix}{seq:05d}")
        assert series_key(yearless, organization_id=ORG, at=AT) == "platform"
        longest = series_key(PER_ORG, organization_id=ORG, at=AT.replace(year=9999))
        assert len(longest) <= InvoiceSequence.__table__.c.series.type.length

    def test_escaped_braces_are_text(self) -> None:
        settings = numbering(invoice_number_template="{{year}}-{seq}")
        assert format_invoice_number(settings, seq=3, at=AT) == "{year}-3"
        assert series_key(settings, organization_id=ORG, at=AT) == "platform"

    @pytest.mark.parametrize(
        ("template", "message"),
        [
            ("{prefix}-{year}", "must contain {seq}"),
            ("{prefix}-{month}-{seq}", "unknown placeholder {month}"),
            ("{}-{seq}", "unknown placeholder {}"),
            ("{seq.real}", "unknown placeholder {seq.real}"),
            ("{prefix}-{seq:x}{", "not a valid template"),
            ("{prefix:04d}-{seq}", "not a valid template"),
            ("{seq:099999d}", "exceed 64 characters"),
        ],
    )
    def test_a_bad_template_stops_the_start(self, template: str, message: str) -> None:
        with pytest.raises(ConfigurationError) as error:
            load_settings(invoice_number_template=template)
        assert str(error.value).startswith("invalid setting SAASCORE_INVOICE_NUMBER_TEMPLATE: ")
        assert message in str(error.value)
        assert "\n" not in str(error.value)

    def test_a_bad_prefix_or_scope_stops_the_start(self) -> None:
        with pytest.raises(ConfigurationError, match="SAASCORE_INVOICE_PREFIX"):
            load_settings(invoice_prefix="IN V")
        with pytest.raises(ConfigurationError, match="SAASCORE_INVOICE_SEQUENCE_SCOPE"):
            load_settings(invoice_sequence_scope="tenant")
        with pytest.raises(ConfigurationError, match="SAASCORE_INVOICE_PREFIX is too long"):
            load_settings(invoice_number_template="{prefix}" * 4 + "{seq}", invoice_prefix="P" * 20)

    def test_due_and_grace_days(self) -> None:
        settings = numbering()
        assert (settings.invoice_due_days, settings.dunning_grace_days) == (14, 7)
        with pytest.raises(ConfigurationError, match="SAASCORE_INVOICE_DUE_DAYS"):
            load_settings(invoice_due_days=-1)
        with pytest.raises(ConfigurationError, match="SAASCORE_DUNNING_GRACE_DAYS"):
            load_settings(dunning_grace_days=366)


async def _refused(session: AsyncSession, row: object, *fragments: str) -> None:
    """Adding `row` must fail with an IntegrityError naming one of `fragments` (PostgreSQL names
    the constraint, SQLite its columns)."""
    with pytest.raises(IntegrityError) as info:  # noqa: PT012 - the savepoint is the statement
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    message = str(info.value.orig)
    assert any(fragment in message for fragment in fragments), message


async def _allocate(session: AsyncSession, settings: Settings, org: uuid.UUID, at: datetime) -> str:
    return await allocate_invoice_number(session, organization_id=org, at=at, settings=settings)


class TestAllocation:
    async def test_numbers_are_consecutive_from_one(self, session: AsyncSession) -> None:
        org = (await create_organization(session)).id
        numbers = [await _allocate(session, PLATFORM, org, AT) for _ in range(5)]
        assert numbers == [f"INV-2025-000{n}" for n in range(1, 6)]
        row = await session.get(InvoiceSequence, "platform/2025")
        assert row is not None
        assert row.last_number == 5

    async def test_the_year_boundary_restarts_the_series(self, session: AsyncSession) -> None:
        org = (await create_organization(session)).id
        last_second = datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
        first_second = datetime(2026, 1, 1, tzinfo=UTC)
        assert await _allocate(session, PLATFORM, org, last_second) == "INV-2025-0001"
        assert await _allocate(session, PLATFORM, org, last_second) == "INV-2025-0002"
        assert await _allocate(session, PLATFORM, org, first_second) == "INV-2026-0001"
        # An invoice of December finalised late still continues its own year's series.
        assert await _allocate(session, PLATFORM, org, last_second) == "INV-2025-0003"
        assert await _allocate(session, PLATFORM, org, first_second) == "INV-2026-0002"

    async def test_without_year_the_series_runs_on(self, session: AsyncSession) -> None:
        settings = numbering(invoice_number_template="{prefix}{seq:05d}")
        org = (await create_organization(session)).id
        assert await _allocate(session, settings, org, AT) == "INV00001"
        assert await _allocate(session, settings, org, AT.replace(year=2026)) == "INV00002"

    async def test_platform_scope_shares_one_series(self, session: AsyncSession) -> None:
        a = (await create_organization(session)).id
        b = (await create_organization(session)).id
        numbers = [await _allocate(session, PLATFORM, org, AT) for org in (a, b, a, b)]
        assert numbers == ["INV-2025-0001", "INV-2025-0002", "INV-2025-0003", "INV-2025-0004"]

    async def test_organization_scope_gives_each_its_own(self, session: AsyncSession) -> None:
        a = (await create_organization(session)).id
        b = (await create_organization(session)).id
        numbers = [await _allocate(session, PER_ORG, org, AT) for org in (a, b, a, a, b)]
        assert numbers == [
            "INV-2025-0001",
            "INV-2025-0001",
            "INV-2025-0002",
            "INV-2025-0003",
            "INV-2025-0002",
        ]
        # The platform series is untouched by organisation-scoped numbers.
        assert await _allocate(session, PLATFORM, a, AT) == "INV-2025-0001"

    async def test_a_rollback_gives_the_number_back(self, session: AsyncSession) -> None:
        org = (await create_organization(session)).id
        assert await _allocate(session, PLATFORM, org, AT) == "INV-2025-0001"
        savepoint = await session.begin_nested()
        assert await _allocate(session, PLATFORM, org, AT) == "INV-2025-0002"
        await savepoint.rollback()
        assert await _allocate(session, PLATFORM, org, AT) == "INV-2025-0002"

    async def test_the_number_is_unique_in_its_organisation(self, session: AsyncSession) -> None:
        org = (await create_organization(session)).id
        session.add(Invoice(organization_id=org, currency="USD", number="INV-2025-0001"))
        await session.flush()
        duplicate = Invoice(organization_id=org, currency="USD", number="INV-2025-0001")
        await _refused(session, duplicate, "uq_invoices_organization_id_number", "invoices.number")
        # Drafts have no number: any number of them.
        session.add_all([Invoice(organization_id=org, currency="USD") for _ in range(3)])
        await session.flush()

    async def test_next_in_series_counts_per_key(self, session: AsyncSession) -> None:
        series = f"test/{uuid.uuid4()}"
        assert [await next_in_series(session, series) for _ in range(3)] == [1, 2, 3]
        assert await next_in_series(session, series + "/other") == 1


# --- under concurrency -------------------------------------------------------------------------
class RolledBack(Exception):
    """A finalisation that fails after taking its number."""


async def _drafts(database: Database, orgs: int, per_org: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    keys: list[tuple[uuid.UUID, uuid.UUID]] = []
    async with database.transaction() as session:
        plan = await create_plan(session)
        for _ in range(orgs):
            org = await create_organization(session, plan=plan)
            drafts = [Invoice(organization_id=org.id, currency="USD") for _ in range(per_org)]
            session.add_all(drafts)
            await session.flush()
            keys += [(org.id, draft.id) for draft in drafts]
    return keys


async def _finalise(
    database: Database,
    settings: Settings,
    key: tuple[uuid.UUID, uuid.UUID],
    start: asyncio.Event,
    *,
    roll_back: bool,
) -> tuple[str, bool]:
    """Finalise a draft in a transaction of its own: (the number it took, whether committed)."""
    await start.wait()
    try:
        async with database.transaction() as session:
            invoice = await session.get(Invoice, key)
            assert invoice is not None
            number = await allocate_invoice_number(
                session, organization_id=key[0], at=AT, settings=settings
            )
            invoice.number, invoice.status = number, InvoiceStatus.OPEN
            await session.flush()
            await asyncio.sleep(random.uniform(0, 0.005))  # hold the series a little
            if roll_back:
                raise RolledBack(number)
    except RolledBack:
        return number, False
    return number, True


async def _race(
    database: Database, settings: Settings, keys: list[tuple[uuid.UUID, uuid.UUID]]
) -> list[tuple[uuid.UUID, str, bool]]:
    start = asyncio.Event()
    tasks = [
        asyncio.create_task(_finalise(database, settings, key, start, roll_back=i % 3 == 0))
        for i, key in enumerate(keys)
    ]
    start.set()
    results = await asyncio.gather(*tasks)
    return [(key[0], number, done) for key, (number, done) in zip(keys, results, strict=True)]


async def _stored_numbers(database: Database, orgs: set[uuid.UUID]) -> list[str]:
    async with database.session(readonly=True) as session:
        rows = await session.scalars(
            sa.select(Invoice.number).where(
                Invoice.organization_id.in_(orgs), Invoice.number.is_not(None)
            )
        )
        return sorted(number for number in rows if number is not None)


def _expected(count: int) -> list[str]:
    return [f"INV-2025-{n:04d}" for n in range(1, count + 1)]


class TestConcurrentFinalisation:
    """32 finalisations at once, every third rolling back after taking its number."""

    @pytest.mark.race_database(fresh=True)
    async def test_platform_scope(self, race_database: Database) -> None:
        keys = await _drafts(race_database, orgs=4, per_org=WORKERS // 4)
        results = await _race(race_database, PLATFORM, keys)

        committed = [number for _, number, done in results if done]
        rolled_back = [number for _, number, done in results if not done]
        assert len(committed) == WORKERS - len(range(0, WORKERS, 3))
        assert sorted(committed) == _expected(len(committed))  # no gap, no repeat
        assert set(rolled_back) & set(committed), "no rolled-back number was taken again"
        assert await _stored_numbers(race_database, {k[0] for k in keys}) == sorted(committed)
        async with race_database.session(readonly=True) as session:
            row = await session.get(InvoiceSequence, "platform/2025")
            assert row is not None
            assert row.last_number == len(committed)

    async def test_organization_scope(self, race_database: Database) -> None:
        keys = await _drafts(race_database, orgs=2, per_org=WORKERS // 2)
        random.shuffle(keys)  # the two organisations' finalisations interleave
        results = await _race(race_database, PER_ORG, keys)

        for org in {k[0] for k in keys}:
            committed = [number for o, number, done in results if o == org and done]
            assert sorted(committed) == _expected(len(committed))
            assert await _stored_numbers(race_database, {org}) == sorted(committed)
        assert sum(done for _, _, done in results) == WORKERS - len(range(0, WORKERS, 3))


# --- one live subscription per organisation ----------------------------------------------------
ENDED = [status for status in SubscriptionStatus if status not in LIVE_SUBSCRIPTION_STATUSES]


def _subscription(org: uuid.UUID, plan: uuid.UUID, status: SubscriptionStatus) -> Subscription:
    return Subscription(
        organization_id=org,
        plan_id=plan,
        status=status,
        started_at=AT,
        current_period_start=AT,
        current_period_end=AT + timedelta(days=30),
    )


class TestOneLiveSubscription:
    def test_the_live_statuses(self) -> None:
        assert set(ENDED) == {
            SubscriptionStatus.CANCELED,
            SubscriptionStatus.EXPIRED,
            SubscriptionStatus.INCOMPLETE_EXPIRED,
        }

    @pytest.mark.parametrize("second", LIVE_SUBSCRIPTION_STATUSES)
    async def test_a_second_live_subscription_is_refused(
        self, session: AsyncSession, second: SubscriptionStatus
    ) -> None:
        org = await create_organization(session)
        session.add(_subscription(org.id, org.plan_id, SubscriptionStatus.ACTIVE))
        await session.flush()
        await _refused(
            session,
            _subscription(org.id, org.plan_id, second),
            "uq_subscriptions_live_organization_id",
            "subscriptions.organization_id",
        )

    @pytest.mark.parametrize("ended", ENDED)
    async def test_ended_ones_beside_a_live_one_are_fine(
        self, session: AsyncSession, ended: SubscriptionStatus
    ) -> None:
        org = await create_organization(session)
        session.add_all([_subscription(org.id, org.plan_id, ended) for _ in range(3)])
        session.add(_subscription(org.id, org.plan_id, SubscriptionStatus.TRIALING))
        await session.flush()
        count = await session.scalar(
            sa.select(sa.func.count()).where(Subscription.organization_id == org.id)
        )
        assert count == 4

    async def test_each_organisation_has_its_own(self, session: AsyncSession) -> None:
        a, b = await create_organization(session), await create_organization(session)
        session.add(_subscription(a.id, a.plan_id, SubscriptionStatus.ACTIVE))
        session.add(_subscription(b.id, b.plan_id, SubscriptionStatus.ACTIVE))
        await session.flush()

    async def test_ending_the_live_one_makes_room(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        first = _subscription(org.id, org.plan_id, SubscriptionStatus.PAST_DUE)
        session.add(first)
        await session.flush()
        first.status = SubscriptionStatus.CANCELED
        await session.flush()
        session.add(_subscription(org.id, org.plan_id, SubscriptionStatus.ACTIVE))
        await session.flush()


class TestMigration0008:
    async def test_it_names_organisations_that_already_have_two(
        self, empty_database: Database
    ) -> None:
        await migrate.upgrade(empty_database, "0007")
        async with empty_database.transaction() as session:  # organisations as at 0007
            org_id, plan_id = await create_organization_row(session)
            for _ in range(2):  # only the columns subscriptions had at 0007
                await session.execute(
                    sa.insert(Subscription).values(
                        organization_id=org_id,
                        plan_id=plan_id,
                        status=SubscriptionStatus.ACTIVE,
                        started_at=AT,
                        current_period_start=AT,
                        current_period_end=AT + timedelta(days=30),
                    )
                )
        with pytest.raises(RuntimeError, match="1 organisation\\(s\\) have more than one live"):
            await migrate.upgrade(empty_database)
        assert await migrate.current(empty_database) == "0007"

        async with empty_database.transaction() as session:
            await session.execute(
                sa.update(Subscription)
                .where(Subscription.organization_id == org_id)
                .values(status=SubscriptionStatus.CANCELED)
            )
        await migrate.upgrade(empty_database)
        assert await migrate.current(empty_database) == migrate.head()

"""Credits under concurrency, in the style of Jepsen's bank test: many workers race, each in its
own committed transaction (the service called without a session), then the totals must add up,
whatever the interleaving was.

The tests commit, so they use `race_database` (conftest: this module's own database, migrated by
the real migrations, with a pool large enough for the workers); each test makes its own
organisations and looks only at those (`verify()` looks at all, and all must be healthy).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from saascore.credits import CreditService, InsufficientCredits, NotRefundable
from saascore.kit.db import Database
from saascore.kit.errors import IdempotencyConflict
from saascore.kit.time import utcnow
from saascore.models import (
    CreditSource,
    CreditTransaction,
    CreditTransactionType,
    Organization,
    OrganizationStatus,
    UsageLimits,
)
from saascore.plans import PlanService
from saascore.tenancy import OrganizationService
from tests.credits.ledger import (
    Clock,
    TransactionRow,
    assert_running_balance,
    grants,
    ledger,
)
from tests.factories import create_organization, create_plan

WORKERS = 64

CONSUME = CreditTransactionType.CONSUME


async def new_org(database: Database, *, credits_per_period: int = 0) -> uuid.UUID:
    async with database.transaction() as session:
        plan = await create_plan(session, credits_per_period=credits_per_period)
        return (await create_organization(session, plan=plan)).id


async def read_ledger(database: Database, org_id: uuid.UUID) -> list[TransactionRow]:
    async with database.session(readonly=True) as session:
        return await ledger(session, org_id)


async def race(*workers: Awaitable[Any]) -> list[Any]:
    """Run the workers at once; each returns its result or the exception it raised."""
    return await asyncio.gather(*workers, return_exceptions=True)


def refused(results: list[Any], kind: type[BaseException]) -> list[Any]:
    """The results that are exceptions, after checking they are all of `kind`."""
    errors = [r for r in results if isinstance(r, BaseException)]
    unexpected = [e for e in errors if not isinstance(e, kind)]
    assert unexpected == [], unexpected
    return errors


class TestConsumeRace:
    async def test_racing_consumers_never_overspend(self, race_database: Database) -> None:
        credits = CreditService(race_database)
        org = await new_org(race_database)
        now = utcnow()
        # Grants of every kind, so that draws cross grant boundaries: (amount, priority, expiry)
        funding = [
            (300, 0, now + timedelta(days=30)),
            (300, 0, None),
            (200, 1, None),
            (200, -1, now + timedelta(days=60)),
        ]
        for amount, priority, expires_at in funding:
            await credits.grant(org, amount, priority=priority, expires_at=expires_at)
        initial = 1000
        rng = random.Random(20250310)
        asks = [rng.randint(1, 40) for _ in range(WORKERS)]
        assert sum(asks) > initial  # so some must be refused

        results = await race(*(credits.consume(org, ask) for ask in asks))

        refusals = refused(results, InsufficientCredits)
        accepted = [(ask, r) for ask, r in zip(asks, results, strict=True) if r not in refusals]
        final = await credits.balance(org)
        assert refusals
        assert accepted
        assert final >= 0
        assert sum(ask for ask, _ in accepted) == initial - final
        for ask, tx in accepted:
            assert tx.amount == -ask

        transactions = await read_ledger(race_database, org)
        assert assert_running_balance(transactions) == final
        consumed = [tx for tx in transactions if tx.type == CONSUME]
        assert sorted(tx.id for tx in consumed) == sorted(tx.id for _, tx in accepted)
        # Each refusal saw a balance the ledger really passed through, and one too small; the
        # balance only fell during the race, so it is still too small at the end.
        states = {initial} | {tx.balance_after for tx in consumed}
        for ask, error in zip(asks, results, strict=True):
            if error in refusals:
                assert error.requested == ask
                assert error.balance < ask
                assert error.balance in states
                assert error.balance >= final
                assert ask > final

        # Everyone drew in the same order, so the grants were emptied in draw order.
        drawn, expected = initial - final, []
        for amount, _, _ in sorted(funding, key=lambda g: (g[1], g[2] is None, g[2] or now)):
            expected.append(amount - min(amount, drawn))
            drawn -= min(amount, drawn)
        async with race_database.session(readonly=True) as session:
            rows = await grants(session, org)
        in_draw_order = sorted(
            rows, key=lambda g: (g.priority, g.expires_at is None, g.expires_at or now)
        )
        assert [g.remaining for g in in_draw_order] == expected
        assert await credits.verify() == []

    async def test_organisations_race_independently(self, race_database: Database) -> None:
        credits = CreditService(race_database)
        orgs = [await new_org(race_database) for _ in range(4)]
        for org in orgs:
            await credits.grant(org, 100)
        rng = random.Random(7)
        asks = [(orgs[i % 4], rng.randint(1, 15)) for i in range(WORKERS)]

        results = await race(*(credits.consume(org, ask) for org, ask in asks))

        refusals = refused(results, InsufficientCredits)
        for org in orgs:
            taken = sum(
                ask
                for (owner, ask), r in zip(asks, results, strict=True)
                if owner == org and r not in refusals
            )
            final = await credits.balance(org)
            assert final == 100 - taken >= 0
            assert assert_running_balance(await read_ledger(race_database, org)) == final
        assert await credits.verify() == []


class TestMixedRace:
    async def test_grants_consumes_refunds_and_adjustments_keep_the_ledger_whole(
        self, race_database: Database
    ) -> None:
        credits = CreditService(race_database)
        org = await new_org(race_database)
        await credits.grant(org, 300)
        await credits.grant(org, 200, priority=1, expires_at=utcnow() + timedelta(days=1))
        consumptions = [(await credits.consume(org, 20)).id for _ in range(6)]
        start = await credits.balance(org)
        assert start == 380

        rng = random.Random(99)
        plan: list[tuple[str, Any]] = []
        for _ in range(WORKERS):
            kind = rng.choice(["grant", "consume", "consume", "refund", "adjust"])
            if kind == "grant":
                plan.append((kind, rng.randint(1, 30)))
            elif kind == "consume":
                plan.append((kind, rng.randint(10, 60)))
            elif kind == "refund":
                plan.append((kind, (rng.choice(consumptions), rng.randint(1, 12))))
            else:
                plan.append((kind, rng.choice([-1, 1]) * rng.randint(1, 40)))

        def work(kind: str, arg: Any) -> Awaitable[CreditTransaction]:
            if kind == "grant":
                return credits.grant(org, arg, source=CreditSource.PROMOTION)
            if kind == "consume":
                return credits.consume(org, arg)
            if kind == "refund":
                return credits.refund(org, arg[0], arg[1])
            return credits.adjust(org, arg, reason="race")

        results = await race(*(work(kind, arg) for kind, arg in plan))

        errors = refused(results, InsufficientCredits | NotRefundable)  # type: ignore[arg-type]
        for (kind, arg), result in zip(plan, results, strict=True):
            if isinstance(result, InsufficientCredits):
                assert kind == "consume" or (kind == "adjust" and arg < 0)
            elif isinstance(result, NotRefundable):
                assert kind == "refund"
        accepted = [r for r in results if r not in errors]
        final = await credits.balance(org)
        assert final == start + sum(tx.amount for tx in accepted)

        transactions = await read_ledger(race_database, org)
        assert assert_running_balance(transactions) == final
        states = {tx.balance_after for tx in transactions}
        for (_, _), result in zip(plan, results, strict=True):
            if isinstance(result, InsufficientCredits):
                assert result.balance < result.requested
                assert result.balance in states  # a balance the ledger really held
        refunded = Counter[uuid.UUID]()
        for tx in transactions:
            if tx.type == CreditTransactionType.REFUND:
                assert tx.related_transaction_id is not None
                refunded[tx.related_transaction_id] += tx.amount
        for consumption in consumptions:
            assert refunded[consumption] <= 20
        # What is refundable only shrinks: a refused refund still asks for more than is left.
        for (_, arg), result in zip(plan, results, strict=True):
            if isinstance(result, NotRefundable):
                consumption, amount = arg
                assert amount > 20 - refunded[consumption]
        async with race_database.session(readonly=True) as session:
            assert sum(g.remaining for g in await grants(session, org)) == final
        assert await credits.verify() == []


class TestIdempotentRace:
    async def test_the_same_consume_sent_ten_times_is_applied_once(
        self, race_database: Database
    ) -> None:
        credits = CreditService(race_database)
        org = await new_org(race_database)
        await credits.grant(org, 100)

        results = await race(
            *(credits.consume(org, 7, idempotency_key="job-1", reference="r") for _ in range(10))
        )

        assert refused(results, Exception) == []
        assert len({tx.id for tx in results}) == 1
        assert await credits.balance(org) == 93
        consumed = [tx for tx in await read_ledger(race_database, org) if tx.type == CONSUME]
        assert [tx.idempotency_key for tx in consumed] == ["job-1"]

    async def test_one_key_with_two_payloads_applies_one_of_them(
        self, race_database: Database
    ) -> None:
        credits = CreditService(race_database)
        org = await new_org(race_database)
        await credits.grant(org, 100)
        amounts = [7, 8] * 5

        results = await race(*(credits.consume(org, a, idempotency_key="k") for a in amounts))

        conflicts = refused(results, IdempotencyConflict)
        applied = [r for r in results if r not in conflicts]
        winner = -applied[0].amount
        assert {tx.id for tx in applied} == {applied[0].id}
        assert len(applied) == amounts.count(winner)
        assert len(conflicts) == 5
        assert await credits.balance(org) == 100 - winner

    async def test_the_same_grant_sent_ten_times_is_applied_once(
        self, race_database: Database
    ) -> None:
        credits = CreditService(race_database)
        org = await new_org(race_database)

        results = await race(
            *(credits.grant(org, 50, idempotency_key="purchase-1") for _ in range(10))
        )

        assert refused(results, Exception) == []
        assert len({tx.id for tx in results}) == 1
        assert await credits.balance(org) == 50
        async with race_database.session(readonly=True) as session:
            assert len(await grants(session, org)) == 1


class TestRefillRace:
    async def test_concurrent_refills_grant_once_per_month(self, race_database: Database) -> None:
        clock = Clock(datetime(2025, 3, 10, 12, tzinfo=UTC))
        credits = CreditService(race_database, clock=clock)
        org = await new_org(race_database, credits_per_period=500)

        march = await race(*(credits.refill(org) for _ in range(16)))
        clock.set(datetime(2025, 4, 1, tzinfo=UTC))
        april = await race(*(credits.refill(org) for _ in range(16)))

        for wave, key in ((march, "refill:2025-03"), (april, "refill:2025-04")):
            assert refused(wave, Exception) == []
            assert len({tx.id for tx in wave}) == 1
            assert wave[0].idempotency_key == key
        assert await credits.balance(org) == 500
        async with race_database.session(readonly=True) as session:
            plan_grants = await grants(session, org)
        assert [(g.source, g.amount) for g in plan_grants] == [(CreditSource.PLAN, 500)] * 2
        types = [tx.type for tx in await read_ledger(race_database, org)]
        assert types == ["grant", "expire", "grant"]  # March's credits lapsed with the month
        assert await credits.verify() == []


class TestFirstTouchRace:
    async def test_an_organisation_without_a_usage_limits_row_gets_exactly_one(
        self, race_database: Database
    ) -> None:
        credits = CreditService(race_database)
        org = await new_org(race_database)
        async with race_database.transaction() as session:
            await session.execute(sa.delete(UsageLimits).where(UsageLimits.organization_id == org))

        results = await race(*(credits.grant(org, n) for n in range(1, 33)))

        assert refused(results, Exception) == []
        assert await credits.balance(org) == sum(range(1, 33))
        async with race_database.session(readonly=True) as session:
            rows = await session.scalar(
                sa.select(sa.func.count()).where(UsageLimits.organization_id == org)
            )
        assert rows == 1
        assert await credits.verify() == []


class TestPlanCreditsRace:
    async def test_an_upgrade_racing_refills_grants_the_new_allowance_in_all(
        self, race_database: Database
    ) -> None:
        clock = Clock(datetime(2025, 3, 10, 12, tzinfo=UTC))
        credits = CreditService(race_database, clock=clock)
        plans = PlanService(race_database)
        orgs = OrganizationService(race_database, plans, plan_credits=credits)
        async with race_database.transaction() as session:
            small = (await create_plan(session, credits_per_period=100)).code
            large = (await create_plan(session, credits_per_period=1000)).code
        org = (await orgs.create(name="Racer", plan=small)).id

        results = await race(
            orgs.change_plan(org, large), *(credits.refill_once(org) for _ in range(8))
        )

        assert refused(results, Exception) == []
        assert await credits.balance(org) == 1000
        async with race_database.session(readonly=True) as session:
            assert sum(g.amount for g in await grants(session, org)) == 1000
        assert await credits.verify() == []


class TestRefillAll:
    async def test_every_live_organisation_once_however_often_it_runs(
        self, race_database: Database
    ) -> None:
        clock = Clock(datetime(2025, 3, 10, 12, tzinfo=UTC))
        credits = CreditService(race_database, clock=clock)
        none, some, more, gone = [
            await new_org(race_database, credits_per_period=n) for n in (0, 30, 40, 50)
        ]
        async with race_database.transaction() as session:
            await session.execute(
                sa.update(Organization)
                .where(Organization.id == gone)
                .values(status=OrganizationStatus.DELETED)
            )

        first = {o.organization_id: o.granted async for o in credits.refill_all()}
        second = {o.organization_id: o.granted async for o in credits.refill_all()}

        assert [first[org] for org in (none, some, more)] == [0, 30, 40]
        assert [second[org] for org in (none, some, more)] == [0, 0, 0]
        assert gone not in first
        assert [await credits.balance(org) for org in (none, some, more, gone)] == [0, 30, 40, 0]

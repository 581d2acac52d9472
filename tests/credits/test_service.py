"""The credit ledger, one operation at a time: grant, consume, adjust, refund, expire, refill,
the draw order, idempotency, the running balance, verification and the reads.

Every test runs in the rolled-back `session` and passes it to the service, except where a test
says it needs the service's own transactions (`joined_database`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.core import Saascore
from saascore.credits import (
    CreditService,
    CreditTransactionNotFound,
    InsufficientCredits,
    NotRefundable,
)
from saascore.kit.actors import Actor
from saascore.kit.db import Database
from saascore.kit.errors import IdempotencyConflict, InvalidInput, NotFound
from saascore.models import (
    AuditLog,
    CreditGrant,
    CreditSource,
    CreditTransaction,
    CreditTransactionType,
    Organization,
    UsageLimits,
)
from saascore.plans import PlanService
from saascore.tenancy import OrganizationService
from tests.credits.ledger import (
    Clock,
    GrantRow,
    allocations,
    assert_running_balance,
    grants,
    ledger,
    remaining,
    row_counts,
    totals,
)
from tests.factories import create_organization, create_plan
from tests.helpers import JoinedDatabase

GRANT = CreditTransactionType.GRANT
CONSUME = CreditTransactionType.CONSUME
EXPIRE = CreditTransactionType.EXPIRE
REFUND = CreditTransactionType.REFUND
ADJUST = CreditTransactionType.ADJUST

DAY = timedelta(days=1)


async def org_on_plan(
    session: AsyncSession, credits_per_period: int, rollover: bool
) -> Organization:
    plan = await create_plan(
        session, credits_per_period=credits_per_period, credits_rollover=rollover
    )
    return await create_organization(session, plan=plan)


def grant_of(tx: CreditTransaction) -> uuid.UUID:
    """The grant that a grant transaction made."""
    assert tx.grant_id is not None
    return tx.grant_id


class TestGrant:
    async def test_adds_a_grant_and_one_transaction(
        self, credits: CreditService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        expires = clock.now + 30 * DAY
        tx = await credits.grant(
            org.id,
            100,
            source=CreditSource.PURCHASE,
            priority=2,
            expires_at=expires,
            description="top-up",
            session=session,
        )
        assert (tx.type, tx.amount, tx.balance_after, tx.description) == (
            GRANT,
            100,
            100,
            "top-up",
        )
        assert await grants(session, org.id) == [
            GrantRow(tx.grant_id, 100, 100, 2, "purchase", expires, None)  # type: ignore[arg-type]
        ]
        assert await allocations(session, org.id, tx.id) == []
        assert await credits.balance(org.id, session=session) == 100
        cached = await totals(session, org.id)
        assert (cached["credit_balance"], cached["credits_granted_total"]) == (100, 100)

    @pytest.mark.parametrize("amount", [0, -5])
    async def test_the_amount_must_be_positive(
        self, credits: CreditService, session: AsyncSession, org: Organization, amount: int
    ) -> None:
        with pytest.raises(InvalidInput):
            await credits.grant(org.id, amount, session=session)
        assert await row_counts(session, org.id) == {
            "credit_grants": 0,
            "credit_transactions": 0,
            "credit_allocations": 0,
        }

    async def test_an_unknown_organisation_is_not_found(
        self, credits: CreditService, session: AsyncSession
    ) -> None:
        with pytest.raises(NotFound):
            await credits.grant(uuid.uuid4(), 10, session=session)

    async def test_an_organisation_without_a_usage_limits_row_gets_one(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        await session.execute(sa.delete(UsageLimits).where(UsageLimits.organization_id == org.id))
        await credits.grant(org.id, 7, session=session)
        assert (await totals(session, org.id))["credit_balance"] == 7
        assert await credits.verify(session=session) == []


class TestConsume:
    async def test_draws_on_a_grant_and_records_where_from(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        granted = await credits.grant(org.id, 100, session=session)
        tx = await credits.consume(
            org.id, 30, reference="job-1", description="a job", session=session
        )
        assert (tx.type, tx.amount, tx.balance_after, tx.reference, tx.description) == (
            CONSUME,
            -30,
            70,
            "job-1",
            "a job",
        )
        assert tx.grant_id == granted.grant_id  # drawn from one grant
        assert await allocations(session, org.id, tx.id) == [(granted.grant_id, 30)]
        assert await remaining(session, org.id) == {granted.grant_id: 70}
        assert await credits.balance(org.id, session=session) == 70
        cached = await totals(session, org.id)
        assert (cached["credit_balance"], cached["credits_consumed_total"]) == (70, 30)

    async def test_draw_order_priority_then_expiry_then_age(
        self, credits: CreditService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        async def add(priority: int, expires_in: timedelta | None = None) -> uuid.UUID:
            expires_at = None if expires_in is None else clock.now + expires_in
            tx = await credits.grant(
                org.id, 10, priority=priority, expires_at=expires_at, session=session
            )
            clock.advance(seconds=1)  # each grant a little younger than the last
            assert tx.grant_id is not None
            return tx.grant_id

        # Made in an order unlike the draw order.
        never_old = await add(0)
        low_priority_soonest = await add(1, DAY)  # expires first of all, but priority 1
        expires_late = await add(0, 10 * DAY)
        never_young = await add(0)
        expires_soon = await add(0, 5 * DAY)
        top = await add(-1)  # a lower priority number beats everything, expiry or not
        order = [top, expires_soon, expires_late, never_old, never_young, low_priority_soonest]

        account = await credits.account(org.id, session=session)
        assert [grant.id for grant in account.grants] == order

        first = await credits.consume(org.id, 15, session=session)
        assert await allocations(session, org.id, first.id) == [(top, 10), (expires_soon, 5)]
        second = await credits.consume(org.id, 40, session=session)
        assert await allocations(session, org.id, second.id) == [
            (expires_soon, 5),
            (expires_late, 10),
            (never_old, 10),
            (never_young, 10),
            (low_priority_soonest, 5),
        ]
        assert await remaining(session, org.id) == {
            top: 0,
            expires_soon: 0,
            expires_late: 0,
            never_old: 0,
            never_young: 0,
            low_priority_soonest: 5,
        }
        account = await credits.account(org.id, session=session)
        assert (account.balance, [grant.id for grant in account.grants]) == (
            5,
            [low_priority_soonest],
        )

    async def test_grants_made_at_the_same_instant_are_drawn_oldest_first(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        older = await credits.grant(org.id, 5, session=session)
        younger = await credits.grant(org.id, 5, session=session)
        tx = await credits.consume(org.id, 7, session=session)
        assert await allocations(session, org.id, tx.id) == [
            (older.grant_id, 5),
            (younger.grant_id, 2),
        ]

    async def test_insufficient_credits_consumes_nothing(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        await credits.grant(org.id, 30, session=session)
        await credits.grant(org.id, 20, priority=1, session=session)
        await credits.consume(org.id, 5, session=session)
        before = (
            await row_counts(session, org.id),
            await remaining(session, org.id),
            await totals(session, org.id),
        )

        with pytest.raises(InsufficientCredits) as info:
            await credits.consume(org.id, 46, session=session)

        assert (info.value.balance, info.value.requested) == (45, 46)
        assert info.value.code == "insufficient_credits"
        assert info.value.details == {"balance": 45, "requested": 46}
        after = (
            await row_counts(session, org.id),
            await remaining(session, org.id),
            await totals(session, org.id),
        )
        assert after == before
        # Exactly the balance is allowed, then nothing is.
        await credits.consume(org.id, 45, session=session)
        with pytest.raises(InsufficientCredits) as info:
            await credits.consume(org.id, 1, session=session)
        assert (info.value.balance, info.value.requested) == (0, 1)

    async def test_a_refusal_on_its_own_writes_nothing_not_even_an_expiry(
        self,
        joined_database: JoinedDatabase,
        session: AsyncSession,
        org: Organization,
        clock: Clock,
    ) -> None:
        # Called without a session, the service runs its own transaction: all or nothing.
        own = CreditService(joined_database, clock=clock)
        await own.grant(org.id, 100, expires_at=clock.now + timedelta(hours=1))
        await own.grant(org.id, 20)
        clock.advance(hours=2)
        before = await row_counts(session, org.id)

        with pytest.raises(InsufficientCredits) as info:
            await own.consume(org.id, 50)

        assert (info.value.balance, info.value.requested) == (20, 50)  # the lapsed 100 is gone
        assert await row_counts(session, org.id) == before
        assert (await totals(session, org.id))["credit_balance"] == 120  # not even written off
        assert await own.balance(org.id) == 20

    @pytest.mark.parametrize("amount", [0, -1])
    async def test_the_amount_must_be_positive(
        self, credits: CreditService, session: AsyncSession, org: Organization, amount: int
    ) -> None:
        await credits.grant(org.id, 10, session=session)
        with pytest.raises(InvalidInput):
            await credits.consume(org.id, amount, session=session)
        assert await credits.balance(org.id, session=session) == 10


class TestIdempotency:
    async def test_a_retried_consume_is_applied_once(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        await credits.grant(org.id, 100, session=session)
        first = await credits.consume(
            org.id, 30, idempotency_key="job-7", reference="r", session=session
        )
        again = await credits.consume(
            org.id, 30, idempotency_key="job-7", reference="r", session=session
        )
        assert again.id == first.id
        assert await credits.balance(org.id, session=session) == 70
        assert [tx.type for tx in await ledger(session, org.id)] == [GRANT, CONSUME]

    async def test_a_retry_is_answered_even_when_the_balance_is_now_short(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        await credits.grant(org.id, 100, session=session)
        first = await credits.consume(org.id, 80, idempotency_key="big", session=session)
        again = await credits.consume(org.id, 80, idempotency_key="big", session=session)
        assert (again.id, await credits.balance(org.id, session=session)) == (first.id, 20)

    @pytest.mark.parametrize(
        "changed", [{"amount": 31}, {"reference": "another"}], ids=["amount", "reference"]
    )
    async def test_the_same_key_for_a_different_consume_is_a_conflict(
        self,
        credits: CreditService,
        session: AsyncSession,
        org: Organization,
        changed: dict[str, object],
    ) -> None:
        await credits.grant(org.id, 100, session=session)
        request: dict[str, object] = {"amount": 30, "reference": "r"}
        await credits.consume(org.id, idempotency_key="job-8", session=session, **request)  # type: ignore[arg-type]
        before = await row_counts(session, org.id)

        with pytest.raises(IdempotencyConflict) as info:
            await credits.consume(
                org.id,
                idempotency_key="job-8",
                session=session,
                **{**request, **changed},  # type: ignore[arg-type]
            )

        assert info.value.code == "idempotency_conflict"
        assert await row_counts(session, org.id) == before
        assert await credits.balance(org.id, session=session) == 70

    async def test_a_retried_grant_is_applied_once_and_a_changed_one_conflicts(
        self, credits: CreditService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        expires = clock.now + 7 * DAY
        first = await credits.grant(
            org.id, 50, expires_at=expires, idempotency_key="purchase-1", session=session
        )
        again = await credits.grant(
            org.id, 50, expires_at=expires, idempotency_key="purchase-1", session=session
        )
        assert again.id == first.id
        assert len(await grants(session, org.id)) == 1
        for changed in ({"amount": 51}, {"priority": 1}, {"expires_at": None}):
            request = {"amount": 50, "expires_at": expires, **changed}
            with pytest.raises(IdempotencyConflict):
                await credits.grant(
                    org.id,
                    idempotency_key="purchase-1",
                    session=session,
                    **request,  # type: ignore[arg-type]
                )
        assert await credits.balance(org.id, session=session) == 50

    async def test_a_retry_may_give_the_same_expiry_in_another_time_zone(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        expires = datetime(2025, 4, 1, tzinfo=UTC)
        paris = expires.astimezone(ZoneInfo("Europe/Paris"))
        assert paris == expires
        first = await credits.grant(
            org.id, 50, expires_at=expires, idempotency_key="p", session=session
        )
        again = await credits.grant(
            org.id, 50, expires_at=paris, idempotency_key="p", session=session
        )
        assert again.id == first.id

    async def test_a_key_belongs_to_one_operation(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        await credits.grant(org.id, 50, idempotency_key="k", session=session)
        with pytest.raises(IdempotencyConflict):
            await credits.consume(org.id, 50, idempotency_key="k", session=session)
        with pytest.raises(IdempotencyConflict):
            await credits.adjust(org.id, 50, reason="x", idempotency_key="k", session=session)
        assert await credits.balance(org.id, session=session) == 50

    async def test_keys_belong_to_one_organisation(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        other = await create_organization(session)
        mine = await credits.grant(org.id, 10, idempotency_key="k", session=session)
        theirs = await credits.grant(other.id, 20, idempotency_key="k", session=session)
        assert theirs.id != mine.id
        assert await credits.balance(other.id, session=session) == 20

    async def test_retried_adjustments_and_refunds_are_applied_once(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        first = await credits.adjust(
            org.id, 40, reason="goodwill", idempotency_key="adj", session=session
        )
        again = await credits.adjust(
            org.id, 40, reason="goodwill", idempotency_key="adj", session=session
        )
        assert again.id == first.id
        used = await credits.consume(org.id, 30, session=session)
        refund = await credits.refund(org.id, used.id, 10, idempotency_key="ref", session=session)
        retry = await credits.refund(org.id, used.id, 10, idempotency_key="ref", session=session)
        assert retry.id == refund.id
        assert await credits.balance(org.id, session=session) == 20
        with pytest.raises(IdempotencyConflict):
            await credits.refund(org.id, used.id, 11, idempotency_key="ref", session=session)
        with pytest.raises(IdempotencyConflict):
            await credits.adjust(
                org.id, 40, reason="another", idempotency_key="adj", session=session
            )
        assert await credits.balance(org.id, session=session) == 20

    @pytest.mark.parametrize(
        ("operation", "field", "value"),
        [
            ("grant", "idempotency_key", ""),
            ("grant", "idempotency_key", "k" * 256),
            ("grant", "idempotency_key", "tab\tkey"),
            ("consume", "idempotency_key", "k" * 256),
            ("consume", "reference", "r" * 256),
            ("adjust", "idempotency_key", "k" * 256),
            ("refund", "idempotency_key", "k" * 256),
        ],
    )
    async def test_a_key_the_ledger_cannot_hold_is_refused_and_writes_nothing(
        self,
        credits: CreditService,
        session: AsyncSession,
        org: Organization,
        operation: str,
        field: str,
        value: str,
    ) -> None:
        # The API's schemas bound these; the CLI and library callers reach the service
        # directly, where PostgreSQL refused a long key with a database error and SQLite
        # stored it.
        granted = await credits.grant(org.id, 100, session=session)
        consumed = await credits.consume(org.id, 10, session=session)
        before = await row_counts(session, org.id)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "grant": lambda: credits.grant(org.id, 5, session=session, **{field: value}),
            "consume": lambda: credits.consume(org.id, 5, session=session, **{field: value}),
            "adjust": lambda: credits.adjust(
                org.id, 5, reason="fix", session=session, **{field: value}
            ),
            "refund": lambda: credits.refund(
                org.id, consumed.id, session=session, **{field: value}
            ),
        }

        with pytest.raises(InvalidInput) as info:
            await calls[operation]()

        assert info.value.details.get("field") == field
        assert await row_counts(session, org.id) == before
        assert await credits.balance(org.id, session=session) == granted.amount - 10

    async def test_a_key_of_the_longest_length_is_taken(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        key = "k" * 255
        first = await credits.grant(org.id, 5, idempotency_key=key, session=session)
        again = await credits.grant(org.id, 5, idempotency_key=key, session=session)
        assert (again.id, await credits.balance(org.id, session=session)) == (first.id, 5)


class TestAdjust:
    async def test_a_positive_adjustment_is_a_new_manual_grant(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        tx = await credits.adjust(org.id, 25, reason="goodwill", session=session)
        assert (tx.type, tx.amount, tx.balance_after, tx.description) == (
            ADJUST,
            25,
            25,
            "goodwill",
        )
        [grant] = await grants(session, org.id)
        assert (grant.id, grant.source, grant.amount, grant.remaining, grant.expires_at) == (
            tx.grant_id,
            CreditSource.MANUAL,
            25,
            25,
            None,
        )
        assert (await totals(session, org.id))["credits_granted_total"] == 25

    async def test_a_negative_adjustment_draws_like_a_consumption(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        first = await credits.grant(org.id, 10, session=session)
        second = await credits.grant(org.id, 50, priority=1, session=session)
        tx = await credits.adjust(org.id, -15, reason="correction", session=session)
        assert (tx.type, tx.amount, tx.balance_after) == (ADJUST, -15, 45)
        assert await allocations(session, org.id, tx.id) == [
            (first.grant_id, 10),
            (second.grant_id, 5),
        ]
        assert (await totals(session, org.id))["credits_consumed_total"] == 15

    async def test_cannot_take_the_balance_below_zero(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        await credits.grant(org.id, 10, session=session)
        before = await row_counts(session, org.id)
        with pytest.raises(InsufficientCredits) as info:
            await credits.adjust(org.id, -11, reason="too much", session=session)
        assert (info.value.balance, info.value.requested) == (10, 11)
        assert await row_counts(session, org.id) == before

    async def test_zero_is_invalid(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        with pytest.raises(InvalidInput):
            await credits.adjust(org.id, 0, reason="nothing", session=session)


class TestRefund:
    async def consumed(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
        """A consumption of 25 that drew 10 from grant `a` and 15 from grant `b`."""
        a = await credits.grant(org.id, 10, session=session)
        b = await credits.grant(org.id, 100, priority=1, session=session)
        used = await credits.consume(org.id, 25, session=session)
        assert a.grant_id is not None
        assert b.grant_id is not None
        assert await allocations(session, org.id, used.id) == [(a.grant_id, 10), (b.grant_id, 15)]
        return used.id, a.grant_id, b.grant_id

    async def test_a_full_refund_puts_every_credit_back_latest_first(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        used, a, b = await self.consumed(credits, session, org)
        tx = await credits.refund(org.id, used, session=session)
        assert (tx.type, tx.amount, tx.balance_after, tx.related_transaction_id) == (
            REFUND,
            25,
            110,
            used,
        )
        assert await allocations(session, org.id, tx.id) == [(b, -15), (a, -10)]
        assert await remaining(session, org.id) == {a: 10, b: 100}
        assert (await totals(session, org.id))["credits_consumed_total"] == 0
        assert await credits.verify(session=session) == []

    async def test_partial_refunds_until_nothing_is_left(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        used, a, b = await self.consumed(credits, session, org)
        first = await credits.refund(org.id, used, 20, session=session)
        assert (first.amount, first.balance_after) == (20, 105)
        assert await allocations(session, org.id, first.id) == [(b, -15), (a, -5)]
        assert await remaining(session, org.id) == {a: 5, b: 100}

        rest = await credits.refund(org.id, used, session=session)  # all that is left
        assert (rest.amount, rest.balance_after) == (5, 110)
        assert await allocations(session, org.id, rest.id) == [(a, -5)]

        for amount in (1, None):
            with pytest.raises(NotRefundable) as info:
                await credits.refund(org.id, used, amount, session=session)
            assert info.value.details["refundable"] == 0
        assert await credits.balance(org.id, session=session) == 110

    async def test_more_than_was_consumed_is_refused(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        used, _, _ = await self.consumed(credits, session, org)
        await credits.refund(org.id, used, 5, session=session)
        before = await row_counts(session, org.id)
        with pytest.raises(NotRefundable) as info:
            await credits.refund(org.id, used, 21, session=session)
        assert info.value.code == "not_refundable"
        assert info.value.details == {"refundable": 20, "requested": 21}
        assert await row_counts(session, org.id) == before
        assert await credits.balance(org.id, session=session) == 90

    @pytest.mark.parametrize("kind", ["grant", "adjust", "refund", "expire"])
    async def test_only_a_consumption_can_be_refunded(
        self,
        credits: CreditService,
        session: AsyncSession,
        org: Organization,
        clock: Clock,
        kind: str,
    ) -> None:
        granted = await credits.grant(org.id, 50, expires_at=clock.now + DAY, session=session)
        used = await credits.consume(org.id, 10, session=session)

        async def adjusted() -> uuid.UUID:
            return (await credits.adjust(org.id, -1, reason="fix", session=session)).id

        async def refunded() -> uuid.UUID:
            return (await credits.refund(org.id, used.id, 1, session=session)).id

        async def expired() -> uuid.UUID:
            clock.advance(2 * DAY)
            [tx] = await credits.expire(org.id, session=session)
            return tx.id

        async def granted_id() -> uuid.UUID:
            return granted.id

        makers: dict[str, Callable[[], Awaitable[uuid.UUID]]] = {
            "grant": granted_id,
            "adjust": adjusted,
            "refund": refunded,
            "expire": expired,
        }
        target = await makers[kind]()
        before = await row_counts(session, org.id)
        with pytest.raises(NotRefundable, match=f"not a {kind}"):
            await credits.refund(org.id, target, session=session)
        assert await row_counts(session, org.id) == before

    async def test_an_unknown_or_foreign_transaction_is_not_found(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        other = await create_organization(session)
        await credits.grant(other.id, 10, session=session)
        theirs = await credits.consume(other.id, 5, session=session)
        for transaction_id in (uuid.uuid4(), theirs.id):
            with pytest.raises(CreditTransactionNotFound) as info:
                await credits.refund(org.id, transaction_id, session=session)
            assert info.value.code == "credit_transaction_not_found"
        assert await credits.balance(other.id, session=session) == 5

    async def test_a_share_whose_grant_lapsed_comes_back_as_a_new_refund_grant(
        self, credits: CreditService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        expiring = await credits.grant(org.id, 50, expires_at=clock.now + DAY, session=session)
        lasting = await credits.grant(org.id, 50, session=session)
        used = await credits.consume(org.id, 70, session=session)  # 50 expiring, 20 lasting
        clock.advance(2 * DAY)
        assert await credits.balance(org.id, session=session) == 30

        tx = await credits.refund(org.id, used.id, session=session)

        assert (tx.amount, tx.balance_after) == (70, 100)
        assert await allocations(session, org.id, tx.id) == [(lasting.grant_id, -20)]
        known = {expiring.grant_id, lasting.grant_id}
        [new] = [grant for grant in await grants(session, org.id) if grant.id not in known]
        assert (new.source, new.amount, new.remaining, new.expires_at) == (
            CreditSource.REFUND,
            50,
            50,
            None,
        )
        assert await remaining(session, org.id) == {
            expiring.grant_id: 0,
            lasting.grant_id: 50,
            new.id: 50,
        }
        assert await credits.balance(org.id, session=session) == 100
        assert await credits.verify(session=session) == []

    async def test_a_lapsed_remainder_is_written_off_before_the_refund(
        self, credits: CreditService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        expiring = await credits.grant(org.id, 50, expires_at=clock.now + DAY, session=session)
        used = await credits.consume(org.id, 30, session=session)
        clock.advance(2 * DAY)
        await credits.refund(org.id, used.id, 10, session=session)
        transactions = await ledger(session, org.id)
        assert [(tx.type, tx.amount, tx.balance_after) for tx in transactions] == [
            (GRANT, 50, 50),
            (CONSUME, -30, 20),
            (EXPIRE, -20, 0),
            (REFUND, 10, 10),
        ]
        written_off = {grant.id: grant for grant in await grants(session, org.id)}
        assert written_off[grant_of(expiring)].remaining == 0
        assert written_off[grant_of(expiring)].expired_at == clock.now
        refund_grants = [g for g in written_off.values() if g.source == CreditSource.REFUND]
        assert [(g.amount, g.remaining) for g in refund_grants] == [(10, 10)]
        # The rest can be refunded later, again as a refund grant.
        await credits.refund(org.id, used.id, session=session)
        assert await credits.balance(org.id, session=session) == 30
        assert await credits.verify(session=session) == []

    async def test_a_second_refund_goes_back_to_the_live_grant_it_came_from(
        self, credits: CreditService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        live = await credits.grant(org.id, 10, expires_at=clock.now + 10 * DAY, session=session)
        short = await credits.grant(
            org.id, 10, priority=1, expires_at=clock.now + DAY, session=session
        )
        used = await credits.consume(org.id, 20, session=session)  # 10 from each
        clock.advance(2 * DAY)  # `short` lapses (it holds nothing, so nothing is written off)

        await credits.refund(org.id, used.id, 10, session=session)  # short's 10: a new grant
        await credits.refund(org.id, used.id, 10, session=session)  # live's 10: back to live

        assert (await remaining(session, org.id))[grant_of(live)] == 10
        refund_grants = [g for g in await grants(session, org.id) if g.source == "refund"]
        assert [g.amount for g in refund_grants] == [10]
        assert short.grant_id not in [g.id for g in refund_grants]
        # The credits that came from `live` expire with it.
        clock.advance(10 * DAY)
        assert await credits.balance(org.id, session=session) == 10


class TestExpiry:
    async def test_a_lapsed_grant_stops_counting_at_once(
        self, credits: CreditService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        expires = clock.now + timedelta(hours=1)
        await credits.grant(org.id, 100, expires_at=expires, session=session)
        lasting = await credits.grant(org.id, 10, session=session)
        assert await credits.balance(org.id, session=session) == 110
        clock.set(expires - timedelta(microseconds=1))
        assert await credits.balance(org.id, session=session) == 110
        before = await row_counts(session, org.id)

        clock.set(expires)  # `expires_at` is the first instant the grant no longer counts

        assert await credits.balance(org.id, session=session) == 10
        account = await credits.account(org.id, session=session)
        assert (account.balance, [grant.id for grant in account.grants]) == (
            10,
            [lasting.grant_id],
        )
        assert await row_counts(session, org.id) == before  # reading writes nothing
        assert (await totals(session, org.id))["credit_balance"] == 110

    @pytest.mark.parametrize("operation", ["grant", "consume", "adjust", "expire"])
    async def test_the_next_operation_writes_the_expiry(
        self,
        credits: CreditService,
        session: AsyncSession,
        org: Organization,
        clock: Clock,
        operation: str,
    ) -> None:
        expiring = await credits.grant(
            org.id, 100, expires_at=clock.now + DAY, priority=-1, session=session
        )
        await credits.grant(org.id, 10, session=session)
        await credits.consume(org.id, 30, session=session)  # from `expiring`: 70 left
        clock.advance(2 * DAY)

        if operation == "grant":
            await credits.grant(org.id, 5, session=session)
        elif operation == "consume":
            await credits.consume(org.id, 5, session=session)
        elif operation == "adjust":
            await credits.adjust(org.id, -5, reason="fix", session=session)
        else:
            written = await credits.expire(org.id, session=session)
            assert [(tx.type, tx.amount, tx.grant_id) for tx in written] == [
                (EXPIRE, -70, expiring.grant_id)
            ]

        transactions = await ledger(session, org.id)
        [expired] = [tx for tx in transactions if tx.type == EXPIRE]
        assert (expired.amount, expired.balance_after, expired.grant_id) == (
            -70,
            10,
            expiring.grant_id,
        )
        assert transactions.index(expired) == 3  # right after the consumption, before the rest
        assert await allocations(session, org.id, expired.id) == [(expiring.grant_id, 70)]
        [lapsed] = [g for g in await grants(session, org.id) if g.id == expiring.grant_id]
        assert (lapsed.remaining, lapsed.expired_at) == (0, clock.now)
        cached = await totals(session, org.id)
        assert cached["credits_expired_total"] == 70
        assert cached["credit_balance"] == await credits.balance(org.id, session=session)
        assert await credits.verify(session=session) == []

    async def test_expire_writes_off_every_organisation_once(
        self, credits: CreditService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        other = await create_organization(session)
        untouched = await create_organization(session)
        for organization, amount in ((org, 30), (other, 40)):
            await credits.grant(
                organization.id, amount, expires_at=clock.now + DAY, session=session
            )
            await credits.grant(
                organization.id, amount, expires_at=clock.now + DAY, session=session
            )
        await credits.grant(untouched.id, 5, expires_at=clock.now + 3 * DAY, session=session)
        clock.advance(2 * DAY)

        written = await credits.expire(session=session)

        assert sorted((tx.organization_id, tx.amount) for tx in written) == sorted(
            [(org.id, -30), (org.id, -30), (other.id, -40), (other.id, -40)]
        )
        assert await credits.expire(session=session) == []
        assert await credits.balance(org.id, session=session) == 0
        assert await credits.balance(untouched.id, session=session) == 5
        assert await credits.verify(session=session) == []

    async def test_expire_of_one_organisation_leaves_the_others(
        self, credits: CreditService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        other = await create_organization(session)
        for organization in (org, other):
            await credits.grant(organization.id, 10, expires_at=clock.now + DAY, session=session)
        clock.advance(2 * DAY)
        assert [tx.organization_id for tx in await credits.expire(org.id, session=session)] == [
            org.id
        ]
        assert (await totals(session, other.id))["credit_balance"] == 10  # not yet written off
        assert await credits.balance(other.id, session=session) == 0


class TestRefill:
    async def test_grants_the_plans_credits_once_a_month(
        self, credits: CreditService, session: AsyncSession, clock: Clock
    ) -> None:
        org = await org_on_plan(session, 1000, rollover=False)
        tx = await credits.refill(org.id, session=session)
        assert tx is not None
        assert (tx.type, tx.amount, tx.balance_after, tx.idempotency_key) == (
            GRANT,
            1000,
            1000,
            "refill:2025-03",
        )
        april = datetime(2025, 4, 1, tzinfo=UTC)
        [grant] = await grants(session, org.id)
        assert (grant.id, grant.source, grant.amount, grant.expires_at) == (
            tx.grant_id,
            CreditSource.PLAN,
            1000,
            april,
        )
        cached = await totals(session, org.id)
        assert (cached["last_credit_refill_at"], cached["next_credit_refill_at"]) == (
            clock.now,
            april,
        )

        clock.advance(15 * DAY)  # still March
        again = await credits.refill(org.id, session=session)
        assert again is not None
        assert again.id == tx.id
        assert len(await grants(session, org.id)) == 1
        assert await credits.balance(org.id, session=session) == 1000

    async def test_without_rollover_unused_credits_expire_with_the_month(
        self, credits: CreditService, session: AsyncSession, clock: Clock
    ) -> None:
        org = await org_on_plan(session, 1000, rollover=False)
        await credits.refill(org.id, session=session)
        await credits.consume(org.id, 300, session=session)
        clock.set(datetime(2025, 4, 1, tzinfo=UTC))
        assert await credits.balance(org.id, session=session) == 0  # March's credits are gone

        april = await credits.refill(org.id, session=session)

        assert april is not None
        assert april.idempotency_key == "refill:2025-04"
        assert [(tx.type, tx.amount, tx.balance_after) for tx in await ledger(session, org.id)] == [
            (GRANT, 1000, 1000),
            (CONSUME, -300, 700),
            (EXPIRE, -700, 0),
            (GRANT, 1000, 1000),
        ]
        assert await credits.balance(org.id, session=session) == 1000
        assert await credits.verify(session=session) == []

    async def test_with_rollover_unused_credits_carry_over(
        self, credits: CreditService, session: AsyncSession, clock: Clock
    ) -> None:
        org = await org_on_plan(session, 1000, rollover=True)
        march = await credits.refill(org.id, session=session)
        await credits.consume(org.id, 300, session=session)
        clock.set(datetime(2025, 4, 2, tzinfo=UTC))
        assert await credits.balance(org.id, session=session) == 700

        april = await credits.refill(org.id, session=session)

        assert march is not None
        assert april is not None
        assert april.id != march.id
        assert await credits.balance(org.id, session=session) == 1700
        assert {g.expires_at for g in await grants(session, org.id)} == {None}
        used = await credits.consume(org.id, 800, session=session)  # the older grant first
        assert await allocations(session, org.id, used.id) == [
            (march.grant_id, 700),
            (april.grant_id, 100),
        ]

    async def test_each_new_month_refills_again(
        self, credits: CreditService, session: AsyncSession, clock: Clock
    ) -> None:
        org = await org_on_plan(session, 100, rollover=True)
        months: list[set[tuple[uuid.UUID, str | None]]] = []
        for month in (3, 4, 5, 6):
            clock.set(max(clock.now, datetime(2025, month, 1, tzinfo=UTC)))
            answers = [await credits.refill(org.id, session=session) for _ in range(2)]
            months.append({(tx.id, tx.idempotency_key) for tx in answers if tx is not None})
        assert [[key for _, key in answers] for answers in months] == [
            ["refill:2025-03"],
            ["refill:2025-04"],
            ["refill:2025-05"],
            ["refill:2025-06"],
        ]
        assert await credits.balance(org.id, session=session) == 400

    async def test_a_plan_without_credits_grants_nothing(
        self, credits: CreditService, session: AsyncSession
    ) -> None:
        org = await org_on_plan(session, 0, rollover=False)
        assert await credits.refill(org.id, session=session) is None
        assert (await row_counts(session, org.id))["credit_transactions"] == 0

    async def test_an_unknown_organisation_is_not_found(
        self, credits: CreditService, session: AsyncSession
    ) -> None:
        with pytest.raises(NotFound):
            await credits.refill(uuid.uuid4(), session=session)


class TestPlanCredits:
    """The rule: in each month, an organisation's plan grants add up to the allowance of the
    richest plan it was on during the month; creation and plan changes apply it at once."""

    @staticmethod
    def orgs(database: Database, credits: CreditService) -> OrganizationService:
        return OrganizationService(database, PlanService(database), plan_credits=credits)

    async def test_a_new_organisation_gets_its_plans_credits_in_the_same_transaction(
        self, database: Database, credits: CreditService, session: AsyncSession, clock: Clock
    ) -> None:
        plan = await create_plan(session, credits_per_period=250, credits_rollover=False)
        org = await self.orgs(database, credits).create(
            name="Fresh", plan=plan.code, session=session
        )
        [tx] = await ledger(session, org.id)
        assert (tx.type, tx.amount, tx.balance_after, tx.idempotency_key) == (
            GRANT,
            250,
            250,
            "refill:2025-03",
        )
        [grant] = await grants(session, org.id)
        assert (grant.source, grant.expires_at) == (
            CreditSource.PLAN,
            datetime(2025, 4, 1, tzinfo=UTC),
        )
        refill = await credits.refill_once(org.id, session=session)  # the month's refill
        assert refill.granted == 0
        assert refill.transaction is not None
        assert refill.transaction.id == tx.id
        assert await credits.balance(org.id, session=session) == 250

    async def test_creation_and_every_plan_grant_are_audited(
        self, database: Database, credits: CreditService, session: AsyncSession, clock: Clock
    ) -> None:
        """The organisation's chain opens with `organization.created`; each plan grant,
        at creation, on an upgrade and at the month's refill, is a `credits.granted` as a
        manual grant is; a refill with nothing to grant writes nothing."""
        small = await create_plan(session, credits_per_period=250, credits_rollover=False)
        large = await create_plan(session, credits_per_period=400, credits_rollover=False)
        operator = Actor("operator", "op-1")
        orgs = self.orgs(database, credits)
        org = await orgs.create(name="Audited", plan=small.code, actor=operator, session=session)
        await credits.refill_once(org.id, session=session)  # nothing left to grant
        await orgs.change_plan(org.id, large.code, actor=operator, session=session)
        clock.set(datetime(2025, 4, 1, tzinfo=UTC))
        await credits.refill_once(org.id, session=session)  # the period refill, by saascore

        entries = (
            await session.scalars(
                sa.select(AuditLog).where(AuditLog.organization_id == org.id).order_by(AuditLog.seq)
            )
        ).all()
        assert [(e.seq, e.action, e.actor_type, e.actor_id) for e in entries] == [
            (1, "organization.created", "operator", "op-1"),
            (2, "credits.granted", "operator", "op-1"),
            (3, "plan.changed", "operator", "op-1"),
            (4, "credits.granted", "operator", "op-1"),
            (5, "credits.expired", "system", None),  # March's two plan grants lapse
            (6, "credits.expired", "system", None),
            (7, "credits.granted", "system", None),
        ]
        granted = [
            (e.details["source"], e.details["amount"], e.details["idempotency_key"])
            for e in entries
            if e.action == "credits.granted"
        ]
        assert granted == [
            ("plan", 250, "refill:2025-03"),
            ("plan", 150, "refill:2025-03:400"),
            ("plan", 400, "refill:2025-04"),
        ]
        transactions = {tx.id for tx in await ledger(session, org.id) if tx.type == GRANT}
        assert {uuid.UUID(e.target_id) for e in entries if e.action == "credits.granted"} == (
            transactions
        )

    async def test_without_the_hook_an_organisation_gets_nothing(
        self, database: Database, session: AsyncSession
    ) -> None:
        plan = await create_plan(session, credits_per_period=250)
        org = await OrganizationService(database, PlanService(database)).create(
            name="Bare", plan=plan.code, session=session
        )
        assert await ledger(session, org.id) == []

    async def test_an_upgrade_tops_up_to_the_new_allowance_keeping_what_was_spent(
        self, database: Database, credits: CreditService, session: AsyncSession, clock: Clock
    ) -> None:
        small = await create_plan(session, credits_per_period=100, credits_rollover=False)
        large = await create_plan(session, credits_per_period=1000, credits_rollover=False)
        orgs = self.orgs(database, credits)
        org = await orgs.create(name="Up", plan=small.code, session=session)
        await credits.consume(org.id, 60, session=session)
        clock.advance(DAY)

        await orgs.change_plan(org.id, large.code, session=session)

        top_up = (await ledger(session, org.id))[-1]
        assert (top_up.type, top_up.amount, top_up.balance_after, top_up.idempotency_key) == (
            GRANT,
            900,
            940,
            "refill:2025-03:1000",
        )
        assert sum(g.amount for g in await grants(session, org.id)) == 1000
        assert (await credits.refill_once(org.id, session=session)).granted == 0
        assert await credits.verify(session=session) == []

    async def test_a_downgrade_takes_nothing_back_and_a_return_grants_nothing_more(
        self, database: Database, credits: CreditService, session: AsyncSession, clock: Clock
    ) -> None:
        small = await create_plan(session, credits_per_period=100, credits_rollover=False)
        large = await create_plan(session, credits_per_period=1000, credits_rollover=False)
        middle = await create_plan(session, credits_per_period=500, credits_rollover=False)
        orgs = self.orgs(database, credits)
        org = await orgs.create(name="Down", plan=large.code, session=session)
        await credits.consume(org.id, 700, session=session)

        await orgs.change_plan(org.id, small.code, session=session)
        assert await credits.balance(org.id, session=session) == 300
        await orgs.change_plan(org.id, middle.code, session=session)
        await orgs.change_plan(org.id, large.code, session=session)
        assert await credits.balance(org.id, session=session) == 300  # never past 1000 a month
        assert len(await ledger(session, org.id)) == 2

        clock.set(datetime(2025, 4, 3, tzinfo=UTC))
        await orgs.change_plan(org.id, small.code, session=session)  # April: the small plan's
        april = await credits.refill_once(org.id, session=session)
        assert april.granted == 0  # the plan change already granted April's
        assert await credits.balance(org.id, session=session) == 100
        assert [(tx.type, tx.amount) for tx in await ledger(session, org.id)][-2:] == [
            (EXPIRE, -300),
            (GRANT, 100),
        ]

    async def test_a_plan_change_before_the_months_refill_grants_the_allowance_once(
        self, database: Database, credits: CreditService, session: AsyncSession, clock: Clock
    ) -> None:
        small = await create_plan(session, credits_per_period=100, credits_rollover=True)
        large = await create_plan(session, credits_per_period=1000, credits_rollover=True)
        orgs = self.orgs(database, credits)
        org = await orgs.create(name="Early", plan=small.code, session=session)
        clock.set(datetime(2025, 4, 2, tzinfo=UTC))

        await orgs.change_plan(org.id, large.code, session=session)
        refill = await credits.refill_once(org.id, session=session)

        assert refill.granted == 0
        assert refill.transaction is not None
        assert refill.transaction.idempotency_key == "refill:2025-04"
        assert await credits.balance(org.id, session=session) == 1100  # March's 100 rolled over


class TestBalanceAfter:
    async def test_every_transaction_records_the_running_balance(
        self, credits: CreditService, session: AsyncSession, clock: Clock
    ) -> None:
        org = await org_on_plan(session, 100, rollover=False)
        await credits.refill(org.id, session=session)
        await credits.grant(
            org.id, 50, priority=-1, expires_at=clock.now + 3 * DAY, session=session
        )
        await credits.consume(org.id, 30, session=session)
        await credits.adjust(org.id, -5, reason="fix", session=session)
        await credits.adjust(org.id, 7, reason="goodwill", session=session)
        used = await credits.consume(org.id, 40, session=session)
        await credits.refund(org.id, used.id, 15, session=session)
        clock.advance(4 * DAY)
        await credits.consume(org.id, 1, session=session)  # writes off what the 50 held
        clock.set(datetime(2025, 4, 1, 8, tzinfo=UTC))
        await credits.refill(org.id, session=session)  # writes off March's plan credits
        await credits.refund(org.id, used.id, session=session)  # into a refund grant

        transactions = await ledger(session, org.id)
        final = assert_running_balance(transactions)
        assert {tx.type for tx in transactions} == set(CreditTransactionType)
        assert final == await credits.balance(org.id, session=session)
        cached = await totals(session, org.id)
        assert cached["credit_balance"] == final
        assert (
            cached["credits_granted_total"]
            - cached["credits_consumed_total"]
            - cached["credits_expired_total"]
            == final
        )
        assert sum(g.remaining for g in await grants(session, org.id)) == final
        assert await credits.verify(session=session) == []


class TestVerify:
    async def some_activity(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> uuid.UUID:
        granted = await credits.grant(org.id, 50, session=session)
        used = await credits.consume(org.id, 20, session=session)
        await credits.refund(org.id, used.id, 5, session=session)
        assert granted.grant_id is not None
        return granted.grant_id

    async def test_a_healthy_ledger_has_no_problems(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        await self.some_activity(credits, session, org)
        assert await credits.verify(session=session) == []

    async def test_a_corrupt_cached_balance_is_reported(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        other = await create_organization(session)
        await self.some_activity(credits, session, other)
        await self.some_activity(credits, session, org)
        await session.execute(
            sa.update(UsageLimits)
            .where(UsageLimits.organization_id == org.id)
            .values(credit_balance=UsageLimits.credit_balance + 1)
        )
        problems = await credits.verify(session=session)
        assert [(p.organization_id, p.message) for p in problems] == [
            (org.id, "cached balance 36, ledger 35, grants hold 35")
        ]

    async def test_a_corrupt_grant_is_reported(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        grant_id = await self.some_activity(credits, session, org)
        await session.execute(
            sa.update(CreditGrant)
            .where(CreditGrant.organization_id == org.id, CreditGrant.id == grant_id)
            .values(remaining=CreditGrant.remaining - 1)
        )
        messages = [p.message for p in await credits.verify(session=session)]
        assert f"grant {grant_id}: 50 granted, 34 remaining, but 15 drawn" in messages
        assert "cached balance 35, ledger 35, grants hold 34" in messages
        assert len(messages) == 2


class TestReads:
    async def test_transactions_page_newest_first(
        self, credits: CreditService, session: AsyncSession, org: Organization
    ) -> None:
        other = await create_organization(session)
        await credits.grant(other.id, 5, session=session)
        await credits.grant(org.id, 100, session=session)
        for amount in range(1, 7):
            await credits.consume(org.id, amount, session=session)

        pages: list[list[uuid.UUID]] = []
        before: uuid.UUID | None = None
        while page := await credits.transactions(org.id, limit=3, before=before, session=session):
            pages.append([tx.id for tx in page])
            before = page[-1].id

        assert [len(page) for page in pages] == [3, 3, 1]
        everything = [tx.id for tx in await ledger(session, org.id)]
        assert [tx_id for page in pages for tx_id in page] == everything[::-1]
        newest = await credits.transactions(org.id, limit=1, session=session)
        assert [tx.amount for tx in newest] == [-6]

    async def test_account_lists_the_live_grants_in_draw_order(
        self, credits: CreditService, session: AsyncSession, org: Organization, clock: Clock
    ) -> None:
        lasting = await credits.grant(org.id, 10, session=session)
        lapsing = await credits.grant(org.id, 10, expires_at=clock.now + DAY, session=session)
        used_up = await credits.grant(org.id, 5, priority=-1, session=session)
        later = await credits.grant(org.id, 10, expires_at=clock.now + 9 * DAY, session=session)
        await credits.consume(org.id, 5, session=session)  # empties `used_up`
        account = await credits.account(org.id, session=session)
        assert account.organization_id == org.id
        assert account.balance == 30
        assert [g.id for g in account.grants] == [
            lapsing.grant_id,
            later.grant_id,
            lasting.grant_id,
        ]
        assert used_up.grant_id not in [g.id for g in account.grants]

        clock.advance(2 * DAY)
        account = await credits.account(org.id, session=session)
        assert (account.balance, [g.id for g in account.grants]) == (
            20,
            [later.grant_id, lasting.grant_id],
        )

    async def test_balance_of_an_unknown_organisation_is_not_found(
        self, credits: CreditService, session: AsyncSession
    ) -> None:
        with pytest.raises(NotFound):
            await credits.balance(uuid.uuid4(), session=session)

    def test_the_facade_has_the_service(self, database: Database) -> None:
        core = Saascore(database.settings, database=database)
        assert isinstance(core.credits, CreditService)
        assert core.credits.database is database

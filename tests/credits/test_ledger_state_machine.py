"""The credit ledger against a plain Python model of it (Hypothesis stateful testing).

Rules grant, consume (also more than the balance), adjust, refund (some or all of an earlier
consumption, more than is left too) and move a simulated clock forward, past or exactly onto
grants' expiries. After every step the balance, each grant's remaining credits and the number
of each kind of ledger entry must be what the model says; at the end the ledger's running
balance adds up and `verify()` finds nothing.

Hypothesis drives the machine synchronously, so the test owns an event loop and a `Database`
of its own (engines belong to one loop) on the shared migrated database. Each example works in
one connection-level transaction that is rolled back, through a `JoinedDatabase`: the service
is called without a session, so each operation is its own (savepoint) transaction and a refused
one leaves nothing behind, as in production.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from saascore.credits import CreditService, InsufficientCredits, NotRefundable
from saascore.kit.db import Database
from saascore.models import CreditSource, CreditTransaction, CreditTransactionType
from tests.credits.ledger import START, Clock, allocations, assert_running_balance, grants, ledger
from tests.factories import create_organization
from tests.helpers import JoinedDatabase, examples

T = TypeVar("T")

NEVER = datetime.max.replace(tzinfo=UTC)

SETTINGS = settings(
    max_examples=examples(40),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


#: (amount, priority, hours until it expires or None)
GRANTS = st.tuples(st.integers(1, 100), st.integers(0, 2), st.none() | st.integers(1, 36))


# --- the model -----------------------------------------------------------------------------------
@dataclass(eq=False)
class Grant:
    """A grant as the model sees it. A refund that pays lapsed shares back as new grants is one
    model grant, however many rows the service writes for it (they sit together in draw order)."""

    seq: int
    amount: int
    remaining: int
    priority: int
    expires_at: datetime | None
    source: CreditSource
    rows: list[uuid.UUID]

    def draw_key(self) -> tuple[int, datetime, int]:
        return (self.priority, self.expires_at or NEVER, self.seq)

    def lapsed(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(eq=False)
class Consumption:
    transaction_id: uuid.UUID
    amount: int
    #: What is left to give back to each grant it drew on, in draw order.
    shares: list[list[Any]]  # [Grant, int]
    refunded: int = 0
    #: Per grant, credits already paid back as new grants that the service still counts as
    #: that grant's share (see `known_refund_bug`).
    reissued: dict[int, int] = field(default_factory=dict)

    @property
    def refundable(self) -> int:
        return self.amount - self.refunded


@dataclass
class Ledger:
    now: datetime = START
    grants: list[Grant] = field(default_factory=list)
    seq: int = 0
    transactions: dict[CreditTransactionType, int] = field(
        default_factory=lambda: dict.fromkeys(CreditTransactionType, 0)
    )

    def balance(self) -> int:
        return sum(g.remaining for g in self.grants if not g.lapsed(self.now))

    def live(self) -> list[Grant]:
        live = [g for g in self.grants if g.remaining > 0 and not g.lapsed(self.now)]
        return sorted(live, key=Grant.draw_key)

    def write_off(self) -> None:
        """What every write does first: an `expire` entry per lapsed grant that holds credits."""
        for grant in self.grants:
            if grant.remaining > 0 and grant.lapsed(self.now):
                grant.remaining = 0
                self.transactions[CreditTransactionType.EXPIRE] += 1

    def add(
        self,
        amount: int,
        *,
        source: CreditSource,
        priority: int = 0,
        expires_at: datetime | None = None,
        rows: list[uuid.UUID],
    ) -> Grant:
        self.seq += 1
        grant = Grant(self.seq, amount, amount, priority, expires_at, source, rows)
        self.grants.append(grant)
        return grant

    def draw(self, amount: int) -> list[tuple[Grant, int]]:
        draws: list[tuple[Grant, int]] = []
        for grant in self.live():
            take = min(amount, grant.remaining)
            grant.remaining -= take
            draws.append((grant, take))
            amount -= take
            if amount == 0:
                return draws
        raise AssertionError("the model drew more than its balance")

    def payback(self, consumption: Consumption, amount: int) -> list[tuple[Grant, int, bool]]:
        """Where a refund of `amount` goes: (grant, credits, lapsed), latest share first.
        A lapsed grant's share comes back as a new grant. Pure: changes nothing."""
        plan: list[tuple[Grant, int, bool]] = []
        left = amount
        for grant, share in reversed(consumption.shares):
            give = min(left, share)
            if share <= 0:
                continue
            if give == 0:
                break
            plan.append((grant, give, grant.lapsed(self.now)))
            left -= give
        assert left == 0, "the shares hold less than the refundable total"
        return plan


# --- the machine ---------------------------------------------------------------------------------
class LedgerMachine(RuleBasedStateMachine):
    loop: ClassVar[asyncio.AbstractEventLoop]
    database: ClassVar[Database]

    consumptions = Bundle("consumptions")

    def __init__(self) -> None:
        super().__init__()
        self.model = Ledger()
        self.clock = Clock(START)
        self.connection, self.transaction = self.run(self._begin())
        joined = JoinedDatabase(self.database, self.connection)
        self.credits = CreditService(joined, clock=self.clock)
        self.org_id = self.run(self._organization(joined))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def _begin(self) -> tuple[AsyncConnection, Any]:
        engine: AsyncEngine = self.database.engine
        connection = await engine.connect()
        return connection, await connection.begin()

    async def _organization(self, joined: JoinedDatabase) -> uuid.UUID:
        async with joined.transaction() as session:
            return (await create_organization(session)).id

    def teardown(self) -> None:
        try:
            transactions = self.run(ledger(self.connection, self.org_id))
            assert assert_running_balance(transactions) == self.run(
                self.credits.balance(self.org_id)
            ) + sum(g.remaining for g in self.model.grants if g.lapsed(self.model.now))
            assert self.run(self.credits.verify()) == []
        finally:
            self.run(self._rollback())

    async def _rollback(self) -> None:
        await self.transaction.rollback()
        await self.connection.close()

    # --- helpers -------------------------------------------------------------------------------
    def new_rows(self) -> list[Any]:
        """The service's grant rows the model does not know yet, oldest first."""
        known = {row for grant in self.model.grants for row in grant.rows}
        return [g for g in self.run(grants(self.connection, self.org_id)) if g.id not in known]

    def applied(self, tx: CreditTransaction, type_: CreditTransactionType) -> None:
        self.model.transactions[type_] += 1
        assert tx.type is type_
        assert tx.balance_after == self.model.balance(), (tx.balance_after, self.model.balance())

    def allocated(self, tx: CreditTransaction) -> list[tuple[int, int]]:
        """The transaction's allocations per model grant (a refund group's rows summed), in
        the order they were written."""
        owner = {row: grant.seq for grant in self.model.grants for row in grant.rows}
        summed: dict[int, int] = {}
        for row, amount in self.run(allocations(self.connection, self.org_id, tx.id)):
            summed[owner[row]] = summed.get(owner[row], 0) + amount
        return list(summed.items())

    def drawn(self, tx: CreditTransaction, draws: list[tuple[Grant, int]]) -> None:
        assert self.allocated(tx) == [(grant.seq, take) for grant, take in draws]

    # --- rules ---------------------------------------------------------------------------------
    @initialize(grants=st.lists(GRANTS, min_size=1, max_size=3))
    def some_grants(self, grants: list[tuple[int, int, int | None]]) -> None:
        for amount, priority, hours in grants:
            self.grant(amount, priority, hours)

    @rule(grant=GRANTS)
    def another_grant(self, grant: tuple[int, int, int | None]) -> None:
        self.grant(*grant)

    def grant(self, amount: int, priority: int, hours: int | None) -> None:
        expires_at = None if hours is None else self.model.now + timedelta(hours=hours)
        tx = self.run(
            self.credits.grant(self.org_id, amount, priority=priority, expires_at=expires_at)
        )
        assert tx.grant_id is not None
        self.model.write_off()
        self.model.add(
            amount,
            source=CreditSource.MANUAL,
            priority=priority,
            expires_at=expires_at,
            rows=[tx.grant_id],
        )
        self.applied(tx, CreditTransactionType.GRANT)

    @rule(target=consumptions, amount=st.integers(1, 40) | st.integers(41, 200))
    def consume(self, amount: int) -> Any:
        balance = self.model.balance()
        if amount > balance:
            with pytest.raises(InsufficientCredits) as refused:
                self.run(self.credits.consume(self.org_id, amount))
            assert (refused.value.balance, refused.value.requested) == (balance, amount)
            return multiple()
        tx = self.run(self.credits.consume(self.org_id, amount))
        self.model.write_off()
        draws = self.model.draw(amount)
        self.applied(tx, CreditTransactionType.CONSUME)
        self.drawn(tx, draws)
        return Consumption(tx.id, amount, [[grant, take] for grant, take in draws])

    @rule(amount=st.integers(-60, 60).filter(bool))
    def adjust(self, amount: int) -> None:
        balance = self.model.balance()
        if -amount > balance:
            with pytest.raises(InsufficientCredits) as refused:
                self.run(self.credits.adjust(self.org_id, amount, reason="test"))
            assert (refused.value.balance, refused.value.requested) == (balance, -amount)
            return
        tx = self.run(self.credits.adjust(self.org_id, amount, reason="test"))
        self.model.write_off()
        if amount > 0:
            assert tx.grant_id is not None
            self.model.add(amount, source=CreditSource.MANUAL, rows=[tx.grant_id])
            self.applied(tx, CreditTransactionType.ADJUST)
        else:
            draws = self.model.draw(-amount)
            self.applied(tx, CreditTransactionType.ADJUST)
            self.drawn(tx, draws)

    @rule(consumption=consumptions)
    def refund_the_rest(self, consumption: Consumption) -> None:
        self.refund(consumption, None)

    @rule(consumption=consumptions, percent=st.integers(1, 100))
    def refund_some(self, consumption: Consumption, percent: int) -> None:
        self.refund(consumption, max(1, consumption.refundable * percent // 100))

    @rule(consumption=consumptions, extra=st.integers(1, 50))
    def refund_too_much(self, consumption: Consumption, extra: int) -> None:
        self.refund(consumption, consumption.refundable + extra)

    def refund(self, consumption: Consumption, amount: int | None) -> None:
        refundable = consumption.refundable
        wanted = refundable if amount is None else amount
        if wanted == 0 or wanted > refundable:
            with pytest.raises(NotRefundable) as refused:
                self.run(self.credits.refund(self.org_id, consumption.transaction_id, amount))
            assert refused.value.details == {"refundable": refundable, "requested": wanted}
            return
        tx = self.run(self.credits.refund(self.org_id, consumption.transaction_id, amount))
        self.model.write_off()
        plan = self.model.payback(consumption, wanted)
        in_place: list[tuple[int, int]] = []
        reissued = 0
        for grant, give, lapsed in plan:
            for share in consumption.shares:
                if share[0] is grant:
                    share[1] -= give
            if lapsed:
                consumption.reissued[grant.seq] = consumption.reissued.get(grant.seq, 0) + give
                reissued += give
            else:
                grant.remaining += give
                in_place.append((grant.seq, -give))
        consumption.refunded += wanted
        new_rows = self.new_rows()
        if reissued:
            assert {(g.source, g.priority, g.expires_at) for g in new_rows} == {
                (CreditSource.REFUND, 0, None)
            }
            assert all(g.amount == g.remaining for g in new_rows)
            assert sum(g.amount for g in new_rows) == reissued
            self.model.add(reissued, source=CreditSource.REFUND, rows=[g.id for g in new_rows])
        else:
            assert new_rows == []
        self.applied(tx, CreditTransactionType.REFUND)
        assert (tx.amount, tx.related_transaction_id) == (wanted, consumption.transaction_id)
        assert self.allocated(tx) == in_place

    @rule(hours=st.integers(0, 30))
    def advance(self, hours: int) -> None:
        self.model.now = self.clock.advance(hours=hours)

    @precondition(lambda self: any(g.expires_at for g in self.model.grants))
    @rule(pick=st.integers(0, 1000))
    def advance_to_an_expiry(self, pick: int) -> None:
        """Onto the very instant a grant lapses (or stay, if it already has)."""
        expiries = sorted(g.expires_at for g in self.model.grants if g.expires_at)
        self.model.now = self.clock.set(max(self.model.now, expiries[pick % len(expiries)]))

    @rule()
    def expire(self) -> None:
        lapsed = sorted(
            (g for g in self.model.grants if g.remaining > 0 and g.lapsed(self.model.now)),
            key=lambda g: (g.expires_at, g.seq),
        )
        written = self.run(self.credits.expire(self.org_id))
        assert [(tx.grant_id, -tx.amount) for tx in written] == [
            (g.rows[0], g.remaining) for g in lapsed
        ]
        self.model.write_off()

    # --- invariants ----------------------------------------------------------------------------
    @invariant()
    def the_service_agrees_with_the_model(self) -> None:
        assert self.run(self.credits.balance(self.org_id)) == self.model.balance()
        rows = {g.id: g.remaining for g in self.run(grants(self.connection, self.org_id))}
        expected = {grant.seq: grant.remaining for grant in self.model.grants}
        actual = {
            grant.seq: sum(rows.pop(row) for row in grant.rows) for grant in self.model.grants
        }
        assert actual == expected
        assert rows == {}, "grants the model does not know"
        counts = self.run(self._counts())
        assert counts == {k: v for k, v in self.model.transactions.items() if v}

    async def _counts(self) -> dict[CreditTransactionType, int]:
        rows = await self.connection.execute(
            sa.select(CreditTransaction.type, sa.func.count())
            .where(CreditTransaction.organization_id == self.org_id)
            .group_by(CreditTransaction.type)
        )
        return {CreditTransactionType(type_): count for type_, count in rows}


@pytest.mark.hypothesis
def test_the_ledger_behaves_like_the_model(database: Database) -> None:
    loop = asyncio.new_event_loop()
    own = Database(database.settings)  # this loop's engine, disposed here
    machine = type("Machine", (LedgerMachine,), {"loop": loop, "database": own})
    try:
        run_state_machine_as_test(machine, settings=SETTINGS)
    finally:
        loop.run_until_complete(own.dispose())
        loop.close()

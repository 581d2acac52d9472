"""Races for the quota, in the style of Jepsen's bank test: many workers at once, each in its
own committed transaction, then the totals must add up (nothing overspent, the ledger of events
equals the counter, no refusal while there was room).

The workers commit, so these tests use a database of this module's own (`scratch`, migrated by
the real migrations, one per backend) and a new organisation each; nothing they commit reaches
the shared test database. A monitor task reads the counter while the workers race, so the
invariants are checked during the race as well as after it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.metering.errors import LimitExceeded, ReservationNotHeld, StorageUnderflow
from saascore.metering.service import RecordResult, UsageService
from saascore.models import (
    ReservationStatus,
    UsageCounter,
    UsageDailySummary,
    UsageEvent,
    UsageLimits,
    UsageReservation,
)
from tests.factories import create_organization, create_plan
from tests.helpers import CLOCK_START, Clock

WORKERS = 64
START = CLOCK_START
MARCH = datetime(2025, 3, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Twenty transactions in flight at once (the other workers queue for a connection, up to a
#: minute): plenty of contention on one counter row, and few enough connections that two xdist
#: workers racing at the same time, beside another test run, stay under PostgreSQL's default
#: max_connections of 100.
POOL = {"db_pool_size": 10, "db_max_overflow": 10, "db_pool_timeout": 60.0}


# --- the scratch database ----------------------------------------------------------------------
@pytest_asyncio.fixture(loop_scope="session")
async def scratch(scratch: Database) -> AsyncIterator[Database]:
    """The module's committed database, on an engine whose pool is sized for the workers."""
    database = Database(scratch.settings.model_copy(update=POOL))
    try:
        yield database
    finally:
        await database.dispose()


async def new_org(database: Database, **limits: int) -> uuid.UUID:
    """A new organisation on a plan without limits, with hard overrides for `limits`."""
    async with database.transaction() as session:
        organization = await create_organization(session, plan=await create_plan(session))
    usage = UsageService(database)
    for metric, limit in limits.items():
        await usage.set_limit(organization.id, metric, limit)
    return organization.id


# --- reading the committed state -----------------------------------------------------------------
async def counter(
    database: Database, org_id: uuid.UUID, period: datetime = MARCH
) -> tuple[int, int]:
    async with database.session(readonly=True) as session:
        row = (
            await session.execute(
                sa.select(UsageCounter.used, UsageCounter.reserved).where(
                    UsageCounter.organization_id == org_id,
                    UsageCounter.metric == "tokens",
                    UsageCounter.period_start == period,
                )
            )
        ).one_or_none()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


async def ledger(database: Database, org_id: uuid.UUID) -> tuple[int, int, int, int]:
    """(events, their quantity, summary quantity, summary event count) of the organisation."""
    async with database.session(readonly=True) as session:
        events, quantity = (
            await session.execute(
                sa.select(
                    sa.func.count(), sa.func.coalesce(sa.func.sum(UsageEvent.quantity), 0)
                ).where(UsageEvent.organization_id == org_id)
            )
        ).one()
        summed, counted = (
            await session.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(UsageDailySummary.quantity), 0),
                    sa.func.coalesce(sa.func.sum(UsageDailySummary.event_count), 0),
                ).where(UsageDailySummary.organization_id == org_id)
            )
        ).one()
    return int(events), int(quantity), int(summed), int(counted)


async def reservations(database: Database, org_id: uuid.UUID) -> dict[uuid.UUID, tuple[Any, ...]]:
    """Every reservation of the organisation: id -> (status, quantity, settled_quantity)."""
    async with database.session(readonly=True) as session:
        result = await session.execute(
            sa.select(
                UsageReservation.id,
                UsageReservation.status,
                UsageReservation.quantity,
                UsageReservation.settled_quantity,
            ).where(UsageReservation.organization_id == org_id)
        )
        return {row[0]: tuple(row[1:]) for row in result}


async def storage(database: Database, org_id: uuid.UUID) -> int:
    async with database.session(readonly=True) as session:
        value = await session.scalar(
            sa.select(UsageLimits.storage_used_bytes).where(UsageLimits.organization_id == org_id)
        )
    return int(value or 0)


@dataclass
class Monitor:
    """Reads a value over and over while the workers race; `seen` keeps every reading."""

    read: Callable[[], Awaitable[int]]
    seen: list[int] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Monitor:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task
        assert self.seen, "the monitor never read anything"

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.append(await self.read())
            await asyncio.sleep(0.005)


# --- record ------------------------------------------------------------------------------------
#: `record` in a transaction of its own (on PostgreSQL the one-statement path) or in the
#: caller's (`session=`, the general path); each worker commits either way.
PATHS = pytest.mark.parametrize("path", ["own", "caller"])


async def record(
    usage: UsageService, path: str, org_id: uuid.UUID, quantity: int, key: str
) -> RecordResult:
    if path == "own":
        return await usage.record(org_id, "tokens", quantity, idempotency_key=key)
    async with usage.database.transaction() as session:
        return await usage.record(org_id, "tokens", quantity, idempotency_key=key, session=session)


class TestRecordRace:
    @PATHS
    async def test_racing_records_never_pass_a_hard_limit(
        self, scratch: Database, backend: str, path: str
    ) -> None:
        limit = 1_000
        org_id = await new_org(scratch, tokens=limit)
        usage = UsageService(scratch, clock=Clock())
        rng = random.Random(f"record-{backend}-{path}")
        quantities = [rng.randint(1, 40) for _ in range(WORKERS)]
        assert sum(quantities) > limit + 40  # the workers ask for more than there is

        async def worker(index: int, quantity: int) -> RecordResult | LimitExceeded:
            try:
                return await record(usage, path, org_id, quantity, f"w{index}")
            except LimitExceeded as refusal:
                return refusal

        async def used_plus_reserved() -> int:
            return sum(await counter(scratch, org_id))

        async with Monitor(used_plus_reserved) as monitor:
            outcomes = await asyncio.gather(*(worker(i, q) for i, q in enumerate(quantities)))

        accepted = [
            (q, r) for q, r in zip(quantities, outcomes, strict=True) if isinstance(r, RecordResult)
        ]
        refused = [
            (q, r)
            for q, r in zip(quantities, outcomes, strict=True)
            if isinstance(r, LimitExceeded)
        ]
        assert len(accepted) + len(refused) == WORKERS
        assert accepted
        assert refused
        used, reserved = await counter(scratch, org_id)
        assert reserved == 0
        assert used == sum(q for q, _ in accepted)
        assert used <= limit
        assert max(monitor.seen) <= limit
        events, quantity, summed, counted = await ledger(scratch, org_id)
        assert (events, quantity) == (len(accepted), used)
        assert (summed, counted) == (used, len(accepted))
        # No refusal while there was room: the counter only grows, so anything refused must
        # still be more than what is left at the end.
        remaining = limit - used
        for q, refusal in refused:
            assert q > remaining
            assert (refusal.limit, refusal.requested) == (limit, q)
            assert refusal.used + q > limit
        # Each accepted record saw its own state of the counter, one after another.
        total = 0
        for q, result in sorted(accepted, key=lambda pair: pair[1].used):
            total += q
            assert (result.status, result.used) == ("accepted", total)

    @PATHS
    async def test_the_same_events_sent_ten_times_at_once_are_counted_once(
        self, scratch: Database, path: str
    ) -> None:
        org_id = await new_org(scratch)  # no limit: every copy gets past the counter
        usage = UsageService(scratch, clock=Clock())
        keys = [f"event-{n}" for n in range(5)]

        async def send(key: str) -> RecordResult:
            return await record(usage, path, org_id, 700, key)

        sent = [key for _ in range(10) for key in keys]
        results = await asyncio.gather(*(send(key) for key in sent))

        for key in keys:
            copies = [r for r, k in zip(results, sent, strict=True) if k == key]
            assert sorted(r.status for r in copies) == ["accepted"] + ["duplicate"] * 9
            assert len({r.event_id for r in copies}) == 1
        assert await counter(scratch, org_id) == (700 * len(keys), 0)
        assert await ledger(scratch, org_id) == (len(keys), 700 * len(keys), 700 * len(keys), 5)

    @pytest.mark.parametrize(
        ("backend", "path"),
        [
            pytest.param("sqlite", "own", id="sqlite-own"),
            pytest.param("sqlite", "caller", id="sqlite-caller"),
            pytest.param("postgresql", "own", id="postgresql-own", marks=pytest.mark.postgres),
            pytest.param(
                "postgresql",
                "caller",
                id="postgresql-caller",
                marks=pytest.mark.postgres,
            ),
        ],
        indirect=["backend"],
    )
    async def test_copies_of_an_event_racing_for_the_last_quota_are_duplicates(
        self, scratch: Database, path: str
    ) -> None:
        orgs = [await new_org(scratch, tokens=700) for _ in range(5)]  # room for one copy each
        usage = UsageService(scratch, clock=Clock())

        async def send(org_id: uuid.UUID) -> RecordResult | LimitExceeded:
            try:
                return await record(usage, path, org_id, 700, "the-one")
            except LimitExceeded as refusal:
                return refusal

        pairs = [org_id for _ in range(10) for org_id in orgs]
        results = await asyncio.gather(*(send(org_id) for org_id in pairs))

        for org_id in orgs:
            answers = [r for r, o in zip(results, pairs, strict=True) if o == org_id]
            assert await counter(scratch, org_id) == (700, 0)
            assert [type(r).__name__ for r in answers] == ["RecordResult"] * 10
            assert sorted(r.status for r in answers) == ["accepted"] + ["duplicate"] * 9  # type: ignore[union-attr]


# --- reservations ------------------------------------------------------------------------------
@dataclass
class Model:
    """What the workers believe happened, to compare with the database afterwards."""

    recorded: list[int] = field(default_factory=list)
    settled: dict[uuid.UUID, int] = field(default_factory=dict)
    released: set[uuid.UUID] = field(default_factory=set)
    expiring: dict[uuid.UUID, int] = field(default_factory=dict)
    kept: dict[uuid.UUID, int] = field(default_factory=dict)
    refused: int = 0

    @property
    def used(self) -> int:
        return sum(self.recorded) + sum(self.settled.values())


class TestReservationRace:
    async def test_reserve_settle_release_and_expiry_never_overspend(
        self, scratch: Database, backend: str
    ) -> None:
        limit = 2_000
        org_id = await new_org(scratch, tokens=limit)
        clock = Clock()
        usage = UsageService(scratch, clock=clock)
        rng = random.Random(f"reserve-{backend}")
        model = Model()
        short, long = timedelta(minutes=1), timedelta(hours=1)

        async def reserve(quantity: int, ttl: timedelta) -> uuid.UUID | None:
            try:
                return (await usage.reserve(org_id, "tokens", quantity, ttl=ttl)).id
            except LimitExceeded:
                model.refused += 1
                return None

        async def settle(reservation_id: uuid.UUID, actual: int) -> None:
            try:
                await usage.settle(reservation_id, actual)
            except LimitExceeded:  # more than reserved, and no room for the extra
                await usage.release(reservation_id)
                model.released.add(reservation_id)
            else:
                model.settled[reservation_id] = actual

        async def worker(kind: str, quantity: int, actual: int, key: str) -> None:
            if kind == "record":
                try:
                    await usage.record(org_id, "tokens", quantity, idempotency_key=key)
                except LimitExceeded:
                    model.refused += 1
                else:
                    model.recorded.append(quantity)
                return
            reservation_id = await reserve(quantity, short if kind == "expire" else long)
            if reservation_id is None:
                return
            await asyncio.sleep(0)  # the slow work the reservation is for
            if kind == "settle":
                await settle(reservation_id, actual)
            elif kind == "release":
                await usage.release(reservation_id)
                model.released.add(reservation_id)
            elif kind == "expire":
                model.expiring[reservation_id] = quantity
            else:
                model.kept[reservation_id] = quantity

        def plan(count: int, kinds: list[str], prefix: str) -> list[Any]:
            work = []
            for n in range(count):
                quantity = rng.randint(10, 80)
                actual = rng.randint(0, quantity + quantity // 2)  # sometimes more than reserved
                work.append(worker(kinds[n % len(kinds)], quantity, actual, f"{prefix}{n}"))
            return work

        async def check(held: dict[uuid.UUID, int]) -> None:
            used, reserved = await counter(scratch, org_id)
            assert used + reserved <= limit
            rows = await reservations(scratch, org_id)
            still_held = {
                rid: q for rid, (status, q, _) in rows.items() if status is ReservationStatus.HELD
            }
            assert still_held == held
            assert reserved == sum(held.values())
            assert used == model.used
            events, quantity, summed, _ = await ledger(scratch, org_id)
            assert (events, quantity, summed) == (
                len(model.recorded) + len(model.settled),
                used,
                used,
            )
            for rid, actual in model.settled.items():
                assert rows[rid][0] is ReservationStatus.SETTLED
                assert rows[rid][2] == actual
            for rid in model.released:
                assert rows[rid][0] is ReservationStatus.RELEASED

        async def used_plus_reserved() -> int:
            return sum(await counter(scratch, org_id))

        async with Monitor(used_plus_reserved) as monitor:
            # Round 1: every kind of worker at once.
            await asyncio.gather(
                *plan(WORKERS, ["settle", "release", "expire", "keep", "record"], "a")
            )
            assert model.refused > 0  # there was contention for the quota
            await check({**model.expiring, **model.kept})

            # Round 2: the short reservations have expired. Sweepers, settles of the expired
            # ones (refused), settles and releases of the kept ones and new work all race.
            clock.now += 2 * short
            expired, kept = dict(model.expiring), dict(model.kept)
            model.expiring, model.kept = {}, {}

            async def settle_expired(reservation_id: uuid.UUID) -> None:
                with pytest.raises(ReservationNotHeld) as info:
                    await usage.settle(reservation_id, 1)
                assert info.value.details["status"] == "expired"

            async def finish(reservation_id: uuid.UUID, quantity: int) -> None:
                if rng.random() < 0.5:
                    await settle(reservation_id, rng.randint(0, quantity))
                else:
                    await usage.release(reservation_id)
                    model.released.add(reservation_id)

            swept = await asyncio.gather(
                *(usage.sweep(org_id=org_id) for _ in range(8)),
                *(settle_expired(rid) for rid in expired),
                *(finish(rid, q) for rid, q in kept.items()),
                *plan(24, ["keep", "record", "settle"], "b"),
            )
            assert sum(n for n in swept[:8] if isinstance(n, int)) <= len(expired)
            rows = await reservations(scratch, org_id)
            assert {rid for rid in expired if rows[rid][0] is ReservationStatus.EXPIRED} == set(
                expired
            )
            await check(model.kept)

        assert max(monitor.seen) <= limit

        # The end of the story: everything still held expires, and gives its quota back.
        clock.now += 2 * long
        assert await usage.sweep(org_id=org_id) == len(model.kept)
        used, reserved = await counter(scratch, org_id)
        assert (used, reserved) == (model.used, 0)
        await check({})


# --- storage -----------------------------------------------------------------------------------
def serial_order(start: int, updates: list[tuple[int, int]]) -> list[int] | None:
    """The states of a serial history that explains every accepted (delta, total), or None.

    Each update must have seen the total the previous one left: total - delta == state."""
    left = Counter(updates)

    def extend(state: int, states: list[int]) -> list[int] | None:
        if not left:
            return states
        for delta, total in [key for key in left if key[1] - key[0] == state]:
            left[(delta, total)] -= 1
            if not left[(delta, total)]:
                del left[(delta, total)]
            found = extend(total, [*states, total])
            if found is not None:
                return found
            left[(delta, total)] += 1
        return None

    return extend(start, [start])


class TestStorageRace:
    async def test_racing_storage_updates_stay_within_zero_and_the_limit(
        self, scratch: Database, backend: str
    ) -> None:
        limit, start = 5_000, 2_500
        org_id = await new_org(scratch, storage_bytes=limit)
        usage = UsageService(scratch, clock=Clock())
        assert await usage.update_storage_used(org_id, start) == start
        rng = random.Random(f"storage-{backend}")
        deltas = [rng.choice((-1, 1)) * rng.randint(100, 1_500) for _ in range(WORKERS)]

        async def worker(delta: int) -> int | StorageUnderflow | LimitExceeded:
            try:
                return await usage.update_storage_used(org_id, delta)
            except (StorageUnderflow, LimitExceeded) as refusal:
                return refusal

        async def stored() -> int:
            return await storage(scratch, org_id)

        async with Monitor(stored) as monitor:
            outcomes = await asyncio.gather(*(worker(d) for d in deltas))

        accepted = [(d, r) for d, r in zip(deltas, outcomes, strict=True) if isinstance(r, int)]
        underflows = [
            d for d, r in zip(deltas, outcomes, strict=True) if isinstance(r, StorageUnderflow)
        ]
        overflows = [
            d for d, r in zip(deltas, outcomes, strict=True) if isinstance(r, LimitExceeded)
        ]
        assert accepted
        assert underflows or overflows
        final = await storage(scratch, org_id)
        assert final == start + sum(d for d, _ in accepted)
        assert all(0 <= total <= limit for _, total in accepted)
        assert all(0 <= value <= limit for value in monitor.seen)
        assert (await usage.check_storage_limit(org_id, 0)).used_bytes == final

        # The accepted updates line up into one serial history, and each refusal was right at
        # some point of it (there was a state it would have taken below zero or over the limit).
        states = serial_order(start, accepted)
        assert states is not None, "the accepted updates do not form a serial history"
        assert states[-1] == final
        assert all(d < 0 and any(s + d < 0 for s in states) for d in underflows)
        assert all(d > 0 and any(s + d > limit for s in states) for d in overflows)

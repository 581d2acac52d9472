"""Reservations: quota held before slow work, then settled (recorded) or released.

A reservation adds its quantity to its counter's `reserved`, so `used + reserved` never passes
a hard limit however many reservations and records race; the counter row is the lock, as for
records. It moves from `held` to exactly one of `settled`, `released` or `expired` by one
conditional UPDATE (`_claim`), so a settle, a release and a sweep racing for it cannot both
win. A held reservation past its time stops holding quota: it is swept (expired, its quantity
given back) on the next access to it, by `sweep`, by a reservation of its metric made here (in
a session), or by a batch, a record, a hold or a settlement refused on its counter. Held quota
counts towards the 80 %/100 % thresholds like used quota.

Everything here runs in the session it is given; `UsageService` opens it and ends it. Without
a caller's session on PostgreSQL, `UsageService` reserves and settles in one statement each
instead (`postgres.RESERVE`, `postgres.SETTLE`), with the same outcomes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.events.bus import EventBus
from saascore.kit import metrics
from saascore.kit.errors import IdempotencyConflict
from saascore.kit.ids import new_id
from saascore.kit.sql import insert, violates
from saascore.metering.decision import (
    Decision,
    Pending,
    accepted,
    check_fields,
    overflow,
    price_of,
    rollup_key,
    unknown_user,
)
from saascore.metering.errors import (
    LimitExceeded,
    ReservationNotFound,
    ReservationNotHeld,
)
from saascore.metering.limits import Limit, read_limit
from saascore.metering.session_store import SessionStore, read_counter
from saascore.metering.values import BIGINT_MAX, MeterInfo, RecordResult, UsageEventIn
from saascore.models import Aggregation, ReservationStatus, UsageCounter, UsageReservation

__all__ = ["Reservations", "expired", "settlement"]


def expired(reservation_id: uuid.UUID) -> ReservationNotHeld:
    """The error of a reservation that was held past its time (and has now been swept)."""
    return ReservationNotHeld(
        f"reservation {reservation_id} is expired",
        reservation_id=str(reservation_id),
        status="expired",
    )


def settlement(
    reservation: UsageReservation,
    meter: MeterInfo,
    actual_quantity: int,
    fields: dict[str, Any],
    now: datetime,
) -> Pending:
    """The usage event that settles `reservation` (keyed by it), checked (`InvalidInput`) and
    placed in the period that held the quota: if that period has ended meanwhile, the event is
    dated when the reservation was made, inside it."""
    event = UsageEventIn(
        metric=meter.code,
        quantity=actual_quantity,
        idempotency_key=f"reservation:{reservation.id}",
        **{
            **fields,
            "properties": {
                **fields.get("properties", {}),
                "reservation_id": str(reservation.id),
            },
        },
    )
    check_fields(event)
    occurred = now
    if meter.period(now)[0] != reservation.period_start:
        occurred = reservation.created_at
    return Pending(
        reservation.organization_id,
        event,
        meter,
        occurred,
        reservation.period_start,
        None,
        event.fingerprint(),
        False,
    )


class Reservations:
    """Reserve, settle, release and sweep, in a given session."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime],
        meter: Callable[[AsyncSession, str], Awaitable[MeterInfo]],
        unpriced: Callable[[UsageEventIn], None],
        events: EventBus | None = None,
    ) -> None:
        self.clock = clock
        #: Where the thresholds that held or settled quota crosses are told.
        self.events = events
        self._meter = meter
        self._unpriced = unpriced

    async def reserve(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        metric: str,
        quantity: int,
        *,
        ttl: timedelta,
        idempotency_key: str | None,
    ) -> UsageReservation:
        """Hold `quantity` (see `UsageService.reserve`); `LimitExceeded` past a hard limit."""
        now = self.clock()
        meter = await self._meter(s, metric)
        if idempotency_key is not None:
            existing = await self._keyed(s, org_id, idempotency_key, meter.code, quantity)
            if existing is not None:
                return existing
        await self.sweep(s, org_id=org_id, metric=meter.code)
        # A copy racing with this one for the key loses on its unique index: the savepoint
        # undoes the loser's hold, and it answers the winner's reservation.
        attempt = s.begin_nested() if idempotency_key is not None else contextlib.nullcontext()
        try:
            async with attempt:
                return await self._hold(s, org_id, meter, quantity, ttl, idempotency_key, now)
        except IntegrityError as error:
            if idempotency_key is None or not violates(error, "idempotency_key"):
                raise
            existing = await self._keyed(s, org_id, idempotency_key, meter.code, quantity)
            if existing is None:
                raise
            return existing

    async def _hold(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        meter: MeterInfo,
        quantity: int,
        ttl: timedelta,
        idempotency_key: str | None,
        now: datetime,
    ) -> UsageReservation:
        """Add `quantity` to the counter's `reserved` and write the reservation."""
        limit = await read_limit(s, org_id, meter.code)
        period_start, period_end = meter.period(now)
        counted = await self._bump(
            s,
            org_id,
            meter,
            period_start,
            period_end,
            reserved=quantity,
            limit=limit,
            now=now,
        )
        if counted is None:
            used, reserved = await read_counter(s, org_id, meter.code, period_start)
            if not limit.refuses(used + reserved + quantity):
                raise overflow(meter.code, "the reserved quota")
            metrics.USAGE_REFUSED.labels(meter.code).inc()
            assert limit.value is not None
            raise LimitExceeded(meter.code, limit.value, used + reserved, quantity)
        crossings = Decision()  # held quota counts towards the thresholds too
        total = sum(counted)
        crossings.add_crossings(
            (org_id, meter.code, period_start), limit.value, total - quantity, total
        )
        await SessionStore(s, self.events).write(crossings, now)
        reservation = UsageReservation(
            organization_id=org_id,
            id=new_id(),
            metric=meter.code,
            period_start=period_start,
            quantity=quantity,
            status=ReservationStatus.HELD,
            idempotency_key=idempotency_key,
            expires_at=now + ttl,
            created_at=now,
        )
        s.add(reservation)
        await s.flush()
        return reservation

    async def _keyed(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        idempotency_key: str,
        metric: str,
        quantity: int,
    ) -> UsageReservation | None:
        """The organisation's reservation under `idempotency_key`, if any;
        `IdempotencyConflict` if it holds another metric or quantity."""
        existing = (
            await s.scalars(
                sa.select(UsageReservation).where(
                    UsageReservation.organization_id == org_id,
                    UsageReservation.idempotency_key == idempotency_key,
                )
            )
        ).one_or_none()
        if existing is not None and (existing.metric, existing.quantity) != (metric, quantity):
            raise IdempotencyConflict(
                f"idempotency key {idempotency_key!r} was used for another reservation",
                idempotency_key=idempotency_key,
            )
        return existing

    async def settle(
        self,
        s: AsyncSession,
        reservation_id: uuid.UUID,
        org_id: uuid.UUID | None,
        actual_quantity: int,
        fields: dict[str, Any],
    ) -> RecordResult:
        """Claim a held reservation as settled and record its usage event (see
        `UsageService.settle`); the caller holds a savepoint that a refusal undoes."""
        now = self.clock()
        reservation = await self._claim(
            s, reservation_id, org_id, ReservationStatus.SETTLED, now, actual_quantity
        )
        meter = await self._meter(s, reservation.metric)
        limit = await read_limit(s, reservation.organization_id, meter.code)
        extra = actual_quantity - reservation.quantity
        statement = (
            sa.update(UsageCounter)
            .where(
                UsageCounter.organization_id == reservation.organization_id,
                UsageCounter.metric == meter.code,
                UsageCounter.period_start == reservation.period_start,
            )
            .values(
                used=UsageCounter.used + actual_quantity,
                reserved=UsageCounter.reserved - reservation.quantity,
                updated_at=now,
            )
            .returning(UsageCounter.used, UsageCounter.reserved)
        )
        if extra > 0:  # compared so that the comparison itself cannot pass a BIGINT
            bound = BIGINT_MAX if limit.cap is None else min(limit.cap, BIGINT_MAX)
            statement = statement.where(UsageCounter.used + UsageCounter.reserved <= bound - extra)
        counted = (await s.execute(statement)).one_or_none()
        if counted is None:
            used, reserved = await read_counter(
                s, reservation.organization_id, meter.code, reservation.period_start
            )
            if not limit.refuses(used + reserved + extra):
                raise overflow(meter.code, "the counter")
            assert limit.value is not None
            raise LimitExceeded(meter.code, limit.value, used + reserved, extra)
        # As `record` does; the savepoint undoes the claim on a refusal.
        item = settlement(reservation, meter, actual_quantity, fields, now)
        event = item.event
        store = SessionStore(s, self.events)
        org = reservation.organization_id
        if event.user_id is not None and not await store.users({(org, event.user_id)}):
            raise unknown_user(item)
        written = Decision()
        prices = await store.prices({event.model}) if event.model is not None else []
        cost = price_of(item, prices, written.unpriced)
        if cost > BIGINT_MAX:
            raise overflow(meter.code, "the cost")
        if not written.rollup_fits(item, cost, await store.rollups([rollup_key(item)])):
            raise overflow(meter.code, "the day's total")
        event_id = written.add_event(item, cost)
        used, reserved = counted
        if extra > 0:
            total = used + reserved
            written.add_crossings(item.counter, limit.value, total - extra, total)
        # The claim above is exclusive: no copy of the event can exist (else `Raced`).
        await store.write(written, now)
        for unpriced in written.unpriced:
            self._unpriced(unpriced)
        metrics.USAGE_RECORDED.labels(meter.code).inc()
        return accepted(event_id, item, used, reserved, limit, cost)

    async def release(
        self, s: AsyncSession, reservation_id: uuid.UUID, org_id: uuid.UUID | None
    ) -> UsageReservation:
        """Claim a held reservation as released and give its quota back."""
        reservation = await self._claim(
            s, reservation_id, org_id, ReservationStatus.RELEASED, self.clock(), None
        )
        await self._give_back(
            s,
            reservation.organization_id,
            reservation.metric,
            reservation.period_start,
            reserved=reservation.quantity,
        )
        return reservation

    async def sweep_lapsed(
        self, s: AsyncSession, reservation_id: uuid.UUID, org_id: uuid.UUID | None
    ) -> bool:
        """Sweep the reservation if it is still held past its time; whether it was. The caller
        then ends its transaction before raising, so the sweep is kept."""
        found = sa.and_(
            UsageReservation.id == reservation_id,
            *([UsageReservation.organization_id == org_id] if org_id is not None else []),
        )
        lapsed = (
            await s.execute(
                sa.select(UsageReservation.organization_id, UsageReservation.metric).where(
                    found,
                    UsageReservation.status == ReservationStatus.HELD,
                    UsageReservation.expires_at <= self.clock(),
                )
            )
        ).one_or_none()
        if lapsed is None:
            return False
        await self.sweep(s, org_id=lapsed[0], metric=lapsed[1])
        return True

    async def sweep(
        self,
        s: AsyncSession,
        *,
        org_id: uuid.UUID | None,
        metric: str | None,
        period_start: datetime | None = None,
    ) -> int:
        """Expire held reservations past their time, giving their quota back; how many."""
        now = self.clock()
        statement = (
            sa.update(UsageReservation)
            .where(
                UsageReservation.status == ReservationStatus.HELD,
                UsageReservation.expires_at <= now,
            )
            .values(status=ReservationStatus.EXPIRED, finished_at=now)
            .returning(
                UsageReservation.organization_id,
                UsageReservation.metric,
                UsageReservation.period_start,
                UsageReservation.quantity,
            )
        )
        if org_id is not None:
            statement = statement.where(UsageReservation.organization_id == org_id)
        if metric is not None:
            statement = statement.where(UsageReservation.metric == metric)
        if period_start is not None:
            statement = statement.where(UsageReservation.period_start == period_start)
        expired_now = (
            await s.execute(statement, execution_options={"synchronize_session": False})
        ).all()
        for organization, expired_metric, period_start, quantity in expired_now:
            await self._give_back(s, organization, expired_metric, period_start, reserved=quantity)
        return len(expired_now)

    async def lapsed_holds(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        metric: str,
        period_start: datetime,
        now: datetime,
    ) -> int:
        """Quota still counted as reserved by reservations past their time (not yet swept)."""
        held = await s.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(UsageReservation.quantity), 0)).where(
                UsageReservation.organization_id == org_id,
                UsageReservation.metric == metric,
                UsageReservation.period_start == period_start,
                UsageReservation.status == ReservationStatus.HELD,
                UsageReservation.expires_at <= now,
            )
        )
        return int(held or 0)

    async def _claim(
        self,
        s: AsyncSession,
        reservation_id: uuid.UUID,
        org_id: uuid.UUID | None,
        status: ReservationStatus,
        now: datetime,
        settled_quantity: int | None,
    ) -> UsageReservation:
        """Move a held, unexpired reservation to `status`: one conditional UPDATE, so a settle,
        a release and a sweep racing for it cannot both win."""
        found = sa.and_(
            UsageReservation.id == reservation_id,
            *([UsageReservation.organization_id == org_id] if org_id is not None else []),
        )
        claimed = (
            await s.execute(
                sa.update(UsageReservation)
                .where(
                    found,
                    UsageReservation.status == ReservationStatus.HELD,
                    UsageReservation.expires_at > now,
                )
                .values(status=status, finished_at=now, settled_quantity=settled_quantity)
                .returning(UsageReservation),
                execution_options={"synchronize_session": False, "populate_existing": True},
            )
        ).scalar_one_or_none()
        if claimed is not None:
            return claimed
        current = (await s.scalars(sa.select(UsageReservation).where(found))).one_or_none()
        if current is None:
            raise ReservationNotFound(
                f"no reservation {reservation_id}", reservation_id=str(reservation_id)
            )
        if current.status is ReservationStatus.HELD:  # held but past its time
            await self.sweep(s, org_id=current.organization_id, metric=current.metric)
            state = "expired"
        else:
            state = current.status.value
        raise ReservationNotHeld(
            f"reservation {reservation_id} is {state}",
            reservation_id=str(reservation_id),
            status=state,
        )

    async def _bump(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        meter: MeterInfo,
        period_start: datetime,
        period_end: datetime | None,
        *,
        reserved: int,
        limit: Limit,
        now: datetime,
    ) -> tuple[int, int] | None:
        """Add to the period's reserved quota in one statement, unless a hard limit refuses
        it. Returns the counter's new (used, reserved), or None when refused."""
        # Compared so that the comparison itself cannot pass a BIGINT: a counter never does.
        bound = BIGINT_MAX if limit.cap is None else min(limit.cap, BIGINT_MAX)
        values = sa.select(
            sa.literal(org_id, sa.Uuid()),
            sa.literal(new_id(), sa.Uuid()),
            sa.literal(meter.code),
            sa.literal(period_start, UsageCounter.period_start.type),
            sa.literal(period_end, UsageCounter.period_end.type),
            sa.literal(0, sa.BigInteger()),
            sa.literal(reserved, sa.BigInteger()),
            sa.literal(now, UsageCounter.updated_at.type),
        ).where(sa.literal(reserved, sa.BigInteger()) <= sa.literal(bound, sa.BigInteger()))
        statement = insert(s, UsageCounter).from_select(
            [
                "organization_id",
                "id",
                "metric",
                "period_start",
                "period_end",
                "used",
                "reserved",
                "updated_at",
            ],
            values,
        )
        excluded = statement.excluded
        # Nothing is used by a reservation (`excluded.used` is 0): only `reserved` grows.
        if meter.aggregation is Aggregation.MAX:
            new_used: Any = sa.case(
                (excluded.used > UsageCounter.used, excluded.used), else_=UsageCounter.used
            )
        else:
            new_used = UsageCounter.used + excluded.used
        statement = statement.on_conflict_do_update(
            index_elements=[
                UsageCounter.organization_id,
                UsageCounter.metric,
                UsageCounter.period_start,
            ],
            set_={
                "used": new_used,
                "reserved": UsageCounter.reserved + excluded.reserved,
                "updated_at": excluded.updated_at,
            },
            where=UsageCounter.used + UsageCounter.reserved
            <= sa.literal(bound - reserved, sa.BigInteger()),
        )
        row = (
            await s.execute(statement.returning(UsageCounter.used, UsageCounter.reserved))
        ).one_or_none()
        return None if row is None else (int(row[0]), int(row[1]))

    async def _give_back(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        metric: str,
        period_start: datetime,
        *,
        reserved: int,
    ) -> None:
        await s.execute(
            sa.update(UsageCounter)
            .where(
                UsageCounter.organization_id == org_id,
                UsageCounter.metric == metric,
                UsageCounter.period_start == period_start,
            )
            .values(reserved=UsageCounter.reserved - reserved, updated_at=self.clock()),
            execution_options={"synchronize_session": False},
        )

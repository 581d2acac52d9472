"""Metering's writes through a SQLAlchemy session: SQLite, and calls in a caller's session.

`SessionStore` is the batch engine's `Store` (see `batch`) in the session's transaction, with
SQLAlchemy Core: on SQLite, where writers take turns (`BEGIN IMMEDIATE`), and on any database
when the batch joins a caller's unit of work. Reservations write their threshold crossings
through it too. `read_counter` reads one counter as it is.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.events.bus import EventBus
from saascore.kit.ids import new_id
from saascore.kit.sql import insert
from saascore.metering.announce import UsageThresholdReached, threshold_key
from saascore.metering.batch import Raced
from saascore.metering.decision import (
    Counter,
    CounterKey,
    Decision,
    EventKey,
    Price,
    RollupKey,
    Snapshot,
    Stored,
)
from saascore.metering.limits import LimitRules, read_rules
from saascore.models import (
    ModelPricing,
    ReservationStatus,
    UsageAlert,
    UsageCounter,
    UsageDailySummary,
    UsageEvent,
    UsageReservation,
    User,
)

__all__ = ["SessionStore", "read_counter"]

ROLLUP_KEY = ("organization_id", "day", "metric", "model", "provider", "feature")
ALERT_KEY = ("organization_id", "metric", "period_start", "threshold_percent")


async def read_counter(
    s: AsyncSession, org_id: uuid.UUID, metric: str, period_start: datetime
) -> tuple[int, int]:
    """The counter's (used, reserved), (0, 0) when it has no row yet."""
    row = (
        await s.execute(
            sa.select(UsageCounter.used, UsageCounter.reserved).where(
                UsageCounter.organization_id == org_id,
                UsageCounter.metric == metric,
                UsageCounter.period_start == period_start,
            )
        )
    ).one_or_none()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


class SessionStore:
    """The batch's I/O with SQLAlchemy Core in a session's transaction (SQLite, or any
    database when the batch joins a caller's unit of work)."""

    CHUNK = 500  # bound parameters per IN list stay well under SQLite's limit
    optimistic = False  # it looks the keys up after the locks, so it never misses a copy

    def __init__(self, session: AsyncSession, events: EventBus | None = None) -> None:
        self.s = session
        #: Where `usage.threshold_reached` is emitted (None: nowhere, for a store that only
        #: reads).
        self.events = events

    async def lock(
        self,
        periods: dict[CounterKey, datetime | None],
        keys: Sequence[EventKey],
        now: datetime,
    ) -> Snapshot:
        rules = await read_rules(self.s, {key[0] for key in periods})
        counters = await self._lock(periods, rules, now)
        return Snapshot(counters, rules, await self.stored(keys) if keys else {})

    async def _lock(
        self,
        periods: dict[CounterKey, datetime | None],
        rules: dict[uuid.UUID, LimitRules],
        now: datetime,
    ) -> dict[CounterKey, Counter]:
        rows = [
            {
                "organization_id": org,
                "id": new_id(),
                "metric": metric,
                "period_start": start,
                "period_end": periods[(org, metric, start)],
                "used": 0,
                "reserved": 0,
                "updated_at": now,
            }
            for org, metric, start in sorted(periods)
            if org in rules
        ]
        counters: dict[CounterKey, Counter] = {}
        for offset in range(0, len(rows), self.CHUNK):
            upsert = insert(self.s, UsageCounter).values(rows[offset : offset + self.CHUNK])
            statement = upsert.on_conflict_do_update(
                index_elements=["organization_id", "metric", "period_start"],
                set_={"used": UsageCounter.used},
            ).returning(
                UsageCounter.organization_id,
                UsageCounter.metric,
                UsageCounter.period_start,
                UsageCounter.used,
                UsageCounter.reserved,
            )
            for org, metric, start, used, reserved in await self.s.execute(statement):
                counters[(org, metric, start)] = Counter(used, reserved)
        return counters

    async def stored(self, keys: Sequence[EventKey]) -> dict[EventKey, Stored]:
        wanted = set(keys)
        found: dict[EventKey, Stored] = {}
        for offset in range(0, len(keys), self.CHUNK):
            chunk = keys[offset : offset + self.CHUNK]
            rows = await self.s.execute(
                sa.select(
                    UsageEvent.organization_id,
                    UsageEvent.idempotency_key,
                    UsageEvent.id,
                    UsageEvent.payload_hash,
                    UsageEvent.metric,
                    UsageEvent.quantity,
                    UsageEvent.cost_micros,
                    UsageEvent.occurred_at,
                ).where(
                    UsageEvent.organization_id.in_({org for org, _ in chunk}),
                    UsageEvent.idempotency_key.in_({key for _, key in chunk}),
                )
            )
            for row in rows:
                if (row[0], row[1]) in wanted:
                    found[(row[0], row[1])] = Stored(*row[2:])
        return found

    async def rollups(self, keys: Iterable[RollupKey]) -> dict[RollupKey, list[int]]:
        found: dict[RollupKey, list[int]] = {}
        d = UsageDailySummary
        for org, day, metric, model, provider, feature in keys:
            row = (
                await self.s.execute(
                    sa.select(
                        d.quantity,
                        d.event_count,
                        d.input_tokens,
                        d.output_tokens,
                        d.cached_tokens,
                        d.total_tokens,
                        d.cost_micros,
                    ).where(
                        d.organization_id == org,
                        d.day == day,
                        d.metric == metric,
                        d.model == model,
                        d.provider == provider,
                        d.feature == feature,
                    )
                )
            ).one_or_none()
            if row is not None:
                found[(org, day, metric, model, provider, feature)] = [int(v) for v in row]
        return found

    async def users(
        self, pairs: set[tuple[uuid.UUID, uuid.UUID]]
    ) -> set[tuple[uuid.UUID, uuid.UUID]]:
        found: set[tuple[uuid.UUID, uuid.UUID]] = set()
        wanted = sorted(pairs)
        for offset in range(0, len(wanted), self.CHUNK):
            chunk = wanted[offset : offset + self.CHUNK]
            rows = await self.s.execute(
                sa.select(User.organization_id, User.id).where(
                    User.organization_id.in_({org for org, _ in chunk}),
                    User.id.in_({user for _, user in chunk}),
                )
            )
            found.update((org, user) for org, user in rows if (org, user) in pairs)
        return found

    async def peek(self, counters: Iterable[CounterKey]) -> dict[CounterKey, Counter]:
        found: dict[CounterKey, Counter] = {}
        for org, metric, start in counters:
            row = (
                await self.s.execute(
                    sa.select(UsageCounter.used, UsageCounter.reserved).where(
                        UsageCounter.organization_id == org,
                        UsageCounter.metric == metric,
                        UsageCounter.period_start == start,
                    )
                )
            ).one_or_none()
            if row is not None:
                found[(org, metric, start)] = Counter(row[0], row[1])
        return found

    async def prices(self, models: set[str]) -> list[Price]:
        rows = await self.s.scalars(
            sa.select(ModelPricing).where(
                ModelPricing.model.in_(models), ModelPricing.is_active.is_(True)
            )
        )
        return [
            Price(
                p.model,
                p.provider,
                p.input_micros_per_million,
                p.cached_input_micros_per_million,
                p.output_micros_per_million,
                p.effective_from,
                p.effective_to,
            )
            for p in rows
        ]

    async def expire_lapsed(
        self, counters: Iterable[CounterKey], now: datetime
    ) -> dict[CounterKey, int]:
        freed: dict[CounterKey, int] = {}
        for org, metric, start in counters:
            free = (
                sa.select(UsageReservation.id)
                .where(
                    UsageReservation.organization_id == org,
                    UsageReservation.metric == metric,
                    UsageReservation.period_start == start,
                    UsageReservation.status == ReservationStatus.HELD,
                    UsageReservation.expires_at <= now,
                )
                .with_for_update(skip_locked=True)
            )
            total = sum(
                await self.s.scalars(
                    sa.update(UsageReservation)
                    .where(
                        UsageReservation.organization_id == org,
                        UsageReservation.id.in_(free.scalar_subquery()),
                        UsageReservation.status == ReservationStatus.HELD,
                    )
                    .values(status=ReservationStatus.EXPIRED, finished_at=now)
                    .returning(UsageReservation.quantity),
                    execution_options={"synchronize_session": False},
                )
            )
            if total:
                freed[(org, metric, start)] = total
        return freed

    @contextlib.asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        async with self.s.begin_nested():  # a race undoes this attempt alone
            yield

    async def write(
        self, decision: Decision, now: datetime, meanwhile: Callable[[], None] | None = None
    ) -> None:
        await self._write(decision, now)
        if meanwhile is not None:
            meanwhile()

    async def _write(self, decision: Decision, now: datetime) -> None:
        if decision.events:
            rows = [
                {
                    "organization_id": item.org_id,
                    "id": event_id,
                    "idempotency_key": item.event.idempotency_key,
                    "payload_hash": item.fingerprint,
                    "metric": item.meter.code,
                    "quantity": item.event.quantity,
                    "user_id": item.event.user_id,
                    "subscription_id": item.event.subscription_id,
                    "feature": item.event.feature,
                    "model": item.event.model,
                    "provider": item.event.provider,
                    "input_tokens": item.event.input_tokens,
                    "output_tokens": item.event.output_tokens,
                    "cached_tokens": item.event.cached_tokens,
                    "total_tokens": item.event.input_tokens + item.event.output_tokens,
                    "cost_micros": cost,
                    "cost_currency": "USD",
                    "credits_used": item.event.credits_used,
                    "request_id": item.event.request_id,
                    "batch_id": item.event.batch_id,
                    "endpoint": item.event.endpoint,
                    "response_time_ms": item.event.response_time_ms,
                    "properties": item.event.properties,
                    "occurred_at": item.occurred,
                    "recorded_at": now,
                }
                for item, event_id, cost in decision.events
            ]
            inserted = 0
            for offset in range(0, len(rows), self.CHUNK):
                result = await self.s.execute(
                    insert(self.s, UsageEvent)
                    .values(rows[offset : offset + self.CHUNK])
                    .on_conflict_do_nothing(index_elements=["organization_id", "idempotency_key"])
                    .returning(UsageEvent.id)
                )
                inserted += len(result.all())
            if inserted != len(rows):
                raise Raced
        for (org, metric, start), counter in sorted(decision.counters.items()):
            await self.s.execute(
                sa.update(UsageCounter)
                .where(
                    UsageCounter.organization_id == org,
                    UsageCounter.metric == metric,
                    UsageCounter.period_start == start,
                )
                .values(used=counter.used, reserved=counter.reserved, updated_at=now),
                execution_options={"synchronize_session": False},
            )
        for (org, day, metric, model, provider, feature), amounts in sorted(
            decision.rollups.items()
        ):
            names = (
                "quantity",
                "event_count",
                "input_tokens",
                "output_tokens",
                "cached_tokens",
                "total_tokens",
                "cost_micros",
            )
            statement = insert(self.s, UsageDailySummary).values(
                organization_id=org,
                id=new_id(),
                day=day,
                metric=metric,
                model=model,
                provider=provider,
                feature=feature,
                updated_at=now,
                **dict(zip(names, amounts, strict=True)),
            )
            excluded = statement.excluded
            await self.s.execute(
                statement.on_conflict_do_update(
                    index_elements=ROLLUP_KEY,
                    set_={
                        **{
                            name: getattr(UsageDailySummary, name) + getattr(excluded, name)
                            for name in names
                        },
                        "updated_at": excluded.updated_at,
                    },
                )
            )
        for ((org, metric, start), percent), (limit, used) in decision.alerts.items():
            await self.s.execute(
                insert(self.s, UsageAlert)
                .values(
                    organization_id=org,
                    id=new_id(),
                    metric=metric,
                    period_start=start,
                    threshold_percent=percent,
                    limit_value=limit,
                    used=used,
                    crossed_at=now,
                )
                .on_conflict_do_nothing(index_elements=ALERT_KEY)
            )
            if self.events is not None:
                await self.events.emit_once(
                    self.s,
                    org,
                    UsageThresholdReached(
                        metric=metric,
                        period_start=start,
                        threshold_percent=percent,
                        limit=limit,
                        used=used,
                    ),
                    key=threshold_key(metric, start, percent),
                )

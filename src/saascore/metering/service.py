"""Usage metering with exact limits: record, check, reserve/settle/release, rollups, pricing.

Exactness comes from where the decision is made: on the organisation's counter row for the
metric and period, while that row is locked. Two racing requests cannot both take the last
units: the second waits for the first's lock and then sees its increment. One event on
PostgreSQL is decided and written by one conditional statement (`fastpath`); batches, group
commit, SQLite and calls in a caller's session lock the counters, decide in Python and write
set-wise (`batch`).

A record is idempotent by its key, which is unique per organisation in `usage_events`: a retry
is answered "duplicate" (even when the quota is now full), the same key with another event is
a conflict. Counters are keyed by period, so a new month (or day) starts at zero without a
reset job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import operator
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService, audited_bus
from saascore.config import DatabaseBackend
from saascore.events.bus import EventBus
from saascore.events.catalog import LimitOverridden, LimitOverrideCleared
from saascore.kit import metrics
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.errors import (
    DatabaseUnavailable,
    DomainError,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
)
from saascore.kit.ids import new_id
from saascore.kit.sql import insert
from saascore.kit.time import utcnow
from saascore.metering import fastpath
from saascore.metering.batch import (
    Decision,
    Pending,
    PostgresStore,
    SessionStore,
    price_of,
    record_batch,
)
from saascore.metering.errors import (
    LimitExceeded,
    ReservationNotFound,
    ReservationNotHeld,
    StorageUnderflow,
    UnknownMetric,
)
from saascore.metering.group import GroupCommit
from saascore.metering.values import (
    BIGINT_MAX,
    EPOCH,
    METER_CACHE_SECONDS,
    STORAGE,
    TOKENS,
    BatchOutcome,
    CheckResult,
    Limit,
    LimitRules,
    MeterInfo,
    RecordResult,
    StorageLimitResult,
    SummaryBy,
    SummaryRow,
    TokenLimitResult,
    UsageEventIn,
    UsageSnapshot,
    unlimited,
)
from saascore.models import (
    Aggregation,
    Meter,
    Organization,
    PlanLimit,
    ReservationStatus,
    SubscriptionPlan,
    UsageCounter,
    UsageDailySummary,
    UsageEvent,
    UsageLimits,
    UsageReservation,
)
from saascore.tenancy.accounts import usage_account

__all__ = [
    "BatchOutcome",
    "CheckResult",
    "Limit",
    "RecordResult",
    "StorageLimitResult",
    "SummaryBy",
    "SummaryRow",
    "TokenLimitResult",
    "UsageEventIn",
    "UsageService",
    "UsageSnapshot",
]

logger = logging.getLogger("saascore.metering")

#: How often a write that PostgreSQL aborted to break a deadlock is tried again.
DEADLOCK_RETRIES = 5
#: Events happen before this; a later one's month would end past the calendar's end.
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _expired(reservation_id: uuid.UUID) -> ReservationNotHeld:
    return ReservationNotHeld(
        f"reservation {reservation_id} is expired",
        reservation_id=str(reservation_id),
        status="expired",
    )


#: Numeric event fields and their largest value (the columns' ranges).
_NUMBERS = (
    ("quantity", BIGINT_MAX),
    ("input_tokens", BIGINT_MAX),
    ("output_tokens", BIGINT_MAX),
    ("cached_tokens", BIGINT_MAX),
    ("credits_used", BIGINT_MAX),
    ("response_time_ms", 2**31 - 1),
)
#: Text event fields and their longest length (the columns' lengths).
_TEXTS = (
    ("idempotency_key", 255),
    ("feature", 100),
    ("model", 255),
    ("provider", 50),
    ("request_id", 255),
    ("batch_id", 255),
    ("endpoint", 255),
)


_NUMBER_VALUES = operator.attrgetter(*(name for name, _ in _NUMBERS))
_TEXT_VALUES = operator.attrgetter(*(name for name, _ in _TEXTS[1:]))


def _plainly_valid(event: UsageEventIn) -> bool:
    """Whether the event's fields are plain ints and texts that `_check_fields` accepts: the
    common case, told without its loops."""
    quantity, input_tokens, output_tokens, cached, credits, response_ms = _NUMBER_VALUES(event)
    feature, model, provider, request_id, batch_id, endpoint = _TEXT_VALUES(event)
    key = event.idempotency_key
    return (
        type(quantity) is int
        and type(input_tokens) is int
        and type(output_tokens) is int
        and type(cached) is int
        and type(credits) is int
        and 0 <= quantity <= BIGINT_MAX
        and input_tokens >= 0
        and output_tokens >= 0
        and input_tokens + output_tokens <= BIGINT_MAX
        and 0 <= cached <= BIGINT_MAX
        and 0 <= credits <= BIGINT_MAX
        and (response_ms is None or (type(response_ms) is int and 0 <= response_ms < 2**31))
        and type(key) is str
        and 0 < len(key) <= 255
        and (feature is None or (type(feature) is str and len(feature) <= 100))
        and (model is None or (type(model) is str and len(model) <= 255))
        and (provider is None or (type(provider) is str and len(provider) <= 50))
        and (request_id is None or (type(request_id) is str and len(request_id) <= 255))
        and (batch_id is None or (type(batch_id) is str and len(batch_id) <= 255))
        and (endpoint is None or (type(endpoint) is str and len(endpoint) <= 255))
    )


def _check_fields(event: UsageEventIn) -> None:
    """Refuse the first field the database would refuse (`InvalidInput`)."""
    for name, ceiling in _NUMBERS:
        value = getattr(event, name)
        if value is not None and value < 0:
            raise InvalidInput(f"the {name} must not be negative", field=name)
        if value is not None and value > ceiling:
            raise InvalidInput(f"the {name} must be at most {ceiling}", field=name)
    if event.input_tokens + event.output_tokens > BIGINT_MAX:
        raise InvalidInput("input_tokens + output_tokens is too large", field="input_tokens")
    if not event.idempotency_key:
        raise InvalidInput("an event needs an idempotency key", field="idempotency_key")
    for name, length in _TEXTS:
        value = getattr(event, name)
        if value is not None and len(value) > length:
            raise InvalidInput(f"{name} is longer than {length} characters", field=name)


def _result(outcome: RecordResult | DomainError) -> RecordResult:
    """A batch of one's outcome, as `record` answers it: the result, or the refusal raised."""
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


def _batch_outcome(
    index: int, event: UsageEventIn, outcome: RecordResult | Exception
) -> BatchOutcome:
    if isinstance(outcome, RecordResult):
        return BatchOutcome(index, event.idempotency_key, outcome.status, outcome.event_id)
    code = outcome.code if isinstance(outcome, DomainError) else "invalid_input"
    message = outcome.message if isinstance(outcome, DomainError) else str(outcome)
    status: Literal["refused", "invalid"] = (
        "refused" if isinstance(outcome, LimitExceeded) else "invalid"
    )
    return BatchOutcome(index, event.idempotency_key, status, code=code, message=message)


class UsageService:
    """Usage and limits of organisations. Methods take `session=` to join a unit of work."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        group_commit: bool = True,
        group_commit_max_events: int = 256,
        events: EventBus | None = None,
    ) -> None:
        self.database = database
        self.clock = clock
        self.events = events if events is not None else audited_bus(AuditService(database))
        #: Coalesce concurrent `record` calls into shared transactions (PostgreSQL; see `group`).
        self.group_commit = group_commit
        if group_commit_max_events < 1:
            raise ValueError("group_commit_max_events must be at least 1")
        self.group_commit_max_events = group_commit_max_events
        self._groups: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, GroupCommit[Pending, RecordResult]
        ] = weakref.WeakKeyDictionary()
        self._meters: dict[str, MeterInfo] = {}
        self._meters_loaded_at = -math.inf

    # --- recording -------------------------------------------------------------------------
    async def record(
        self,
        org_id: uuid.UUID,
        metric: str,
        quantity: int,
        *,
        idempotency_key: str,
        session: AsyncSession | None = None,
        **fields: Any,
    ) -> RecordResult:
        """Check the limit and record in one atomic step.

        Over a hard limit, raises `LimitExceeded(metric, limit, used, requested)` and records
        nothing. A retry with the same key returns the first result with status "duplicate";
        the same key with a different event raises `IdempotencyConflict`. `fields` are the
        other `UsageEventIn` fields (`user_id`, `feature`, `model`, `properties`, ...).
        """
        event = UsageEventIn(
            metric=metric, quantity=quantity, idempotency_key=idempotency_key, **fields
        )
        if session is None and self.database.backend is DatabaseBackend.POSTGRESQL:
            item = self._pending(org_id, event, await self._cached_meter(event.metric), True)
            if self.group_commit:
                return await self._group().submit(item)
            return await self._record_one(item)
        async with self.database.scope(session) as s:
            return await self._record(s, org_id, event, enforce=True)

    async def record_many(
        self,
        events: Sequence[UsageEventIn],
        *,
        org_id: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> list[BatchOutcome]:
        """Record a batch in one transaction, in order, each event on its own terms: accepted,
        duplicate (of an earlier batch or of an event earlier in this one), refused by a hard
        limit (`code` says why) or invalid. Events name their organisation or take `org_id`.

        Decided as one `record` after another would be, and written set-wise (see `batch`)."""
        outcomes: list[BatchOutcome | None] = [None] * len(events)
        items: list[Pending] = []
        positions: list[int] = []
        meters: dict[str, MeterInfo] = {}
        periods: dict[str, tuple[datetime, datetime | None]] = {}
        for index, event in enumerate(events):
            organization = event.organization_id or org_id
            try:
                if organization is None:
                    raise InvalidInput("the event names no organisation")
                meter = meters.get(event.metric)
                if meter is None:
                    if session is not None:  # its transaction may hold meters others cannot see
                        meter = await self._meter(session, event.metric)
                    else:
                        meter = await self._cached_meter(event.metric)
                    meters[event.metric] = meter
                items.append(self._pending(organization, event, meter, True, periods))
            except (DomainError, ValueError, TypeError) as error:
                outcomes[index] = _batch_outcome(index, event, error)
                continue
            positions.append(index)
        if items:
            answered: list[Decision] = []  # the decision the outcomes were made from

            def answer(decision: Decision) -> None:
                for index, outcome in zip(positions, decision.outcomes, strict=True):
                    outcomes[index] = _batch_outcome(index, events[index], outcome)
                answered[:] = [decision]

            if session is None and self.database.backend is DatabaseBackend.POSTGRESQL:
                # The answers are made while the server writes (again if decided again).
                decision = await self._record_postgres(items, meanwhile=answer)
            else:
                async with self.database.scope(session) as s:
                    decision = await self._record_batch(s, items)
            if not answered or answered[0] is not decision:
                answer(decision)
        return [outcome for outcome in outcomes if outcome is not None]

    async def log_token_usage(
        self,
        *,
        org_id: uuid.UUID,
        user_id: uuid.UUID | None = None,
        feature: str | None = None,
        model: str | None = None,
        provider: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_tokens: int = 0,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> RecordResult | None:
        """Seed 000's token log: record an LLM call's tokens and cost after the fact.

        Never raises into the caller and never refuses (the tokens are spent; use
        `check_token_limit` or `reserve` before the call to enforce a limit). It runs in a
        transaction of its own; a failure is logged with the whole event and counted in
        `saascore_usage_log_failures_total`, then None is returned.
        """
        event = UsageEventIn(
            metric=TOKENS,
            quantity=input_tokens + output_tokens,
            idempotency_key=idempotency_key or f"log:{new_id()}",
            user_id=user_id,
            feature=feature,
            model=model,
            provider=provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            **fields,
        )
        try:
            if self.database.backend is DatabaseBackend.POSTGRESQL:
                item = self._pending(org_id, event, await self._cached_meter(event.metric), False)
                if self.group_commit:
                    return await self._group().submit(item)
                return await self._record_one(item)
            async with self.database.transaction() as s:
                return await self._record(s, org_id, event, enforce=False)
        except Exception:
            metrics.USAGE_LOG_FAILURES.inc()
            logger.exception(
                "token usage not recorded: organization_id=%s event=%r", org_id, asdict(event)
            )
            return None

    def _validate(self, event: UsageEventIn, meter: MeterInfo, now: datetime) -> datetime:
        """The event's time, once its fields are checked: whatever the database would refuse
        is refused here, so that one bad event cannot fail the batch it shares."""
        if not _plainly_valid(event):
            _check_fields(event)
        if meter.code == STORAGE:
            raise InvalidInput(
                "storage is a gauge: change it with update_storage_used", metric=meter.code
            )
        occurred = event.occurred_at or now
        if occurred.tzinfo is None:
            raise InvalidInput("occurred_at must carry a time zone", field="occurred_at")
        if not EPOCH <= occurred < _LATEST:  # its period must end within the calendar
            raise InvalidInput("occurred_at must fall between 1970 and 9998", field="occurred_at")
        return occurred

    async def _record_one(self, item: Pending) -> RecordResult:
        """One event on PostgreSQL in a transaction of its own: one statement, except on a
        `max` meter (not one increment), which takes the batch engine."""
        if item.meter.aggregation is not Aggregation.MAX:
            return await self._record_fast(item)
        return _result((await self._record_postgres([item])).outcomes[0])

    async def _record_fast(
        self, item: Pending, *, swept: bool = False, deadlocks: int = 0
    ) -> RecordResult:
        """One event on PostgreSQL in one statement, one round trip (see `fastpath`)."""
        org_id, event, meter, enforce = item.org_id, item.event, item.meter, item.enforce
        occurred, period_start, period_end = item.occurred, item.period_start, item.period_end
        fingerprint, increment, now = item.fingerprint, item.increment, self.clock()
        parameters = (
            org_id,
            meter.code,
            event.quantity,
            increment,
            enforce,
            period_start,
            period_end,
            new_id(),
            event.idempotency_key,
            fingerprint,
            event.user_id,
            event.subscription_id,
            event.feature,
            event.model,
            event.provider,
            event.input_tokens,
            event.output_tokens,
            event.cached_tokens,
            event.credits_used,
            event.request_id,
            event.batch_id,
            event.endpoint,
            event.response_time_ms,
            json.dumps(event.properties),
            occurred,
            now,
            occurred.astimezone(UTC).date(),
            new_id(),
            new_id(),
            new_id(),
            new_id(),
        )
        row, refused, deadlock = None, False, None
        async with self.database.driver() as driver:
            try:
                row = await driver.fetchrow(fastpath.RECORD, *parameters)
            except asyncpg.DeadlockDetectedError as error:  # lost to a batch with a copy
                deadlock = error
            except asyncpg.PostgresError as error:
                if error.sqlstate != fastpath.LIMIT_EXCEEDED_SQLSTATE:
                    raise
                refused = True
        if deadlock is not None:
            if deadlocks + 1 >= DEADLOCK_RETRIES:
                raise deadlock
            return await self._record_fast(item, swept=swept, deadlocks=deadlocks + 1)
        if refused:
            if not swept and await self.sweep(org_id=org_id, metric=meter.code):
                return await self._record_fast(item, swept=True)
            metrics.USAGE_REFUSED.labels(meter.code).inc()
            snapshot = await self.usage(org_id, meter.code)
            assert snapshot.limit is not None
            raise LimitExceeded(
                meter.code, snapshot.limit, snapshot.used + snapshot.reserved, increment
            )
        assert row is not None
        if not row["organization_found"]:
            raise NotFound(f"no organisation {org_id}", organization=str(org_id))
        limit_value = row["limit_value"]
        if row["event_id"] is None:
            # A duplicate: an earlier event with this key in this period (answered from this
            # statement), one of another period, or a copy that committed while this
            # statement waited for it (then not in this statement's snapshot).
            same_period = (
                row["previous_id"] is not None
                and meter.period(row["previous_occurred"])[0] == period_start
            )
            if same_period:
                if row["previous_hash"] != fingerprint:
                    raise IdempotencyConflict(
                        f"idempotency key {event.idempotency_key!r} was used for a different event",
                        idempotency_key=event.idempotency_key,
                    )
                return RecordResult(
                    row["previous_id"],
                    "duplicate",
                    meter.code,
                    event.quantity,
                    int(row["current_used"] or 0),
                    limit_value,
                    cost_micros=int(row["previous_cost"]),
                )
            # Else read it now (it reports the counter of its own period).
            async with self.database.session(readonly=True) as s:
                previous = await self._previous(s, org_id, event.idempotency_key, fingerprint)
            if previous is None:  # the copy rolled back meanwhile: try again
                return await self._record_fast(item)
            return previous
        has_tokens = event.input_tokens or event.output_tokens
        if event.model is not None and has_tokens and not row["priced"]:
            self._unpriced(event)
        used, reserved = int(row["used"]), int(row["reserved"])
        metrics.USAGE_RECORDED.labels(meter.code).inc()
        return RecordResult(
            event_id=row["event_id"],
            status="accepted",
            metric=meter.code,
            quantity=event.quantity,
            used=used,
            limit=limit_value,
            over_soft_limit=limit_value is not None and used + reserved > limit_value,
            cost_micros=int(row["cost_micros"]),
        )

    async def _record(
        self, s: AsyncSession, org_id: uuid.UUID, event: UsageEventIn, *, enforce: bool
    ) -> RecordResult:
        """One event through the batch engine, in the session's transaction."""
        item = self._pending(org_id, event, await self._meter(s, event.metric), enforce)
        return _result((await self._record_batch(s, [item])).outcomes[0])

    def _pending(
        self,
        org_id: uuid.UUID,
        event: UsageEventIn,
        meter: MeterInfo,
        enforce: bool,
        periods: dict[str, tuple[datetime, datetime | None]] | None = None,
    ) -> Pending:
        """The event checked and placed: its time, period and fingerprint. `periods` keeps
        each meter's last period, which most events of a batch fall in."""
        occurred = self._validate(event, meter, self.clock())
        last = periods.get(meter.code) if periods is not None else None
        if last is not None and (last[1] is None or last[0] <= occurred < last[1]):
            period_start, period_end = last
        else:
            period_start, period_end = meter.period(occurred)
            if periods is not None:
                periods[meter.code] = (period_start, period_end)
        return Pending(
            org_id, event, meter, occurred, period_start, period_end, event.fingerprint(), enforce
        )

    async def _record_batch(self, s: AsyncSession, items: Sequence[Pending]) -> Decision:
        decision = await record_batch(SessionStore(s), items, self._meters, self.clock)
        self._count(decision)
        return decision

    async def _record_postgres(
        self,
        items: Sequence[Pending],
        locked: Callable[[], None] | None = None,
        meanwhile: Callable[[Decision], None] | None = None,
    ) -> Decision:
        """A batch in a transaction of its own, over asyncpg (see `batch.PostgresStore`).

        A deadlock (a retry racing its original on another path, or a sweep) is broken by
        PostgreSQL aborting one side; a batch that lost it is decided again."""
        for attempt in range(DEADLOCK_RETRIES):
            try:
                decision = await self._record_postgres_once(items, locked, meanwhile)
            except asyncpg.DeadlockDetectedError:
                if attempt == DEADLOCK_RETRIES - 1:
                    raise
                continue
            self._count(decision)
            return decision
        raise AssertionError("unreachable")  # pragma: no cover

    async def _record_postgres_once(
        self,
        items: Sequence[Pending],
        locked: Callable[[], None] | None,
        meanwhile: Callable[[Decision], None] | None,
    ) -> Decision:
        async with self.database.driver() as driver:
            store = PostgresStore(driver)
            await store.begin()
            try:
                decision = await record_batch(
                    store, items, self._meters, self.clock, locked, meanwhile
                )
            except BaseException:
                if not driver.is_closed():
                    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                        await store.rollback()
                raise
            await store.commit()
        return decision

    def _count(self, decision: Decision) -> None:
        refused = Counter(o.metric for o in decision.outcomes if isinstance(o, LimitExceeded))
        recorded = Counter(item.meter.code for item, _, _ in decision.events)
        for metric, count in refused.items():
            metrics.USAGE_REFUSED.labels(metric).inc(count)
        for metric, count in recorded.items():
            metrics.USAGE_RECORDED.labels(metric).inc(count)
        for event in decision.unpriced:
            self._unpriced(event)

    def _group(self) -> GroupCommit[Pending, RecordResult]:
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = GroupCommit(self._flush, max_events=self.group_commit_max_events)
            self._groups[loop] = group
        return group

    async def _flush(
        self, items: list[Pending], locked: Callable[[], None]
    ) -> Sequence[RecordResult | Exception]:
        """Group commit's flush: one event by the one-statement path, more as a batch.

        If a batch fails other than by losing the database, its events are recorded one at a
        time, so that whatever failed it fails its own caller alone."""
        if len(items) == 1:
            return [await self._record_alone(items[0])]
        try:
            return (await self._record_postgres(items, locked)).outcomes
        except DatabaseUnavailable:
            raise
        except Exception:
            logger.exception(
                "a batch of %d usage events failed: recording them one by one", len(items)
            )
            return [await self._record_alone(item) for item in items]

    async def _record_alone(self, item: Pending) -> RecordResult | Exception:
        try:
            return await self._record_one(item)
        except DatabaseUnavailable:
            raise
        except Exception as error:
            return error

    async def _cached_meter(self, code: str) -> MeterInfo:
        """The meter from the cache, refreshed (in a read session of its own) when stale."""
        if code not in self._meters or self._meters_stale():
            async with self.database.session(readonly=True) as s:
                return await self._meter(s, code)
        return self._meters[code]

    async def _previous(
        self, s: AsyncSession, org_id: uuid.UUID, key: str, fingerprint: str
    ) -> RecordResult | None:
        row = (
            await s.execute(
                sa.select(
                    UsageEvent.id,
                    UsageEvent.payload_hash,
                    UsageEvent.metric,
                    UsageEvent.quantity,
                    UsageEvent.cost_micros,
                    UsageEvent.occurred_at,
                ).where(UsageEvent.organization_id == org_id, UsageEvent.idempotency_key == key)
            )
        ).one_or_none()
        if row is None:
            return None
        event_id, stored_hash, metric, quantity, cost, occurred = row
        if stored_hash != fingerprint:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used for a different event", idempotency_key=key
            )
        meter = await self._meter(s, metric)
        used, _ = await self._counter(s, org_id, metric, meter.period(occurred)[0])
        limit = await self.limit(org_id, metric, session=s)
        return RecordResult(
            event_id, "duplicate", metric, quantity, used, limit.value, cost_micros=cost
        )

    # --- checks and queries ----------------------------------------------------------------
    async def check(
        self,
        org_id: uuid.UUID,
        metric: str,
        quantity: int,
        *,
        session: AsyncSession | None = None,
    ) -> CheckResult:
        """Would `quantity` more be allowed now? Records nothing."""
        snapshot = await self.usage(org_id, metric, session=session)
        limit = Limit(snapshot.limit, snapshot.hard)
        return CheckResult(
            allowed=not limit.refuses(snapshot.used + snapshot.reserved + quantity),
            metric=metric,
            requested=quantity,
            used=snapshot.used,
            reserved=snapshot.reserved,
            limit=snapshot.limit,
            hard=snapshot.hard,
            remaining=snapshot.remaining,
        )

    async def usage(
        self, org_id: uuid.UUID, metric: str, *, session: AsyncSession | None = None
    ) -> UsageSnapshot:
        """Used, reserved and the limit for the current period."""
        now = self.clock()
        async with self.database.scope(session, readonly=True) as s:
            meter = await self._meter(s, metric)
            limit = await self.limit(org_id, metric, session=s)
            start, end = meter.period(now)
            if meter.code == STORAGE:
                used, reserved = await self._storage_used(s, org_id), 0
            else:
                used, reserved = await self._counter(s, org_id, meter.code, start)
                reserved -= await self._lapsed_holds(s, org_id, meter.code, start, now)
        return UsageSnapshot(meter.code, start, end, used, reserved, limit.value, limit.hard)

    async def limits(
        self, org_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> list[UsageSnapshot]:
        """Usage and limits of every active meter."""
        async with self.database.scope(session, readonly=True) as s:
            await self._refresh_meters(s)
            return [await self.usage(org_id, code, session=s) for code in sorted(self._meters)]

    async def summary(
        self,
        org_id: uuid.UUID,
        *,
        start: date,
        end: date,
        by: SummaryBy | str = SummaryBy.DAY,
        metric: str | None = None,
        session: AsyncSession | None = None,
    ) -> list[SummaryRow]:
        """Usage from `usage_daily_summary` between two days (inclusive), grouped `by`."""
        try:
            grouping = SummaryBy(by)
        except ValueError:
            raise InvalidInput(
                f"cannot group by {by!r}: use day, metric, model or feature", field="by"
            ) from None
        column = {
            SummaryBy.DAY: UsageDailySummary.day,
            SummaryBy.METRIC: UsageDailySummary.metric,
            SummaryBy.MODEL: UsageDailySummary.model,
            SummaryBy.FEATURE: UsageDailySummary.feature,
        }[grouping]
        query = (
            sa.select(
                column,
                sa.func.sum(UsageDailySummary.quantity),
                sa.func.sum(UsageDailySummary.event_count),
                sa.func.sum(UsageDailySummary.input_tokens),
                sa.func.sum(UsageDailySummary.output_tokens),
                sa.func.sum(UsageDailySummary.total_tokens),
                sa.func.sum(UsageDailySummary.cost_micros),
            )
            .where(
                UsageDailySummary.organization_id == org_id,
                UsageDailySummary.day >= start,
                UsageDailySummary.day <= end,
            )
            .group_by(column)
            .order_by(column)
        )
        if metric is not None:
            query = query.where(UsageDailySummary.metric == metric)
        async with self.database.scope(session, readonly=True) as s:
            rows = (await s.execute(query)).all()
        return [
            SummaryRow(str(key), *(int(value or 0) for value in values)) for key, *values in rows
        ]

    async def limit(
        self, org_id: uuid.UUID, metric: str, *, session: AsyncSession | None = None
    ) -> Limit:
        """The organisation's limit on a metric: its override, else its plan's."""
        query = (
            sa.select(
                UsageLimits.overrides,
                PlanLimit.limit_value,
                PlanLimit.is_hard,
                PlanLimit.id,
                SubscriptionPlan.monthly_token_limit,
                SubscriptionPlan.max_storage_mb,
                SubscriptionPlan.max_api_calls_per_day,
            )
            .select_from(Organization)
            .join(SubscriptionPlan, SubscriptionPlan.id == Organization.plan_id)
            .outerjoin(UsageLimits, UsageLimits.organization_id == Organization.id)
            .outerjoin(
                PlanLimit,
                sa.and_(PlanLimit.plan_id == SubscriptionPlan.id, PlanLimit.metric == metric),
            )
            .where(Organization.id == org_id)
        )
        async with self.database.scope(session, readonly=True) as s:
            row = (await s.execute(query)).one_or_none()
        if row is None:
            raise NotFound(f"no organisation {org_id}", organization=str(org_id))
        overrides, plan_limit, plan_hard, plan_limit_id, tokens, storage_mb, api_calls = row
        rules = LimitRules.of(
            overrides,
            {} if plan_limit_id is None else {metric: (plan_limit, plan_hard)},
            monthly_token_limit=tokens,
            max_storage_mb=storage_mb,
            max_api_calls_per_day=api_calls,
        )
        return rules.limit(metric)

    async def set_limit(
        self,
        org_id: uuid.UUID,
        metric: str,
        limit: int | None,
        *,
        hard: bool = True,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Limit:
        """Override the plan's limit on `metric` for one organisation (None: unlimited),
        emitting `limit.overridden` with the override before and after (nothing when the
        override is already this one)."""
        async with self.database.scope(session) as s:
            await self._meter(s, metric)
            account = await usage_account(s, org_id)
            overrides = dict(account.overrides or {})
            previous = overrides.get(metric)
            current = {"limit": unlimited(limit), "hard": hard}
            if previous != current:
                overrides[metric] = current
                account.overrides = overrides
                account.updated_at = self.clock()
                await s.flush()
                await self.events.emit(
                    s,
                    org_id,
                    LimitOverridden(metric=metric, from_=previous, to=current),
                    actor=actor,
                    target_id=metric,
                )
        return Limit(unlimited(limit), hard)

    async def clear_limit(
        self,
        org_id: uuid.UUID,
        metric: str,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Limit:
        """Drop the organisation's override: the plan's limit applies again. Emits
        `limit.override_cleared` when there was one."""
        async with self.database.scope(session) as s:
            account = await usage_account(s, org_id)
            overrides = dict(account.overrides or {})
            previous = overrides.pop(metric, None)
            if previous is not None:
                account.overrides = overrides
                account.updated_at = self.clock()
                await s.flush()
                await self.events.emit(
                    s,
                    org_id,
                    LimitOverrideCleared(metric=metric, from_=previous),
                    actor=actor,
                    target_id=metric,
                )
            return await self.limit(org_id, metric, session=s)

    # --- reservations --------------------------------------------------------------------------
    async def reserve(
        self,
        org_id: uuid.UUID,
        metric: str,
        quantity: int,
        *,
        ttl: timedelta = timedelta(minutes=5),
        idempotency_key: str | None = None,
        session: AsyncSession | None = None,
    ) -> UsageReservation:
        """Hold `quantity` against the limit before slow work; `settle` or `release` after.

        `used + reserved` never passes a hard limit. A reservation not settled within `ttl`
        expires and stops holding quota (swept on the next access, or by `sweep`).
        """
        if quantity <= 0:
            raise InvalidInput("a reservation needs a positive quantity", field="quantity")
        if ttl <= timedelta(0):
            raise InvalidInput("the time to live must be positive", field="ttl")
        now = self.clock()
        async with self.database.scope(session) as s:
            meter = await self._meter(s, metric)
            if idempotency_key is not None:
                existing = (
                    await s.scalars(
                        sa.select(UsageReservation).where(
                            UsageReservation.organization_id == org_id,
                            UsageReservation.idempotency_key == idempotency_key,
                        )
                    )
                ).one_or_none()
                if existing is not None:
                    if (existing.metric, existing.quantity) != (meter.code, quantity):
                        raise IdempotencyConflict(
                            f"idempotency key {idempotency_key!r} was used for another reservation",
                            idempotency_key=idempotency_key,
                        )
                    return existing
            await self.sweep(org_id=org_id, metric=meter.code, session=s)
            limit = await self.limit(org_id, meter.code, session=s)
            period_start, period_end = meter.period(now)
            counted = await self._bump(
                s,
                org_id,
                meter,
                period_start,
                period_end,
                used=0,
                reserved=quantity,
                limit=limit,
                now=now,
            )
            if counted is None:
                metrics.USAGE_REFUSED.labels(meter.code).inc()
                used, reserved = await self._counter(s, org_id, meter.code, period_start)
                assert limit.value is not None
                raise LimitExceeded(meter.code, limit.value, used + reserved, quantity)
            crossings = Decision()  # held quota counts towards the thresholds too
            total = sum(counted)
            crossings.add_crossings(
                (org_id, meter.code, period_start), limit.value, total - quantity, total
            )
            await SessionStore(s).write(crossings, now)
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

    async def settle(
        self,
        reservation_id: uuid.UUID,
        actual_quantity: int,
        *,
        org_id: uuid.UUID | None = None,
        session: AsyncSession | None = None,
        **fields: Any,
    ) -> RecordResult:
        """Record the real amount of a held reservation and stop holding the reserved one.

        More than was reserved is recorded only within a hard limit (else `LimitExceeded`, and
        the reservation stays held). Records a usage event keyed by the reservation.
        """
        if actual_quantity < 0:
            raise InvalidInput("the quantity must not be negative", field="actual_quantity")
        async with self.database.scope(session) as s:
            if not await self._sweep_lapsed(s, reservation_id, org_id):
                # The savepoint: a refusal below also undoes the claim, in the caller's session.
                async with s.begin_nested():
                    return await self._settle(s, reservation_id, org_id, actual_quantity, fields)
        raise _expired(reservation_id)

    async def _settle(
        self,
        s: AsyncSession,
        reservation_id: uuid.UUID,
        org_id: uuid.UUID | None,
        actual_quantity: int,
        fields: dict[str, Any],
    ) -> RecordResult:
        now = self.clock()
        reservation = await self._claim(
            s, reservation_id, org_id, ReservationStatus.SETTLED, now, actual_quantity
        )
        meter = await self._meter(s, reservation.metric)
        limit = await self.limit(reservation.organization_id, meter.code, session=s)
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
        if extra > 0 and limit.hard and limit.value is not None:
            statement = statement.where(
                UsageCounter.used + UsageCounter.reserved + extra <= limit.value
            )
        counted = (await s.execute(statement)).one_or_none()
        if counted is None:
            used, reserved = await self._counter(
                s, reservation.organization_id, meter.code, reservation.period_start
            )
            assert limit.value is not None
            raise LimitExceeded(meter.code, limit.value, used + reserved, extra)
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
        _check_fields(event)  # as `record` does; the savepoint undoes the claim on a refusal
        # The usage counts in the period that held the quota: if that period has ended
        # meanwhile, the event is dated when the reservation was made, inside it.
        occurred = now
        if meter.period(now)[0] != reservation.period_start:
            occurred = reservation.created_at
        org = reservation.organization_id
        item = Pending(
            org, event, meter, occurred, reservation.period_start, None, event.fingerprint(), False
        )
        store, written = SessionStore(s), Decision()
        prices = await store.prices({event.model}) if event.model is not None else []
        cost = price_of(item, prices, written.unpriced)
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
        return RecordResult(
            event_id,
            "accepted",
            meter.code,
            actual_quantity,
            used,
            limit.value,
            limit.value is not None and used + reserved > limit.value,
            cost,
        )

    async def release(
        self,
        reservation_id: uuid.UUID,
        *,
        org_id: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> UsageReservation:
        """Stop holding a reservation's quota without recording usage."""
        now = self.clock()
        async with self.database.scope(session) as s:
            if not await self._sweep_lapsed(s, reservation_id, org_id):
                reservation = await self._claim(
                    s, reservation_id, org_id, ReservationStatus.RELEASED, now, None
                )
                await self._give_back(
                    s,
                    reservation.organization_id,
                    reservation.metric,
                    reservation.period_start,
                    reserved=reservation.quantity,
                )
                return reservation
        raise _expired(reservation_id)

    async def _sweep_lapsed(
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
        await self.sweep(org_id=lapsed[0], metric=lapsed[1], session=s)
        return True

    async def sweep(
        self,
        *,
        org_id: uuid.UUID | None = None,
        metric: str | None = None,
        session: AsyncSession | None = None,
    ) -> int:
        """Expire held reservations past their time, giving their quota back. Returns how many."""
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
        async with self.database.scope(session) as s:
            expired = (
                await s.execute(statement, execution_options={"synchronize_session": False})
            ).all()
            for organization, expired_metric, period_start, quantity in expired:
                await self._give_back(
                    s, organization, expired_metric, period_start, reserved=quantity
                )
        return len(expired)

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
            await self.sweep(org_id=current.organization_id, metric=current.metric, session=s)
            state = "expired"
        else:
            state = current.status.value
        raise ReservationNotHeld(
            f"reservation {reservation_id} is {state}",
            reservation_id=str(reservation_id),
            status=state,
        )

    # --- seed 000's storage and token calls ----------------------------------------------------
    async def check_storage_limit(
        self, org_id: uuid.UUID, additional_bytes: int, *, session: AsyncSession | None = None
    ) -> StorageLimitResult:
        """May the organisation store `additional_bytes` more? O(1): one row read."""
        async with self.database.scope(session, readonly=True) as s:
            used = await self._storage_used(s, org_id)
            limit = await self.limit(org_id, STORAGE, session=s)
        remaining = None if limit.value is None else max(limit.value - used, 0)
        return StorageLimitResult(
            allowed=not limit.refuses(used + additional_bytes),
            used_bytes=used,
            limit_bytes=limit.value,
            remaining_bytes=remaining,
        )

    async def update_storage_used(
        self, org_id: uuid.UUID, delta_bytes: int, *, session: AsyncSession | None = None
    ) -> int:
        """Add (or, negative, subtract) stored bytes atomically; returns the new total.

        A decrement below zero is refused (`InvalidInput`, code `storage_underflow`), and so is
        an increment past a hard storage limit (`LimitExceeded`); neither changes anything.
        """
        now = self.clock()
        async with self.database.scope(session) as s:
            limit = await self.limit(org_id, STORAGE, session=s)
            account = await usage_account(s, org_id, lock=False)
            statement = (
                sa.update(UsageLimits)
                .where(
                    UsageLimits.organization_id == account.organization_id,
                    UsageLimits.storage_used_bytes + delta_bytes >= 0,
                )
                .values(
                    storage_used_bytes=UsageLimits.storage_used_bytes + delta_bytes, updated_at=now
                )
                .returning(UsageLimits.storage_used_bytes)
            )
            if delta_bytes > 0 and limit.hard and limit.value is not None:
                statement = statement.where(
                    UsageLimits.storage_used_bytes + delta_bytes <= limit.value
                )
            total = (
                await s.execute(statement, execution_options={"synchronize_session": False})
            ).scalar_one_or_none()
            if total is not None:
                return int(total)
            used = await self._storage_used(s, org_id)
            if delta_bytes < 0:
                raise StorageUnderflow(
                    f"cannot free {-delta_bytes} bytes: only {used} are in use",
                    used_bytes=used,
                    delta_bytes=delta_bytes,
                )
            metrics.USAGE_REFUSED.labels(STORAGE).inc()
            assert limit.value is not None
            raise LimitExceeded(STORAGE, limit.value, used, delta_bytes)

    async def check_token_limit(
        self, org_id: uuid.UUID, tokens: int, *, session: AsyncSession | None = None
    ) -> TokenLimitResult:
        result = await self.check(org_id, TOKENS, tokens, session=session)
        return TokenLimitResult(
            allowed=result.allowed,
            used_tokens=result.used + result.reserved,
            limit_tokens=result.limit,
            remaining_tokens=result.remaining,
        )

    # --- internals -----------------------------------------------------------------------------
    def _meters_stale(self) -> bool:
        return self.clock().timestamp() - self._meters_loaded_at > METER_CACHE_SECONDS

    async def _meter(self, s: AsyncSession, code: str) -> MeterInfo:
        meter = self._meters.get(code)
        if meter is None or self._meters_stale():
            await self._refresh_meters(s)
            meter = self._meters.get(code)
        if meter is None:
            raise UnknownMetric(f"no meter {code!r}", metric=code)
        return meter

    async def _refresh_meters(self, s: AsyncSession) -> None:
        rows = await s.execute(
            sa.select(Meter.code, Meter.aggregation, Meter.reset_period).where(
                Meter.is_active.is_(True)
            )
        )
        self._meters = {code: MeterInfo(code, agg, reset) for code, agg, reset in rows}
        self._meters_loaded_at = self.clock().timestamp()

    async def _storage_used(self, s: AsyncSession, org_id: uuid.UUID) -> int:
        used = await s.scalar(
            sa.select(UsageLimits.storage_used_bytes).where(UsageLimits.organization_id == org_id)
        )
        return int(used or 0)

    async def _lapsed_holds(
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

    async def _counter(
        self, s: AsyncSession, org_id: uuid.UUID, metric: str, period_start: datetime
    ) -> tuple[int, int]:
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

    async def _bump(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        meter: MeterInfo,
        period_start: datetime,
        period_end: datetime | None,
        *,
        used: int,
        reserved: int,
        limit: Limit,
        now: datetime,
    ) -> tuple[int, int] | None:
        """Add to the period's counter in one statement, unless a hard limit refuses it.
        Returns the counter's new (used, reserved), or None when refused."""
        cap = limit.value if limit.hard else None
        values = sa.select(
            sa.literal(org_id, sa.Uuid()),
            sa.literal(new_id(), sa.Uuid()),
            sa.literal(meter.code),
            sa.literal(period_start, UsageCounter.period_start.type),
            sa.literal(period_end, UsageCounter.period_end.type),
            sa.literal(used, sa.BigInteger()),
            sa.literal(reserved, sa.BigInteger()),
            sa.literal(now, UsageCounter.updated_at.type),
        ).where(
            sa.true()
            if cap is None
            else sa.literal(used + reserved, sa.BigInteger()) <= sa.literal(cap, sa.BigInteger())
        )
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
        if meter.aggregation is Aggregation.MAX:
            new_used: Any = sa.case(
                (excluded.used > UsageCounter.used, excluded.used), else_=UsageCounter.used
            )
            over = new_used + UsageCounter.reserved + excluded.reserved
        else:
            new_used = UsageCounter.used + excluded.used
            over = UsageCounter.used + UsageCounter.reserved + excluded.used + excluded.reserved
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
            where=None if cap is None else over <= cap,
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
        used: int = 0,
        reserved: int = 0,
    ) -> None:
        await s.execute(
            sa.update(UsageCounter)
            .where(
                UsageCounter.organization_id == org_id,
                UsageCounter.metric == metric,
                UsageCounter.period_start == period_start,
            )
            .values(
                used=UsageCounter.used - used,
                reserved=UsageCounter.reserved - reserved,
                updated_at=self.clock(),
            ),
            execution_options={"synchronize_session": False},
        )

    def _unpriced(self, event: UsageEventIn) -> None:
        metrics.USAGE_UNPRICED_MODEL.labels(event.provider or "", event.model or "").inc()
        logger.warning(
            "no price for model %r (provider %r): recorded at cost 0", event.model, event.provider
        )

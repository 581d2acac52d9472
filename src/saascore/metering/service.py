"""Usage metering with exact limits: record, check, reserve/settle/release, rollups, pricing.

Exactness comes from where the decision is made: on the organisation's counter row for the
metric and period, while that row is locked. Two racing requests cannot both take the last
units: the second waits for the first's lock and then sees its increment. A record is
idempotent by its key, which is unique per organisation in `usage_events`: a retry is answered
"duplicate" (even when the quota is now full), the same key with another event is a conflict.
Counters are keyed by period, so a new month (or day) starts at zero without a reset job.

`UsageService` is the facade; the work lives along these seams:

- `decision`: the pure decision (checks, counters, rollups, thresholds, outcomes), no I/O;
- `batch`: the engine that locks, decides and writes a batch through a store;
- `postgres`: PostgreSQL's statements: the one-statement `record` and the batch store;
- `session_store`: the batch store over a SQLAlchemy session (SQLite, a caller's session);
- `limits`: where an organisation's limit comes from, and limit overrides;
- `reservations`: reserve, settle, release and sweep;
- `group`: group commit, concurrent `record` calls sharing transactions.

Which path a record takes: one event on PostgreSQL without a session is one statement
(`postgres.RECORD`), or joins group commit; `record_many`, group commit's batches, a `max`
meter, SQLite and calls in a caller's session take the batch engine. Likewise, `reserve` and
`settle` without a session on PostgreSQL are one statement each (`postgres.RESERVE`,
`postgres.SETTLE`), and so is `release` (`postgres.RELEASE`); otherwise `reservations` does
the work in the session.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService, audited_bus
from saascore.config import DatabaseBackend
from saascore.events.bus import EventBus
from saascore.events.catalog import LimitOverridden, LimitOverrideCleared
from saascore.kit import metrics
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database, exact_sum, is_timeout, joined_sum
from saascore.kit.errors import (
    DatabaseUnavailable,
    DomainError,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
)
from saascore.kit.ids import new_id
from saascore.kit.time import utcnow
from saascore.metering.accounts import usage_account
from saascore.metering.announce import UsageLimitExceeded, limit_key
from saascore.metering.batch import record_batch
from saascore.metering.decision import (
    Decision,
    Outcome,
    Pending,
    accepted,
    batch_outcome,
    conflict,
    duplicate,
    overflow,
    place,
    unknown_user,
)
from saascore.metering.errors import LimitExceeded, StorageUnderflow, UnknownMetric
from saascore.metering.gauge import RESOLVED_CAP, storage_change
from saascore.metering.group import GroupCommits, one_by_one
from saascore.metering.limits import Limit, clear_override, read_limit, set_override, unlimited
from saascore.metering.postgres import (
    HELD,
    RELEASE,
    PostgresStore,
    answer,
    run_record,
    run_reserve,
    run_settle,
)
from saascore.metering.reservations import Reservations, expired, settlement
from saascore.metering.session_store import SessionStore, read_counter
from saascore.metering.values import (
    BIGINT_MAX,
    METER_CACHE_SECONDS,
    STORAGE,
    TOKENS,
    BatchOutcome,
    CheckResult,
    MeterInfo,
    RecordResult,
    StorageLimitResult,
    SummaryBy,
    SummaryRow,
    TokenLimitResult,
    UsageEventIn,
    UsageSnapshot,
)
from saascore.models import (
    Aggregation,
    Meter,
    ModelPricing,
    ReservationStatus,
    UsageDailySummary,
    UsageLimits,
    UsageReservation,
)

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


#: Refusals told that a process remembers (past it, it forgets and the outbox decides).
_TOLD_MAX = 10_000
#: Reservations a process remembers having made (past it, the oldest are forgotten: settling
#: one then reads it first).
_MADE_MAX = 10_000


def refusals(items: Sequence[Pending], decision: Decision) -> list[tuple[Pending, LimitExceeded]]:
    """The items a batch's decision refused over a hard limit, with their refusal."""
    return [
        (item, outcome)
        for item, outcome in zip(items, decision.outcomes, strict=True)
        if isinstance(outcome, LimitExceeded)
    ]


def _result(outcome: RecordResult | DomainError) -> RecordResult:
    """A batch of one's outcome, as `record` answers it: the result, or the refusal raised."""
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


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
        self._group = GroupCommits(self._flush, max_events=group_commit_max_events)
        self._meters: dict[str, MeterInfo] = {}
        self._meters_loaded_at = -math.inf
        #: The models and providers `model_pricing` names: the only ones metrics label by name.
        self._known_models: frozenset[str] = frozenset()
        self._known_providers: frozenset[str] = metrics.KNOWN_PROVIDERS
        self._reservations = Reservations(
            clock=lambda: self.clock(),
            meter=self._meter,
            unpriced=self._unpriced,
            events=self.events,
        )
        #: The (organisation, metric, period) whose refusal this process has told.
        self._told: set[tuple[uuid.UUID, str, datetime]] = set()
        #: The reservations this process made and has not settled or released, by id: their
        #: columns never change, so settling one needs no read first (`_settle_fast`).
        self._made: dict[uuid.UUID, UsageReservation] = {}

    # --- recording -------------------------------------------------------------------------
    async def record(
        self,
        org_id: uuid.UUID,
        metric: str,
        quantity: int,
        *,
        idempotency_key: str,
        backfill: bool = False,
        session: AsyncSession | None = None,
        **fields: Any,
    ) -> RecordResult:
        """Check the limit and record in one atomic step.

        Over a hard limit, raises `LimitExceeded(metric, limit, used, requested)` and records
        nothing. A retry with the same key returns the first result with status "duplicate";
        the same key with a different event raises `IdempotencyConflict`. `fields` are the
        other `UsageEventIn` fields (`user_id`, `feature`, `model`, `properties`, ...).

        `occurred_at` must lie from the start of the meter's current period to five minutes
        ahead (else `PeriodClosed`), unless `backfill=True`: recording into other periods is
        for operators and imports. A `user_id` must be a user of the organisation
        (`UnknownUser`); a counter, day total or cost past a BIGINT is `CounterOverflow`.
        """
        event = UsageEventIn(
            metric=metric, quantity=quantity, idempotency_key=idempotency_key, **fields
        )
        if session is None and self.database.backend is DatabaseBackend.POSTGRESQL:
            meter = await self._cached_meter(event.metric)
            item = self._place(org_id, event, meter, True, backfill=backfill)
            if self.group_commit and not item.closed:
                return await self._group.submit(item)
            return await self._record_one(item)
        async with self.database.scope(session) as s:
            meter = await self._meter(s, event.metric)
            item = self._place(org_id, event, meter, True, backfill=backfill)
            outcome = (await self._record_batch(s, [item])).outcomes[0]
        if session is None and isinstance(outcome, LimitExceeded):
            await self._tell_refused([(item, outcome)])
        # Raised once the transaction has ended: a refusal keeps the lapsed reservations it
        # expired, as on the other paths.
        return _result(outcome)

    async def record_many(
        self,
        events: Sequence[UsageEventIn],
        *,
        org_id: uuid.UUID | None = None,
        backfill: bool = False,
        session: AsyncSession | None = None,
    ) -> list[BatchOutcome]:
        """Record a batch in one transaction, in order, each event on its own terms: accepted,
        duplicate (of an earlier batch or of an event earlier in this one), refused by a hard
        limit (`code` says why) or invalid. Events name their organisation or take `org_id`.
        `backfill` as for `record`.

        Decided as one `record` after another would be, and written set-wise (see `batch`)."""
        outcomes: list[BatchOutcome | None] = [None] * len(events)
        items: list[Pending] = []
        positions: list[int] = []
        meters: dict[str, MeterInfo] = {}
        unknown: dict[str, UnknownMetric] = {}
        periods: dict[str, tuple[datetime, datetime | None]] = {}
        for index, event in enumerate(events):
            organization = event.organization_id or org_id
            try:
                if organization is None:
                    raise InvalidInput("the event names no organisation")
                if event.metric in unknown:  # looked up once a batch, like the known ones
                    raise unknown[event.metric]
                meter = meters.get(event.metric)
                if meter is None:
                    try:
                        if session is not None:  # its transaction may hold unseen meters
                            meter = await self._meter(session, event.metric)
                        else:
                            meter = await self._cached_meter(event.metric)
                    except UnknownMetric as error:
                        unknown[event.metric] = error
                        raise
                    meters[event.metric] = meter
                items.append(
                    self._place(organization, event, meter, True, periods, backfill=backfill)
                )
            except (DomainError, ValueError, TypeError) as error:
                outcomes[index] = batch_outcome(index, event, error)
                continue
            positions.append(index)
        if items:
            answered: list[Decision] = []  # the decision the outcomes were made from

            def answer(decision: Decision) -> None:
                for index, outcome in zip(positions, decision.outcomes, strict=True):
                    outcomes[index] = batch_outcome(index, events[index], outcome)
                answered[:] = [decision]

            if session is None and self.database.backend is DatabaseBackend.POSTGRESQL:
                # The answers are made while the server writes (again if decided again).
                decision = await self._record_postgres(items, meanwhile=answer)
            else:
                async with self.database.scope(session) as s:
                    decision = await self._record_batch(s, items)
                if session is None:
                    await self._tell_refused(refusals(items, decision))
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
        `saascore_usage_log_failures_total`, then None is returned. Being after the fact, it
        may date the call in any period (`occurred_at`).
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
                meter = await self._cached_meter(event.metric)
                item = self._place(org_id, event, meter, False, backfill=True)
                if self.group_commit:
                    return await self._group.submit(item)
                return await self._record_one(item)
            async with self.database.transaction() as s:  # after the fact: any period
                return _result(await self._record(s, org_id, event, enforce=False))
        except Exception:
            metrics.USAGE_LOG_FAILURES.inc()
            logger.exception(
                "token usage not recorded: organization_id=%s event=%r", org_id, asdict(event)
            )
            return None

    async def _record_one(self, item: Pending) -> RecordResult:
        """One event on PostgreSQL in a transaction of its own: one statement, except on a
        `max` meter (not one increment), which takes the batch engine."""
        if item.meter.aggregation is not Aggregation.MAX and not item.closed:
            return await self._record_fast(item)
        return _result((await self._record_postgres([item])).outcomes[0])

    async def _record_fast(
        self, item: Pending, *, swept: bool = False, deadlocks: int = 0
    ) -> RecordResult:
        """One event on PostgreSQL in one statement, one round trip (`postgres.RECORD`).

        A refusal on a counter with lapsed reservations expires them and tries once more, as
        a batch does; a lost deadlock (to a batch with a copy of the event) tries again."""
        row, deadlock = None, None
        async with self.database.driver() as driver:
            try:
                row = await run_record(driver, item, self.clock())
            except asyncpg.DeadlockDetectedError as error:
                deadlock = error
        if deadlock is not None:
            if deadlocks + 1 >= DEADLOCK_RETRIES:
                raise deadlock
            return await self._record_fast(item, swept=swept, deadlocks=deadlocks + 1)
        if row is None:
            return await self._refused(item, swept=swept)
        result = answer(item, row, self._unpriced)
        if result is None:  # a duplicate that the statement could not answer: read it now
            async with self.database.session(readonly=True) as s:
                previous = await self._previous(s, item)
            if previous is None:  # the copy rolled back meanwhile: try again
                return await self._record_fast(item)
            return _result(previous)
        metrics.USAGE_RECORDED.labels(item.meter.code).inc()
        return result

    async def _refused(self, item: Pending, *, swept: bool) -> RecordResult:
        """After `RECORD` refused an event: expire its counter's lapsed reservations and try
        again if there were any, else raise `LimitExceeded` with the counter as it is, or
        `CounterOverflow` (of `what`) when no hard limit refuses it but the counter is full."""
        org_id, metric, period_start = item.counter
        async with self.database.transaction() as s:
            freed = (
                0
                if swept
                else await self._reservations.sweep(
                    s, org_id=org_id, metric=metric, period_start=period_start
                )
            )
            if not freed:
                used, reserved = await read_counter(s, org_id, metric, period_start)
                limit = await read_limit(s, org_id, metric)
        if freed:
            return await self._record_fast(item, swept=True)
        if not (item.enforce and limit.refuses(used + reserved + item.increment)):
            # Not the limit: the counter's BIGINT, or the counter moved meanwhile (a hold
            # released, a limit raised): try again, as often as it keeps moving.
            if used + reserved + item.increment > BIGINT_MAX:
                raise overflow(metric, "the counter")
            return await self._record_fast(item, swept=True)
        assert limit.value is not None
        metrics.USAGE_REFUSED.labels(metric).inc()
        refusal = LimitExceeded(metric, limit.value, used + reserved, item.increment)
        await self._tell_refused([(item, refusal)])
        raise refusal

    async def _record(
        self, s: AsyncSession, org_id: uuid.UUID, event: UsageEventIn, *, enforce: bool
    ) -> Outcome:
        """One event through the batch engine, in the session's transaction."""
        item = self._place(org_id, event, await self._meter(s, event.metric), enforce)
        return (await self._record_batch(s, [item])).outcomes[0]

    def _place(
        self,
        org_id: uuid.UUID,
        event: UsageEventIn,
        meter: MeterInfo,
        enforce: bool,
        periods: dict[str, tuple[datetime, datetime | None]] | None = None,
        *,
        backfill: bool = True,
    ) -> Pending:
        return place(org_id, event, meter, enforce, self.clock(), periods, backfill)

    async def _record_batch(self, s: AsyncSession, items: Sequence[Pending]) -> Decision:
        decision = await record_batch(SessionStore(s, self.events), items, self._meters, self.clock)
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
            await self._tell_refused(refusals(items, decision))
            return decision
        raise AssertionError("unreachable")  # pragma: no cover

    async def _tell_refused(self, refused: Iterable[tuple[Pending, LimitExceeded]]) -> None:
        """Tell `usage.limit_exceeded` for refusals, once per organisation, metric and period
        (see `announce`), in a transaction of its own: the refusal itself writes nothing. A
        failure to tell is logged, never raised: the caller's answer is the refusal."""
        fresh: dict[tuple[uuid.UUID, str, datetime], LimitExceeded] = {}
        for item, refusal in refused:
            if item.counter not in self._told:
                fresh.setdefault(item.counter, refusal)
        if not fresh:
            return
        try:
            async with self.database.transaction() as s:
                for (org_id, metric, period_start), refusal in fresh.items():
                    await self.events.emit_once(
                        s,
                        org_id,
                        UsageLimitExceeded(
                            metric=metric,
                            period_start=period_start,
                            limit=refusal.limit,
                            used=refusal.used,
                            requested=refusal.requested,
                        ),
                        key=limit_key(metric, period_start),
                    )
        except Exception:
            logger.exception("usage.limit_exceeded not told for %s", sorted(map(str, fresh)))
            return
        if len(self._told) >= _TOLD_MAX:
            self._told.clear()
        self._told.update(fresh)

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

    async def _flush(
        self, items: list[Pending], locked: Callable[[], None]
    ) -> Sequence[RecordResult | Exception]:
        """Group commit's flush: one event by the one-statement path, more as a batch.

        If a batch fails other than by losing the database, its events are recorded one at a
        time, so that whatever failed it fails its own caller alone: a statement timeout too
        (rows of one organisation held too long need not fail the others')."""
        if len(items) > 1:
            try:
                return (await self._record_postgres(items, locked)).outcomes
            except DatabaseUnavailable as error:
                if not is_timeout(error):
                    raise
                logger.warning("a batch of %d usage events timed out: one by one now", len(items))
            except Exception:
                logger.exception(
                    "a batch of %d usage events failed: recording them one by one", len(items)
                )
        locked()  # the next batch need not wait for this one's items, each on its own now
        return await one_by_one(items, self._record_one, key=lambda item: item.org_id)

    async def _cached_meter(self, code: str) -> MeterInfo:
        """The meter from the cache, refreshed (in a read session of its own) when stale."""
        if code not in self._meters or self._meters_stale():
            async with self.database.session(readonly=True) as s:
                return await self._meter(s, code)
        return self._meters[code]

    async def _previous(self, s: AsyncSession, item: Pending) -> Outcome | None:
        """The answer to an event whose key is stored (None if it is not, or no longer)."""
        found = await SessionStore(s).stored([(item.org_id, item.event.idempotency_key)])
        previous = found.get((item.org_id, item.event.idempotency_key))
        if previous is None:
            return None
        if previous.payload_hash != item.fingerprint:
            return conflict(item)
        meter = await self._meter(s, previous.metric)
        used, _ = await read_counter(
            s, item.org_id, previous.metric, meter.period(previous.occurred_at)[0]
        )
        return duplicate(item, previous, used, await read_limit(s, item.org_id, previous.metric))

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
        total = snapshot.used + snapshot.reserved + quantity
        return CheckResult(
            allowed=not limit.refuses(total) and total <= BIGINT_MAX,
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
                used, reserved = await read_counter(s, org_id, meter.code, start)
                reserved -= await self._reservations.lapsed_holds(s, org_id, meter.code, start, now)
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
        """Usage from `usage_daily_summary` between two days (inclusive), grouped `by`.

        Each group is split by metric, so quantities of different metrics (calls, tokens,
        bytes) are never added together: each row names its metric and its meter's unit.
        The sums are exact whatever they add up to, past int64 too (see `exact_sum`).
        Refuses (`UnknownMetric`) a `metric` that has no meter and no usage."""
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
        groups: list[Any] = [column]
        if grouping is not SummaryBy.METRIC:
            groups.append(UsageDailySummary.metric)
        groups.append(sa.func.coalesce(Meter.unit, "unit"))
        sums = [
            part
            for counter in (
                UsageDailySummary.quantity,
                UsageDailySummary.event_count,
                UsageDailySummary.input_tokens,
                UsageDailySummary.output_tokens,
                UsageDailySummary.total_tokens,
                UsageDailySummary.cost_micros,
            )
            for part in exact_sum(counter)
        ]
        query = (
            sa.select(*groups, *sums)
            .outerjoin(Meter, Meter.code == UsageDailySummary.metric)
            .where(
                UsageDailySummary.organization_id == org_id,
                UsageDailySummary.day >= start,
                UsageDailySummary.day <= end,
            )
            .group_by(*groups)
            .order_by(*groups)
        )
        if metric is not None:
            query = query.where(UsageDailySummary.metric == metric)
        async with self.database.scope(session, readonly=True) as s:
            rows = (await s.execute(query)).all()
            if not rows and metric is not None:
                await self._known_metric(s, org_id, metric)
        named = len(groups)
        result = []
        for row in rows:
            key, *labels = (str(label) for label in row[:named])
            parts = row[named:]
            q, events, inputs, outputs, total, cost = (
                joined_sum(parts[i], parts[i + 1]) for i in range(0, len(parts), 2)
            )
            result.append(
                SummaryRow(
                    key,
                    q,
                    events,
                    inputs,
                    outputs,
                    total,
                    cost,
                    metric=labels[0] if len(labels) == 2 else key,
                    unit=labels[-1],
                )
            )
        return result

    async def _known_metric(self, s: AsyncSession, org_id: uuid.UUID, metric: str) -> None:
        """Refuse a metric that has no meter (active or not) and no usage of the organisation."""
        known = await s.scalar(
            sa.select(
                sa.exists().where(Meter.code == metric)
                | sa.exists().where(
                    UsageDailySummary.organization_id == org_id,
                    UsageDailySummary.metric == metric,
                )
            )
        )
        if not known:
            raise UnknownMetric(f"no meter {metric!r}", metric=metric)

    async def limit(
        self, org_id: uuid.UUID, metric: str, *, session: AsyncSession | None = None
    ) -> Limit:
        """The organisation's limit on a metric: its override, else its plan's (see `limits`)."""
        async with self.database.scope(session, readonly=True) as s:
            return await read_limit(s, org_id, metric)

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
            previous = await set_override(s, org_id, metric, limit, hard=hard, now=self.clock())
            current = {"limit": unlimited(limit), "hard": hard}
            if previous != current:
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
        `limit.override_cleared` when there was one. Without one, a metric that has no
        (active) meter is `UnknownMetric`, as for `set_limit`; an override left on a meter
        deactivated since is still dropped."""
        async with self.database.scope(session) as s:
            previous = await clear_override(s, org_id, metric, now=self.clock())
            if previous is None:
                await self._meter(s, metric)
            else:
                await self.events.emit(
                    s,
                    org_id,
                    LimitOverrideCleared(metric=metric, from_=previous),
                    actor=actor,
                    target_id=metric,
                )
            return await read_limit(s, org_id, metric)

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
        if quantity > BIGINT_MAX:
            raise overflow(metric, "the reservation")
        if ttl <= timedelta(0):
            raise InvalidInput("the time to live must be positive", field="ttl")
        if session is None and self.database.backend is DatabaseBackend.POSTGRESQL:
            return await self._reserve_fast(org_id, metric, quantity, ttl, idempotency_key)
        async with self.database.scope(session) as s:
            return await self._reservations.reserve(
                s, org_id, metric, quantity, ttl=ttl, idempotency_key=idempotency_key
            )

    async def _reserve_fast(
        self,
        org_id: uuid.UUID,
        metric: str,
        quantity: int,
        ttl: timedelta,
        idempotency_key: str | None,
        *,
        swept: bool = False,
    ) -> UsageReservation:
        """A reservation on PostgreSQL in one statement, one round trip (`postgres.RESERVE`).

        A refusal on a counter with lapsed reservations expires them and tries once more, as
        `record` does (this path sweeps no sooner: until then, a lapsed hold is not counted by
        `check` and `usage`, and it gives way to a hold or a record that needs its quota)."""
        meter = await self._cached_meter(metric)
        now = self.clock()
        async with self.database.driver() as driver:
            row = await run_reserve(
                driver, org_id, meter, quantity, now + ttl, idempotency_key, now
            )
        period_start = meter.period(now)[0]
        if row is None:
            found = await self._refusal(
                (org_id, meter.code, period_start), quantity, swept, "the reserved quota"
            )
            if found is None:
                return await self._reserve_fast(
                    org_id, metric, quantity, ttl, idempotency_key, swept=True
                )
            metrics.USAGE_REFUSED.labels(meter.code).inc()
            raise found
        if not row["organization_found"]:
            raise NotFound(f"no organisation {org_id}", organization=str(org_id))
        if row["held_id"] is not None:
            if len(self._made) >= _MADE_MAX:
                del self._made[next(iter(self._made))]  # the oldest, most likely lapsed
            made = self._made[row["held_id"]] = UsageReservation(
                organization_id=org_id,
                id=row["held_id"],
                metric=meter.code,
                period_start=period_start,
                quantity=quantity,
                status=ReservationStatus.HELD,
                idempotency_key=idempotency_key,
                expires_at=now + ttl,
                created_at=now,
            )
            return made
        if row["id"] is None:  # a copy committed while the statement waited: ask again
            return await self._reserve_fast(org_id, metric, quantity, ttl, idempotency_key)
        if (row["metric"], row["quantity"]) != (meter.code, quantity):
            raise IdempotencyConflict(
                f"idempotency key {idempotency_key!r} was used for another reservation",
                idempotency_key=idempotency_key,
            )
        return UsageReservation(
            organization_id=org_id,
            id=row["id"],
            metric=row["metric"],
            period_start=row["period_start"],
            quantity=row["quantity"],
            settled_quantity=row["settled_quantity"],
            status=ReservationStatus(row["status"]),
            idempotency_key=idempotency_key,
            expires_at=row["expires_at"],
            created_at=row["created_at"],
            finished_at=row["finished_at"],
        )

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
        if session is None and self.database.backend is DatabaseBackend.POSTGRESQL:
            settled = await self._settle_fast(reservation_id, actual_quantity, org_id, fields)
            if settled is not None:
                return settled
        async with self.database.scope(session) as s:
            if not await self._reservations.sweep_lapsed(s, reservation_id, org_id):
                # The savepoint: a refusal below also undoes the claim, in the caller's session.
                async with s.begin_nested():
                    return await self._reservations.settle(
                        s, reservation_id, org_id, actual_quantity, fields
                    )
        raise expired(reservation_id)

    async def _settle_fast(
        self,
        reservation_id: uuid.UUID,
        actual_quantity: int,
        org_id: uuid.UUID | None,
        fields: dict[str, Any],
        *,
        swept: bool = False,
    ) -> RecordResult | None:
        """A settlement on PostgreSQL in one statement (`postgres.SETTLE`), after reading the
        reservation's unchanging columns unless this process made it. None when it is not
        found held and in time: the general path then says why (and sweeps it if it lapsed)."""
        now = self.clock()
        reservation = self._made.pop(reservation_id, None)
        if reservation is None or org_id not in (None, reservation.organization_id):
            async with self.database.driver() as driver:
                found = await driver.fetchrow(HELD, reservation_id, org_id)
            if found is None or found["status"] != ReservationStatus.HELD:
                return None
            reservation = UsageReservation(
                organization_id=found["organization_id"],
                id=reservation_id,
                metric=found["metric"],
                period_start=found["period_start"],
                quantity=found["quantity"],
                expires_at=found["expires_at"],
                created_at=found["created_at"],
            )
        if reservation.expires_at <= now:
            return None
        meter = await self._cached_meter(reservation.metric)
        item = settlement(reservation, meter, actual_quantity, fields, now)
        extra = actual_quantity - reservation.quantity
        async with self.database.driver() as driver:
            row = await run_settle(driver, item, reservation_id, extra, now)
        if row is None:  # the reservation stays held
            if extra <= 0:  # no limit refuses that: its counter is gone
                raise overflow(meter.code, "the counter")
            refusal = await self._refusal(item.counter, extra, swept, "the counter")
            if refusal is None:
                return await self._settle_fast(
                    reservation_id, actual_quantity, org_id, fields, swept=True
                )
            raise refusal
        if not row["claimed"]:
            if not row["user_known"]:
                raise unknown_user(item)
            return None  # finished or lapsed meanwhile
        event = item.event
        has_tokens = event.input_tokens or event.output_tokens
        if event.model is not None and has_tokens and not row["priced"]:
            self._unpriced(event)
        metrics.USAGE_RECORDED.labels(meter.code).inc()
        return accepted(
            row["event_id"],
            item,
            int(row["used"]),
            int(row["reserved"]),
            Limit(row["limit_value"], bool(row["hard"])),
            int(row["cost_micros"]),
        )

    async def _refusal(
        self, counter: tuple[uuid.UUID, str, datetime], requested: int, swept: bool, what: str
    ) -> LimitExceeded | None:
        """After a one-statement hold or settlement refused `requested` more on `counter`:
        its lapsed reservations expired (unless `swept` already), then the refusal; None when
        the caller is to try again (some were expired, or the counter moved meanwhile).
        `CounterOverflow` (of `what`) when no hard limit refuses it but the counter is full."""
        org_id, metric, period_start = counter
        async with self.database.transaction() as s:
            if not swept and await self._reservations.sweep(
                s, org_id=org_id, metric=metric, period_start=period_start
            ):
                return None
            used, reserved = await read_counter(s, org_id, metric, period_start)
            limit = await read_limit(s, org_id, metric)
        if limit.refuses(used + reserved + requested):
            assert limit.value is not None
            return LimitExceeded(metric, limit.value, used + reserved, requested)
        if used + reserved + requested > BIGINT_MAX:
            raise overflow(metric, what)
        return None

    async def release(
        self,
        reservation_id: uuid.UUID,
        *,
        org_id: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> UsageReservation:
        """Stop holding a reservation's quota without recording usage."""
        self._made.pop(reservation_id, None)
        if session is None and self.database.backend is DatabaseBackend.POSTGRESQL:
            now = self.clock()
            async with self.database.driver() as driver:
                row = await driver.fetchrow(RELEASE, reservation_id, org_id, now)
            if row is not None:
                return UsageReservation(
                    organization_id=row["organization_id"],
                    id=reservation_id,
                    metric=row["metric"],
                    period_start=row["period_start"],
                    quantity=row["quantity"],
                    status=ReservationStatus.RELEASED,
                    idempotency_key=row["idempotency_key"],
                    expires_at=row["expires_at"],
                    created_at=row["created_at"],
                    finished_at=now,
                )
            # Not held and in time: the path below says why (and sweeps it if it lapsed).
        async with self.database.scope(session) as s:
            if not await self._reservations.sweep_lapsed(s, reservation_id, org_id):
                return await self._reservations.release(s, reservation_id, org_id)
        raise expired(reservation_id)

    async def sweep(
        self,
        *,
        org_id: uuid.UUID | None = None,
        metric: str | None = None,
        session: AsyncSession | None = None,
    ) -> int:
        """Expire held reservations past their time, giving their quota back. Returns how many."""
        async with self.database.scope(session) as s:
            return await self._reservations.sweep(s, org_id=org_id, metric=metric)

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
        It is one conditional UPDATE (`gauge.storage_change`, the limit resolved inside it on
        PostgreSQL); only when that changes nothing is the gauge read, to say why.
        """
        now = self.clock()
        if abs(delta_bytes) > BIGINT_MAX:
            raise overflow(STORAGE, "the change")
        async with self.database.scope(session) as s:
            limit: Limit | None = None
            cap: sa.ColumnElement[Any] | int | None = RESOLVED_CAP
            if s.get_bind().dialect.name != "postgresql":
                limit = await self.limit(org_id, STORAGE, session=s)
                cap = limit.cap
            change = storage_change(org_id, delta_bytes, now, cap)
            total = await s.scalar(change)
            if total is not None:
                return int(total)
            used = await s.scalar(
                sa.select(UsageLimits.storage_used_bytes).where(
                    UsageLimits.organization_id == org_id
                )
            )
            if used is None:  # an organisation made without OrganizationService: no row yet
                await usage_account(s, org_id, lock=False)
                total = await s.scalar(change)
                if total is not None:
                    return int(total)
                used = 0
            if delta_bytes < 0:
                raise StorageUnderflow(
                    f"cannot free {-delta_bytes} bytes: only {used} are in use",
                    used_bytes=used,
                    delta_bytes=delta_bytes,
                )
            if limit is None:
                limit = await self.limit(org_id, STORAGE, session=s)
            if limit.cap is None or used + delta_bytes > BIGINT_MAX:  # (else the limit)
                raise overflow(STORAGE, "the storage used")
            metrics.USAGE_REFUSED.labels(STORAGE).inc()
            assert limit.value is not None
            raise LimitExceeded(STORAGE, limit.value, used, delta_bytes)

    async def storage_refusal(self, org_id: uuid.UUID, delta_bytes: int) -> LimitExceeded | None:
        """The `LimitExceeded` that `update_storage_used` raises for adding `delta_bytes`,
        if the hard storage limit refuses it now; None otherwise (for a refusal that is not
        the limit's: no `usage_limits` row yet, a BIGINT's end, an empty file).

        For a one-statement write that the gauge refused without saying why (it reads the
        gauge and the limit): the caller raises it, or tries again where None."""
        if delta_bytes <= 0:
            return None
        async with self.database.session(readonly=True) as s:
            used = await s.scalar(
                sa.select(UsageLimits.storage_used_bytes).where(
                    UsageLimits.organization_id == org_id
                )
            )
            limit = await read_limit(s, org_id, STORAGE)
        if used is None or used + delta_bytes > BIGINT_MAX or not limit.refuses(used + delta_bytes):
            return None
        assert limit.value is not None
        return self.storage_refused(limit.value, int(used), delta_bytes)

    def storage_refused(self, limit: int, used: int, delta_bytes: int) -> LimitExceeded:
        """The `LimitExceeded` of adding `delta_bytes` to a gauge at `used` past its hard
        `limit`, for a caller that decided so itself, holding the gauge's row locked and its
        limit resolved (`gauge.RESOLVED_CAP_SQL`); counted as `update_storage_used` counts
        its refusals."""
        metrics.USAGE_REFUSED.labels(STORAGE).inc()
        return LimitExceeded(STORAGE, limit, used, delta_bytes)

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
        priced = (
            await s.execute(sa.select(ModelPricing.provider, ModelPricing.model).distinct())
        ).all()
        self._known_models = frozenset(model for _, model in priced)
        self._known_providers = metrics.KNOWN_PROVIDERS | {provider for provider, _ in priced}
        self._meters_loaded_at = self.clock().timestamp()

    async def _storage_used(self, s: AsyncSession, org_id: uuid.UUID) -> int:
        used = await s.scalar(
            sa.select(UsageLimits.storage_used_bytes).where(UsageLimits.organization_id == org_id)
        )
        return int(used or 0)

    def _unpriced(self, event: UsageEventIn) -> None:
        metrics.USAGE_UNPRICED_MODEL.labels(
            metrics.bounded_label(event.provider, self._known_providers),
            metrics.bounded_label(event.model, self._known_models),
        ).inc()
        logger.warning(
            "no price for model %r (provider %r): recorded at cost 0", event.model, event.provider
        )

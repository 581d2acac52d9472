"""Recording many events at once: the engine behind `record_many` and group commit.

A batch is decided in Python under row locks and then written set-wise:

1. **lock**: every (organisation, metric, period) counter the batch touches is created if
   missing and locked, in one order (code-point order, as Python sorts) so that concurrent
   batches cannot deadlock on counters; the organisations' limit rules are read with it, and
   the events already stored under the batch's keys (`SessionStore`; `PostgresStore` first
   tries without them, see below);
2. **decide** (`decide`, pure Python): the events are walked in order, exactly as one `record`
   after another would decide them: a duplicate of a stored event or of an earlier event in the
   batch, a conflict (same key, different event), invalid (a value the columns cannot hold),
   or a hard limit checked against the counter as the earlier events left it;
3. **write** the accepted events, the counters' new values, the day rollups and the threshold
   crossings, and commit.

Going back:

- `PostgresStore` is optimistic: its first try looks no key up (on a busy new table that
  look-up cost more than the rest of the lock), so a retried event is at first taken for a new
  one. The write then meets its stored key (its insert fails on the unique index), and the
  batch is decided again, its keys looked up after the locks. Retries cost a second try; new
  events cost nothing more.
- A refusal on a counter that holds reserved quota first expires that counter's lapsed
  reservations and decides again. A refusal also looks its key up again after the locks: it
  may be a copy that committed while the batch waited (read in the statement's snapshot, it
  was missed), whose own quantity now fills the counter.
- A copy of an event can slip in between the look-up and the write: missed as above, or
  inserted by the one-statement path, which inserts its event before it locks the counter.
  The write then meets its key (`PostgresStore`'s insert fails on it, `SessionStore`'s
  inserts fewer events than decided): the whole attempt is undone and the batch decided
  again, its keys now looked up after the locks.
- The one-statement path and a batch can deadlock on such a copy (event then counter, against
  counter then event); PostgreSQL aborts one, which is tried again (`UsageService`).

`PostgresStore` does the I/O in a few statements over asyncpg arrays; `SessionStore` does it
with SQLAlchemy Core, for SQLite and for batches that join a caller's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Protocol

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.errors import DomainError, IdempotencyConflict, InvalidInput, NotFound
from saascore.kit.ids import new_id
from saascore.kit.sql import insert
from saascore.metering.errors import LimitExceeded
from saascore.metering.values import (
    BIGINT_MAX,
    THRESHOLDS,
    Limit,
    LimitRules,
    MeterInfo,
    RecordResult,
    UsageEventIn,
    cost_micros,
)
from saascore.models import (
    Aggregation,
    ModelPricing,
    Organization,
    PlanLimit,
    ReservationStatus,
    SubscriptionPlan,
    UsageAlert,
    UsageCounter,
    UsageDailySummary,
    UsageEvent,
    UsageLimits,
    UsageReservation,
)

__all__ = [
    "Decision",
    "Pending",
    "PostgresStore",
    "Raced",
    "SessionStore",
    "Store",
    "decide",
    "record_batch",
]

#: (organisation, metric, period start): one counter row.
CounterKey = tuple[uuid.UUID, str, datetime]
#: (organisation, day, metric, model, provider, feature): one `usage_daily_summary` row.
RollupKey = tuple[uuid.UUID, date, str, str, str, str]
#: (organisation, idempotency key): one event.
EventKey = tuple[uuid.UUID, str]
Outcome = RecordResult | DomainError
ATTEMPTS = 5
ROLLUP_KEY = ("organization_id", "day", "metric", "model", "provider", "feature")
ALERT_KEY = ("organization_id", "metric", "period_start", "threshold_percent")
_COUNT, _MAX = Aggregation.COUNT, Aggregation.MAX
#: The unique index a copy of a stored event breaks: (organization_id, idempotency_key).
EVENT_KEY = "uq_usage_events_organization_id_idempotency_key"


class Raced(Exception):
    """A concurrent copy of an event was stored after the batch was decided; the write was
    undone and the batch must be decided again."""


@dataclass(slots=True)
class Pending:
    """An event checked and ready to decide: its meter, time, period and fingerprint."""

    org_id: uuid.UUID
    event: UsageEventIn
    meter: MeterInfo
    occurred: datetime
    period_start: datetime
    period_end: datetime | None
    fingerprint: str
    enforce: bool = True

    @property
    def counter(self) -> CounterKey:
        return (self.org_id, self.meter.code, self.period_start)

    @property
    def increment(self) -> int:
        return 1 if self.meter.aggregation is Aggregation.COUNT else self.event.quantity


@dataclass(slots=True)
class Counter:
    used: int
    reserved: int


@dataclass(frozen=True, slots=True)
class Stored:
    """An event already stored under a key of the batch."""

    event_id: uuid.UUID
    payload_hash: str
    metric: str
    quantity: int
    cost_micros: int
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Price:
    """One `model_pricing` row (the fields pricing needs)."""

    model: str
    provider: str
    input_micros_per_million: int
    cached_input_micros_per_million: int
    output_micros_per_million: int
    effective_from: datetime
    effective_to: datetime | None


@dataclass(slots=True)
class Snapshot:
    """What the batch is decided on: the locked counters, the limit rules of the
    organisations that exist, and the events already stored under the batch's keys."""

    counters: dict[CounterKey, Counter] = field(default_factory=dict)
    rules: dict[uuid.UUID, LimitRules] = field(default_factory=dict)
    stored: dict[EventKey, Stored] = field(default_factory=dict)


@dataclass(slots=True)
class Decision:
    """The outcome of every event, and what the accepted ones write."""

    outcomes: list[Outcome] = field(default_factory=list)
    #: Events to insert, in the batch's order: (pending, event id, cost).
    events: list[tuple[Pending, uuid.UUID, int]] = field(default_factory=list)
    #: Counters that changed, with their new values.
    counters: dict[CounterKey, Counter] = field(default_factory=dict)
    #: Day rollups to add: quantity, events, input, output, cached, total tokens, cost.
    rollups: dict[RollupKey, list[int]] = field(default_factory=dict)
    #: Threshold crossings: (counter, percent) -> (limit, used + reserved).
    alerts: dict[tuple[CounterKey, int], tuple[int, int]] = field(default_factory=dict)
    #: Counters that refused an event while holding reserved quota.
    refused_holding: set[CounterKey] = field(default_factory=set)
    #: Models that had no price.
    unpriced: list[UsageEventIn] = field(default_factory=list)

    def add_event(self, item: Pending, cost: int) -> uuid.UUID:
        """Write the event and add it to its day's rollup; its new id."""
        event_id = new_id()
        self.events.append((item, event_id, cost))
        _roll_up(self.rollups, item, cost)
        return event_id

    def add_crossings(
        self, counter: CounterKey, limit: int | None, before: int, after: int
    ) -> None:
        """Record each threshold (80 %, 100 %) that going from `before` to `after` (used plus
        reserved) crossed, once per counter."""
        if limit is None:
            return
        for percent, mark in zip(THRESHOLDS, _marks(limit), strict=True):
            if before < mark <= after:
                self.alerts.setdefault((counter, percent), (limit, after))


@functools.lru_cache(maxsize=1024)
def _marks(limit: int) -> tuple[int, ...]:
    """Where each threshold of `limit` lies (the least total that crosses it)."""
    return tuple(math.ceil(limit * percent / 100) for percent in THRESHOLDS)


def decide(
    items: Sequence[Pending],
    counters: dict[CounterKey, Counter],
    rules: dict[uuid.UUID, LimitRules],
    stored: dict[tuple[uuid.UUID, str], Stored],
    prices: Sequence[Price],
    meters: dict[str, MeterInfo],
) -> Decision:
    """Decide every event in order, as one `record` after another would (see the module)."""
    decision = Decision()
    state = {key: Counter(c.used, c.reserved) for key, c in counters.items()}
    accepted: dict[EventKey, int] = {}  # each key's accepted event: its place in `outcomes`
    limits: dict[tuple[uuid.UUID, str], Limit] = {}  # the rules' answers, asked once per batch
    outcomes, changed = decision.outcomes, decision.counters
    # Each event's organisation id is swapped for the one the lock read: asyncpg's UUIDs keep
    # their hash, where uuid.UUID computes it in Python at every look-up.
    known = {org: org for org in rules}
    for item in items:
        event, meter = item.event, item.meter
        org = known.get(item.org_id)
        if org is None:
            outcomes.append(
                NotFound(f"no organisation {item.org_id}", organization=str(item.org_id))
            )
            continue
        org_rules = rules[org]
        key = (org, event.idempotency_key)
        if key in accepted:
            first = outcomes[accepted[key]]
            assert isinstance(first, RecordResult)
            outcomes.append(
                _conflict(item)
                if items[accepted[key]].fingerprint != item.fingerprint
                else replace(first, status="duplicate", used=state[item.counter].used)
            )
            continue
        if key in stored:
            outcomes.append(_duplicate(item, stored[key], state, org_rules, meters))
            continue
        limit = limits.get((org, meter.code))
        if limit is None:
            limit = limits[(org, meter.code)] = org_rules.limit(meter.code)
        where = (org, meter.code, item.period_start)
        counter = state[where]
        if meter.aggregation is _COUNT:
            increment = 1
            used = counter.used + 1
        elif meter.aggregation is _MAX:
            increment = event.quantity
            used = max(counter.used, increment)
        else:
            increment = event.quantity
            used = counter.used + increment
        before, after = counter.used + counter.reserved, used + counter.reserved
        if after > BIGINT_MAX:
            outcomes.append(InvalidInput("the counter would overflow", metric=meter.code))
            continue
        if item.enforce and limit.refuses(after):
            assert limit.value is not None
            if counter.reserved:
                decision.refused_holding.add(where)
            outcomes.append(LimitExceeded(meter.code, limit.value, before, increment))
            continue
        cost = price_of(item, prices, decision.unpriced) if event.model is not None else 0
        if cost > BIGINT_MAX:
            outcomes.append(InvalidInput("the cost would overflow", field="cost"))
            continue
        counter.used = used
        changed[where] = counter
        event_id = decision.add_event(item, cost)
        if limit.value is not None:
            decision.add_crossings(where, limit.value, before, after)
        result = RecordResult(
            event_id=event_id,
            status="accepted",
            metric=meter.code,
            quantity=event.quantity,
            used=used,
            limit=limit.value,
            over_soft_limit=limit.value is not None and after > limit.value,
            cost_micros=cost,
        )
        accepted[key] = len(outcomes)
        outcomes.append(result)
    return decision


def _conflict(item: Pending) -> IdempotencyConflict:
    key = item.event.idempotency_key
    return IdempotencyConflict(
        f"idempotency key {key!r} was used for a different event", idempotency_key=key
    )


def _duplicate(
    item: Pending,
    previous: Stored,
    state: dict[CounterKey, Counter],
    rules: LimitRules,
    meters: dict[str, MeterInfo],
) -> Outcome:
    if previous.payload_hash != item.fingerprint:
        return _conflict(item)
    meter = meters.get(previous.metric)
    counter = None
    if meter is not None:
        counter = state.get((item.org_id, previous.metric, meter.period(previous.occurred_at)[0]))
    return RecordResult(
        previous.event_id,
        "duplicate",
        previous.metric,
        previous.quantity,
        counter.used if counter is not None else 0,
        rules.limit(previous.metric).value,
        cost_micros=previous.cost_micros,
    )


def price_of(item: Pending, prices: Sequence[Price], unpriced: list[UsageEventIn]) -> int:
    """The event's cost in micro-units: the newest active price in effect when it occurred; 0
    for an event without model tokens, and 0 (noted in `unpriced`) for a model without one."""
    event = item.event
    if event.model is None or not (event.input_tokens or event.output_tokens):
        return 0
    best: Price | None = None
    for price in prices:
        if (
            price.model == event.model
            and (event.provider is None or price.provider == event.provider)
            and price.effective_from <= item.occurred
            and (price.effective_to is None or price.effective_to > item.occurred)
            and (best is None or price.effective_from > best.effective_from)
        ):
            best = price
    if best is None:
        unpriced.append(event)
        return 0
    return cost_micros(best, event.input_tokens, event.output_tokens, event.cached_tokens)


def _roll_up(rollups: dict[RollupKey, list[int]], item: Pending, cost: int) -> None:
    event = item.event
    key = (
        item.org_id,
        item.occurred.astimezone(UTC).date(),
        item.meter.code,
        event.model or "",
        event.provider or "",
        event.feature or "",
    )
    amounts = rollups.get(key)
    if amounts is None:
        amounts = rollups[key] = [0] * 7
    amounts[0] += event.quantity
    amounts[1] += 1
    amounts[2] += event.input_tokens
    amounts[3] += event.output_tokens
    amounts[4] += event.cached_tokens
    amounts[5] += event.input_tokens + event.output_tokens
    amounts[6] += cost


class Store(Protocol):
    """The batch's reads and writes, inside one transaction the store holds."""

    #: Decide first without looking the keys up (a copy is then caught by the write, and the
    #: batch decided again): one look-up less per batch when retries are rare.
    optimistic: bool

    async def lock(
        self,
        periods: dict[CounterKey, datetime | None],
        keys: Sequence[EventKey],
        now: datetime,
    ) -> Snapshot:
        """Create missing counters and lock them all, and read the organisations' limit
        rules and the events stored under `keys`. Counters of organisations that do not exist
        are left out. (`PostgresStore` reads the events in the statement that waits for the
        locks, so it may miss a copy that commits meanwhile: see the module.)"""
        ...

    async def stored(self, keys: Sequence[EventKey]) -> dict[EventKey, Stored]:
        """The events stored under these keys."""
        ...

    async def peek(self, counters: Iterable[CounterKey]) -> dict[CounterKey, Counter]:
        """These counters as they are, without locking them."""
        ...

    async def prices(self, models: set[str]) -> list[Price]:
        """The active prices of these models."""
        ...

    async def expire_lapsed(
        self, counters: Iterable[CounterKey], now: datetime
    ) -> dict[CounterKey, int]:
        """Expire the held reservations of these counters that are past their time; the
        quantity freed per counter (the caller writes the counters). A reservation another
        transaction has locked (a sweep, settle or release under way) is skipped, never
        waited for (that one locks the reservation before the counter, a batch the other way
        round), and still counts as held: that transaction may yet settle it."""
        ...

    async def write(
        self, decision: Decision, now: datetime, meanwhile: Callable[[], None] | None = None
    ) -> None:
        """Write what the decision accepted; `Raced` if an event it accepted is stored
        already. `meanwhile()` is called once the write is under way, while the server works
        (`PostgresStore`), or after it."""
        ...

    def attempt(self) -> contextlib.AbstractAsyncContextManager[None]:
        """One try at the batch: `Raced` inside it undoes everything the try wrote."""
        ...


async def record_batch(
    store: Store,
    items: Sequence[Pending],
    meters: dict[str, MeterInfo],
    clock: Callable[[], datetime],
    locked: Callable[[], None] | None = None,
    meanwhile: Callable[[Decision], None] | None = None,
) -> Decision:
    """Decide and write a batch through `store` (see the module); `locked()` is called once
    the batch holds its counter locks, `meanwhile(decision)` while each decision is written
    (work that needs the decision, not the write, overlaps the server's). The caller
    commits."""
    periods = {item.counter: item.period_end for item in items}
    models = {
        item.event.model
        for item in items
        if item.event.model is not None and (item.event.input_tokens or item.event.output_tokens)
    }
    prices = await store.prices(models) if models else []
    for attempt in range(ATTEMPTS):
        try:
            async with store.attempt():
                decision = await _attempt(
                    store,
                    items,
                    periods,
                    prices,
                    meters,
                    clock(),
                    locked,
                    meanwhile,
                    attempt > 0,
                )
        except Raced:
            continue
        return decision
    raise RuntimeError(f"a batch of usage events raced {ATTEMPTS} times")  # pragma: no cover


async def _attempt(
    store: Store,
    items: Sequence[Pending],
    periods: dict[CounterKey, datetime | None],
    prices: Sequence[Price],
    meters: dict[str, MeterInfo],
    now: datetime,
    locked: Callable[[], None] | None,
    meanwhile: Callable[[Decision], None] | None,
    raced: bool,
) -> Decision:
    # An optimistic store looks nothing up at first: a copy of a stored event is then accepted
    # by `decide`, found by the write (`Raced`), and the batch decided again. After a race the
    # keys are looked up once the locks are held, so no copy is missed.
    keys: list[EventKey] = []
    if raced or not store.optimistic:
        keys = list(dict.fromkeys((item.org_id, item.event.idempotency_key) for item in items))
    snapshot = await store.lock(periods, () if raced else keys, now)
    if locked is not None:
        locked()
    if raced:
        snapshot.stored = await store.stored(keys)
    counters, rules, stored = snapshot.counters, snapshot.rules, snapshot.stored
    elsewhere = _periods_of(stored, meters, counters)
    if elsewhere:  # duplicates of events in other periods report those counters (unlocked)
        counters.update(await store.peek(elsewhere))
    decision = decide(items, counters, rules, stored, prices, meters)
    if not raced:
        # A refusal may be a copy that committed while the lock waited (its own quantity
        # then fills the counter): look its key up now that the locks are held.
        refused = [
            (item.org_id, item.event.idempotency_key)
            for item, outcome in zip(items, decision.outcomes, strict=True)
            if isinstance(outcome, LimitExceeded)
        ]
        late = await store.stored(refused) if refused else {}
        if late:
            stored.update(late)
            decision = decide(items, counters, rules, stored, prices, meters)
    if decision.refused_holding:
        freed = await store.expire_lapsed(sorted(decision.refused_holding), now)
        if freed:
            for key, quantity in freed.items():
                counters[key].reserved -= quantity
            decision = decide(items, counters, rules, stored, prices, meters)
            for key in freed:  # the freed quota is written even if nothing else changed
                decision.counters.setdefault(key, counters[key])
    await store.write(
        decision, now, None if meanwhile is None else functools.partial(meanwhile, decision)
    )
    return decision


def _periods_of(
    stored: dict[tuple[uuid.UUID, str], Stored],
    meters: dict[str, MeterInfo],
    counters: dict[CounterKey, Counter],
) -> dict[CounterKey, datetime | None]:
    """The periods of stored events whose counters are not among `counters`."""
    periods: dict[CounterKey, datetime | None] = {}
    for (org, _), found in stored.items():
        meter = meters.get(found.metric)
        if meter is not None:
            start, end = meter.period(found.occurred_at)
            if (org, found.metric, start) not in counters:
                periods[(org, found.metric, start)] = end
    return periods


def _columns(rows: Sequence[Sequence[Any]], count: int) -> list[list[Any]]:
    """Rows to columns, for unnest()."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * count


#: Event columns that may be sent empty, and the value that allows it (see the WRITE's coalesce).
_SPARSE = (
    *((position, None) for position in (6, 7, 8, 9, 10, 16, 17, 18, 19)),
    *((position, 0) for position in (11, 12, 13, 14, 15)),
    (20, "{}"),
)


class PostgresStore:
    """The batch's I/O on PostgreSQL: each step is one statement over arrays."""

    LOCK = """
        WITH k AS (
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                $5::uuid[]) AS k (org, metric, period_start, period_end, id)
        ),
        locked AS (
            INSERT INTO usage_counters AS c (organization_id, id, metric, period_start,
                period_end, used, reserved, updated_at)
            SELECT k.org, k.id, k.metric, k.period_start, k.period_end, 0, 0, $6
            FROM k WHERE EXISTS (SELECT FROM organizations o WHERE o.id = k.org)
            ORDER BY k.org, k.metric COLLATE "C", k.period_start  -- Python's order: code points
            ON CONFLICT (organization_id, metric, period_start) DO UPDATE SET used = c.used
            RETURNING c.organization_id, c.metric, c.period_start, c.used, c.reserved
        )
        SELECT locked.organization_id, locked.metric, locked.period_start, locked.used,
            locked.reserved, r.overrides, r.monthly_token_limit, r.max_storage_mb,
            r.max_api_calls_per_day, r.plan_limits, NULL::text AS key, NULL::uuid AS event_id,
            NULL::text AS payload_hash, NULL::int8 AS quantity, NULL::int8 AS cost_micros,
            NULL::timestamptz AS occurred_at
        FROM locked CROSS JOIN LATERAL (
            SELECT ul.overrides::text AS overrides, p.monthly_token_limit, p.max_storage_mb,
                p.max_api_calls_per_day,
                (SELECT json_agg(json_build_array(pl.metric, pl.limit_value, pl.is_hard))::text
                 FROM plan_limits pl WHERE pl.plan_id = p.id) AS plan_limits
            FROM organizations o
            JOIN subscription_plans p ON p.id = o.plan_id
            LEFT JOIN usage_limits ul ON ul.organization_id = o.id
            WHERE o.id = locked.organization_id
        ) AS r
        UNION ALL
        SELECT e.organization_id, e.metric, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            e.idempotency_key, e.id, e.payload_hash, e.quantity, e.cost_micros, e.occurred_at
        FROM unnest($7::uuid[], $8::text[]) AS s (org, key) CROSS JOIN LATERAL (
            SELECT * FROM usage_events
            WHERE organization_id = s.org AND idempotency_key = s.key
        ) AS e
    """
    STORED = """
        SELECT e.organization_id, e.idempotency_key, e.id, e.payload_hash, e.metric,
            e.quantity, e.cost_micros, e.occurred_at
        FROM unnest($1::uuid[], $2::text[]) AS s (org, key) CROSS JOIN LATERAL (
            SELECT * FROM usage_events
            WHERE organization_id = s.org AND idempotency_key = s.key
        ) AS e
    """
    PEEK = """
        SELECT c.organization_id, c.metric, c.period_start, c.used, c.reserved
        FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS k (org, metric,
            period_start) CROSS JOIN LATERAL (
            SELECT * FROM usage_counters
            WHERE organization_id = k.org AND metric = k.metric
              AND period_start = k.period_start
        ) AS c
    """
    PRICES = """
        SELECT model, provider, input_micros_per_million, cached_input_micros_per_million,
            output_micros_per_million, effective_from, effective_to
        FROM model_pricing WHERE model = ANY($1::text[]) AND is_active
    """
    EXPIRE = """
        WITH free AS (
            SELECT r.organization_id, r.id
            FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS k (org, metric,
                period_start)
            JOIN usage_reservations r ON r.organization_id = k.org AND r.metric = k.metric
                AND r.period_start = k.period_start
            WHERE r.status = 'held' AND r.expires_at <= $4
            FOR UPDATE OF r SKIP LOCKED
        ),
        expired AS (
            UPDATE usage_reservations r SET status = 'expired', finished_at = $4
            FROM free
            WHERE r.organization_id = free.organization_id AND r.id = free.id
              AND r.status = 'held'
            RETURNING r.organization_id, r.metric, r.period_start, r.quantity
        )
        SELECT organization_id, metric, period_start, sum(quantity) AS freed
        FROM expired GROUP BY 1, 2, 3
    """
    WRITE = """
        WITH counted AS (
            UPDATE usage_counters c SET used = k.used, reserved = k.reserved, updated_at = $1
            FROM unnest($24::uuid[], $25::text[], $26::timestamptz[], $27::int8[],
                $28::int8[]) AS k (org, metric, period_start, used, reserved)
            WHERE c.organization_id = k.org AND c.metric = k.metric
              AND c.period_start = k.period_start
            RETURNING 1
        ),
        rolled AS (
            INSERT INTO usage_daily_summary AS d (organization_id, id, day, metric, model,
                provider, feature, quantity, event_count, input_tokens, output_tokens,
                cached_tokens, total_tokens, cost_micros, updated_at)
            SELECT r.org, r.id, r.day, r.metric, r.model, r.provider, r.feature, r.quantity,
                r.events, r.input, r.output, r.cached, r.total, r.cost, $1
            FROM unnest($29::uuid[], $30::uuid[], $31::date[], $32::text[], $33::text[],
                $34::text[], $35::text[], $36::int8[], $37::int8[], $38::int8[], $39::int8[],
                $40::int8[], $41::int8[], $42::int8[]) AS r (org, id, day, metric, model,
                    provider, feature, quantity, events, input, output, cached, total, cost)
            ORDER BY r.org, r.day, r.metric COLLATE "C", r.model COLLATE "C",
                r.provider COLLATE "C", r.feature COLLATE "C"
            ON CONFLICT (organization_id, day, metric, model, provider, feature) DO UPDATE SET
                quantity = d.quantity + excluded.quantity,
                event_count = d.event_count + excluded.event_count,
                input_tokens = d.input_tokens + excluded.input_tokens,
                output_tokens = d.output_tokens + excluded.output_tokens,
                cached_tokens = d.cached_tokens + excluded.cached_tokens,
                total_tokens = d.total_tokens + excluded.total_tokens,
                cost_micros = d.cost_micros + excluded.cost_micros,
                updated_at = excluded.updated_at
            RETURNING 1
        ),
        alerted AS (
            INSERT INTO usage_alerts (organization_id, id, metric, period_start,
                threshold_percent, limit_value, used, crossed_at)
            SELECT a.org, a.id, a.metric, a.period_start, a.percent, a.limit_value, a.used, $1
            FROM unnest($43::uuid[], $44::uuid[], $45::text[], $46::timestamptz[],
                $47::int4[], $48::int8[], $49::int8[]) AS a (org, id, metric, period_start,
                    percent, limit_value, used)
            ON CONFLICT (organization_id, metric, period_start, threshold_percent) DO NOTHING
            RETURNING 1
        )
        INSERT INTO usage_events (organization_id, id, idempotency_key, payload_hash,
            metric, quantity, user_id, subscription_id, feature, model, provider,
            input_tokens, output_tokens, cached_tokens, total_tokens, cost_micros,
            cost_currency, credits_used, request_id, batch_id, endpoint, response_time_ms,
            properties, occurred_at, recorded_at)
        SELECT e.org, e.id, e.key, e.hash, e.metric, e.quantity, e.user_id,
            e.subscription_id, e.feature, e.model, e.provider, coalesce(e.input, 0),
            coalesce(e.output, 0), coalesce(e.cached, 0),
            coalesce(e.input, 0) + coalesce(e.output, 0), coalesce(e.cost, 0), 'USD',
            coalesce(e.credits, 0), e.request_id, e.batch_id, e.endpoint, e.response_ms,
            coalesce(e.properties, '{}')::jsonb, e.occurred, $1
        FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
            $7::int8[], $8::uuid[], $9::uuid[], $10::text[], $11::text[], $12::text[],
            $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::int8[], $18::text[],
            $19::text[], $20::text[], $21::int4[], $22::text[], $23::timestamptz[])
            AS e (org, id, key, hash, metric, quantity, user_id, subscription_id,
                feature, model, provider, input, output, cached, cost, credits,
                request_id, batch_id, endpoint, response_ms, properties, occurred)
    """

    #: Looking 32 keys up costs this statement more than the rest of it (a plan made while the
    #: table was small scans it whole); retries are rare enough to find them by the write.
    optimistic = True

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.transaction = connection.transaction()

    async def begin(self) -> None:
        await self.transaction.start()

    async def commit(self) -> None:
        await self.transaction.commit()

    async def rollback(self) -> None:
        await self.transaction.rollback()

    async def lock(
        self,
        periods: dict[CounterKey, datetime | None],
        keys: Sequence[EventKey],
        now: datetime,
    ) -> Snapshot:
        counters = sorted(periods)
        rows = await self.connection.fetch(
            self.LOCK,
            [key[0] for key in counters],
            [key[1] for key in counters],
            [key[2] for key in counters],
            [periods[key] for key in counters],
            [new_id() for _ in counters],
            now,
            [key[0] for key in keys],
            [key[1] for key in keys],
        )
        snapshot = Snapshot()
        for row in rows:
            org = row["organization_id"]
            if row["event_id"] is not None:
                snapshot.stored[(org, row["key"])] = Stored(
                    row["event_id"],
                    row["payload_hash"],
                    row["metric"],
                    row["quantity"],
                    row["cost_micros"],
                    row["occurred_at"],
                )
                continue
            snapshot.counters[(org, row["metric"], row["period_start"])] = Counter(
                row["used"], row["reserved"]
            )
            if org not in snapshot.rules:
                plan_limits = json.loads(row["plan_limits"] or "[]")
                snapshot.rules[org] = LimitRules.of(
                    json.loads(row["overrides"] or "{}"),
                    {metric: (value, hard) for metric, value, hard in plan_limits},
                    monthly_token_limit=row["monthly_token_limit"],
                    max_storage_mb=row["max_storage_mb"],
                    max_api_calls_per_day=row["max_api_calls_per_day"],
                )
        return snapshot

    async def stored(self, keys: Sequence[EventKey]) -> dict[EventKey, Stored]:
        rows = await self.connection.fetch(
            self.STORED, [key[0] for key in keys], [key[1] for key in keys]
        )
        return {(row[0], row[1]): Stored(*row[2:]) for row in rows}

    async def peek(self, counters: Iterable[CounterKey]) -> dict[CounterKey, Counter]:
        keys = list(counters)
        rows = await self.connection.fetch(
            self.PEEK, [key[0] for key in keys], [key[1] for key in keys], [key[2] for key in keys]
        )
        return {(row[0], row[1], row[2]): Counter(row[3], row[4]) for row in rows}

    async def prices(self, models: set[str]) -> list[Price]:
        return [Price(*row) for row in await self.connection.fetch(self.PRICES, list(models))]

    async def expire_lapsed(
        self, counters: Iterable[CounterKey], now: datetime
    ) -> dict[CounterKey, int]:
        keys = list(counters)
        rows = await self.connection.fetch(
            self.EXPIRE,
            [key[0] for key in keys],
            [key[1] for key in keys],
            [key[2] for key in keys],
            now,
        )
        return {(row[0], row[1], row[2]): int(row[3]) for row in rows}

    async def write(
        self, decision: Decision, now: datetime, meanwhile: Callable[[], None] | None = None
    ) -> None:
        if not (decision.events or decision.counters):
            if meanwhile is not None:
                meanwhile()
            return
        events = _columns(
            [
                (
                    item.org_id,
                    event_id,
                    item.event.idempotency_key,
                    item.fingerprint,
                    item.meter.code,
                    item.event.quantity,
                    item.event.user_id,
                    item.event.subscription_id,
                    item.event.feature,
                    item.event.model,
                    item.event.provider,
                    item.event.input_tokens,
                    item.event.output_tokens,
                    item.event.cached_tokens,
                    cost,
                    item.event.credits_used,
                    item.event.request_id,
                    item.event.batch_id,
                    item.event.endpoint,
                    item.event.response_time_ms,
                    json.dumps(item.event.properties) if item.event.properties else "{}",
                    item.occurred,
                )
                for item, event_id, cost in decision.events
            ],
            22,
        )
        # A column that is all NULL (or all the default) is sent empty: unnest() pads it.
        for position, default in _SPARSE:
            if events[position].count(default) == len(events[position]):
                events[position] = []
        counters = _columns(
            [(*key, c.used, c.reserved) for key, c in sorted(decision.counters.items())], 5
        )
        rollups = _columns(
            [
                (key[0], new_id(), *key[1:], *amounts)
                for key, amounts in sorted(decision.rollups.items())
            ],
            14,
        )
        alerts = _columns(
            [
                (key[0], new_id(), key[1], key[2], percent, limit, used)
                for (key, percent), (limit, used) in decision.alerts.items()
            ],
            7,
        )
        statement = self.connection.execute(self.WRITE, now, *events, *counters, *rollups, *alerts)
        try:
            if meanwhile is None:
                await statement
            else:
                written = asyncio.ensure_future(statement)
                try:
                    await asyncio.sleep(0)  # the statement goes out; the server works from here
                    meanwhile()
                finally:
                    await written
        except asyncpg.UniqueViolationError as error:
            # A plain insert: cheaper than ON CONFLICT DO NOTHING, and a copy aborts the
            # attempt either way.
            if error.constraint_name != EVENT_KEY:
                raise
            raise Raced from error

    @contextlib.asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        try:
            yield
        except Raced:  # start over in a new transaction
            await self.transaction.rollback()
            self.transaction = self.connection.transaction()
            await self.transaction.start()
            raise


class SessionStore:
    """The batch's I/O with SQLAlchemy Core in a session's transaction (SQLite, or any
    database when the batch joins a caller's unit of work)."""

    CHUNK = 500  # bound parameters per IN list stay well under SQLite's limit
    optimistic = False  # it looks the keys up after the locks, so it never misses a copy

    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def lock(
        self,
        periods: dict[CounterKey, datetime | None],
        keys: Sequence[EventKey],
        now: datetime,
    ) -> Snapshot:
        rules = await self._rules({key[0] for key in periods})
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

    async def _rules(self, orgs: set[uuid.UUID]) -> dict[uuid.UUID, LimitRules]:
        found = (
            await self.s.execute(
                sa.select(
                    Organization.id,
                    Organization.plan_id,
                    UsageLimits.overrides,
                    SubscriptionPlan.monthly_token_limit,
                    SubscriptionPlan.max_storage_mb,
                    SubscriptionPlan.max_api_calls_per_day,
                )
                .join(SubscriptionPlan, SubscriptionPlan.id == Organization.plan_id)
                .outerjoin(UsageLimits, UsageLimits.organization_id == Organization.id)
                .where(Organization.id.in_(orgs))
            )
        ).all()
        plan_limits: dict[uuid.UUID, dict[str, tuple[int | None, bool]]] = {}
        plans = {row.plan_id for row in found}
        for plan_id, metric, value, hard in await self.s.execute(
            sa.select(
                PlanLimit.plan_id, PlanLimit.metric, PlanLimit.limit_value, PlanLimit.is_hard
            ).where(PlanLimit.plan_id.in_(plans))
        ):
            plan_limits.setdefault(plan_id, {})[metric] = (value, hard)
        return {
            row.id: LimitRules.of(
                row.overrides,
                plan_limits.get(row.plan_id, {}),
                monthly_token_limit=row.monthly_token_limit,
                max_storage_mb=row.max_storage_mb,
                max_api_calls_per_day=row.max_api_calls_per_day,
            )
            for row in found
        }

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

"""The pure decision: what recording usage does, in Python, without I/O.

Every path that decides in Python goes through here: `record_many`, group commit, `record` on
SQLite or in a caller's session (the batch engine, `batch.record_batch`), and reservations'
threshold crossings. Given the counters as they are (locked), the organisations' limit rules
and the events already stored under the batch's keys, `decide` walks the events in order,
exactly as one `record` after another would decide them:

- a duplicate of a stored event or of an earlier event in the batch (same key, same
  fingerprint), answered with the first event's id;
- a conflict (same key, another event): `IdempotencyConflict`;
- invalid (a value the columns cannot hold, an organisation that does not exist, an
  `occurred_at` outside the window a tenant may record into, `PeriodClosed`, or a `user_id`
  that is not a user of the organisation, `UnknownUser`);
- refused by a hard limit, checked against the counter as the earlier events left it
  (`LimitExceeded`);
- refused because a counter (used + reserved), a day's total or the cost would pass a BIGINT
  (`CounterOverflow`): checked after the limit, so a full hard limit still answers 402;
- else accepted: the event is written, its counter moves (`count` meters by one, `sum` by the
  quantity, `max` to the peak), it is added to its day's rollup, and each threshold of the
  limit (80 %, 100 % of used + reserved) that it crosses is recorded once per counter.

The one-statement path (`postgres.RECORD`) makes the same decision inside PostgreSQL, for one
event; the differential test (`tests/metering/test_differential.py`) holds the two together.
The checks of an event's fields (`place`) come first on every path: whatever the database
would refuse is refused before, so one bad event cannot fail a batch it shares.
"""

from __future__ import annotations

import functools
import operator
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from saascore.kit.errors import DomainError, IdempotencyConflict, InvalidInput, NotFound
from saascore.kit.ids import new_id
from saascore.kit.validation import checked_instant, checked_json
from saascore.metering.errors import CounterOverflow, LimitExceeded, PeriodClosed, UnknownUser
from saascore.metering.limits import Limit, LimitRules
from saascore.metering.values import (
    BIGINT_MAX,
    STORAGE,
    THRESHOLDS,
    BatchOutcome,
    MeterInfo,
    RecordResult,
    UsageEventIn,
    cost_micros,
)
from saascore.models import Aggregation

__all__ = [
    "FUTURE_SLACK",
    "Counter",
    "CounterKey",
    "Decision",
    "EventKey",
    "Outcome",
    "Pending",
    "Price",
    "RollupKey",
    "Snapshot",
    "Stored",
    "accepted",
    "batch_outcome",
    "check_fields",
    "conflict",
    "decide",
    "duplicate",
    "overflow",
    "period_closed",
    "place",
    "plainly_valid",
    "price_of",
    "rollup_key",
    "threshold_marks",
    "unknown_user",
]

#: (organisation, metric, period start): one counter row.
CounterKey = tuple[uuid.UUID, str, datetime]
#: (organisation, day, metric, model, provider, feature): one `usage_daily_summary` row.
RollupKey = tuple[uuid.UUID, date, str, str, str, str]
#: (organisation, idempotency key): one event.
EventKey = tuple[uuid.UUID, str]
Outcome = RecordResult | DomainError
_COUNT, _MAX = Aggregation.COUNT, Aggregation.MAX
#: How far ahead of the clock a tenant may date an event (clocks drift; Stripe allows 5 min).
FUTURE_SLACK = timedelta(minutes=5)


# --- an event checked and placed -----------------------------------------------------------------
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


def plainly_valid(event: UsageEventIn) -> bool:
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


def check_fields(event: UsageEventIn) -> None:
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


def place(
    org_id: uuid.UUID,
    event: UsageEventIn,
    meter: MeterInfo,
    enforce: bool,
    now: datetime,
    periods: dict[str, tuple[datetime, datetime | None]] | None = None,
    backfill: bool = True,
) -> Pending:
    """The event checked and placed: its time, period and fingerprint (`InvalidInput` for
    what the database would refuse). `periods` keeps each meter's last period, which most
    events of a batch fall in.

    Without `backfill`, an `occurred_at` before the start of the meter's current period or
    more than `FUTURE_SLACK` ahead marks the event `closed`: `decide` refuses it
    (`PeriodClosed`) unless it is a retry of a stored event, which is answered as one."""
    if not plainly_valid(event):
        check_fields(event)
    if event.properties:  # the API's schema checked it; a library caller's may hold NaN
        checked_json(event.properties, field="properties")
    if meter.code == STORAGE:
        raise InvalidInput(
            "storage is a gauge: change it with update_storage_used", metric=meter.code
        )
    occurred = event.occurred_at or now
    if event.occurred_at is not None:  # its period must end within the calendar
        checked_instant(occurred, field="occurred_at")
    closed = (
        not backfill
        and event.occurred_at is not None
        and not meter.period(now)[0] <= occurred <= now + FUTURE_SLACK
    )
    last = periods.get(meter.code) if periods is not None else None
    if last is not None and (last[1] is None or last[0] <= occurred < last[1]):
        period_start, period_end = last
    else:
        period_start, period_end = meter.period(occurred)
        if periods is not None:
            periods[meter.code] = (period_start, period_end)
    return Pending(
        org_id,
        event,
        meter,
        occurred,
        period_start,
        period_end,
        event.fingerprint(),
        enforce,
        closed,
    )


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
    #: Dated outside the window its caller may record into (see `place`): refused.
    closed: bool = False

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
    #: The day rollups the batch adds to, as stored (None: not read; see `decide`).
    rollups: dict[RollupKey, list[int]] | None = None


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

    def add_event(self, item: Pending, cost: int, key: RollupKey | None = None) -> uuid.UUID:
        """Write the event and add it to its day's rollup (`key`, else worked out); its new
        id."""
        event_id = new_id()
        self.events.append((item, event_id, cost))
        _roll_up(self.rollups, item, cost, key)
        return event_id

    def rollup_fits(
        self,
        item: Pending,
        cost: int,
        stored: dict[RollupKey, list[int]] | None,
        key: RollupKey | None = None,
    ) -> bool:
        """Whether the event's day rollup (`key`, else worked out), as `stored` (None: taken
        as empty) plus what this decision adds to it, can take the event without a total
        passing a BIGINT."""
        if key is None:
            key = rollup_key(item)
        event = item.event
        # Input and output tokens are each at most their total: four sums decide it.
        quantity, cached = event.quantity, event.cached_tokens
        tokens = event.input_tokens + event.output_tokens
        for amounts in (self.rollups.get(key), stored.get(key) if stored is not None else None):
            if amounts is not None:
                quantity += amounts[0]
                cached += amounts[4]
                tokens += amounts[5]
                cost += amounts[6]
        return (
            quantity <= BIGINT_MAX
            and tokens <= BIGINT_MAX
            and cached <= BIGINT_MAX
            and cost <= BIGINT_MAX
        )

    def add_crossings(
        self, counter: CounterKey, limit: int | None, before: int, after: int
    ) -> None:
        """Record each threshold (80 %, 100 %) that going from `before` to `after` (used plus
        reserved) crossed, once per counter."""
        if limit is None:
            return
        for percent, mark in zip(THRESHOLDS, threshold_marks(limit), strict=True):
            if before < mark <= after:
                self.alerts.setdefault((counter, percent), (limit, after))


@functools.lru_cache(maxsize=1024)
def threshold_marks(limit: int) -> tuple[int, ...]:
    """Where each threshold of `limit` lies: the least total that crosses it (in integers, as
    `ceil(limit * percent / 100.0)` in PostgreSQL's numeric, exact at any size)."""
    return tuple(-(-limit * percent // 100) for percent in THRESHOLDS)


def decide(
    items: Sequence[Pending],
    counters: dict[CounterKey, Counter],
    rules: dict[uuid.UUID, LimitRules],
    stored: dict[tuple[uuid.UUID, str], Stored],
    prices: Sequence[Price],
    meters: dict[str, MeterInfo],
    rollups: dict[RollupKey, list[int]] | None = None,
    users: set[tuple[uuid.UUID, uuid.UUID]] | None = None,
) -> Decision:
    """Decide every event in order, as one `record` after another would (see the module).

    `rollups` are the day rollups as stored (None: the batch's own sums are checked alone,
    and the write fails on an overflow, see `batch`); `users` the (organisation, user) pairs
    that exist among the events' `user_id`s (None: not checked)."""
    decision = Decision()
    state = {key: Counter(c.used, c.reserved) for key, c in counters.items()}
    first_of: dict[EventKey, int] = {}  # each key's accepted event: its place in `outcomes`
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
        if key in first_of:
            first = outcomes[first_of[key]]
            assert isinstance(first, RecordResult)
            outcomes.append(
                conflict(item)
                if items[first_of[key]].fingerprint != item.fingerprint
                else replace(first, status="duplicate", used=state[item.counter].used)
            )
            continue
        if key in stored:
            outcomes.append(_duplicate(item, stored[key], state, org_rules, meters))
            continue
        if item.closed:
            outcomes.append(period_closed(item))
            continue
        if event.user_id is not None and users is not None and (org, event.user_id) not in users:
            outcomes.append(unknown_user(item))
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
        if item.enforce and limit.refuses(after):
            assert limit.value is not None
            if counter.reserved:
                decision.refused_holding.add(where)
            outcomes.append(LimitExceeded(meter.code, limit.value, before, increment))
            continue
        if after > BIGINT_MAX:
            outcomes.append(overflow(meter.code, "the counter"))
            continue
        cost = price_of(item, prices, decision.unpriced) if event.model is not None else 0
        if cost > BIGINT_MAX:
            outcomes.append(overflow(meter.code, "the cost"))
            continue
        day = rollup_key(item)
        if not decision.rollup_fits(item, cost, rollups, day):
            outcomes.append(overflow(meter.code, "the day's total"))
            continue
        counter.used = used
        changed[where] = counter
        event_id = decision.add_event(item, cost, day)
        if limit.value is not None:
            decision.add_crossings(where, limit.value, before, after)
        first_of[key] = len(outcomes)
        outcomes.append(accepted(event_id, item, used, counter.reserved, limit, cost))
    return decision


def overflow(metric: str, what: str = "a counter") -> CounterOverflow:
    """The refusal of an event (or reservation) that would take `what` past a BIGINT."""
    return CounterOverflow(
        f"{what} of {metric} would overflow: it holds at most {BIGINT_MAX}", metric=metric
    )


def period_closed(item: Pending) -> PeriodClosed:
    return PeriodClosed(
        f"occurred_at {item.occurred.isoformat()} is outside the current period of "
        f"{item.meter.code} (from its start to {int(FUTURE_SLACK.total_seconds()) // 60} "
        "minutes ahead); backfill is for operators",
        field="occurred_at",
        metric=item.meter.code,
    )


def unknown_user(item: Pending) -> UnknownUser:
    return UnknownUser(
        f"no user {item.event.user_id} in this organisation",
        field="user_id",
        user_id=str(item.event.user_id),
    )


def conflict(item: Pending) -> IdempotencyConflict:
    key = item.event.idempotency_key
    return IdempotencyConflict(
        f"idempotency key {key!r} was used for a different event", idempotency_key=key
    )


def accepted(
    event_id: uuid.UUID, item: Pending, used: int, reserved: int, limit: Limit, cost: int
) -> RecordResult:
    """The answer to an accepted event, its counter at (`used`, `reserved`) after it."""
    value = limit.value
    return RecordResult(
        event_id,
        "accepted",
        item.meter.code,
        item.event.quantity,
        used,
        value,
        value is not None and used + reserved > value,
        cost,
    )


def batch_outcome(
    index: int, event: UsageEventIn, outcome: RecordResult | Exception
) -> BatchOutcome:
    """An event's outcome as `record_many` answers it."""
    if isinstance(outcome, RecordResult):
        return BatchOutcome(index, event.idempotency_key, outcome.status, outcome.event_id)
    code = outcome.code if isinstance(outcome, DomainError) else "invalid_input"
    message = outcome.message if isinstance(outcome, DomainError) else str(outcome)
    status: Literal["refused", "invalid"] = (
        "refused" if isinstance(outcome, LimitExceeded) else "invalid"
    )
    return BatchOutcome(index, event.idempotency_key, status, code=code, message=message)


def _duplicate(
    item: Pending,
    previous: Stored,
    state: dict[CounterKey, Counter],
    rules: LimitRules,
    meters: dict[str, MeterInfo],
) -> Outcome:
    meter = meters.get(previous.metric)
    counter = None
    if meter is not None:
        counter = state.get((item.org_id, previous.metric, meter.period(previous.occurred_at)[0]))
    used = counter.used if counter is not None else 0
    return duplicate(item, previous, used, rules.limit(previous.metric))


def duplicate(item: Pending, previous: Stored, used: int, limit: Limit) -> Outcome:
    """The answer to an event whose key is stored already: the first event's, as a
    duplicate (`used` is the counter of the stored event's period), or a conflict when the
    stored event is another one."""
    if previous.payload_hash != item.fingerprint:
        return conflict(item)
    return RecordResult(
        previous.event_id,
        "duplicate",
        previous.metric,
        previous.quantity,
        used,
        limit.value,
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


def rollup_key(item: Pending) -> RollupKey:
    """The `usage_daily_summary` row the event adds to."""
    event = item.event
    return (
        item.org_id,
        item.occurred.astimezone(UTC).date(),
        item.meter.code,
        event.model or "",
        event.provider or "",
        event.feature or "",
    )


def _roll_up(
    rollups: dict[RollupKey, list[int]], item: Pending, cost: int, key: RollupKey | None
) -> None:
    event = item.event
    if key is None:
        key = rollup_key(item)
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

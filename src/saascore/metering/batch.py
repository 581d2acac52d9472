"""Recording many events at once: the engine behind `record_many` and group commit.

A batch is decided in Python under row locks and then written set-wise:

1. **lock**: every (organisation, metric, period) counter the batch touches is created if
   missing and locked, in one order (code-point order, as Python sorts) so that concurrent
   batches cannot deadlock on counters; the organisations' limit rules are read with it, and
   the events already stored under the batch's keys (`SessionStore`; `PostgresStore` first
   tries without them, see below);
2. **decide** (`decision.decide`, pure Python): the events are walked in order, exactly as
   one `record` after another would decide them: a duplicate of a stored event or of an earlier
   event in the batch, a conflict (same key, different event), invalid (a value the columns
   cannot hold), or a hard limit checked against the counter as the earlier events left it;
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
- A day rollup that the write would take past a BIGINT: `PostgresStore`'s first try checks
  only the batch's own sums (reading the rollups would cost every batch a look-up for an
  attack's sake); PostgreSQL then refuses the write (`numeric_value_out_of_range`), the try is
  undone like a race, and the batch decided again on the rollups as stored (`CounterOverflow`
  for the events that do not fit). `SessionStore` reads them at once (SQLite does not refuse
  an overflow: it would store a float).
- A `user_id` must be a user of the event's organisation: the pairs are looked up once per
  batch, and only when an event names a user.

The engine here only orders the steps. The decision is `decision.decide`; the I/O is a
`Store`: `postgres.PostgresStore` does it in a few statements over asyncpg arrays,
`session_store.SessionStore` with SQLAlchemy Core, for SQLite and for batches that join a
caller's session.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Protocol

from saascore.metering.decision import (
    Counter,
    CounterKey,
    Decision,
    EventKey,
    Pending,
    Price,
    RollupKey,
    Snapshot,
    Stored,
    decide,
    rollup_key,
)
from saascore.metering.errors import CounterOverflow, LimitExceeded, PeriodClosed, UnknownUser
from saascore.metering.values import MeterInfo

__all__ = ["ATTEMPTS", "Raced", "Store", "record_batch"]

#: How often a batch is decided again after a copy of one of its events slipped in.
ATTEMPTS = 5
#: Refusals that may be a copy of an event stored meanwhile, looked up again after the locks.
_REFUSALS = (LimitExceeded, PeriodClosed, UnknownUser, CounterOverflow)


class Raced(Exception):
    """A concurrent copy of an event was stored after the batch was decided; the write was
    undone and the batch must be decided again."""


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

    async def rollups(self, keys: Iterable[RollupKey]) -> dict[RollupKey, list[int]]:
        """These day rollups as stored: quantity, events, input, output, cached, total tokens
        and cost, as `Decision.rollups` holds them."""
        ...

    async def users(
        self, pairs: set[tuple[uuid.UUID, uuid.UUID]]
    ) -> set[tuple[uuid.UUID, uuid.UUID]]:
        """The (organisation, user) pairs among these that exist."""
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
    periods: dict[CounterKey, datetime | None] = {}
    for item in items:
        if item.closed:  # refused before its counter: the current one is locked instead
            start, end = item.meter.period(clock())  # (it reads the organisation's rules)
            periods[(item.org_id, item.meter.code, start)] = end
        else:
            periods[item.counter] = item.period_end
    named = {(item.org_id, item.event.user_id) for item in items if item.event.user_id is not None}
    users = await store.users(named) if named else set()
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
                    users,
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
    users: set[tuple[uuid.UUID, uuid.UUID]],
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
    if raced or not store.optimistic:  # under the counters' locks, which guard the rollups
        snapshot.rollups = await store.rollups(
            {rollup_key(item) for item in items if not item.closed}
        )
    counters, rules, stored = snapshot.counters, snapshot.rules, snapshot.stored
    elsewhere = _periods_of(stored, meters, counters)
    if elsewhere:  # duplicates of events in other periods report those counters (unlocked)
        counters.update(await store.peek(elsewhere))
    rollups = snapshot.rollups

    def decided() -> Decision:
        return decide(items, counters, rules, stored, prices, meters, rollups, users)

    decision = decided()
    if not raced:
        # A refusal may be a copy that committed while the lock waited (its own quantity
        # then fills the counter): look its key up now that the locks are held.
        refused = [
            (item.org_id, item.event.idempotency_key)
            for item, outcome in zip(items, decision.outcomes, strict=True)
            if isinstance(outcome, _REFUSALS)
        ]
        late = await store.stored(refused) if refused else {}
        if late:
            stored.update(late)
            decision = decided()
    if decision.refused_holding:
        freed = await store.expire_lapsed(sorted(decision.refused_holding), now)
        if freed:
            for key, quantity in freed.items():
                counters[key].reserved -= quantity
            decision = decided()
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

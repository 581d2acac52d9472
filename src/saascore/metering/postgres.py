"""Metering's PostgreSQL statements: the one-statement `record` and the batch store.

`RECORD` records one event in one statement and one round trip (autocommit): the decision
of `decision.decide` for a single event, made inside PostgreSQL, with the limit resolved by
`limits.resolution_sql`. It is what `record` runs without a session on PostgreSQL (without
group commit, or a batch of one under it), except for a `max` meter, which is not one
increment and takes the batch engine:

1. `lim` resolves the limit as `limits.LimitRules.limit` does; `usr` says whether the event's
   `user_id` (if any) is a user of the organisation (one look-up by primary key);
2. `ev` inserts the event first (only for a known user); its unique index makes a concurrent
   copy of the same key wait for the first to commit and then do nothing, so a key is never
   counted twice;
3. `counted` bumps the period's counter only if the event was inserted and the hard limit
   allows, and `used + reserved` stays within a BIGINT (compared as `used + reserved <=
   cap - increment`, which cannot overflow itself);
4. `rolled` and `alerted` add to the day's rollup and record threshold crossings;
5. the final SELECT calls `saascore_limit_exceeded()` when the event went in but the counter
   refused it: the error aborts the whole statement, so nothing at all is written.

A day rollup or a cost that would pass a BIGINT makes PostgreSQL abort the statement
(`numeric_value_out_of_range`): nothing is written either, and `run_record` answers
`CounterOverflow`.

Every data-modifying CTE sees the same snapshot; the order above is the order of their data
dependencies. `saascore_limit_exceeded()` is created by the migration `0002` (PostgreSQL only).
`run_record` runs it and reads its row into the answer (`StatementOutcome`).

`PostgresStore` is the batch engine's `Store` on PostgreSQL: each step is one statement over
arrays (see `batch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from saascore.events.bus import OUTBOX_CHANNEL
from saascore.kit.errors import IdempotencyConflict, NotFound
from saascore.kit.ids import new_id
from saascore.metering.announce import ANNOUNCED
from saascore.metering.batch import Raced
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
    accepted,
    duplicate,
    overflow,
    unknown_user,
)
from saascore.metering.limits import Limit, LimitRules, resolution_sql
from saascore.metering.values import MeterInfo, RecordResult, UsageEventIn

__all__ = [
    "EVENT_KEY",
    "HELD",
    "LIMIT_EXCEEDED_SQLSTATE",
    "RECORD",
    "RELEASE",
    "RESERVE",
    "SETTLE",
    "PostgresStore",
    "answer",
    "run_record",
    "run_reserve",
    "run_settle",
]

#: The SQLSTATE `saascore_limit_exceeded()` raises (class SC: saascore).
LIMIT_EXCEEDED_SQLSTATE = "SC001"
#: numeric_value_out_of_range: a sum or a cost would pass a BIGINT.
OUT_OF_RANGE_SQLSTATE = "22003"
#: The unique index a copy of a stored event breaks: (organization_id, idempotency_key).
EVENT_KEY = "uq_usage_events_organization_id_idempotency_key"


# --- the CTEs that RECORD, RESERVE and SETTLE share ----------------------------------------------
# Each takes the `$n` of its parameters: the three statements number them differently.


def _limit_ctes(enforce: str = "TRUE") -> str:
    """`lim`, the organisation's limit on the metric ($1 org, $2 metric: `limits`' rule), and
    `cap`, that limit as enforced (`value`, NULL when it is not: soft, unlimited, or `enforce`
    false) and as shown (`shown`, NULL when unlimited)."""
    value, hard = resolution_sql("$2::text")
    enforced = "hard" if enforce == "TRUE" else f"{enforce} AND hard"
    return f"""lim AS (
    SELECT {value} AS value, {hard} AS hard
    FROM organizations o
    JOIN subscription_plans p ON p.id = o.plan_id
    LEFT JOIN usage_limits ul ON ul.organization_id = o.id
    LEFT JOIN plan_limits pl ON pl.plan_id = p.id AND pl.metric = $2::text
    WHERE o.id = $1::uuid
),
cap AS (
    SELECT CASE WHEN {enforced} AND value >= 0 THEN value END AS value,
        CASE WHEN value >= 0 THEN value END AS shown
    FROM lim
)"""  # noqa: S608 (constants only)


def _user_and_price_ctes(
    user: str, model: str, provider: str, tokens: tuple[str, str, str], at: str
) -> str:
    """`usr`, whether the event's `user` (a `$n`) is the organisation's or none; and `price`,
    the event's cost in micro-units from `model_pricing` (`model`, `provider`, the input,
    output and cached input `tokens`, the price in force `at`), rounded half up; no row when
    the model is unpriced or no tokens were used."""
    input_, output, cached = tokens
    return f"""usr AS (
    SELECT {user}::uuid IS NULL OR EXISTS (
        SELECT FROM users WHERE organization_id = $1::uuid AND id = {user}::uuid
    ) AS known
),
price AS (
    SELECT div(
        greatest({input_}::bigint - {cached}::bigint, 0)::numeric * input_micros_per_million
        + {cached}::bigint::numeric * cached_input_micros_per_million
        + {output}::bigint::numeric * output_micros_per_million
        + 500000,
        1000000
    ) AS cost
    FROM model_pricing
    WHERE {model}::text IS NOT NULL AND ({input_}::bigint > 0 OR {output}::bigint > 0)
      AND model = {model}::text AND is_active
      AND ({provider}::text IS NULL OR provider = {provider}::text)
      AND effective_from <= {at}::timestamptz
      AND (effective_to IS NULL OR effective_to > {at}::timestamptz)
    ORDER BY effective_from DESC
    LIMIT 1
)"""  # noqa: S608 (`$n` parameters only)


# --- one event, one statement --------------------------------------------------------------------
# Parameters: $1 org, $2 metric, $3 quantity, $4 increment (1 for count meters), $5 enforce,
# $6 period_start, $7 period_end, $8 event id, $9 key, $10 hash, $11 user_id,
# $12 subscription_id, $13 feature, $14 model, $15 provider, $16 input, $17 output,
# $18 cached, $19 credits_used, $20 request_id, $21 batch_id, $22 endpoint,
# $23 response_time_ms, $24 properties (JSON text), $25 occurred_at, $26 now, $27 day,
# $28 counter id, $29 rollup id, $30 alert id (80 %), $31 alert id (100 %).
#: Built from constants only (the limit rule of `limits`).
RECORD = f"""
WITH {_limit_ctes("$5::boolean")},
{_user_and_price_ctes("$11", "$14", "$15", ("$16", "$17", "$18"), "$25")},
prev AS (
    SELECT id, payload_hash, occurred_at, cost_micros FROM usage_events
    WHERE organization_id = $1::uuid AND idempotency_key = $9::text
),
ev AS (
    INSERT INTO usage_events (
        organization_id, id, idempotency_key, payload_hash, metric, quantity, user_id,
        subscription_id, feature, model, provider, input_tokens, output_tokens, cached_tokens,
        total_tokens, cost_micros, cost_currency, credits_used, request_id, batch_id, endpoint,
        response_time_ms, properties, occurred_at, recorded_at
    )
    SELECT $1::uuid, $8::uuid, $9::text, $10::text, $2::text, $3::bigint, $11::uuid, $12::uuid,
        $13::text, $14::text, $15::text, $16::bigint, $17::bigint, $18::bigint,
        $16::bigint + $17::bigint, coalesce((SELECT cost FROM price), 0), 'USD', $19::bigint,
        $20::text, $21::text, $22::text, $23::integer, $24::text::jsonb, $25::timestamptz,
        $26::timestamptz
    FROM lim, usr
    WHERE usr.known
    ON CONFLICT (organization_id, idempotency_key) DO NOTHING
    RETURNING id, cost_micros
),
counted AS (
    INSERT INTO usage_counters AS c (
        organization_id, id, metric, period_start, period_end, used, reserved, updated_at
    )
    SELECT $1::uuid, $28::uuid, $2::text, $6::timestamptz, $7::timestamptz, $4::bigint, 0,
        $26::timestamptz
    FROM ev, cap
    WHERE cap.value IS NULL OR $4::bigint <= cap.value
    ON CONFLICT (organization_id, metric, period_start) DO UPDATE
        SET used = c.used + excluded.used, updated_at = excluded.updated_at
        WHERE c.used + c.reserved
            <= coalesce((SELECT value FROM cap), 9223372036854775807) - excluded.used
    RETURNING c.used, c.reserved
),
rolled AS (
    INSERT INTO usage_daily_summary AS d (
        organization_id, id, day, metric, model, provider, feature, quantity, event_count,
        input_tokens, output_tokens, cached_tokens, total_tokens, cost_micros, updated_at
    )
    SELECT $1::uuid, $29::uuid, $27::date, $2::text, coalesce($14::text, ''),
        coalesce($15::text, ''), coalesce($13::text, ''), $3::bigint, 1, $16::bigint,
        $17::bigint, $18::bigint, $16::bigint + $17::bigint, ev.cost_micros, $26::timestamptz
    FROM ev, counted
    ON CONFLICT (organization_id, day, metric, model, provider, feature) DO UPDATE SET
        quantity = d.quantity + excluded.quantity,
        event_count = d.event_count + 1,
        input_tokens = d.input_tokens + excluded.input_tokens,
        output_tokens = d.output_tokens + excluded.output_tokens,
        cached_tokens = d.cached_tokens + excluded.cached_tokens,
        total_tokens = d.total_tokens + excluded.total_tokens,
        cost_micros = d.cost_micros + excluded.cost_micros,
        updated_at = excluded.updated_at
    RETURNING 1
),
alerted AS (
    INSERT INTO usage_alerts (
        organization_id, id, metric, period_start, threshold_percent, limit_value, used,
        crossed_at
    )
    SELECT $1::uuid, t.id, $2::text, $6::timestamptz, t.percent, lim.value,
        counted.used + counted.reserved, $26::timestamptz
    FROM counted, lim, (VALUES (80, $30::uuid), (100, $31::uuid)) AS t (percent, id)
    WHERE lim.value > 0
      AND counted.used + counted.reserved - $4::bigint < ceil(lim.value * t.percent / 100.0)
      AND ceil(lim.value * t.percent / 100.0) <= counted.used + counted.reserved
    ON CONFLICT (organization_id, metric, period_start, threshold_percent) DO NOTHING
    RETURNING organization_id, id, metric, period_start, threshold_percent, limit_value, used,
        crossed_at
),
{ANNOUNCED}
SELECT
    (SELECT count(*) FROM lim) AS organization_found,
    (SELECT id FROM ev) AS event_id,
    (SELECT cost_micros FROM ev) AS cost_micros,
    (SELECT used FROM counted) AS used,
    (SELECT reserved FROM counted) AS reserved,
    (SELECT shown FROM cap) AS limit_value,
    (SELECT hard FROM lim) AS hard,
    (SELECT known FROM usr) AS user_known,
    (SELECT id FROM prev) AS previous_id,
    (SELECT payload_hash FROM prev) AS previous_hash,
    (SELECT occurred_at FROM prev) AS previous_occurred,
    (SELECT cost_micros FROM prev) AS previous_cost,
    (SELECT used FROM usage_counters
     WHERE organization_id = $1::uuid AND metric = $2::text AND period_start = $6::timestamptz
    ) AS current_used,
    (SELECT count(*) FROM price) AS priced,
    (SELECT count(*) FROM rolled) + (SELECT count(*) FROM alerted) AS written,
    (SELECT count(pg_notify('saascore_outbox', '')) FROM announced) AS announced,
    CASE
        WHEN EXISTS (SELECT 1 FROM ev) AND NOT EXISTS (SELECT 1 FROM counted)
        THEN saascore_limit_exceeded($2::text, (SELECT shown FROM cap))
    END AS refused
"""  # noqa: S608


async def run_record(
    connection: asyncpg.Connection, item: Pending, now: datetime
) -> asyncpg.Record | None:
    """Run `RECORD` for one event: its row, or None when the counter refused the event (the
    hard limit, or a BIGINT's end; nothing was written). Raises `CounterOverflow` when a day
    rollup or the cost would pass a BIGINT, and asyncpg's `DeadlockDetectedError` when it lost
    a deadlock to a batch with a copy. `answer` reads the row, once the connection is handed
    back."""
    event, meter = item.event, item.meter
    try:
        return await connection.fetchrow(
            RECORD,
            item.org_id,
            meter.code,
            event.quantity,
            item.increment,
            item.enforce,
            item.period_start,
            item.period_end,
            new_id(),
            event.idempotency_key,
            item.fingerprint,
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
            item.occurred,
            now,
            item.occurred.astimezone(UTC).date(),
            new_id(),
            new_id(),
            new_id(),
            new_id(),
        )
    except asyncpg.PostgresError as error:
        if error.sqlstate == OUT_OF_RANGE_SQLSTATE:
            raise overflow(meter.code, "the day's total or the cost") from None
        if error.sqlstate != LIMIT_EXCEEDED_SQLSTATE:
            raise
        return None


def answer(
    item: Pending, row: asyncpg.Record, unpriced: Callable[[UsageEventIn], None]
) -> RecordResult | None:
    """The answer of `RECORD`'s row: the result, or None for a duplicate of an event of
    another period, or of a copy that committed while the statement waited (then not in its
    snapshot), which the caller looks up. Raises `IdempotencyConflict`, and `NotFound` for an
    organisation that does not exist; `unpriced(event)` notes a model without a price."""
    event, meter = item.event, item.meter
    if not row["organization_found"]:
        raise NotFound(f"no organisation {item.org_id}", organization=str(item.org_id))
    limit = Limit(row["limit_value"], bool(row["hard"]))
    if row["event_id"] is None:
        previous_id = row["previous_id"]
        if previous_id is None and not row["user_known"]:
            raise unknown_user(item)
        if previous_id is None or meter.period(row["previous_occurred"])[0] != item.period_start:
            return None
        previous = Stored(
            previous_id,
            row["previous_hash"],
            meter.code,
            event.quantity,
            int(row["previous_cost"]),
            row["previous_occurred"],
        )
        outcome = duplicate(item, previous, int(row["current_used"] or 0), limit)
        if isinstance(outcome, IdempotencyConflict):
            raise outcome
        assert isinstance(outcome, RecordResult)
        return outcome
    has_tokens = event.input_tokens or event.output_tokens
    if event.model is not None and has_tokens and not row["priced"]:
        unpriced(event)
    return accepted(
        row["event_id"],
        item,
        int(row["used"]),
        int(row["reserved"]),
        limit,
        int(row["cost_micros"]),
    )


# --- a reservation, one statement ----------------------------------------------------------------
# Parameters: $1 org, $2 metric, $3 quantity, $4 period_start, $5 period_end, $6 reservation id,
# $7 key (NULL: none), $8 expires_at, $9 now, $10 counter id, $11 alert id (80 %),
# $12 alert id (100 %).
#: `Reservations.reserve` on PostgreSQL in one statement and one round trip (autocommit), as
#: `RECORD` records: the reservation is inserted first, so its key's unique index makes a
#: concurrent copy wait and then do nothing; the counter's `reserved` grows only if it was
#: inserted and the hard limit allows, else `saascore_limit_exceeded()` aborts it all. `prev` is
#: the reservation already under the key (a retry), answered instead.
RESERVE = f"""
WITH {_limit_ctes()},
prev AS (
    SELECT id, metric, period_start, quantity, settled_quantity, status, expires_at,
        created_at, finished_at
    FROM usage_reservations
    WHERE organization_id = $1::uuid AND idempotency_key = $7::text
),
held AS (
    INSERT INTO usage_reservations (
        organization_id, id, metric, period_start, quantity, status, idempotency_key,
        expires_at, created_at
    )
    SELECT $1::uuid, $6::uuid, $2::text, $4::timestamptz, $3::bigint, 'held', $7::text,
        $8::timestamptz, $9::timestamptz
    FROM lim
    ON CONFLICT (organization_id, idempotency_key) DO NOTHING
    RETURNING id
),
counted AS (
    INSERT INTO usage_counters AS c (
        organization_id, id, metric, period_start, period_end, used, reserved, updated_at
    )
    SELECT $1::uuid, $10::uuid, $2::text, $4::timestamptz, $5::timestamptz, 0, $3::bigint,
        $9::timestamptz
    FROM held, cap
    WHERE cap.value IS NULL OR $3::bigint <= cap.value
    ON CONFLICT (organization_id, metric, period_start) DO UPDATE
        SET reserved = c.reserved + excluded.reserved, updated_at = excluded.updated_at
        WHERE c.used + c.reserved
            <= coalesce((SELECT value FROM cap), 9223372036854775807) - excluded.reserved
    RETURNING c.used, c.reserved
),
alerted AS (
    INSERT INTO usage_alerts (
        organization_id, id, metric, period_start, threshold_percent, limit_value, used,
        crossed_at
    )
    SELECT $1::uuid, t.id, $2::text, $4::timestamptz, t.percent, lim.value,
        counted.used + counted.reserved, $9::timestamptz
    FROM counted, lim, (VALUES (80, $11::uuid), (100, $12::uuid)) AS t (percent, id)
    WHERE lim.value > 0
      AND counted.used + counted.reserved - $3::bigint < ceil(lim.value * t.percent / 100.0)
      AND ceil(lim.value * t.percent / 100.0) <= counted.used + counted.reserved
    ON CONFLICT (organization_id, metric, period_start, threshold_percent) DO NOTHING
    RETURNING organization_id, id, metric, period_start, threshold_percent, limit_value, used,
        crossed_at
),
{ANNOUNCED}
SELECT
    (SELECT count(*) FROM lim) AS organization_found,
    (SELECT id FROM held) AS held_id,
    (SELECT used FROM counted) AS used,
    (SELECT reserved FROM counted) AS reserved,
    prev.*,
    (SELECT count(pg_notify('saascore_outbox', '')) FROM announced) AS announced,
    CASE
        WHEN EXISTS (SELECT 1 FROM held) AND NOT EXISTS (SELECT 1 FROM counted)
        THEN saascore_limit_exceeded($2::text, (SELECT shown FROM cap))
    END AS refused
FROM (SELECT 1) AS one LEFT JOIN prev ON true
"""  # noqa: S608


async def run_reserve(
    connection: asyncpg.Connection,
    org_id: uuid.UUID,
    meter: MeterInfo,
    quantity: int,
    expires_at: datetime,
    idempotency_key: str | None,
    now: datetime,
) -> asyncpg.Record | None:
    """Run `RESERVE`: its row, or None when the counter refused the hold (a hard limit, or a
    BIGINT's end; nothing was written)."""
    period_start, period_end = meter.period(now)
    try:
        return await connection.fetchrow(
            RESERVE,
            org_id,
            meter.code,
            quantity,
            period_start,
            period_end,
            new_id(),
            idempotency_key,
            expires_at,
            now,
            new_id(),
            new_id(),
            new_id(),
        )
    except asyncpg.PostgresError as error:
        if error.sqlstate != LIMIT_EXCEEDED_SQLSTATE:
            raise
        return None


#: A reservation's columns that never change once it is made, and its state (`SETTLE`'s
#: caller reads them first). $1 the reservation, $2 its organisation (NULL: any).
HELD = """
SELECT organization_id, metric, period_start, quantity, created_at, status, expires_at
FROM usage_reservations
WHERE id = $1::uuid AND ($2::uuid IS NULL OR organization_id = $2::uuid)
"""

#: `Reservations.release` on PostgreSQL in one statement (autocommit): the reservation claimed
#: from held to released (so a racing settle, release or sweep finds it taken), its quantity
#: given back to its counter. No row: not found held and in time (the caller says why).
#: $1 the reservation, $2 its organisation (NULL: any), $3 now.
RELEASE = """
WITH claimed AS (
    UPDATE usage_reservations
    SET status = 'released', finished_at = $3::timestamptz
    WHERE id = $1::uuid AND ($2::uuid IS NULL OR organization_id = $2::uuid)
      AND status = 'held' AND expires_at > $3::timestamptz
    RETURNING organization_id, metric, period_start, quantity, idempotency_key, expires_at,
        created_at
),
freed AS (
    UPDATE usage_counters c
    SET reserved = c.reserved - claimed.quantity, updated_at = $3::timestamptz
    FROM claimed
    WHERE c.organization_id = claimed.organization_id AND c.metric = claimed.metric
      AND c.period_start = claimed.period_start
)
SELECT claimed.* FROM claimed
"""

# --- a settlement, one statement ----------------------------------------------------------------
# Parameters: $1 org, $2 metric, $3 reservation id, $4 actual quantity, $5 extra (the actual
# quantity less the reserved one), $6 period_start (the reservation's), $7 event id, $8 key,
# $9 hash, $10 user_id, $11 subscription_id, $12 feature, $13 model, $14 provider, $15 input,
# $16 output, $17 cached, $18 credits_used, $19 request_id, $20 batch_id, $21 endpoint,
# $22 response_time_ms, $23 properties (JSON text), $24 occurred_at, $25 now, $26 day,
# $27 rollup id, $28 alert id (80 %), $29 alert id (100 %).
#: `Reservations.settle` on PostgreSQL in one statement and one round trip (autocommit), for a
#: reservation whose unchanging columns the caller has read (they give the metric, the period
#: and `extra`): `claimed` moves it from held to settled (only for a known user), which makes
#: a racing settle, release or sweep find it taken; `counted` moves its quantity from reserved
#: to used (past the reservation, only within the hard limit); `ev`, `rolled` and `alerted`
#: write the usage event keyed by the reservation (priced by `price`, as `RECORD` does), its
#: day's rollup and the thresholds that quota past the reservation crosses. A counter that
#: refuses makes `saascore_limit_exceeded()` abort it all: the reservation stays held.
SETTLE = f"""
WITH {_limit_ctes()},
{_user_and_price_ctes("$10", "$13", "$14", ("$15", "$16", "$17"), "$24")},
claimed AS (
    UPDATE usage_reservations
    SET status = 'settled', finished_at = $25::timestamptz, settled_quantity = $4::bigint
    WHERE organization_id = $1::uuid AND id = $3::uuid AND status = 'held'
      AND expires_at > $25::timestamptz AND (SELECT known FROM usr)
    RETURNING quantity
),
counted AS (
    UPDATE usage_counters c
    SET used = c.used + $4::bigint, reserved = c.reserved - claimed.quantity,
        updated_at = $25::timestamptz
    FROM claimed
    WHERE c.organization_id = $1::uuid AND c.metric = $2::text
      AND c.period_start = $6::timestamptz
      AND ($5::bigint <= 0 OR c.used + c.reserved
          <= coalesce((SELECT value FROM cap), 9223372036854775807) - $5::bigint)
    RETURNING c.used, c.reserved
),
ev AS (
    INSERT INTO usage_events (
        organization_id, id, idempotency_key, payload_hash, metric, quantity, user_id,
        subscription_id, feature, model, provider, input_tokens, output_tokens, cached_tokens,
        total_tokens, cost_micros, cost_currency, credits_used, request_id, batch_id, endpoint,
        response_time_ms, properties, occurred_at, recorded_at
    )
    SELECT $1::uuid, $7::uuid, $8::text, $9::text, $2::text, $4::bigint, $10::uuid, $11::uuid,
        $12::text, $13::text, $14::text, $15::bigint, $16::bigint, $17::bigint,
        $15::bigint + $16::bigint, coalesce((SELECT cost FROM price), 0), 'USD', $18::bigint,
        $19::text, $20::text, $21::text, $22::integer, $23::text::jsonb, $24::timestamptz,
        $25::timestamptz
    FROM counted
    RETURNING id, cost_micros
),
rolled AS (
    INSERT INTO usage_daily_summary AS d (
        organization_id, id, day, metric, model, provider, feature, quantity, event_count,
        input_tokens, output_tokens, cached_tokens, total_tokens, cost_micros, updated_at
    )
    SELECT $1::uuid, $27::uuid, $26::date, $2::text, coalesce($13::text, ''),
        coalesce($14::text, ''), coalesce($12::text, ''), $4::bigint, 1, $15::bigint,
        $16::bigint, $17::bigint, $15::bigint + $16::bigint, ev.cost_micros, $25::timestamptz
    FROM ev
    ON CONFLICT (organization_id, day, metric, model, provider, feature) DO UPDATE SET
        quantity = d.quantity + excluded.quantity,
        event_count = d.event_count + 1,
        input_tokens = d.input_tokens + excluded.input_tokens,
        output_tokens = d.output_tokens + excluded.output_tokens,
        cached_tokens = d.cached_tokens + excluded.cached_tokens,
        total_tokens = d.total_tokens + excluded.total_tokens,
        cost_micros = d.cost_micros + excluded.cost_micros,
        updated_at = excluded.updated_at
    RETURNING 1
),
alerted AS (
    INSERT INTO usage_alerts (
        organization_id, id, metric, period_start, threshold_percent, limit_value, used,
        crossed_at
    )
    SELECT $1::uuid, t.id, $2::text, $6::timestamptz, t.percent, lim.value,
        counted.used + counted.reserved, $25::timestamptz
    FROM counted, lim, (VALUES (80, $28::uuid), (100, $29::uuid)) AS t (percent, id)
    WHERE lim.value > 0 AND $5::bigint > 0
      AND counted.used + counted.reserved - $5::bigint < ceil(lim.value * t.percent / 100.0)
      AND ceil(lim.value * t.percent / 100.0) <= counted.used + counted.reserved
    ON CONFLICT (organization_id, metric, period_start, threshold_percent) DO NOTHING
    RETURNING organization_id, id, metric, period_start, threshold_percent, limit_value, used,
        crossed_at
),
{ANNOUNCED}
SELECT
    (SELECT count(*) FROM claimed) AS claimed,
    (SELECT known FROM usr) AS user_known,
    (SELECT id FROM ev) AS event_id,
    (SELECT cost_micros FROM ev) AS cost_micros,
    (SELECT used FROM counted) AS used,
    (SELECT reserved FROM counted) AS reserved,
    (SELECT shown FROM cap) AS limit_value,
    (SELECT hard FROM lim) AS hard,
    (SELECT count(*) FROM price) AS priced,
    (SELECT count(*) FROM rolled) + (SELECT count(*) FROM alerted) AS written,
    (SELECT count(pg_notify('saascore_outbox', '')) FROM announced) AS announced,
    CASE
        WHEN EXISTS (SELECT 1 FROM claimed) AND NOT EXISTS (SELECT 1 FROM counted)
        THEN saascore_limit_exceeded($2::text, (SELECT shown FROM cap))
    END AS refused
"""  # noqa: S608


async def run_settle(
    connection: asyncpg.Connection,
    item: Pending,
    reservation_id: uuid.UUID,
    extra: int,
    now: datetime,
) -> asyncpg.Record | None:
    """Run `SETTLE` for the usage event `item` of the reservation: its row, or None when the
    counter refused the quota past the reservation (nothing was written). Raises
    `CounterOverflow` when the day's rollup or the cost would pass a BIGINT."""
    event = item.event
    try:
        return await connection.fetchrow(
            SETTLE,
            item.org_id,
            item.meter.code,
            reservation_id,
            event.quantity,
            extra,
            item.period_start,
            new_id(),
            event.idempotency_key,
            item.fingerprint,
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
            item.occurred,
            now,
            item.occurred.astimezone(UTC).date(),
            new_id(),
            new_id(),
            new_id(),
        )
    except asyncpg.PostgresError as error:
        if error.sqlstate == OUT_OF_RANGE_SQLSTATE:
            raise overflow(item.meter.code, "the day's total or the cost") from None
        if error.sqlstate != LIMIT_EXCEEDED_SQLSTATE:
            raise
        return None


# --- the batch store -----------------------------------------------------------------------------
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
    ROLLUPS = """
        SELECT d.organization_id, d.day, d.metric, d.model, d.provider, d.feature, d.quantity,
            d.event_count, d.input_tokens, d.output_tokens, d.cached_tokens, d.total_tokens,
            d.cost_micros
        FROM unnest($1::uuid[], $2::date[], $3::text[], $4::text[], $5::text[], $6::text[])
            AS k (org, day, metric, model, provider, feature) CROSS JOIN LATERAL (
            SELECT * FROM usage_daily_summary
            WHERE organization_id = k.org AND day = k.day AND metric = k.metric
              AND model = k.model AND provider = k.provider AND feature = k.feature
        ) AS d
    """
    USERS = """
        SELECT u.organization_id, u.id
        FROM unnest($1::uuid[], $2::uuid[]) AS k (org, id)
        JOIN users u ON u.organization_id = k.org AND u.id = k.id
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
    WRITE = f"""
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
            RETURNING organization_id, id, metric, period_start, threshold_percent,
                limit_value, used, crossed_at
        ),
        {ANNOUNCED}
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
            coalesce(e.properties, '{{}}')::jsonb, e.occurred, $1
        FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
            $7::int8[], $8::uuid[], $9::uuid[], $10::text[], $11::text[], $12::text[],
            $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::int8[], $18::text[],
            $19::text[], $20::text[], $21::int4[], $22::text[], $23::timestamptz[])
            AS e (org, id, key, hash, metric, quantity, user_id, subscription_id,
                feature, model, provider, input, output, cached, cost, credits,
                request_id, batch_id, endpoint, response_ms, properties, occurred)
    """  # noqa: S608

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

    async def rollups(self, keys: Iterable[RollupKey]) -> dict[RollupKey, list[int]]:
        wanted = list(keys)
        rows = await self.connection.fetch(
            self.ROLLUPS, *([key[n] for key in wanted] for n in range(6))
        )
        return {tuple(row[:6]): list(row[6:]) for row in rows}

    async def users(
        self, pairs: set[tuple[uuid.UUID, uuid.UUID]]
    ) -> set[tuple[uuid.UUID, uuid.UUID]]:
        wanted = list(pairs)
        rows = await self.connection.fetch(
            self.USERS, [pair[0] for pair in wanted], [pair[1] for pair in wanted]
        )
        return {(row[0], row[1]) for row in rows}

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
        except asyncpg.NumericValueOutOfRangeError as error:
            # A day rollup would pass a BIGINT: decided again on the rollups as stored.
            raise Raced from error
        if decision.alerts:  # usage.threshold_reached went to the outbox: wake dispatchers
            await self.connection.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)

    @contextlib.asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        try:
            yield
        except Raced:  # start over in a new transaction
            await self.transaction.rollback()
            self.transaction = self.connection.transaction()
            await self.transaction.start()
            raise

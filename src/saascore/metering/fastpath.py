"""`record` on PostgreSQL in one statement and one round trip.

The general path (`UsageService._record`) takes six statements in a transaction: look for the
key, read the limit, bump the counter, insert the event, roll up the day, commit. Here the same
work is one statement in autocommit, so one round trip and one commit:

1. `lim` resolves the limit as `UsageService.limit` does (override, plan_limits row, plan column);
2. `ev` inserts the event first; its unique index makes a concurrent copy of the same key wait
   for the first to commit and then do nothing, so a key is never counted twice;
3. `counted` bumps the period's counter only if the event was inserted and the hard limit allows;
4. `rolled` and `alerted` add to the day's rollup and record threshold crossings;
5. the final SELECT calls `saascore_limit_exceeded()` when the event went in but the counter
   refused it: the error aborts the whole statement, so nothing at all is written.

Every data-modifying CTE sees the same snapshot; the order above is the order of their data
dependencies. `saascore_limit_exceeded()` is created by the migration `0002` (PostgreSQL only).
"""

from __future__ import annotations

__all__ = ["LIMIT_EXCEEDED_SQLSTATE", "RECORD"]

#: The SQLSTATE `saascore_limit_exceeded()` raises (class SC: saascore).
LIMIT_EXCEEDED_SQLSTATE = "SC001"

# Parameters: $1 org, $2 metric, $3 quantity, $4 increment (1 for count meters), $5 enforce,
# $6 period_start, $7 period_end, $8 event id, $9 key, $10 hash, $11 user_id,
# $12 subscription_id, $13 feature, $14 model, $15 provider, $16 input, $17 output,
# $18 cached, $19 credits_used, $20 request_id, $21 batch_id, $22 endpoint,
# $23 response_time_ms, $24 properties (JSON text), $25 occurred_at, $26 now, $27 day,
# $28 counter id, $29 rollup id, $30 alert id (80 %), $31 alert id (100 %).
RECORD = """
WITH lim AS (
    SELECT
        CASE
            WHEN ul.overrides ? $2::text THEN (ul.overrides -> $2::text ->> 'limit')::bigint
            WHEN pl.id IS NOT NULL THEN pl.limit_value
            WHEN $2::text = 'tokens' THEN p.monthly_token_limit
            WHEN $2::text = 'api_calls' THEN p.max_api_calls_per_day
            WHEN $2::text = 'storage_bytes' THEN p.max_storage_mb * 1048576
        END AS value,
        CASE
            WHEN ul.overrides ? $2::text
                THEN coalesce((ul.overrides -> $2::text ->> 'hard')::boolean, true)
            WHEN pl.id IS NOT NULL THEN pl.is_hard
            ELSE true
        END AS hard
    FROM organizations o
    JOIN subscription_plans p ON p.id = o.plan_id
    LEFT JOIN usage_limits ul ON ul.organization_id = o.id
    LEFT JOIN plan_limits pl ON pl.plan_id = p.id AND pl.metric = $2::text
    WHERE o.id = $1::uuid
),
cap AS (
    SELECT CASE WHEN $5::boolean AND hard AND value >= 0 THEN value END AS value, value AS shown
    FROM lim
),
price AS (
    SELECT (
        greatest($16::bigint - $18::bigint, 0) * input_micros_per_million
        + $18::bigint * cached_input_micros_per_million
        + $17::bigint * output_micros_per_million
        + 500000
    ) / 1000000 AS cost
    FROM model_pricing
    WHERE $14::text IS NOT NULL AND ($16::bigint > 0 OR $17::bigint > 0)
      AND model = $14::text AND ($15::text IS NULL OR provider = $15::text) AND is_active
      AND effective_from <= $25::timestamptz
      AND (effective_to IS NULL OR effective_to > $25::timestamptz)
    ORDER BY effective_from DESC
    LIMIT 1
),
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
    FROM lim
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
        WHERE (SELECT value FROM cap) IS NULL
           OR c.used + c.reserved + excluded.used <= (SELECT value FROM cap)
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
    RETURNING 1
)
SELECT
    (SELECT count(*) FROM lim) AS organization_found,
    (SELECT id FROM ev) AS event_id,
    (SELECT cost_micros FROM ev) AS cost_micros,
    (SELECT used FROM counted) AS used,
    (SELECT reserved FROM counted) AS reserved,
    (SELECT shown FROM cap) AS limit_value,
    (SELECT hard FROM lim) AS hard,
    (SELECT id FROM prev) AS previous_id,
    (SELECT payload_hash FROM prev) AS previous_hash,
    (SELECT occurred_at FROM prev) AS previous_occurred,
    (SELECT cost_micros FROM prev) AS previous_cost,
    (SELECT used FROM usage_counters
     WHERE organization_id = $1::uuid AND metric = $2::text AND period_start = $6::timestamptz
    ) AS current_used,
    (SELECT count(*) FROM price) AS priced,
    (SELECT count(*) FROM rolled) + (SELECT count(*) FROM alerted) AS written,
    CASE
        WHEN EXISTS (SELECT 1 FROM ev) AND NOT EXISTS (SELECT 1 FROM counted)
        THEN saascore_limit_exceeded($2::text, (SELECT shown FROM cap))
    END AS refused
"""

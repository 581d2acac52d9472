"""Metering's events: `usage.threshold_reached` and `usage.limit_exceeded`.

A threshold crossing is told in the transaction that records it: its outbox row is written
beside its `usage_alerts` row, by the bus in a session (`SessionStore`) and by `ANNOUNCED`, a
CTE of PostgreSQL's statements. Both give the row the same dedupe key, so a crossing is told
once whichever path records it.

A refusal writes nothing, so `usage.limit_exceeded` is told in a short transaction of its own,
once per organisation, metric and period (the outbox's dedupe key decides among processes), and
each process remembers what it told, so that a stream of refused requests costs no writes.
"""

from __future__ import annotations

from datetime import datetime

from saascore.events.catalog import UsageLimitExceeded, UsageThresholdReached

__all__ = [
    "ANNOUNCED",
    "UsageLimitExceeded",
    "UsageThresholdReached",
    "limit_key",
    "threshold_key",
]


def threshold_key(metric: str, period_start: datetime, percent: int) -> str:
    """The dedupe key of a threshold crossing (the same as `ANNOUNCED` computes)."""
    return f"{UsageThresholdReached.type}:{metric}:{int(period_start.timestamp())}:{percent}"


def limit_key(metric: str, period_start: datetime) -> str:
    """The dedupe key of the first refusal of a metric in a period."""
    return f"{UsageLimitExceeded.type}:{metric}:{int(period_start.timestamp())}"


#: Outbox rows for the thresholds that a statement's `alerted` CTE newly recorded (it must
#: return organization_id, id, metric, period_start, threshold_percent, limit_value, used and
#: crossed_at): the body `EventBus` would write for `UsageThresholdReached`, the alert's id as
#: the event's, and `threshold_key`'s key.
ANNOUNCED = """
announced AS (
    INSERT INTO outbox_events (organization_id, id, type, body, occurred_at, dedupe_key)
    SELECT a.organization_id, a.id, 'usage.threshold_reached',
        jsonb_build_object(
            'type', 'usage.threshold_reached',
            'timestamp',
            to_char(a.crossed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            'data', jsonb_build_object(
                'metric', a.metric,
                'period_start',
                to_char(a.period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'threshold_percent', a.threshold_percent,
                'limit', a.limit_value,
                'used', a.used)),
        a.crossed_at,
        'usage.threshold_reached:' || a.metric || ':'
            || extract(epoch FROM a.period_start)::bigint || ':' || a.threshold_percent
    FROM alerted AS a
    ON CONFLICT (organization_id, dedupe_key) DO NOTHING
    RETURNING 1
)"""

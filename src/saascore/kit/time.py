"""Time: every timestamp saascore makes is timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["day_start", "month_start", "next_month_start", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of the calendar month that holds `moment`."""
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(moment: datetime) -> datetime:
    start = month_start(moment)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def day_start(moment: datetime) -> datetime:
    """Midnight (UTC) of the day that holds `moment`."""
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

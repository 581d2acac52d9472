"""Billing periods and trials, in aware UTC datetimes.

Every period is computed from the subscription's anchor (its first period's start), never from
the previous period's end: period `n` starts `n` cycles after the anchor, on the anchor's day of
the month clamped to the month's length, at the anchor's time of day. An anchor on 31 January
gives 29 February (2024), then 31 March, 30 April, 31 May: the 31st comes back wherever the
month has one. A yearly anchor on 29 February gives 28 February in common years.

Naive datetimes are refused (`NaiveDatetime`); a period that would start before its anchor or
end after 9999-12-31 is refused (`PeriodOutOfRange`), never an `OverflowError`.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from saascore.billing.errors import NaiveDatetime, PeriodOutOfRange
from saascore.models.catalog import BillingCycle

__all__ = [
    "CYCLE_MONTHS",
    "Period",
    "add_months",
    "as_utc",
    "period",
    "period_containing",
    "period_end",
    "period_start",
    "trial_end",
]

#: How many calendar months one period of each cycle lasts.
CYCLE_MONTHS: dict[BillingCycle, int] = {
    BillingCycle.MONTHLY: 1,
    BillingCycle.QUARTERLY: 3,
    BillingCycle.YEARLY: 12,
}


@dataclass(frozen=True, slots=True)
class Period:
    """A billing period: from `start` (included) to `end` (excluded)."""

    index: int
    start: datetime
    end: datetime

    @property
    def seconds(self) -> int:
        """The period's length in whole seconds."""
        return (self.end - self.start) // timedelta(seconds=1)

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= as_utc(moment) < self.end


def as_utc(moment: datetime, name: str = "timestamp") -> datetime:
    """`moment` in UTC; refuses a naive datetime, or one whose UTC date is out of range."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise NaiveDatetime(
            f"{name} {moment.isoformat()} has no time zone; give it in UTC", name=name
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise PeriodOutOfRange(
            f"{name} {moment.isoformat()} is outside the years 1 to 9999 in UTC", name=name
        ) from None


def add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` plus `months` calendar months, on the anchor's day clamped to the month's end."""
    anchor = as_utc(anchor, "anchor")
    year, month0 = divmod(anchor.year * 12 + anchor.month - 1 + months, 12)
    if not 1 <= year <= 9999:
        raise PeriodOutOfRange(
            f"{months} months from {anchor.isoformat()} is outside the years 1 to 9999",
            anchor=anchor.isoformat(),
            months=months,
        )
    month = month0 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def period_start(anchor: datetime, cycle: BillingCycle, n: int) -> datetime:
    """When period `n` (0 is the first) of a subscription anchored at `anchor` starts."""
    if n < 0:
        raise PeriodOutOfRange(f"period {n} would start before the anchor", index=n)
    return add_months(anchor, n * CYCLE_MONTHS[BillingCycle(cycle)])


def period_end(anchor: datetime, cycle: BillingCycle, n: int = 0) -> datetime:
    """When period `n` ends (excluded), which is when period `n + 1` starts."""
    return period_start(anchor, cycle, n + 1)


def period(anchor: datetime, cycle: BillingCycle, n: int) -> Period:
    """Period `n` of a subscription anchored at `anchor`."""
    return Period(n, period_start(anchor, cycle, n), period_end(anchor, cycle, n))


def period_containing(anchor: datetime, cycle: BillingCycle, moment: datetime) -> Period:
    """The period that holds `moment`; refused when `moment` is before the anchor."""
    anchor, moment = as_utc(anchor, "anchor"), as_utc(moment, "moment")
    if moment < anchor:
        raise PeriodOutOfRange(
            f"{moment.isoformat()} is before the anchor {anchor.isoformat()}",
            anchor=anchor.isoformat(),
            moment=moment.isoformat(),
        )
    step = CYCLE_MONTHS[BillingCycle(cycle)]
    months = (moment.year - anchor.year) * 12 + moment.month - anchor.month
    # The estimate is right or one too high (the anchor's day or time not yet reached).
    n = max(months // step, 0)
    if period_start(anchor, cycle, n) > moment:
        n -= 1
    return period(anchor, cycle, n)


def trial_end(start: datetime, trial_days: int) -> datetime:
    """When a trial of `trial_days` days from `start` ends (`start` itself for 0 days)."""
    start = as_utc(start, "start")
    if trial_days < 0:
        raise PeriodOutOfRange(f"a trial cannot last {trial_days} days", trial_days=trial_days)
    try:
        return start + timedelta(days=trial_days)
    except OverflowError:
        raise PeriodOutOfRange(
            f"a trial of {trial_days} days from {start.isoformat()} ends after 9999-12-31",
            start=start.isoformat(),
            trial_days=trial_days,
        ) from None

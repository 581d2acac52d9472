"""Proration on a plan change, exact to the second and to the minor unit.

An upgrade at moment `at` inside a paid period credits the unused time of the old price and
charges the remaining time at the new price:

    credit = amount_paid * unused_seconds / period_seconds
    charge = new_amount * unused_seconds / period_seconds

where `unused_seconds` is the period's end minus `at`, counted in whole seconds (the seconds
already begun are used). Each amount is rounded once, half-up (away from zero) to the minor unit,
in integer arithmetic: no float is involved. At the period's first second the credit is the
whole amount paid; at its last second it is `amount_paid / period_seconds` rounded, 0 for any
amount below half the period's seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from saascore.billing.errors import OutsidePeriod
from saascore.billing.periods import Period, as_utc
from saascore.kit.errors import InvalidInput
from saascore.kit.money import divide_half_up

__all__ = ["Proration", "prorate", "prorate_change", "unused_seconds"]


def prorate(amount_minor: int, numerator: int, denominator: int) -> int:
    """`amount_minor * numerator / denominator`, rounded half-up (away from zero) to an integer:
    money's one rounding rule (`kit.money.divide_half_up`). `denominator` must be positive.
    """
    if denominator <= 0:
        raise ValueError(f"denominator must be positive, not {denominator}")
    return divide_half_up(amount_minor * numerator, denominator)


def unused_seconds(period: Period, at: datetime) -> int:
    """The whole seconds of `period` left after `at`; the second `at` falls in counts as used."""
    at = as_utc(at, "at")
    if not period.start <= at <= period.end:
        raise OutsidePeriod(
            f"{at.isoformat()} is outside the period from {period.start.isoformat()} to "
            f"{period.end.isoformat()}",
            at=at.isoformat(),
            period_start=period.start.isoformat(),
            period_end=period.end.isoformat(),
        )
    return (period.end - at) // timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Proration:
    """What a plan change at one moment of a period is worth, in the period's currency."""

    #: Credit for the old plan's unused time (minor units, >= 0).
    credit: int
    #: Charge for the new plan over the same remaining time (minor units, >= 0).
    charge: int
    unused_seconds: int
    period_seconds: int

    @property
    def net(self) -> int:
        """What the change costs now: the charge less the credit (negative: owed back)."""
        return self.charge - self.credit


def prorate_change(period: Period, at: datetime, amount_paid: int, new_amount: int) -> Proration:
    """The credit for the unused part of `amount_paid` and the charge of `new_amount` for the
    rest of `period`, when the plan changes at `at`."""
    for name, amount in (("amount_paid", amount_paid), ("new_amount", new_amount)):
        if amount < 0:
            raise InvalidInput(f"{name} cannot be negative ({amount})", **{name: amount})
    left, total = unused_seconds(period, at), period.seconds
    return Proration(
        credit=prorate(amount_paid, left, total),
        charge=prorate(new_amount, left, total),
        unused_seconds=left,
        period_seconds=total,
    )

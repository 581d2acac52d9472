"""Proration on an upgrade: exact to the second, half-up once to the minor unit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from saascore.billing import OutsidePeriod, Period, period, prorate, prorate_change
from saascore.kit.errors import InvalidInput
from saascore.models.catalog import BillingCycle

#: April 2024 from the 1st: 30 days, 2,592,000 seconds.
APRIL = period(datetime(2024, 4, 1, tzinfo=UTC), BillingCycle.MONTHLY, 0)
SECOND = timedelta(seconds=1)


def half_up(value: Fraction) -> int:
    """The reference: round half away from zero, on exact fractions."""
    magnitude = int(abs(value) + Fraction(1, 2))
    return -magnitude if value < 0 else magnitude


class TestProrate:
    @pytest.mark.parametrize(
        ("amount", "numerator", "denominator", "expected"),
        [
            (1000, 1, 3, 333),
            (1000, 2, 3, 667),
            (1, 1, 2, 1),  # a half goes up
            (3, 1, 2, 2),  # 1.5 up
            (-1, 1, 2, -1),  # a negative half goes away from zero
            (-3, 1, 2, -2),
            (1, 49, 100, 0),
            (0, 5, 7, 0),
            (10**30, 1, 3, 333333333333333333333333333333),  # exact, beyond any float
        ],
    )
    def test_half_up_away_from_zero(
        self, amount: int, numerator: int, denominator: int, expected: int
    ) -> None:
        assert prorate(amount, numerator, denominator) == expected

    @pytest.mark.parametrize("denominator", [0, -3])
    def test_a_denominator_must_be_positive(self, denominator: int) -> None:
        with pytest.raises(ValueError, match="denominator must be positive"):
            prorate(100, 1, denominator)

    @given(
        amount=st.integers(-(10**18), 10**18),
        numerator=st.integers(-(10**12), 10**12),
        denominator=st.integers(1, 10**12),
    )
    @example(amount=5, numerator=1, denominator=10)
    @example(amount=-5, numerator=1, denominator=10)
    def test_equals_the_fraction_reference(
        self, amount: int, numerator: int, denominator: int
    ) -> None:
        assert prorate(amount, numerator, denominator) == half_up(
            Fraction(amount * numerator, denominator)
        )


class TestAnUpgradeInApril:
    """A plan of 29.00 (2900 cents) paid for April, changed to one of 99.00."""

    @pytest.mark.parametrize(
        ("elapsed", "credit", "charge"),
        [
            (timedelta(0), 2900, 9900),  # the first second: all of it back
            (SECOND, 2900, 9900),  # 1 s used: 2900 * 2591999 / 2592000 = 2899.9989
            (timedelta(days=1), 2803, 9570),  # 29 days of 30: 2803.33, 9570.00
            (timedelta(days=10), 1933, 6600),  # 1933.33, 6600
            (timedelta(days=15), 1450, 4950),  # exactly half
            (timedelta(days=15, hours=12), 1402, 4785),  # 1401.67, 4785
            (timedelta(days=29, hours=23), 4, 14),  # an hour left: 4.03, 13.75
            (timedelta(days=29, hours=23, minutes=59), 0, 0),  # a minute left: 0.07, 0.23
            (timedelta(days=30) - SECOND, 0, 0),  # the last second: 0.0011, 0.0038
            (timedelta(days=30), 0, 0),  # the period's end
        ],
    )
    def test_the_credit_and_charge_at_points_of_the_period(
        self, elapsed: timedelta, credit: int, charge: int
    ) -> None:
        change = prorate_change(APRIL, APRIL.start + elapsed, amount_paid=2900, new_amount=9900)
        assert (change.credit, change.charge) == (credit, charge)
        assert change.period_seconds == 2_592_000
        assert change.unused_seconds == 2_592_000 - elapsed // SECOND
        assert change.net == charge - credit

    def test_the_last_second_of_a_large_amount_credits_one_minor_unit(self) -> None:
        # 1,296,000 is half of April's seconds: one second of it is worth exactly 0.5 -> 1.
        last = APRIL.end - SECOND
        assert prorate_change(APRIL, last, 1_296_000, 0).credit == 1
        assert prorate_change(APRIL, last, 1_295_999, 0).credit == 0

    def test_a_second_begun_counts_as_used(self) -> None:
        change = prorate_change(APRIL, APRIL.start + timedelta(microseconds=1), 2_592_000, 0)
        assert change.unused_seconds == 2_591_999
        assert change.credit == 2_591_999

    def test_an_amount_without_minor_units_rounds_to_whole_units(self) -> None:
        # JPY has no minor unit: 1000 yen over a third of the period is 333.33 -> 333 yen.
        change = prorate_change(APRIL, APRIL.start + timedelta(days=20), 1000, 0)
        assert change.credit == 333

    @pytest.mark.parametrize(
        "moment",
        [APRIL.start - SECOND, APRIL.end + SECOND],
        ids=["before", "after"],
    )
    def test_a_moment_outside_the_period_is_refused(self, moment: datetime) -> None:
        with pytest.raises(OutsidePeriod) as refused:
            prorate_change(APRIL, moment, 2900, 9900)
        assert refused.value.code == "outside_period"
        assert refused.value.status_code == 422

    @pytest.mark.parametrize(("paid", "new"), [(-1, 9900), (2900, -1)])
    def test_a_negative_amount_is_refused(self, paid: int, new: int) -> None:
        with pytest.raises(InvalidInput, match="cannot be negative"):
            prorate_change(APRIL, APRIL.start, paid, new)


class TestAgainstTheReference:
    @given(
        anchor=st.datetimes(
            min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - bounds are naive; values are UTC
            max_value=datetime(2100, 1, 1),  # noqa: DTZ001
            timezones=st.just(UTC),
        ),
        cycle=st.sampled_from(list(BillingCycle)),
        index=st.integers(0, 240),
        fraction=st.fractions(0, 1),
        paid=st.integers(0, 10**12),
        new=st.integers(0, 10**12),
    )
    @example(
        anchor=datetime(2024, 1, 31, tzinfo=UTC),
        cycle=BillingCycle.MONTHLY,
        index=1,
        fraction=Fraction(1),
        paid=10**12,
        new=1,
    )
    def test_credit_and_charge_equal_exact_fractions(
        self,
        anchor: datetime,
        cycle: BillingCycle,
        index: int,
        fraction: Fraction,
        paid: int,
        new: int,
    ) -> None:
        span: Period = period(anchor, cycle, index)
        total = span.seconds
        moment = span.start + timedelta(seconds=int(fraction * total))
        left = (span.end - moment) // SECOND

        change = prorate_change(span, moment, paid, new)

        assert change.credit == half_up(Fraction(paid * left, total))
        assert change.charge == half_up(Fraction(new * left, total))
        assert 0 <= change.credit <= paid
        assert 0 <= change.charge <= new

"""Billing periods from an anchor: month ends, leap years, quarters, years, the year-9999 edge."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saascore.billing import (
    NaiveDatetime,
    PeriodOutOfRange,
    period,
    period_containing,
    period_end,
    period_start,
    trial_end,
)
from saascore.models.catalog import BillingCycle

M, Q, Y = BillingCycle.MONTHLY, BillingCycle.QUARTERLY, BillingCycle.YEARLY


def at(year: int, month: int, day: int, hour: int = 9, minute: int = 30) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def starts(anchor: datetime, cycle: BillingCycle, count: int) -> list[date]:
    """The start dates of periods 0 .. count - 1, checking that each keeps the anchor's time."""
    moments = [period_start(anchor, cycle, n) for n in range(count)]
    assert all(m.timetz() == anchor.timetz() for m in moments)
    return [m.date() for m in moments]


def days(year: int, *month_days: tuple[int, int]) -> list[date]:
    return [date(year + (month - 1) // 12, (month - 1) % 12 + 1, day) for month, day in month_days]


class TestMonthEnds:
    @pytest.mark.parametrize(
        ("year", "anchor_day", "february", "short_months"),
        [
            (2024, 28, 28, 28),
            (2024, 29, 29, 29),
            (2024, 30, 29, 30),
            (2024, 31, 29, 30),
            (2025, 29, 28, 29),
            (2025, 30, 28, 30),
            (2025, 31, 28, 30),
            (2028, 31, 29, 30),
        ],
    )
    def test_a_year_of_monthly_periods_from_a_january_anchor(
        self, year: int, anchor_day: int, february: int, short_months: int
    ) -> None:
        long_day = min(anchor_day, 31)
        expected = days(
            year,
            (1, anchor_day),
            (2, february),
            (3, long_day),
            (4, short_months),
            (5, long_day),
            (6, short_months),
            (7, long_day),
            (8, long_day),
            (9, short_months),
            (10, long_day),
            (11, short_months),
            (12, long_day),
            (13, anchor_day),  # January of the next year
        )
        assert starts(at(year, 1, anchor_day), M, 13) == expected

    def test_the_31st_comes_back_after_february(self) -> None:
        anchor = at(2024, 1, 31)
        assert period_end(anchor, M, 0) == at(2024, 2, 29)
        assert period_end(anchor, M, 1) == at(2024, 3, 31)
        assert period_end(anchor, M, 2) == at(2024, 4, 30)
        assert period_end(anchor, M, 3) == at(2024, 5, 31)

    def test_a_period_ends_where_the_next_starts(self) -> None:
        anchor = at(2024, 1, 31)
        for n in range(24):
            assert period_end(anchor, M, n) == period_start(anchor, M, n + 1)
            assert period(anchor, M, n).end == period(anchor, M, n + 1).start

    def test_far_periods_are_computed_from_the_anchor(self) -> None:
        # Chaining "previous end + 1 month" would have drifted to the 28th after February.
        assert period_start(at(2024, 1, 31), M, 120) == at(2034, 1, 31)
        assert period_start(at(2024, 1, 31), M, 121) == at(2034, 2, 28)


class TestQuarters:
    def test_quarterly_from_the_31st_of_january(self) -> None:
        assert starts(at(2024, 1, 31), Q, 6) == days(
            2024, (1, 31), (4, 30), (7, 31), (10, 31), (13, 31), (16, 30)
        )

    def test_quarterly_from_the_30th_of_november_crosses_february(self) -> None:
        assert starts(at(2023, 11, 30), Q, 5) == days(
            2023, (11, 30), (14, 29), (17, 30), (20, 30), (23, 30)
        )

    def test_a_quarter_of_2024_from_1_january_lasts_91_days(self) -> None:
        assert period(at(2024, 1, 1), Q, 0).seconds == 91 * 86400


class TestYears:
    def test_a_yearly_anchor_on_29_february(self) -> None:
        assert starts(at(2024, 2, 29), Y, 9) == [
            date(2024, 2, 29),
            date(2025, 2, 28),
            date(2026, 2, 28),
            date(2027, 2, 28),
            date(2028, 2, 29),
            date(2029, 2, 28),
            date(2030, 2, 28),
            date(2031, 2, 28),
            date(2032, 2, 29),
        ]

    def test_a_leap_year_lasts_a_day_longer(self) -> None:
        assert period(at(2024, 1, 1), Y, 0).seconds == 366 * 86400
        assert period(at(2025, 1, 1), Y, 0).seconds == 365 * 86400


class TestTheEdgesOfTheCalendar:
    def test_the_last_period_that_ends_in_9999(self) -> None:
        anchor = at(9999, 11, 30)
        assert period_end(anchor, M, 0) == at(9999, 12, 30)

    @pytest.mark.parametrize(
        ("anchor", "cycle", "n"),
        [
            (at(9999, 12, 1), M, 0),
            (at(9999, 11, 30), M, 1),
            (at(9999, 10, 1), Q, 0),
            (at(9999, 1, 1), Y, 0),
            (at(2024, 1, 31), M, 10**15),
        ],
    )
    def test_a_period_ending_after_9999_is_refused(
        self, anchor: datetime, cycle: BillingCycle, n: int
    ) -> None:
        with pytest.raises(PeriodOutOfRange) as refused:
            period_end(anchor, cycle, n)
        assert refused.value.code == "period_out_of_range"
        assert refused.value.status_code == 422
        assert "outside the years 1 to 9999" in str(refused.value)

    def test_the_first_year_is_usable(self) -> None:
        assert period(at(1, 1, 31), M, 0).end == at(1, 2, 28)

    def test_a_negative_period_is_refused(self) -> None:
        with pytest.raises(PeriodOutOfRange, match="before the anchor"):
            period_start(at(2024, 1, 31), M, -1)

    def test_an_anchor_whose_utc_time_is_before_year_1_is_refused(self) -> None:
        east = timezone(timedelta(hours=5))
        with pytest.raises(PeriodOutOfRange, match="outside the years 1 to 9999 in UTC"):
            period_start(datetime(1, 1, 1, 2, tzinfo=east), M, 0)


class TestTimeZones:
    @pytest.mark.parametrize(
        "call",
        [
            lambda naive: period_start(naive, M, 0),
            lambda naive: period_containing(at(2024, 1, 1), M, naive),
            lambda naive: trial_end(naive, 14),
        ],
        ids=["start", "containing", "trial"],
    )
    def test_a_naive_datetime_is_refused(self, call: Callable[[datetime], object]) -> None:
        naive = datetime(2024, 1, 31, 9, 30)  # noqa: DTZ001 - the point of the test
        with pytest.raises(NaiveDatetime) as refused:
            call(naive)
        assert refused.value.code == "naive_datetime"
        assert refused.value.status_code == 422

    def test_an_aware_anchor_elsewhere_is_taken_in_utc(self) -> None:
        # 1 February 01:00 at UTC+2 is 31 January 23:00 UTC: the anchor day is the 31st.
        anchor = datetime(2024, 2, 1, 1, tzinfo=timezone(timedelta(hours=2)))
        start = period_start(anchor, M, 1)
        assert start == datetime(2024, 2, 29, 23, tzinfo=UTC)
        assert start.tzinfo is UTC


class TestPeriodContaining:
    @pytest.mark.parametrize(
        ("moment", "index"),
        [
            (at(2024, 1, 31), 0),  # the anchor itself opens period 0
            (at(2024, 2, 29, 9, 29), 0),  # a minute before period 1
            (at(2024, 2, 29), 1),
            (at(2024, 3, 30), 1),
            (at(2024, 3, 31, 9, 29), 1),
            (at(2024, 3, 31, 9, 30), 2),
            (at(2025, 1, 31, 9, 30), 12),
        ],
    )
    def test_the_period_that_holds_a_moment(self, moment: datetime, index: int) -> None:
        found = period_containing(at(2024, 1, 31), M, moment)
        assert found.index == index
        assert found.start <= moment < found.end
        assert moment in found

    def test_a_moment_before_the_anchor_is_refused(self) -> None:
        with pytest.raises(PeriodOutOfRange, match="before the anchor"):
            period_containing(at(2024, 1, 31), M, at(2024, 1, 31, 9, 29))

    @given(
        anchor=st.datetimes(
            min_value=datetime(1970, 1, 1),  # noqa: DTZ001 - bounds are naive; values are UTC
            max_value=datetime(2400, 1, 1),  # noqa: DTZ001
            timezones=st.just(UTC),
        ),
        offset=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=365 * 50)),
        cycle=st.sampled_from(list(BillingCycle)),
    )
    def test_every_moment_falls_in_exactly_the_period_found(
        self, anchor: datetime, offset: timedelta, cycle: BillingCycle
    ) -> None:
        moment = anchor + offset
        found = period_containing(anchor, cycle, moment)
        assert found.start <= moment < found.end
        assert found == period(anchor, cycle, found.index)


class TestTrials:
    def test_a_trial_lasts_its_days(self) -> None:
        assert trial_end(at(2024, 2, 20), 14) == at(2024, 3, 5)

    def test_no_trial_ends_at_once(self) -> None:
        assert trial_end(at(2024, 2, 20), 0) == at(2024, 2, 20)

    @pytest.mark.parametrize(
        ("start", "trial_days", "message"),
        [
            (at(2024, 2, 20), -1, "cannot last -1 days"),
            (at(9999, 12, 20), 14, "ends after 9999-12-31"),
            (at(2024, 2, 20), 10**12, "ends after 9999-12-31"),
        ],
    )
    def test_a_trial_out_of_range_is_refused(
        self, start: datetime, trial_days: int, message: str
    ) -> None:
        with pytest.raises(PeriodOutOfRange, match=message):
            trial_end(start, trial_days)

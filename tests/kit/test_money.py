"""Money (kit/money.py): exponents from Babel, exact parsing, currency mismatches, int64 bounds,
half-up rounding once per line, and display per locale. References are written with Fraction,
independently of the integer arithmetic under test."""

from __future__ import annotations

import math
import unicodedata
from decimal import Decimal
from fractions import Fraction

import pytest
from babel import Locale, localedata
from hypothesis import example, given, settings
from hypothesis import strategies as st

from saascore.kit.errors import InvalidInput
from saascore.kit.money import (
    MAX_AMOUNT,
    MAX_BASIS_POINTS,
    AmountOutOfRange,
    BasisPoints,
    CurrencyMismatch,
    InvalidAmount,
    InvalidProration,
    InvalidRate,
    Money,
    UnknownCurrency,
    UnknownLocale,
    apply_rate,
    currency_exponent,
    divide_half_up,
    format_money,
    prorate,
)
from tests.helpers import examples

#: The currencies issue 12 names, with the exponent Babel (CLDR) gives each.
EXPONENTS = {"USD": 2, "EUR": 2, "GBP": 2, "YER": 0, "SAR": 2, "JPY": 0, "KWD": 3}
CURRENCIES = sorted(EXPONENTS)
#: Arabic-Indic digits 0 to 9 (U+0660...), and the Arabic separators of thousands and decimals.
ARABIC_INDIC = "".join(chr(0x0660 + digit) for digit in range(10))
THOUSANDS, DECIMAL = "\u066c", "\u066b"


def arabic(text: str) -> str:
    """`text` with ASCII digits as Arabic-Indic ones and `,` `.` as Arabic separators."""
    table = {ord(str(d)): ARABIC_INDIC[d] for d in range(10)} | {
        ord(","): THOUSANDS,
        ord("."): DECIMAL,
    }
    return text.translate(table)


minor_units = st.integers(min_value=-MAX_AMOUNT, max_value=MAX_AMOUNT)
currencies = st.sampled_from(CURRENCIES)
moneys = st.builds(Money, minor_units, currencies)
rates = st.integers(min_value=0, max_value=MAX_BASIS_POINTS).map(BasisPoints)


def half_up(value: Fraction) -> int:
    """The reference rule: the nearest integer, a half away from zero."""
    magnitude = math.floor(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


class TestCurrencies:
    @pytest.mark.parametrize(("code", "exponent"), EXPONENTS.items())
    def test_exponent_comes_from_babel(self, code: str, exponent: int) -> None:
        assert currency_exponent(code) == exponent
        assert Money(1, code).exponent == exponent

    def test_yer_has_no_decimals_per_cldr(self) -> None:
        # ISO 4217 lists 2 decimals for YER; CLDR (and so saascore) uses 0.
        assert Money.parse("1500", "YER") == Money(1500, "YER")
        with pytest.raises(InvalidAmount):
            Money.parse("1500.50", "YER")

    @pytest.mark.parametrize("code", ["ZZZ", "US", "USDX", "", "U$D", "ÜSD", "123"])
    def test_unknown_codes_are_refused(self, code: str) -> None:
        with pytest.raises(UnknownCurrency) as caught:
            Money(1, code)
        assert caught.value.code == "unknown_currency"
        assert isinstance(caught.value, InvalidInput)
        with pytest.raises(UnknownCurrency):
            Money.parse("1", code)
        with pytest.raises(UnknownCurrency):
            currency_exponent(code)

    def test_codes_are_stored_upper_case(self) -> None:
        assert Money(5, "kwd") == Money(5, "KWD")
        assert Money(5, "kwd").currency == "KWD"

    @pytest.mark.parametrize("minor", [1.0, True, Decimal(1), "1", None])
    def test_minor_units_are_integers_only(self, minor: object) -> None:
        with pytest.raises(InvalidAmount):
            Money(minor, "USD")  # type: ignore[arg-type]


class TestParse:
    @pytest.mark.parametrize(
        ("text", "code", "minor"),
        [
            ("12.345", "KWD", 12345),
            ("12.3450", "KWD", 12345),  # the same value: accepted
            ("0.001", "KWD", 1),
            ("12.34", "USD", 1234),
            ("-0.05", "EUR", -5),
            ("7", "GBP", 700),
            ("99.99", "SAR", 9999),
            ("1500", "JPY", 1500),
            ("1500.00", "JPY", 1500),
            ("250", "YER", 250),
            ("-0", "USD", 0),
            ("0007.50", "USD", 750),
        ],
    )
    def test_major_units_to_minor(self, text: str, code: str, minor: int) -> None:
        assert Money.parse(text, code) == Money(minor, code)
        assert Money.parse(Decimal(text), code) == Money(minor, code)

    def test_int_is_whole_major_units(self) -> None:
        assert Money.parse(3, "KWD") == Money(3000, "KWD")
        assert Money.parse(3, "JPY") == Money(3, "JPY")

    @pytest.mark.parametrize(
        ("text", "code"),
        [("12.3456", "KWD"), ("0.001", "USD"), ("1.5", "JPY"), ("0.1", "YER"), ("1.001", "SAR")],
    )
    def test_more_decimals_than_the_currency_has_are_refused(self, text: str, code: str) -> None:
        with pytest.raises(InvalidAmount) as caught:
            Money.parse(text, code)
        assert caught.value.code == "invalid_amount"
        assert f"{EXPONENTS[code]} decimals" in caught.value.message

    @pytest.mark.parametrize(
        "text",
        ["NaN", "nan", "Infinity", "-inf", "1e3", "1E-2", "+1", " 1", "1 ", "1_000", "1,5", "",
         ".5", "5.", "--1", "0x10", "١٢"],
    )  # fmt: skip
    def test_text_that_is_not_a_plain_decimal_is_refused(self, text: str) -> None:
        with pytest.raises(InvalidAmount):
            Money.parse(text, "USD")

    @pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"),
                                       Decimal("-Infinity")])  # fmt: skip
    def test_nan_and_infinity_decimals_are_refused(self, value: Decimal) -> None:
        with pytest.raises(InvalidAmount):
            Money.parse(value, "USD")

    @pytest.mark.parametrize("value", [1.5, True, None, [1]])
    def test_other_types_are_refused(self, value: object) -> None:
        with pytest.raises(InvalidAmount):
            Money.parse(value, "USD")  # type: ignore[arg-type]

    def test_bounds_are_the_bigint_on_both_sides(self) -> None:
        assert Money.parse("92233720368547758.07", "USD").minor == MAX_AMOUNT
        assert Money.parse("-92233720368547758.07", "USD").minor == -MAX_AMOUNT
        assert Money.parse("9223372036854775.807", "KWD").minor == MAX_AMOUNT
        assert Money.parse("9223372036854775807", "JPY").minor == MAX_AMOUNT
        for text, code in [
            ("92233720368547758.08", "USD"),
            ("-92233720368547758.08", "USD"),  # -2**63 is a BIGINT, but its negation is not
            ("9223372036854775808", "YER"),
            ("100000000000000000000000000000", "JPY"),
        ]:
            with pytest.raises(AmountOutOfRange) as caught:
                Money.parse(text, code)
            assert caught.value.code == "amount_out_of_range"
        for value in [Decimal("1E+100000000"), Decimal("-9.3E+18")]:
            with pytest.raises(AmountOutOfRange):
                Money.parse(value, "JPY")
        with pytest.raises(AmountOutOfRange):
            Money.parse(MAX_AMOUNT, "USD")
        with pytest.raises(AmountOutOfRange):
            Money(-(2**63), "USD")

    def test_huge_text_is_refused_without_arithmetic(self) -> None:
        with pytest.raises(InvalidAmount):
            Money.parse("1" * 100_000, "USD")
        # A Decimal with many digits is handled with integers, never rounded by a context.
        with pytest.raises(InvalidAmount):
            Money.parse(Decimal("0." + "0" * 100_000 + "1"), "USD")
        assert Money.parse(Decimal("1." + "0" * 100_000), "USD") == Money(100, "USD")

    @given(money=moneys)
    @settings(max_examples=examples(300))
    @example(money=Money(MAX_AMOUNT, "KWD"))
    @example(money=Money(-MAX_AMOUNT, "JPY"))
    @example(money=Money(-5, "USD"))
    def test_text_round_trips(self, money: Money) -> None:
        text = money.decimal_text()
        assert Money.parse(text, money.currency) == money
        assert Money.parse(money.amount, money.currency) == money
        assert str(money) == f"{text} {money.currency}"
        # Exactly the currency's decimals, and the Decimal value is exact.
        assert len(text.partition(".")[2]) == money.exponent
        assert Fraction(money.amount) == Fraction(money.minor, 10**money.exponent)


class TestArithmetic:
    def test_same_currency(self) -> None:
        a, b = Money(1050, "SAR"), Money(-50, "SAR")
        assert a + b == Money(1000, "SAR")
        assert a - b == Money(1100, "SAR")
        assert -a == Money(-1050, "SAR")
        assert abs(b) == Money(50, "SAR")
        assert a * 3 == 3 * a == Money(3150, "SAR")
        assert sum([a, b, a], Money.zero("SAR")) == Money(2050, "SAR")
        assert b < a
        assert a >= a
        assert max(a, b) == a

    def test_equal_amounts_are_one_value(self) -> None:
        assert {Money(1, "USD"), Money(1, "usd"), Money(1, "EUR")} == {
            Money(1, "USD"),
            Money(1, "EUR"),
        }

    @pytest.mark.parametrize(
        "operation",
        [
            lambda a, b: a + b,
            lambda a, b: a - b,
            lambda a, b: a < b,
            lambda a, b: a <= b,
            lambda a, b: a > b,
            lambda a, b: a >= b,
            lambda a, b: sum([a, b], Money.zero("USD")),
        ],
        ids=["add", "subtract", "lt", "le", "gt", "ge", "sum"],
    )
    def test_mixing_currencies_is_refused(self, operation: object) -> None:
        usd, eur = Money(100, "USD"), Money(100, "EUR")
        with pytest.raises(CurrencyMismatch) as caught:
            operation(usd, eur)  # type: ignore[operator]
        assert caught.value.code == "currency_mismatch"
        assert caught.value.details == {"currencies": ["USD", "EUR"]}

    def test_different_currencies_are_never_equal(self) -> None:
        assert Money(100, "USD") != Money(100, "EUR")
        assert Money(0, "JPY") != Money(0, "YER")

    @pytest.mark.parametrize("other", [1, 1.0, Decimal(1)])
    def test_numbers_are_not_amounts(self, other: object) -> None:
        with pytest.raises(TypeError):
            Money(1, "USD") + other  # type: ignore[operator]
        with pytest.raises(TypeError):
            _ = Money(1, "USD") < other  # type: ignore[operator]

    @pytest.mark.parametrize("factor", [1.5, Decimal("1.5"), True])
    def test_multiplying_by_a_non_integer_is_refused(self, factor: object) -> None:
        with pytest.raises(TypeError):
            Money(1, "USD") * factor  # type: ignore[operator]

    @given(a=minor_units, b=minor_units, factor=st.integers(-(2**64), 2**64), code=currencies)
    @settings(max_examples=examples(300))
    @example(a=MAX_AMOUNT, b=1, factor=2, code="USD")
    @example(a=-MAX_AMOUNT, b=1, factor=-1, code="JPY")
    def test_int64_edges_never_overflow_silently(
        self, a: int, b: int, factor: int, code: str
    ) -> None:
        x, y = Money(a, code), Money(b, code)
        for exact, compute in [
            (a + b, lambda: x + y),
            (a - b, lambda: x - y),
            (a * factor, lambda: x * factor),
        ]:
            if abs(exact) <= MAX_AMOUNT:
                assert compute().minor == exact
            else:
                with pytest.raises(AmountOutOfRange):
                    compute()
        assert (-x).minor == -a  # the symmetric bound: negation always fits


class TestBasisPoints:
    def test_bounds(self) -> None:
        assert BasisPoints(0).value == 0
        assert BasisPoints(MAX_BASIS_POINTS).value == 100_000  # 1000 %
        for value in [-1, MAX_BASIS_POINTS + 1]:
            with pytest.raises(InvalidRate) as caught:
                BasisPoints(value)
            assert caught.value.code == "invalid_rate"
        for bad in [1.5, True, "15"]:
            with pytest.raises(InvalidRate):
                BasisPoints(bad)  # type: ignore[arg-type]

    def test_a_discount_is_at_most_100_percent(self) -> None:
        assert BasisPoints.discount(10_000) == BasisPoints(10_000)
        with pytest.raises(InvalidRate):
            BasisPoints.discount(10_001)
        # Tax may pass 100 % (some excise taxes do).
        assert BasisPoints(25_000).value == 25_000

    @pytest.mark.parametrize(
        ("text", "value", "shown"),
        [("15", 1500, "15%"), ("7.25", 725, "7.25%"), ("7.5", 750, "7.5%"), ("0", 0, "0%"),
         ("0.01", 1, "0.01%"), ("100", 10_000, "100%"), ("1000", 100_000, "1000%")],
    )  # fmt: skip
    def test_percent_text(self, text: str, value: int, shown: str) -> None:
        rate = BasisPoints.parse_percent(text)
        assert rate.value == value
        assert str(rate) == shown

    @pytest.mark.parametrize("text", ["7.125", "-1", "1000.01", "", "1e2", "15%", "NaN", "9" * 40])
    def test_percent_text_refused(self, text: str) -> None:
        with pytest.raises(InvalidRate):
            BasisPoints.parse_percent(text)


class TestRounding:
    @pytest.mark.parametrize(
        ("numerator", "denominator", "result"),
        [(5, 2, 3), (-5, 2, -3), (3, 2, 2), (-3, 2, -2), (4, 3, 1), (5, 3, 2), (-4, 3, -1),
         (1, 2, 1), (-1, 2, -1), (1, 3, 0), (0, 7, 0), (5, -2, -3), (-5, -2, 3)],
    )  # fmt: skip
    def test_half_away_from_zero(self, numerator: int, denominator: int, result: int) -> None:
        assert divide_half_up(numerator, denominator) == result

    def test_divide_by_zero(self) -> None:
        with pytest.raises(ZeroDivisionError):
            divide_half_up(1, 0)

    @given(n=st.integers(-(2**80), 2**80), d=st.integers(1, 2**70))
    @settings(max_examples=examples(500))
    def test_divide_matches_fraction_reference(self, n: int, d: int) -> None:
        assert divide_half_up(n, d) == half_up(Fraction(n, d))

    @pytest.mark.parametrize(
        ("minor", "code", "bps", "result"),
        [
            (5, "USD", 1500, 1),  # 0.0075 USD -> 0.01
            (3, "USD", 5000, 2),  # 0.015 -> 0.02: the half goes up
            (-3, "USD", 5000, -2),  # and down for a credit: away from zero
            (1, "USD", 4999, 0),
            (10_000, "JPY", 1000, 1000),
            (333, "YER", 1500, 50),  # 49.95 -> 50
            (1_000, "KWD", 625, 63),  # 62.5 fils -> 63
            (1_999, "SAR", 1500, 300),  # 299.85 -> 300
        ],
    )
    def test_apply_rate_examples(self, minor: int, code: str, bps: int, result: int) -> None:
        assert apply_rate(Money(minor, code), BasisPoints(bps)) == Money(result, code)

    def test_apply_rate_takes_basis_points_only(self) -> None:
        with pytest.raises(InvalidRate):
            apply_rate(Money(100, "USD"), 1500)  # type: ignore[arg-type]

    @given(money=moneys, rate=rates)
    @settings(max_examples=examples(500))
    @example(money=Money(MAX_AMOUNT, "USD"), rate=BasisPoints(MAX_BASIS_POINTS))
    @example(money=Money(MAX_AMOUNT, "USD"), rate=BasisPoints(10_000))
    @example(money=Money(-MAX_AMOUNT, "KWD"), rate=BasisPoints(10_001))
    def test_apply_rate_is_exact_or_refused(self, money: Money, rate: BasisPoints) -> None:
        exact = half_up(Fraction(money.minor * rate.value, 10_000))
        if abs(exact) <= MAX_AMOUNT:
            result = apply_rate(money, rate)
            assert result == Money(exact, money.currency)
            assert apply_rate(-money, rate) == -result  # symmetric for credits
        else:
            with pytest.raises(AmountOutOfRange):
                apply_rate(money, rate)

    @given(money=moneys, parts=st.tuples(st.integers(0, 2**40), st.integers(1, 2**40)))
    @settings(max_examples=examples(500))
    @example(money=Money(MAX_AMOUNT, "USD"), parts=(1, 1))
    @example(money=Money(MAX_AMOUNT, "USD"), parts=(2**40 - 1, 2**40))
    @example(money=Money(1, "USD"), parts=(1, 2))
    @example(money=Money(-1, "USD"), parts=(1, 2))
    def test_prorate_is_exact(self, money: Money, parts: tuple[int, int]) -> None:
        numerator, denominator = min(parts), max(parts)
        result = prorate(money, numerator, denominator)
        assert result == Money(
            half_up(Fraction(money.minor) * Fraction(numerator, denominator)), money.currency
        )
        assert abs(result.minor) <= abs(money.minor)  # a share is never more than the whole
        assert prorate(-money, numerator, denominator) == -result

    def test_prorate_to_the_second(self) -> None:
        # 30 days of 29.99 USD; an upgrade with one second left credits 0.00001157... -> 0.00.
        month = 30 * 86_400
        fee = Money.parse("29.99", "USD")
        assert prorate(fee, 1, month) == Money(0, "USD")
        assert prorate(fee, month // 2, month) == Money(1500, "USD")  # 14.995 -> 15.00
        assert prorate(fee, month, month) == fee
        assert prorate(fee, 0, month) == Money(0, "USD")

    @pytest.mark.parametrize(("numerator", "denominator"), [(2, 1), (-1, 2), (0, 0), (1, -2)])
    def test_prorate_fraction_between_0_and_1(self, numerator: int, denominator: int) -> None:
        with pytest.raises(InvalidProration) as caught:
            prorate(Money(100, "USD"), numerator, denominator)
        assert caught.value.code == "invalid_proration"

    def test_prorate_integers_only(self) -> None:
        with pytest.raises(InvalidProration):
            prorate(Money(100, "USD"), 0.5, 1)  # type: ignore[arg-type]

    def test_rounding_happens_once_per_line_not_on_the_total(self) -> None:
        # Three lines of 0.01 USD at 50 %: each line's tax is 0.005 -> 0.01, so 0.03 in all;
        # rounding the total's tax (0.015 -> 0.02) would not match the lines shown.
        lines = [Money(1, "USD")] * 3
        rate = BasisPoints(5000)
        taxes = [apply_rate(line, rate) for line in lines]
        assert taxes == [Money(1, "USD")] * 3
        assert sum(taxes, Money.zero("USD")) == Money(3, "USD")
        assert apply_rate(sum(lines, Money.zero("USD")), rate) == Money(2, "USD")

    @given(
        code=currencies,
        lines=st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=30),
        discount=st.integers(0, 10_000),
        tax=st.integers(0, 30_000),
    )
    @settings(max_examples=examples(300))
    def test_invoice_totals_reconcile_with_one_rounding_per_line(
        self, code: str, lines: list[int], discount: int, tax: int
    ) -> None:
        # Per line: the discount is rounded once, the tax on the discounted line once; the
        # totals are sums of rounded line amounts, never rounded again.
        zero = Money.zero(code)
        amounts = [Money(minor, code) for minor in lines]
        discounts = [apply_rate(a, BasisPoints.discount(discount)) for a in amounts]
        taxes = [
            apply_rate(a - d, BasisPoints(tax)) for a, d in zip(amounts, discounts, strict=True)
        ]
        subtotal = sum(amounts, zero)
        total = subtotal - sum(discounts, zero) + sum(taxes, zero)
        assert total == sum(
            (a - d + t for a, d, t in zip(amounts, discounts, taxes, strict=True)), zero
        )
        # Each line is the exact value rounded once, so the totals stay within half a minor
        # unit per line of the exact (unrounded) figures.
        exact_discount = Fraction(subtotal.minor * discount, 10_000)
        assert abs(sum(d.minor for d in discounts) - exact_discount) <= Fraction(len(lines), 2)
        for a, d, t in zip(amounts, discounts, taxes, strict=True):
            assert d.minor == half_up(Fraction(a.minor * discount, 10_000))
            assert t.minor == half_up(Fraction((a.minor - d.minor) * tax, 10_000))
            assert abs(d) <= abs(a)  # a discount of at most 100 % never flips a line's sign


class TestFormat:
    @pytest.mark.parametrize(
        ("minor", "code", "shown"),
        [
            (123456, "USD", "$1,234.56"),
            (-5, "EUR", "-€0.05"),
            (100000, "GBP", "£1,000.00"),
            (1500, "JPY", "¥1,500"),
            (12345, "KWD", "KWD12.345"),
            (1500, "YER", "YER1,500"),
            (9999, "SAR", "SAR99.99"),
        ],
    )
    def test_en_us(self, minor: int, code: str, shown: str) -> None:
        assert format_money(Money(minor, code), "en_US") == shown

    def test_other_latin_locales(self) -> None:
        assert format_money(Money(123456, "EUR"), "de_DE") == "1.234,56\xa0€"
        assert format_money(Money(123456, "EUR"), "fr-FR") == "1\u202f234,56\xa0€"
        assert format_money(Money(1500, "JPY"), "ja_JP") == "￥1,500"

    @pytest.mark.parametrize("locale", ["ar_YE", "ar_SA", "ar-YE"])
    def test_arabic_digits_and_right_to_left(self, locale: str) -> None:
        # What Babel 2.19 gives (CLDR 47), with the digits of the locale's numbering system
        # ("arab") put in: Babel itself swaps the separators but keeps ASCII digits.
        text = format_money(Money(123456, "YER"), locale)
        assert text == "\u200f" + arabic("123,456") + "\xa0ر.ي.\u200f"
        assert text.startswith("\u200f")  # RIGHT-TO-LEFT MARK
        assert {c for c in text if c.isdecimal()} <= set(ARABIC_INDIC)
        assert (
            format_money(Money(-12345, "KWD"), locale)
            == "\u200f-" + arabic("12.345") + "\xa0د.ك.\u200f"
        )
        assert (
            format_money(Money(9999, "SAR"), locale)
            == "\u200f" + arabic("99.99") + "\xa0ر.س.\u200f"
        )

    def test_latin_digits_on_request(self) -> None:
        text = format_money(Money(123456, "YER"), "ar_YE", numbering_system="latn")
        assert text == "\u200f123,456\xa0ر.ي.\u200f"

    def test_plain_arabic_uses_latin_digits_as_cldr_says(self) -> None:
        # CLDR gives "ar" (no region) and "ar_MA" Latin digits by default.
        assert Locale.parse("ar").default_numbering_system == "latn"
        assert format_money(Money(1500, "YER"), "ar") == "\u200f1,500\xa0ر.ي.\u200f"

    @pytest.mark.parametrize("locale", ["xx_YY", "not a locale", "", "en_US_POSIX_EXTRA"])
    def test_unknown_locales_are_refused(self, locale: str) -> None:
        with pytest.raises(UnknownLocale) as caught:
            format_money(Money(1, "USD"), locale)
        assert caught.value.code == "unknown_locale"

    def test_unknown_numbering_system_is_refused(self) -> None:
        with pytest.raises(UnknownLocale):
            format_money(Money(1, "USD"), "en_US", numbering_system="klingon")

    @given(money=moneys, locale=st.sampled_from(["en_US", "de_DE", "ar_YE", "ar_SA", "fa_IR"]))
    @settings(max_examples=examples(300))
    @example(money=Money(MAX_AMOUNT, "KWD"), locale="ar_YE")
    @example(money=Money(-1, "KWD"), locale="en_US")
    def test_every_minor_unit_is_shown(self, money: Money, locale: str) -> None:
        # The digits shown, read back in any script, are the amount's digits, all of them.
        text = format_money(money, locale)
        digits = "".join(str(unicodedata.decimal(c)) for c in text if c.isdecimal())
        expected = money.decimal_text().lstrip("-").replace(".", "")
        assert digits == expected

    def test_every_default_numbering_system_has_its_digits(self) -> None:
        # Every locale Babel knows gets its own digits: no default system is left ASCII.
        locales: dict[str, str] = {}
        for name in localedata.locale_identifiers():
            locales.setdefault(Locale.parse(name).default_numbering_system, name)
        assert {"arab", "arabext", "deva"} <= locales.keys()
        for system, locale in locales.items():
            if system == "latn":
                continue
            text = format_money(Money(1234567890, "JPY"), locale)
            shown = [c for c in text if c.isdecimal()]
            assert [unicodedata.decimal(c) for c in shown] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
            assert not any(c.isascii() for c in shown), (system, text)

"""Money: exact amounts in integer minor units of an ISO 4217 currency, and the rules that
compute with them (docs/billing.md, "Money").

- `Money(minor, currency)` holds an integer number of minor units (cents for USD, fils for KWD,
  yen for JPY). The currency's exponent (its number of decimals) comes from Babel's CLDR data:
  JPY 0, USD 2, KWD 3, and YER 0 (CLDR's figure; ISO 4217 lists 2, but the fils is not used).
  A code Babel does not know is refused (`unknown_currency`), and so is one that is legal
  tender nowhere today (Babel's territory data): the testing code XTS, "no currency" XXX,
  units of account (CLF, with 4 decimals), funds codes (USN) and metals (XAU) are not money
  anyone pays an invoice in. The shared currencies (XAF, XOF, XCD, XPF) are tender.
- Amounts stay within a signed 64-bit integer (a PostgreSQL BIGINT), symmetrically:
  `-INT64_MAX <= minor <= INT64_MAX`, so negating an amount never overflows. Any result
  outside is refused (`amount_out_of_range`), never wrapped or clipped.
- Adding, subtracting or ordering amounts of two currencies is refused (`currency_mismatch`);
  `==` between them is simply False, so amounts can sit in sets and dict keys.
- Rates (discounts, tax) are `BasisPoints`: 1 bp = 0.01 %, 10 000 bp = 100 %.
- `apply_rate` and `prorate` compute with integers only and round once, half up: to the
  nearest minor unit, a half going away from zero (2.5 -> 3, -2.5 -> -3). An invoice rounds
  each line once; its totals are sums of rounded lines, never rounded again.
- `format_money` shows an amount for a locale through Babel's `format_currency`, in the
  locale's own digits (Arabic-Indic for `ar_YE`), with every minor unit shown.

Exceptions, all `InvalidInput` (422) with a stable code:

    InvalidInput
    ├── UnknownCurrency     unknown_currency     not an ISO 4217 code Babel knows as tender
    ├── InvalidAmount       invalid_amount       not a number, NaN, Infinity, too many decimals
    ├── AmountOutOfRange    amount_out_of_range  outside +-INT64_MAX minor units
    ├── CurrencyMismatch    currency_mismatch    two currencies in one sum or comparison
    ├── InvalidRate         invalid_rate         basis points outside their bounds
    ├── InvalidProration    invalid_proration    not 0 <= numerator <= denominator, 0 < denominator
    └── UnknownLocale       unknown_locale       a locale Babel does not know
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import Final

from babel import Locale, UnknownLocaleError
from babel.core import get_global
from babel.numbers import (
    UnsupportedNumberingSystemError,
    format_currency,
    get_currency_precision,
    get_territory_currencies,
    list_currencies,
)

from saascore.kit.errors import InvalidInput
from saascore.kit.inputs import INT64_MAX

__all__ = [
    "BASIS_POINTS_PER_UNIT",
    "MAX_AMOUNT",
    "MAX_BASIS_POINTS",
    "MAX_DISCOUNT_BASIS_POINTS",
    "AmountOutOfRange",
    "BasisPoints",
    "CurrencyMismatch",
    "InvalidAmount",
    "InvalidProration",
    "InvalidRate",
    "Money",
    "UnknownCurrency",
    "UnknownLocale",
    "apply_rate",
    "currency_exponent",
    "divide_half_up",
    "format_money",
    "localize_digits",
    "prorate",
]

#: The largest magnitude of an amount, in minor units: a BIGINT's maximum, on both sides.
MAX_AMOUNT: Final = INT64_MAX
#: Basis points in one whole (100 %).
BASIS_POINTS_PER_UNIT: Final = 10_000
#: The largest rate: 1000 %. Some excise taxes pass 100 %; none comes near ten times.
MAX_BASIS_POINTS: Final = 100_000
#: The largest discount: 100 % (a discount above it would make a line negative).
MAX_DISCOUNT_BASIS_POINTS: Final = BASIS_POINTS_PER_UNIT

# A decimal in major units as text: an optional minus, digits, optionally a point and digits.
# No exponent, spaces, underscores or plus sign: what an API or a CLI flag should carry.
_DECIMAL_TEXT: Final = re.compile(r"-?[0-9]+(\.[0-9]+)?")
# Longer text is refused before any arithmetic (an int64 in KWD has 22 significant digits).
_MAX_TEXT_LENGTH: Final = 64
_MAX_PERCENT_TEXT_LENGTH: Final = 16


class UnknownCurrency(InvalidInput):
    """The code is not an ISO 4217 currency that Babel (CLDR) knows as legal tender in some
    territory today."""

    code = "unknown_currency"


class InvalidAmount(InvalidInput):
    """Not a decimal number, NaN or an infinity, or finer than the currency's minor unit."""

    code = "invalid_amount"


class AmountOutOfRange(InvalidInput):
    """The amount, or a result computed from it, passes what a BIGINT of minor units holds."""

    code = "amount_out_of_range"


class CurrencyMismatch(InvalidInput):
    """Two amounts of different currencies meet in one sum, difference or comparison."""

    code = "currency_mismatch"


class InvalidRate(InvalidInput):
    """Basis points that are not an integer within their bounds."""

    code = "invalid_rate"


class InvalidProration(InvalidInput):
    """A proration whose fraction is not between 0 and 1 (or whose denominator is 0)."""

    code = "invalid_proration"


class UnknownLocale(InvalidInput):
    """A locale that Babel does not know, or a numbering system the locale does not have."""

    code = "unknown_locale"


@cache
def _known_currencies() -> frozenset[str]:
    return frozenset(list_currencies())


@cache
def _tender_currencies() -> frozenset[str]:
    """The currencies that are legal tender in some territory today, per CLDR: computed
    once per process."""
    territories = get_global("territory_currencies").keys()
    return frozenset(
        currency
        for territory in territories
        for currency in get_territory_currencies(territory, tender=True)
    )


def _checked_currency(code: object) -> str:
    if isinstance(code, str) and code.isascii():
        upper = code.upper()
        if len(upper) == 3 and upper.isalpha() and upper in _known_currencies():
            if upper in _tender_currencies():
                return upper
            raise UnknownCurrency(
                f"{upper} is an ISO 4217 code but not legal tender anywhere (a testing code, "
                "a unit of account, a fund or a metal): invoices are in money people pay "
                "with (e.g. USD, EUR, KWD)",
                currency=upper,
            )
    raise UnknownCurrency(
        f"{code!r} is not a known ISO 4217 currency code (e.g. USD, EUR, KWD)",
        currency=str(code),
    )


def currency_exponent(code: str) -> int:
    """The number of decimals of `code` (JPY 0, USD 2, KWD 3), from Babel's CLDR data."""
    return get_currency_precision(_checked_currency(code))


def _checked_int(value: object, what: str, error: type[InvalidInput]) -> int:
    # bool is an int to Python, never to money; floats are refused outright.
    if not isinstance(value, int) or isinstance(value, bool):
        raise error(f"{what} must be an integer, not {type(value).__name__}")
    return int(value)


def _bounded(minor: int) -> int:
    if -MAX_AMOUNT <= minor <= MAX_AMOUNT:
        return minor
    raise AmountOutOfRange(
        f"the amount passes the largest supported magnitude ({MAX_AMOUNT} minor units)"
    )


def divide_half_up(numerator: int, denominator: int) -> int:
    """`numerator / denominator` rounded to the nearest integer, a half away from zero.

    The one rounding rule of money: 5/2 -> 3, -5/2 -> -3, 4/3 -> 1. Exact for any integers."""
    if denominator == 0:
        raise ZeroDivisionError("divide_half_up by zero")
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return quotient if numerator >= 0 else -quotient


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: `minor` units of `currency` (an ISO 4217 code, stored upper case).

    >>> Money.parse("12.345", "KWD")
    Money(minor=12345, currency='KWD')
    >>> str(Money(-150, "USD"))
    '-1.50 USD'
    """

    minor: int
    currency: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "currency", _checked_currency(self.currency))
        object.__setattr__(
            self, "minor", _bounded(_checked_int(self.minor, "minor", InvalidAmount))
        )

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @classmethod
    def parse(cls, amount: str | Decimal | int, currency: str) -> Money:
        """The amount given in major units ("12.345" KWD is 12345 fils), exactly.

        Text is an optional minus, digits and an optional point with digits; a Decimal or int
        any finite value. Refused: NaN, infinities, other text (`invalid_amount`), a value
        finer than the minor unit ("1.5" JPY; "12.3450" KWD is 12.345 and fine), and values
        past the bounds (`amount_out_of_range`)."""
        currency = _checked_currency(currency)
        exponent = get_currency_precision(currency)
        if isinstance(amount, str):
            if len(amount) > _MAX_TEXT_LENGTH or not _DECIMAL_TEXT.fullmatch(amount):
                raise InvalidAmount(
                    f"{amount[:_MAX_TEXT_LENGTH]!r} is not a decimal amount like 12.50",
                    currency=currency,
                )
            value = Decimal(amount)
        elif isinstance(amount, Decimal):
            value = amount
        elif isinstance(amount, int) and not isinstance(amount, bool):
            if abs(amount) > MAX_AMOUNT:
                raise AmountOutOfRange(f"{currency} amount too large", currency=currency)
            return cls(amount * 10**exponent, currency)
        else:
            raise InvalidAmount(
                f"an amount must be text, a Decimal or an int, not {type(amount).__name__}"
            )
        return cls(_decimal_to_minor(value, exponent, currency), currency)

    @property
    def exponent(self) -> int:
        """The currency's number of decimals."""
        return get_currency_precision(self.currency)

    @property
    def amount(self) -> Decimal:
        """The amount in major units, exactly (`Decimal("12.345")` for 12345 fils)."""
        return Decimal(self.minor).scaleb(-self.exponent)

    def __str__(self) -> str:
        """The canonical text, the same in every locale: `-1.50 USD`, `1500 JPY`."""
        return f"{self.decimal_text()} {self.currency}"

    def decimal_text(self) -> str:
        """The amount in major units as text with exactly the currency's decimals: `-1.50`.

        `Money.parse(m.decimal_text(), m.currency) == m` for every amount."""
        exponent = self.exponent
        digits = str(abs(self.minor)).rjust(exponent + 1, "0")
        sign = "-" if self.minor < 0 else ""
        if exponent == 0:
            return sign + digits
        return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"

    def _same_currency(self, other: Money, operation: str) -> None:
        if self.currency != other.currency:
            raise CurrencyMismatch(
                f"cannot {operation} {self.currency} and {other.currency}",
                currencies=[self.currency, other.currency],
            )

    def __add__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "add")
        return Money(_bounded(self.minor + other.minor), self.currency)

    def __sub__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "subtract")
        return Money(_bounded(self.minor - other.minor), self.currency)

    def __mul__(self, quantity: int) -> Money:
        """An amount times a whole quantity (a unit price times units); exact or refused."""
        if not isinstance(quantity, int) or isinstance(quantity, bool):
            return NotImplemented
        return Money(_bounded(self.minor * quantity), self.currency)

    __rmul__ = __mul__

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __abs__(self) -> Money:
        return Money(abs(self.minor), self.currency)

    def __lt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.minor < other.minor

    def __le__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.minor <= other.minor

    def __gt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.minor > other.minor

    def __ge__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.minor >= other.minor


def _decimal_to_minor(value: Decimal, exponent: int, currency: str) -> int:
    """`value` major units as minor units, with integers only (no Decimal context rounding)."""
    if not value.is_finite():
        raise InvalidAmount(f"{value} is not an amount", currency=currency)
    sign, digits, power = value.as_tuple()
    assert isinstance(power, int)  # finite
    significant = list(digits)
    while len(significant) > 1 and significant[-1] == 0:
        significant.pop()
        power += 1
    if significant == [0]:
        return 0
    shift = power + exponent
    if shift < 0:
        raise InvalidAmount(
            f"{currency} amounts have {exponent} decimals at most", currency=currency
        )
    # Past 19 digits of minor units, the value cannot be a BIGINT (and int() stays small).
    if shift + len(significant) > len(str(MAX_AMOUNT)):
        raise AmountOutOfRange(f"{currency} amount too large", currency=currency)
    coefficient = int("".join(map(str, significant)))
    return _bounded((-1 if sign else 1) * coefficient * 10**shift)


@dataclass(frozen=True, slots=True, order=True)
class BasisPoints:
    """A rate in basis points: 1 bp = 0.01 %, 10 000 bp = 100 %. From 0 to `MAX_BASIS_POINTS`
    (1000 %); a discount is at most 100 % (`BasisPoints.discount`)."""

    value: int

    def __post_init__(self) -> None:
        value = _checked_int(self.value, "basis points", InvalidRate)
        if not 0 <= value <= MAX_BASIS_POINTS:
            raise InvalidRate(
                f"a rate is 0 to {MAX_BASIS_POINTS} basis points (1000 %), not {value}",
                basis_points=value,
            )

    @classmethod
    def discount(cls, value: int) -> BasisPoints:
        """A discount's rate: 0 to 10 000 basis points (100 %)."""
        rate = cls(value)
        if rate.value > MAX_DISCOUNT_BASIS_POINTS:
            raise InvalidRate(
                f"a discount is at most {MAX_DISCOUNT_BASIS_POINTS} basis points (100 %)",
                basis_points=rate.value,
            )
        return rate

    @classmethod
    def parse_percent(cls, text: str) -> BasisPoints:
        """A percentage as text with at most two decimals: "15" is 1500 bp, "7.25" is 725."""
        if len(text) > _MAX_PERCENT_TEXT_LENGTH or not re.fullmatch(r"[0-9]+(\.[0-9]{1,2})?", text):
            raise InvalidRate(
                f"{text[:_MAX_PERCENT_TEXT_LENGTH]!r} is not a percentage like 15 or 7.25"
            )
        whole, _, fraction = text.partition(".")
        return cls(int(whole) * 100 + int(fraction.ljust(2, "0")))

    def __str__(self) -> str:
        """The percentage: `15%`, `7.5%`, `7.25%`."""
        whole, hundredths = divmod(self.value, 100)
        fraction = f"{hundredths:02d}".rstrip("0")
        return f"{whole}.{fraction}%" if fraction else f"{whole}%"


def apply_rate(amount: Money, rate: BasisPoints) -> Money:
    """`amount * rate`, rounded once, half up (away from zero), to the minor unit.

    The tax or the discount of one line: 15 % of 0.05 USD is 0.0075, so 0.01 USD."""
    if not isinstance(rate, BasisPoints):
        raise InvalidRate(f"a rate must be BasisPoints, not {type(rate).__name__}")
    return Money(
        _bounded(divide_half_up(amount.minor * rate.value, BASIS_POINTS_PER_UNIT)),
        amount.currency,
    )


def prorate(amount: Money, numerator: int, denominator: int) -> Money:
    """`amount * numerator / denominator`, rounded once, half up (away from zero).

    The share of a period: `prorate(fee, unused_seconds, period_seconds)`. The fraction is
    between 0 and 1 (`0 <= numerator <= denominator`, `denominator > 0`), so the result is
    never larger than the amount."""
    numerator = _checked_int(numerator, "numerator", InvalidProration)
    denominator = _checked_int(denominator, "denominator", InvalidProration)
    if not 0 <= numerator <= denominator or denominator == 0:
        raise InvalidProration(
            f"prorating takes 0 <= numerator <= denominator and denominator > 0, "
            f"not {numerator}/{denominator}"
        )
    return Money(divide_half_up(amount.minor * numerator, denominator), amount.currency)


# The zero of each numbering system that CLDR names as a locale's default (Babel swaps the
# separators of these systems but leaves the digits ASCII: format_money puts them in).
_DIGIT_ZERO: Final = {
    "arab": 0x0660,  # Arabic-Indic: ٠١٢٣٤٥٦٧٨٩
    "arabext": 0x06F0,  # Extended Arabic-Indic (Persian, Urdu): ۰۱۲۳۴۵۶۷۸۹
    "deva": 0x0966,
    "beng": 0x09E6,
    "tibt": 0x0F20,
    "mymr": 0x1040,
    "olck": 0x1C50,
    "nkoo": 0x07C0,
    "mtei": 0xABF0,
    "cakm": 0x11136,
    "hmnp": 0x1E140,
    "adlm": 0x1E950,
}


@lru_cache(maxsize=64)
def _digit_table(system: str) -> dict[int, str]:
    zero = _DIGIT_ZERO.get(system)
    if zero is None:
        return {}
    return {ord("0") + i: chr(zero + i) for i in range(10)}


def localize_digits(text: str, locale: str | Locale) -> str:
    """`text` with its ASCII digits in the locale's default numbering system (Arabic-Indic
    for `ar_YE`, unchanged for `en` or `ar_MA`), as `format_money` writes amounts: for what
    Babel formats with ASCII digits whatever the locale (its dates), or leaves so (numbers)."""
    babel_locale = _checked_locale(locale)
    return text.translate(_digit_table(babel_locale.default_numbering_system))


def _checked_locale(locale: str | Locale) -> Locale:
    if isinstance(locale, Locale):
        return locale
    try:
        return Locale.parse(str(locale).replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError) as error:
        raise UnknownLocale(f"{locale!r} is not a known locale (e.g. en_US, ar_YE)") from error


def format_money(amount: Money, locale: str | Locale, *, numbering_system: str = "default") -> str:
    """`amount` for display in `locale` (`en_US`, `ar-YE`), by Babel's `format_currency`.

    Every minor unit is shown (the currency's decimals, never rounded). The numbering system
    is the locale's default: `ar_YE` and `ar_SA` write Arabic-Indic digits with Arabic
    separators, after a RIGHT-TO-LEFT MARK (U+200F) and before the symbol, as Babel's pattern
    for the locale gives; `numbering_system="latn"` keeps ASCII digits. Not for parsing back: use
    `Money.decimal_text()` for that."""
    babel_locale = _checked_locale(locale)
    system = (
        babel_locale.default_numbering_system if numbering_system == "default" else numbering_system
    )
    try:
        text = format_currency(
            amount.amount,
            amount.currency,
            locale=babel_locale,
            currency_digits=True,
            numbering_system=system,
        )
    except UnsupportedNumberingSystemError as error:
        raise UnknownLocale(
            f"{babel_locale} has no numbering system {numbering_system!r}"
        ) from error
    return text.translate(_digit_table(system))

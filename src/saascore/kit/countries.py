"""ISO 3166-1 alpha-2 country codes, from Babel's territory names.

An organisation's country sets its default tax rate (`kit/tax.py`), so only a code that names a
country is taken: Babel's territories less its groupings (`EU`, `EZ`, `UN`, `QO`), its
pseudo-locales (`XA`, `XB`), "unknown" (`ZZ`) and the codes ISO 3166 only reserves (`AC`, `CP`,
`CQ`, `DG`, `EA`, `IC`, `TA`). `XK` (Kosovo), user-assigned but used by the EU, stays.
"""

from __future__ import annotations

from functools import cache
from typing import Final

from babel import Locale

__all__ = ["NOT_COUNTRIES", "country_codes", "is_country"]

#: Babel territories that are not countries of ISO 3166-1.
NOT_COUNTRIES: Final = frozenset(
    {"EU", "EZ", "UN", "QO", "XA", "XB", "ZZ", "AC", "CP", "CQ", "DG", "EA", "IC", "TA"}
)


@cache
def country_codes() -> frozenset[str]:
    """Every ISO 3166-1 alpha-2 code saascore accepts as a country."""
    territories = Locale("en").territories
    return frozenset(
        code
        for code in territories
        if isinstance(code, str)
        and len(code) == 2
        and code.isascii()
        and code.isalpha()
        and code not in NOT_COUNTRIES
    )


def is_country(code: str) -> bool:
    """Whether `code` (upper case) is an ISO 3166-1 alpha-2 country code."""
    return code in country_codes()

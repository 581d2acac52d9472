"""Default tax rates by country: `default_tax_rate("SA")` is 1500 basis points.

The rates are data (`tax_rates.toml`, with its source and date), read once. They sit in kit,
below tenancy and billing, because tenancy applies them when an organisation's country is set
(docs/billing.md, "Tax") and tenancy may not import billing.
"""

from __future__ import annotations

import tomllib
from datetime import date
from functools import cache
from importlib.resources import files
from types import MappingProxyType
from typing import Final, NamedTuple

__all__ = ["TAX_RATES_RESOURCE", "TaxRates", "default_tax_rate", "tax_rates"]

#: The packaged data file of default rates.
TAX_RATES_RESOURCE: Final = "tax_rates.toml"


class TaxRates(NamedTuple):
    """Standard rates in basis points by ISO 3166 alpha-2 code, and the day they are of."""

    as_of: date
    rates: MappingProxyType[str, int]


@cache
def tax_rates() -> TaxRates:
    """The packaged default rates, checked: two-letter upper-case codes, 0 to 100 000 bps."""
    document = tomllib.loads(files("saascore.kit").joinpath(TAX_RATES_RESOURCE).read_text("utf-8"))
    rates: dict[str, int] = {}
    for country, rate in document["rates"].items():
        if not (len(country) == 2 and country.isascii() and country.isupper()):
            raise ValueError(f"{country!r} in {TAX_RATES_RESOURCE} is not an ISO 3166 code")
        if not isinstance(rate, int) or isinstance(rate, bool) or not 0 <= rate <= 100_000:
            raise ValueError(f"{country}'s rate in {TAX_RATES_RESOURCE} is not 0 to 100000 bps")
        rates[country] = rate
    as_of = document["as_of"]
    if not isinstance(as_of, date):
        raise ValueError(f"as_of in {TAX_RATES_RESOURCE} is not a date")
    return TaxRates(as_of, MappingProxyType(rates))


def default_tax_rate(country: str | None) -> int:
    """The standard rate of `country` in basis points; 0 for no country or one not listed."""
    if country is None:
        return 0
    return tax_rates().rates.get(country.strip().upper(), 0)

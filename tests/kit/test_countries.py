"""Country codes (kit/countries.py): countries in, groupings and reserved codes out."""

from __future__ import annotations

import pytest

from saascore.kit.countries import NOT_COUNTRIES, country_codes, is_country
from saascore.kit.tax import tax_rates


@pytest.mark.parametrize("code", ["GB", "SA", "YE", "US", "DE", "JP", "KW", "XK", "AQ"])
def test_countries_are_accepted(code: str) -> None:
    assert is_country(code)


@pytest.mark.parametrize("code", ["UK", "EU", "UN", "ZZ", "XX", "AC", "gb", "001", ""])
def test_groupings_reserved_and_unknown_codes_are_not(code: str) -> None:
    assert not is_country(code)


def test_the_set_is_iso_3166s() -> None:
    codes = country_codes()
    assert 245 <= len(codes) <= 255  # 249 assigned codes and Kosovo
    assert not codes & NOT_COUNTRIES
    # Every country of the tax table is one.
    assert set(tax_rates().rates) <= codes

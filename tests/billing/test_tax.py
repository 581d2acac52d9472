"""Tax from the organisation's country (issue 12, item 3): the packaged default rates, an
organisation taking its country's rate when created or moved, and an operator's rate that a
change of country leaves alone. SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService
from saascore.billing.invoices import InvoiceService
from saascore.config import Settings
from saascore.events.bus import EventBus
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.tax import default_tax_rate, tax_rates
from saascore.models import AuditLog, Organization
from saascore.plans import PlanService, read_catalog
from saascore.tenancy.service import OrganizationService

EU = [
    "AT",
    "BE",
    "BG",
    "CY",
    "CZ",
    "DE",
    "DK",
    "EE",
    "ES",
    "FI",
    "FR",
    "GR",
    "HR",
    "HU",
    "IE",
    "IT",
    "LT",
    "LU",
    "LV",
    "MT",
    "NL",
    "PL",
    "PT",
    "RO",
    "SE",
    "SI",
    "SK",
]


class TestDefaultRates:
    @pytest.mark.parametrize(
        ("country", "bps"),
        [
            ("SA", 1500),
            ("GB", 2000),
            ("US", 0),
            ("KW", 0),
            ("AE", 500),
            ("YE", 500),
            ("EG", 1400),
            ("JP", 1000),
            ("IN", 1800),
            ("AU", 1000),
            ("CA", 500),
            ("DE", 1900),
            ("HU", 2700),
            ("sa", 1500),
        ],
    )
    def test_a_listed_country(self, country: str, bps: int) -> None:
        assert default_tax_rate(country) == bps

    @pytest.mark.parametrize("country", [None, "ZZ", "XX", ""])
    def test_no_country_or_an_unknown_one_is_zero(self, country: str | None) -> None:
        assert default_tax_rate(country) == 0

    def test_the_whole_eu_is_covered_and_dated(self) -> None:
        table = tax_rates()
        assert set(EU) <= set(table.rates)
        assert all(0 < table.rates[country] <= 2700 for country in EU)
        assert table.as_of.year >= 2025


class Tenancy:
    def __init__(self, database: Database, session: AsyncSession) -> None:
        self.session = session
        bus = EventBus()
        bus.in_transaction(AuditService(database).handle)
        self.orgs = OrganizationService(database, PlanService(database, bus), bus)
        self.invoices = InvoiceService(
            database, Settings(invoice_sequence_scope="organization"), bus
        )

    async def row(self, org_id: uuid.UUID) -> Organization:
        query = sa.select(Organization).where(Organization.id == org_id)
        return (await self.session.scalars(query.execution_options(populate_existing=True))).one()

    async def updates(self, org_id: uuid.UUID) -> list[dict[str, object]]:
        query = sa.select(AuditLog).where(
            AuditLog.organization_id == org_id, AuditLog.action == "organization.updated"
        )
        entries = (await self.session.scalars(query.order_by(AuditLog.seq))).all()
        return [entry.details["changes"] for entry in entries]


@pytest_asyncio.fixture(loop_scope="session")
async def tenancy(database: Database, session: AsyncSession) -> Tenancy:
    await PlanService(database).load_catalog(read_catalog(), session=session)
    return Tenancy(database, session)


class TestFromTheCountry:
    async def test_an_organisation_created_in_saudi_arabia_pays_15_percent(
        self, tenancy: Tenancy
    ) -> None:
        org = await tenancy.orgs.create(name="Riyadh", country="sa", session=tenancy.session)
        row = await tenancy.row(org.id)
        assert (row.country, row.tax_rate_bps, row.tax_rate_source) == ("SA", 1500, "country")
        draft = await tenancy.invoices.create_draft(
            org.id, "SAR", [("Plan", 10_000)], session=tenancy.session
        )
        assert (draft.tax_amount, draft.total) == (1500, 11_500)

    async def test_without_a_country_or_in_one_not_listed_there_is_no_tax(
        self, tenancy: Tenancy
    ) -> None:
        plain = await tenancy.orgs.create(name="Nowhere", session=tenancy.session)
        # Antarctica is a country code with no rate in the table.
        unknown = await tenancy.orgs.create(name="Zed", country="AQ", session=tenancy.session)
        assert (await tenancy.row(plain.id)).tax_rate_bps == 0
        assert (await tenancy.row(unknown.id)).tax_rate_bps == 0

    async def test_a_bad_country_is_refused_and_creates_nothing(self, tenancy: Tenancy) -> None:
        before = await tenancy.session.scalar(sa.select(sa.func.count()).select_from(Organization))
        # Not codes, and codes that are no country (they would mean a 0 % rate).
        for country in ("SAU", "S\x00", "1A", "ZZ", "UK", "EU", "XX"):
            with pytest.raises(InvalidInput):
                await tenancy.orgs.create(name="Bad", country=country, session=tenancy.session)
        after = await tenancy.session.scalar(sa.select(sa.func.count()).select_from(Organization))
        assert after == before

    async def test_a_change_of_country_brings_its_rate(self, tenancy: Tenancy) -> None:
        org = await tenancy.orgs.create(name="Mover", country="SA", session=tenancy.session)
        await tenancy.orgs.update(org.id, country="GB", session=tenancy.session)
        assert (await tenancy.row(org.id)).tax_rate_bps == 2000
        await tenancy.orgs.update(org.id, country=None, session=tenancy.session)
        assert (await tenancy.row(org.id)).tax_rate_bps == 0
        assert await tenancy.updates(org.id) == [
            {"country": {"from": "SA", "to": "GB"}, "tax_rate_bps": {"from": 1500, "to": 2000}},
            {"country": {"from": "GB", "to": None}, "tax_rate_bps": {"from": 2000, "to": 0}},
        ]

    async def test_an_operators_rate_survives_a_change_of_country(self, tenancy: Tenancy) -> None:
        org = await tenancy.orgs.create(name="Set", country="SA", session=tenancy.session)
        await tenancy.invoices.set_tax_rate(org.id, 700, session=tenancy.session)
        await tenancy.orgs.update(org.id, country="GB", session=tenancy.session)
        row = await tenancy.row(org.id)
        assert (row.country, row.tax_rate_bps, row.tax_rate_source) == ("GB", 700, "operator")
        assert await tenancy.updates(org.id) == [{"country": {"from": "SA", "to": "GB"}}]

    async def test_an_operator_setting_the_countrys_own_rate_still_keeps_it(
        self, tenancy: Tenancy
    ) -> None:
        org = await tenancy.orgs.create(name="Same", country="SA", session=tenancy.session)
        await tenancy.invoices.set_tax_rate(org.id, 1500, session=tenancy.session)
        await tenancy.orgs.update(org.id, country="US", session=tenancy.session)
        row = await tenancy.row(org.id)
        assert (row.tax_rate_bps, row.tax_rate_source) == (1500, "operator")

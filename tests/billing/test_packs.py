"""Credit packs (issue 12, item 5): the catalog and a purchase, an open invoice with one
`credit_pack` line whose full payment grants the credits (granted by payments, not here).
SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.billing.errors import CreditPackExists, CreditPackNotFound, InvalidCreditPack
from saascore.billing.invoices import InvoiceService, LineKind
from saascore.billing.packs import CreditPackService
from saascore.config import Settings
from saascore.kit.db import Database
from saascore.kit.inputs import INT64_MAX
from saascore.kit.money import Money, UnknownCurrency
from saascore.models import CreditGrant, CreditPack, InvoiceStatus
from tests.factories import create_organization, random_code


def packs(database: Database) -> CreditPackService:
    return CreditPackService(
        database, InvoiceService(database, Settings(invoice_sequence_scope="organization"))
    )


def code() -> str:
    return random_code("pack").replace("_", "-")


class TestCatalog:
    async def test_create_list_get_deactivate(
        self, database: Database, session: AsyncSession
    ) -> None:
        service = packs(database)
        pack = await service.create(
            code(), credits=1_000, price=Money.parse("9.99", "USD"), session=session
        )
        assert (pack.credits, pack.price, pack.currency, pack.name) == (1000, 999, "USD", pack.code)
        assert pack.code in [p.code for p in await service.list(session=session)]
        assert (await service.get(pack.code, session=session)).id == pack.id
        await service.deactivate(pack.code, session=session)
        assert pack.code not in [p.code for p in await service.list(active=True, session=session)]
        with pytest.raises(CreditPackExists):
            await service.create(pack.code, credits=1, price=Money(1, "USD"), session=session)

    @pytest.mark.parametrize(
        ("options", "error"),
        [
            ({"code": "Upper", "credits": 1, "price": Money(1, "USD")}, InvalidCreditPack),
            ({"credits": 0, "price": Money(1, "USD")}, InvalidCreditPack),
            ({"credits": INT64_MAX + 1, "price": Money(1, "USD")}, InvalidCreditPack),
            ({"credits": True, "price": Money(1, "USD")}, InvalidCreditPack),
            ({"credits": 1, "price": Money(-1, "USD")}, InvalidCreditPack),
            ({"credits": 1, "price": 5}, InvalidCreditPack),
            ({"credits": 1, "price": Money(1, "USD"), "name": "a\tb"}, InvalidCreditPack),
        ],
    )
    async def test_bad_packs_are_refused(
        self,
        database: Database,
        session: AsyncSession,
        options: dict[str, object],
        error: type[Exception],
    ) -> None:
        options = {"code": code(), **options}
        with pytest.raises(error):
            await packs(database).create(session=session, **options)  # type: ignore[arg-type]
        assert not await session.scalar(
            sa.select(sa.func.count(CreditPack.id)).where(CreditPack.code == options["code"])
        )

    def test_an_unknown_currency_is_refused(self) -> None:
        with pytest.raises(UnknownCurrency):
            Money(1, "XYZ")


class TestPurchase:
    async def test_a_purchase_is_an_open_invoice_and_grants_nothing_yet(
        self, database: Database, session: AsyncSession
    ) -> None:
        service = packs(database)
        org = (await create_organization(session, tax_rate_bps=1000, currency="SAR")).id
        pack = await service.create(
            code(), credits=5_000, price=Money(2_500, "SAR"), name="5k", session=session
        )
        invoice = await service.purchase(org, pack.code, session=session)
        assert invoice.status is InvoiceStatus.OPEN
        assert invoice.number is not None
        assert (invoice.subtotal, invoice.tax_amount, invoice.total) == (2_500, 250, 2_750)
        [line] = invoice.lines
        assert line.metadata_ == {
            "kind": LineKind.CREDIT_PACK.value,
            "credit_pack": pack.code,
            "credits": 5_000,
        }
        grants = await session.scalar(
            sa.select(sa.func.count(CreditGrant.id)).where(CreditGrant.organization_id == org)
        )
        assert grants == 0

    async def test_an_inactive_or_unknown_pack_cannot_be_bought(
        self, database: Database, session: AsyncSession
    ) -> None:
        service = packs(database)
        org = (await create_organization(session)).id
        pack = await service.create(code(), credits=1, price=Money(1, "USD"), session=session)
        await service.deactivate(pack.code, session=session)
        for missing in (pack.code, "no-such-pack", "\x00", "x" * 500):
            with pytest.raises(CreditPackNotFound):
                await service.purchase(org, missing, session=session)

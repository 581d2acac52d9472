"""Credit packs: a catalog of credits for a price, and their purchase (docs/billing.md,
"Credit packs").

A purchase is an invoice: one `credit_pack` line (`metadata["credit_pack"]` the code,
`metadata["credits"]` the credits), finalised at once, so it has its number and is open for
payment. The credits are granted by the payment that pays the invoice in full, once, in that
payment's transaction; buying grants nothing.

Unpaid purchases are bounded: buying a pack while a purchase of that pack is still open (unpaid)
answers that open invoice (no second invoice, no number burnt), and an organisation has at most
`MAX_OPEN_PURCHASES` open purchase invoices (`TooManyOpenPurchases` beyond). Purchases of one
organisation are serialized by its row lock, so racing purchases of a pack make one invoice.

An organisation buys only the packs priced in its own currency (`Organization.currency`), and
a pack holds at most `MAX_PACK_CREDITS`: paying for more could never be granted (the balance
would pass what it holds), and the invoice would go overdue however it is paid.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.billing.errors import (
    CreditPackCurrencyMismatch,
    CreditPackExists,
    CreditPackNotFound,
    InvalidCreditPack,
    TooManyOpenPurchases,
)
from saascore.billing.invoices import (
    PROVIDER_TAX,
    TAX_SOURCE,
    InvoiceService,
    LineItem,
    LineKind,
)
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.money import Money
from saascore.kit.sql import violates
from saascore.kit.validation import control_character
from saascore.models import (
    CreditPack,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    PaymentProvider,
)
from saascore.tenancy.service import locked_organization

__all__ = ["MAX_OPEN_PURCHASES", "MAX_PACK_CREDITS", "CreditPackService", "pack_code"]

#: The most credits one pack grants: a trillion, far below what a balance holds (int64), so
#: that granting a paid pack never overflows it.
MAX_PACK_CREDITS: Final = 10**12
#: The most unpaid (open or overdue) purchase invoices an organisation has at once.
MAX_OPEN_PURCHASES: Final = 5
#: A purchase invoice still waiting for its payment.
_UNPAID: Final = (InvoiceStatus.OPEN, InvoiceStatus.OVERDUE)

_CODE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,49}")
_MAX_NAME: Final = 255


def pack_code(code: object) -> str:
    """A pack's code: 1 to 50 lower-case letters, digits, `_`, `.` or `-`."""
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise InvalidCreditPack(
            f"{str(code)[:60]!r} is not a pack code: 1 to 50 lower-case letters, digits, "
            "'_', '.' or '-'",
            field="code",
        )
    return code


def _provider_id(value: object, field: str) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= _MAX_NAME
        or not value.strip()
        or control_character(value) is not None
    ):
        raise InvalidCreditPack(
            f"{field} is 1 to {_MAX_NAME} characters without control characters", field=field
        )
    return value.strip()


class CreditPackService:
    """`core.credit_packs`: the catalog (operators) and purchases (per organisation)."""

    def __init__(self, database: Database, invoices: InvoiceService) -> None:
        self.database = database
        self.invoices = invoices

    async def create(
        self,
        code: str,
        *,
        credits: int,
        price: Money,
        name: str | None = None,
        stripe_price_id: str | None = None,
        lemon_squeezy_variant_id: str | None = None,
        session: AsyncSession | None = None,
    ) -> CreditPack:
        """A pack of `credits` (positive) for `price` (a positive `Money`), with its price at
        Stripe and its variant at Lemon Squeezy when it is sold there; `credit_pack_exists`
        when the code (or a provider id) is taken."""
        stripe_price_id = _provider_id(stripe_price_id, "stripe_price_id")
        lemon_squeezy_variant_id = _provider_id(
            lemon_squeezy_variant_id, "lemon_squeezy_variant_id"
        )
        code = pack_code(code)
        if not isinstance(credits, int) or isinstance(credits, bool) or not credits > 0:
            raise InvalidCreditPack("credits is a positive integer", field="credits")
        if credits > MAX_PACK_CREDITS:
            raise InvalidCreditPack(
                f"a pack grants at most {MAX_PACK_CREDITS} credits", field="credits"
            )
        if not isinstance(price, Money) or price.minor <= 0:
            raise InvalidCreditPack("price is a positive amount of money", field="price")
        if name is not None and (
            not isinstance(name, str)
            or not name.strip()
            or len(name) > _MAX_NAME
            or control_character(name) is not None
        ):
            raise InvalidCreditPack(
                f"a pack's name is 1 to {_MAX_NAME} characters without control characters",
                field="name",
            )
        pack = CreditPack(
            code=code,
            name=(name or code).strip(),
            credits=credits,
            price=price.minor,
            currency=price.currency,
            active=True,
            stripe_price_id=stripe_price_id,
            lemon_squeezy_variant_id=lemon_squeezy_variant_id,
        )
        async with self.database.scope(session) as s:
            if await s.scalar(sa.select(CreditPack.id).where(CreditPack.code == code)):
                raise CreditPackExists(f"a credit pack {code} exists", credit_pack=code)
            try:
                async with s.begin_nested():
                    s.add(pack)
                    await s.flush()
            except IntegrityError as error:
                if violates(error, "stripe_price_id") or violates(
                    error, "lemon_squeezy_variant_id"
                ):
                    raise CreditPackExists(
                        "another credit pack has this provider price id", credit_pack=code
                    ) from None
                raise CreditPackExists(f"a credit pack {code} exists", credit_pack=code) from None
            return pack

    async def by_provider_price(
        self, provider: PaymentProvider, price_id: str, *, session: AsyncSession | None = None
    ) -> CreditPack | None:
        """The pack sold at `provider` under `price_id` (a Stripe price, a Lemon Squeezy
        variant), if any."""
        column = {
            PaymentProvider.STRIPE: CreditPack.stripe_price_id,
            PaymentProvider.LEMON_SQUEEZY: CreditPack.lemon_squeezy_variant_id,
        }.get(provider)
        if column is None or not isinstance(price_id, str):
            return None
        async with self.database.scope(session, readonly=True) as s:
            return await s.scalar(sa.select(CreditPack).where(column == price_id))

    async def list(
        self, *, active: bool | None = None, session: AsyncSession | None = None
    ) -> Sequence[CreditPack]:
        """Every pack by code, or only the active (or inactive) ones."""
        query = sa.select(CreditPack).order_by(CreditPack.code)
        if active is not None:
            query = query.where(CreditPack.active.is_(active))
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    async def get(self, code: str, *, session: AsyncSession | None = None) -> CreditPack:
        """The pack with this code, or `credit_pack_not_found`."""
        async with self.database.scope(session, readonly=True) as s:
            pack = None
            if isinstance(code, str) and _CODE.fullmatch(code):
                pack = await s.scalar(sa.select(CreditPack).where(CreditPack.code == code))
        if pack is None:
            raise CreditPackNotFound(f"no credit pack {code[:60]!r}", credit_pack=code[:60])
        return pack

    async def deactivate(self, code: str, *, session: AsyncSession | None = None) -> CreditPack:
        """Take the pack off sale (idempotent); its open invoices stay payable."""
        async with self.database.scope(session) as s:
            pack = await self.get(code, session=s)
            pack.active = False
            await s.flush()
            return pack

    async def purchase(
        self,
        org_id: uuid.UUID,
        code: str,
        *,
        provider_taxed: bool = False,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Invoice:
        """Buy an active pack: an invoice with its one `credit_pack` line, finalised (it
        has its number and is open; `invoice.finalized`). Paying it in full grants the
        credits. An inactive pack is `credit_pack_not_found`; one in another currency than
        the organisation's is `credit_pack_currency_mismatch`.

        While a purchase of the same pack is unpaid, that invoice is answered again (nothing
        is written); past `MAX_OPEN_PURCHASES` unpaid purchases it is `too_many_open_purchases`.

        `provider_taxed`: a payment provider sold it, was paid, and charged its own taxes, so
        saascore adds none (tax source `provider`) and the provider's payment of the price pays
        it in full. Such a sale is never refused nor merged with an unpaid purchase: the
        customer has paid for it."""
        async with self.database.scope(session) as s:
            pack = await self.get(code, session=s)
            if not pack.active:
                raise CreditPackNotFound(f"no credit pack {code} on sale", credit_pack=code)
            # The organisation's row lock serializes its purchases: the look-up of its unpaid
            # ones below and the invoice made after it are one step for a racing purchase.
            currency = (await locked_organization(s, org_id)).currency
            if pack.currency != currency:
                raise CreditPackCurrencyMismatch(
                    f"credit pack {pack.code} is priced in {pack.currency}; this organisation "
                    f"pays in {currency}",
                    credit_pack=pack.code,
                    currency=pack.currency,
                    organization_currency=currency,
                )
            unpaid = [] if provider_taxed else await _unpaid_purchases(s, org_id)
            for invoice_id, bought in unpaid:
                if bought == pack.code:
                    return await self.invoices.get(org_id, invoice_id, session=s)
            if len(unpaid) >= MAX_OPEN_PURCHASES:
                raise TooManyOpenPurchases(
                    f"{len(unpaid)} credit-pack purchases are unpaid: pay one before buying "
                    "another pack",
                    open_purchases=len(unpaid),
                    limit=MAX_OPEN_PURCHASES,
                )
            draft = await self.invoices.create_draft(
                org_id,
                pack.currency,
                [
                    LineItem(
                        pack.name,
                        Money(pack.price, pack.currency),
                        kind=LineKind.CREDIT_PACK,
                        metadata={"credit_pack": pack.code, "credits": pack.credits},
                    )
                ],
                metadata={TAX_SOURCE: PROVIDER_TAX} if provider_taxed else None,
                actor=actor,
                session=s,
            )
            return await self.invoices.finalize(org_id, draft.id, actor=actor, session=s)


async def _unpaid_purchases(s: AsyncSession, org_id: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
    """The organisation's unpaid purchase invoices, oldest first, with the code bought."""
    code = InvoiceLine.metadata_["credit_pack"].as_string()
    query = (
        sa.select(Invoice.id, code)
        .join(
            InvoiceLine,
            (InvoiceLine.organization_id == Invoice.organization_id)
            & (InvoiceLine.invoice_id == Invoice.id),
        )
        .where(
            Invoice.organization_id == org_id,
            Invoice.status.in_(_UNPAID),
            InvoiceLine.metadata_["kind"].as_string() == LineKind.CREDIT_PACK.value,
        )
        .order_by(Invoice.id)
    )
    return [(invoice_id, bought) for invoice_id, bought in (await s.execute(query)).all()]

"""Properties of coupon discounts (issue 12, items 1 and 3): in every listed currency, for any
lines, a percentage or a fixed coupon and any tax rate, each line is rounded once and the
line totals, discount, tax and total reconcile exactly, also once stored. SQLite and
PostgreSQL for the stored property."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.billing.coupons import CouponService
from saascore.billing.invoices import InvoiceService, compute_totals
from saascore.config import Settings
from saascore.kit.db import Database
from saascore.kit.money import BasisPoints, Money
from tests.factories import create_organization, random_code
from tests.helpers import examples

CURRENCIES = ("USD", "EUR", "GBP", "YER", "SAR", "JPY", "KWD")
AMOUNTS = st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=30)
TAX = st.integers(0, 100_000)


def half_up(exact: Fraction) -> int:
    return int(exact + Fraction(1, 2)) if exact >= 0 else -int(-exact + Fraction(1, 2))


def assert_reconciles(totals: object, amounts: list[int], tax_rate: int) -> None:
    from saascore.billing.invoices import InvoiceTotals

    assert isinstance(totals, InvoiceTotals)
    for amount, line in zip(amounts, totals.lines, strict=True):
        assert line.amount.minor == amount
        # Tax once, half up, on what the discount leaves.
        taxed = amount - line.discount.minor
        assert line.tax.minor == half_up(Fraction(taxed * tax_rate, 10_000))
        assert line.total == line.amount - line.discount + line.tax
    assert totals.subtotal.minor == sum(amounts)
    assert totals.discount.minor == sum(line.discount.minor for line in totals.lines)
    assert totals.tax.minor == sum(line.tax.minor for line in totals.lines)
    assert totals.total == totals.subtotal - totals.discount + totals.tax
    assert totals.total.minor == sum(line.total.minor for line in totals.lines)


class TestPercentage:
    @settings(max_examples=examples(300), deadline=None)
    @given(
        currency=st.sampled_from(CURRENCIES),
        amounts=AMOUNTS,
        percent=st.integers(1, 10_000),
        tax=TAX,
    )
    @example(currency="USD", amounts=[5], percent=1000, tax=5000)  # 0.5 -> 1, once
    def test_each_line_is_discounted_once_half_up(
        self, currency: str, amounts: list[int], percent: int, tax: int
    ) -> None:
        totals = compute_totals(
            currency, [Money(a, currency) for a in amounts], BasisPoints(tax), BasisPoints(percent)
        )
        for amount, line in zip(amounts, totals.lines, strict=True):
            assert line.discount.minor == half_up(Fraction(amount * percent, 10_000))
            assert abs(line.discount.minor) <= abs(amount)
        assert_reconciles(totals, amounts, tax)


class TestFixedAmount:
    @settings(max_examples=examples(300), deadline=None)
    @given(
        currency=st.sampled_from(CURRENCIES),
        amounts=AMOUNTS,
        amount_off=st.integers(1, 10**13),
        tax=TAX,
    )
    @example(currency="JPY", amounts=[1, 1, 1], amount_off=2, tax=1000)
    @example(currency="KWD", amounts=[100, -300], amount_off=50, tax=0)
    def test_shares_sum_exactly_to_the_capped_amount_and_no_line_goes_negative(
        self, currency: str, amounts: list[int], amount_off: int, tax: int
    ) -> None:
        totals = compute_totals(
            currency,
            [Money(a, currency) for a in amounts],
            BasisPoints(tax),
            amount_off=Money(amount_off, currency),
        )
        expected = min(amount_off, max(sum(amounts), 0))
        assert totals.discount.minor == expected
        positive = sum(a for a in amounts if a > 0)
        for amount, line in zip(amounts, totals.lines, strict=True):
            share = line.discount.minor
            if amount <= 0:
                assert share == 0
            else:
                assert 0 <= share <= amount
                # Rounded once: within one minor unit of the exact proportional share.
                assert abs(share - Fraction(expected * amount, positive)) < 1
        assert_reconciles(totals, amounts, tax)


class TestStored:
    @settings(
        max_examples=examples(15),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        currency=st.sampled_from(CURRENCIES),
        tax=st.integers(0, 100_000),
        lines=st.lists(st.integers(1, 10**9), min_size=1, max_size=6),
        percent=st.one_of(st.none(), st.integers(1, 10_000)),
        amount_off=st.integers(1, 10**10),
    )
    async def test_a_discounted_invoice_reconciles_in_the_database(
        self,
        database: Database,
        session: AsyncSession,
        currency: str,
        tax: int,
        lines: list[int],
        percent: int | None,
        amount_off: int,
    ) -> None:
        invoices = InvoiceService(database, Settings(invoice_sequence_scope="organization"))
        coupons = CouponService(database)
        org = (await create_organization(session, tax_rate_bps=tax)).id
        coupon = await coupons.create(
            random_code("p").upper(),
            percent_off=percent,
            amount_off=None if percent else Money(amount_off, currency),
            session=session,
        )
        draft = await invoices.create_draft(
            org, currency, [(f"L{i}", a) for i, a in enumerate(lines)], session=session
        )
        await coupons.redeem(org, coupon.code, invoice_id=draft.id, session=session)
        invoice = await invoices.finalize(org, draft.id, session=session)
        assert invoice.subtotal == sum(line.amount for line in invoice.lines)
        assert invoice.discount_amount == sum(line.discount_amount for line in invoice.lines)
        assert invoice.tax_amount == sum(line.tax_amount for line in invoice.lines)
        assert invoice.total == invoice.subtotal - invoice.discount_amount + invoice.tax_amount
        assert invoice.amount_due == invoice.total
        assert invoice.total >= 0

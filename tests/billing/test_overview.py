"""The billing overview and the upcoming invoice over HTTP, through the real app: the overview
shows the subscription, usage, credits and payments of the caller's organisation only; the
upcoming invoice's preview is the invoice the billing run then issues, and writes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from saascore.models import (
    AuditLog,
    CouponRedemption,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    OutboxEvent,
    PlanLimit,
    PlanPrice,
    SubscriptionPlan,
    UsageCounter,
)
from saascore.models.catalog import BillingCycle
from saascore.testing import TestTenant
from tests.admin import Admin, customer_of
from tests.factories import random_code

pytestmark = pytest.mark.asyncio(loop_scope="session")

JAN = datetime(2025, 1, 1, tzinfo=UTC)
FEB = datetime(2025, 2, 1, tzinfo=UTC)
MID_JAN = "2025-01-16T12:00:00Z"
WRITTEN = (Invoice, InvoiceLine, CouponRedemption, OutboxEvent, AuditLog)


async def plan(admin: Admin, amount: int, overage: int) -> str:
    """A monthly USD plan with 1,000,000 tokens included, overage at `overage` per 1000."""
    code = random_code("plan")
    async with admin.database.transaction() as s:
        row = SubscriptionPlan(code=code, name=code.title(), credits_per_period=0)
        s.add(row)
        await s.flush()
        s.add(
            PlanPrice(
                plan_id=row.id, billing_cycle=BillingCycle.MONTHLY, currency="USD", amount=amount
            )
        )
        s.add(
            PlanLimit(
                plan_id=row.id,
                metric="tokens",
                limit_value=1_000_000,
                is_hard=False,
                overage_prices={"USD": overage},
                overage_per=1000,
            )
        )
    return code


async def ok(answer: httpx.Response, status: int = 200) -> Any:
    assert answer.status_code == status, answer.text
    return answer.json()


async def billed(admin: Admin, customer: TestTenant) -> dict[str, str]:
    """The customer subscribed in January to a plan with overage, upgraded mid-month (a
    proration waiting on the upcoming draft), with a 10 % forever coupon, a 15 % tax rate,
    1,500,499 tokens used in January, 700 credits and one paid invoice."""
    org_id = customer.organization_id
    base = f"/v1/admin/organizations/{org_id}"
    basic, plus = await plan(admin, 1_000, 2), await plan(admin, 3_000, 3)
    headers = admin.operator
    await ok(
        await admin.client.put(f"{base}/tax-rate", json={"tax_rate_bps": 1500}, headers=headers)
    )
    await ok(
        await admin.client.post(
            f"{base}/subscription",
            json={"plan": basic, "trial_days": 0, "at": JAN.isoformat()},
            headers=headers,
        ),
        201,
    )
    await ok(
        await admin.client.post(
            f"{base}/subscription/change-plan", json={"plan": plus, "at": MID_JAN}, headers=headers
        )
    )
    coupon = random_code("TEN").upper()
    await ok(
        await admin.client.post(
            "/v1/admin/coupons",
            json={"code": coupon, "percent_off": 1000, "duration": "forever"},
            headers=headers,
        ),
        201,
    )
    await ok(
        await admin.client.post(f"{base}/coupons", json={"code": coupon}, headers=headers), 201
    )
    async with admin.database.transaction() as s:
        s.add(
            UsageCounter(
                organization_id=org_id,
                metric="tokens",
                period_start=JAN,
                period_end=FEB,
                used=1_500_499,
            )
        )
    credits = await admin.core.credits.balance(org_id) + 700
    await admin.core.credits.grant(org_id, 700)
    draft = await ok(
        await admin.client.post(
            f"{base}/invoices",
            json={"currency": "USD", "lines": [{"description": "Setup", "unit_amount": 500}]},
            headers=headers,
        ),
        201,
    )
    opened = await ok(
        await admin.client.post(f"/v1/admin/invoices/{draft['id']}/finalize", headers=headers)
    )
    await ok(
        await admin.client.post(
            f"/v1/admin/invoices/{draft['id']}/payments",
            json={"amount": opened["amount_due"], "method": "card"},
            headers=headers,
        ),
        201,
    )
    return {"basic": basic, "plus": plus, "coupon": coupon, "credits": str(credits)}


async def counts(admin: Admin) -> list[int]:
    async with admin.database.session(readonly=True) as s:
        return [
            int(await s.scalar(sa.select(sa.func.count()).select_from(model)) or 0)
            for model in WRITTEN
        ]


def comparable(lines: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            line["description"],
            line["quantity"],
            line["unit_amount"],
            line["amount"],
            line["discount_amount"],
            line["tax_amount"],
            line["total"],
        )
        for line in lines
    ]


class TestOverview:
    async def test_shows_subscription_usage_credits_payments_upcoming(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        names = await billed(admin, customer)
        body = await ok(await admin.client.get("/v1/billing/overview", headers=customer.headers))
        assert body["organization_id"] == str(customer.organization_id)
        assert body["plan"]["code"] == names["plus"]
        subscription = body["subscription"]
        assert (subscription["plan"], subscription["status"]) == (names["plus"], "active")
        assert subscription["current_period_start"].startswith("2025-01-01")
        assert subscription["current_period_end"].startswith("2025-02-01")
        assert subscription["cancel_at_period_end"] is False
        assert body["usage_period_start"].startswith("2025-01-01")
        assert body["usage"] == [
            {
                "metric": "tokens",
                "used": 1_500_499,
                "included": 1_000_000,
                "over": 500_499,
                "included_per": "month",
            }
        ]
        assert body["credit_balance"] == int(names["credits"])
        [payment] = body["recent_payments"]
        assert (payment["amount"], payment["status"]) == (575, "succeeded")
        upcoming = body["upcoming_invoice"]
        assert upcoming["coupon"] == names["coupon"]
        assert upcoming["tax_rate_bps"] == 1500
        assert {line["kind"] for line in upcoming["lines"]} == {"proration", "plan", "usage"}
        alone = await ok(await admin.client.get("/v1/invoices/upcoming", headers=customer.headers))
        assert alone == upcoming

    async def test_another_tenants_data_never_appears(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        await billed(admin, customer)
        other = await customer_of(admin)
        body = await ok(await admin.client.get("/v1/billing/overview", headers=other.headers))
        assert body["organization_id"] == str(other.organization_id)
        assert body["subscription"] is None
        assert body["upcoming_invoice"] is None
        assert body["recent_payments"] == []
        assert body["credit_balance"] == await admin.core.credits.balance(other.organization_id)
        assert all(meter["used"] == 0 for meter in body["usage"])
        answer = await admin.client.get("/v1/invoices/upcoming", headers=other.headers)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "subscription_not_found"

    async def test_usage_lists_the_limits_kept_as_plan_columns(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        """A plan that keeps its limits as columns (as the default plans do) shows a row per
        limited meter; a `plan_limits` row wins over the column of its meter."""
        code = random_code("plan")
        async with admin.database.transaction() as s:
            row = SubscriptionPlan(
                code=code,
                name=code.title(),
                credits_per_period=0,
                monthly_token_limit=1_000,
                max_storage_mb=2,
                max_api_calls_per_day=50,
            )
            s.add(row)
            await s.flush()
            s.add(PlanLimit(plan_id=row.id, metric="storage_bytes", limit_value=None))
        org_id = customer.organization_id
        await admin.core.orgs.change_plan(org_id, code)
        now = datetime.now(UTC)
        async with admin.database.transaction() as s:
            s.add(
                UsageCounter(
                    organization_id=org_id,
                    metric="tokens",
                    period_start=now.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
                    period_end=None,
                    used=400,
                )
            )
        body = await ok(await admin.client.get("/v1/billing/overview", headers=customer.headers))
        assert body["subscription"] is None
        # Each meter says what its included amount is per: API calls are allowed per day.
        assert body["usage"] == [
            {"metric": "api_calls", "used": 0, "included": 50, "over": 0, "included_per": "day"},
            {
                "metric": "storage_bytes",
                "used": 0,
                "included": None,
                "over": 0,
                "included_per": "none",
            },
            {
                "metric": "tokens",
                "used": 400,
                "included": 1_000,
                "over": 0,
                "included_per": "month",
            },
        ]

    async def test_needs_billing_read(self, admin: Admin, customer: TestTenant) -> None:
        answer = await admin.client.get("/v1/billing/overview")
        assert answer.status_code == 401, answer.text
        answer = await admin.client.get("/v1/invoices/upcoming")
        assert answer.status_code == 401, answer.text


class TestUpcoming:
    async def test_preview_is_the_invoice_the_run_issues(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        await billed(admin, customer)
        preview = await ok(
            await admin.client.get("/v1/invoices/upcoming", headers=customer.headers)
        )
        summary = await admin.core.billing_run.run(FEB, organizations=[customer.organization_id])
        assert summary.counts["invoices_issued"] == 1
        found = await ok(
            await admin.client.get(
                "/v1/invoices", params={"status": "open"}, headers=customer.headers
            )
        )
        issued = next(i for i in found["items"] if i["subscription_id"] is not None)
        assert comparable(issued["lines"]) == comparable(preview["lines"])
        for key in ("subtotal", "discount_amount", "tax_amount", "total", "amount_due"):
            assert issued[key] == preview[key], key
        assert (issued["period_start"], issued["period_end"]) == (
            preview["period_start"],
            preview["period_end"],
        )
        assert preview["discount_amount"] > 0

    async def test_writes_nothing(self, admin: Admin, customer: TestTenant) -> None:
        await billed(admin, customer)
        before = await counts(admin)
        for _ in range(2):
            await ok(await admin.client.get("/v1/invoices/upcoming", headers=customer.headers))
            await ok(await admin.client.get("/v1/billing/overview", headers=customer.headers))
        assert await counts(admin) == before
        async with admin.database.session(readonly=True) as s:
            drafts = await s.scalar(
                sa.select(sa.func.count())
                .select_from(Invoice)
                .where(
                    Invoice.organization_id == customer.organization_id,
                    Invoice.status == InvoiceStatus.DRAFT,
                )
            )
        assert drafts == 1  # the proration's draft, unchanged

    async def test_none_when_canceling(self, admin: Admin, customer: TestTenant) -> None:
        await billed(admin, customer)
        org_id: uuid.UUID = customer.organization_id
        await ok(
            await admin.client.post(
                f"/v1/admin/organizations/{org_id}/subscription/cancel",
                json={"at": MID_JAN},
                headers=admin.operator,
            )
        )
        answer = await admin.client.get("/v1/invoices/upcoming", headers=customer.headers)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "no_upcoming_invoice"
        body = await ok(await admin.client.get("/v1/billing/overview", headers=customer.headers))
        assert body["upcoming_invoice"] is None
        assert body["subscription"]["cancel_at_period_end"] is True

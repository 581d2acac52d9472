"""The coupon and credit-pack routes over HTTP, through the real app: operators keep the
catalogs and redeem coupons for organisations; tenants list packs on sale and buy one."""

from __future__ import annotations

import uuid

import pytest

from saascore.billing.invoices import LineKind
from saascore.testing import TestTenant
from tests.admin import Admin, customer_of
from tests.factories import random_code

pytestmark = pytest.mark.asyncio(loop_scope="session")


def code() -> str:
    return random_code("h").upper()


async def coupon(admin: Admin, **body: object) -> dict[str, object]:
    answer = await admin.client.post(
        "/v1/admin/coupons", json={"code": code(), **body}, headers=admin.operator
    )
    assert answer.status_code == 201, answer.text
    created: dict[str, object] = answer.json()
    return created


async def draft(admin: Admin, org_id: uuid.UUID, currency: str = "USD") -> str:
    answer = await admin.client.post(
        f"/v1/admin/organizations/{org_id}/invoices",
        json={"currency": currency, "lines": [{"description": "Work", "unit_amount": 10_000}]},
        headers=admin.operator,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


class TestCoupons:
    async def test_create_list_redeem_deactivate(self, admin: Admin, customer: TestTenant) -> None:
        created = await coupon(admin, percent_off=2000, max_redemptions=10, name="Twenty")
        assert (created["percent_off"], created["times_redeemed"], created["active"]) == (
            2000,
            0,
            True,
        )
        listed = await admin.client.get("/v1/admin/coupons", headers=admin.operator)
        assert listed.status_code == 200
        assert created["code"] in [c["code"] for c in listed.json()]

        org_id = customer.organization_id
        invoice_id = await draft(admin, org_id)
        redeemed = await admin.client.post(
            f"/v1/admin/organizations/{org_id}/coupons",
            json={"code": str(created["code"]).lower(), "invoice_id": invoice_id},
            headers=admin.operator,
        )
        assert redeemed.status_code == 201, redeemed.text
        assert redeemed.json()["invoice_id"] == invoice_id
        shown = await admin.client.get(f"/v1/invoices/{invoice_id}", headers=customer.headers)
        assert (shown.json()["discount_amount"], shown.json()["total"]) == (2_000, 8_000)
        assert shown.json()["coupon"] == created["code"]

        off = await admin.client.post(
            f"/v1/admin/coupons/{created['code']}/deactivate", headers=admin.operator
        )
        assert off.status_code == 200
        assert off.json()["active"] is False
        assert off.json()["times_redeemed"] == 1
        other = await draft(admin, org_id)
        refused = await admin.client.post(
            f"/v1/admin/organizations/{org_id}/coupons",
            json={"code": created["code"], "invoice_id": other},
            headers=admin.operator,
        )
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "coupon_inactive"

    @pytest.mark.parametrize(
        ("body", "status", "error"),
        [
            ({"percent_off": 100, "amount_off": 5, "currency": "USD"}, 422, "invalid_coupon"),
            ({}, 422, "invalid_coupon"),
            ({"percent_off": 10_001}, 422, None),
            ({"percent_off": 100.5}, 422, None),
            ({"amount_off": 2**63, "currency": "USD"}, 422, None),
            ({"amount_off": 5, "currency": "XYZ"}, 422, "unknown_currency"),
            ({"percent_off": 100, "duration": "repeating"}, 422, "invalid_coupon"),
            ({"percent_off": 100, "expires_at": "2030-01-01T00:00:00"}, 422, None),
            ({"percent_off": 100, "name": "a\u0000b"}, 422, None),
        ],
    )
    async def test_bad_coupons_are_refused(
        self, admin: Admin, body: dict[str, object], status: int, error: str | None
    ) -> None:
        answer = await admin.client.post(
            "/v1/admin/coupons", json={"code": code(), **body}, headers=admin.operator
        )
        assert answer.status_code == status, answer.text
        if error is not None:
            assert answer.json()["error"]["code"] == error

    async def test_refusals_of_redemption(self, admin: Admin, customer: TestTenant) -> None:
        taken = await coupon(admin, percent_off=100)
        again = await admin.client.post(
            "/v1/admin/coupons",
            json={"code": taken["code"], "percent_off": 5},
            headers=admin.operator,
        )
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "coupon_exists"
        org_id = customer.organization_id
        cases = [
            ({"code": "NOPE-" + code()}, 404, "coupon_not_found"),
            ({"code": taken["code"]}, 404, "subscription_not_found"),
            (
                {"code": taken["code"], "invoice_id": str(uuid.uuid4())},
                404,
                "invoice_not_found",
            ),
        ]
        euro = await coupon(admin, amount_off=100, currency="EUR")
        cases.append(
            (
                {"code": euro["code"], "invoice_id": await draft(admin, org_id)},
                422,
                "coupon_currency_mismatch",
            )
        )
        stranger = await customer_of(admin)
        cases.append(
            (
                {"code": taken["code"], "invoice_id": await draft(admin, stranger.organization_id)},
                404,
                "invoice_not_found",
            )
        )
        for body, status, error in cases:
            answer = await admin.client.post(
                f"/v1/admin/organizations/{org_id}/coupons", json=body, headers=admin.operator
            )
            assert answer.status_code == status, (body, answer.text)
            assert answer.json()["error"]["code"] == error
        unknown = await admin.client.post(
            f"/v1/admin/organizations/{uuid.uuid4()}/coupons",
            json={"code": taken["code"]},
            headers=admin.operator,
        )
        assert unknown.status_code == 404
        missing = await admin.client.post(
            f"/v1/admin/coupons/{code()}/deactivate", headers=admin.operator
        )
        assert missing.json()["error"]["code"] == "coupon_not_found"

    async def test_the_limit_is_kept(self, admin: Admin, customer: TestTenant) -> None:
        limited = await coupon(admin, amount_off=500, currency="USD", max_redemptions=1)
        org_id = customer.organization_id
        first, second = await draft(admin, org_id), await draft(admin, org_id)
        ok = await admin.client.post(
            f"/v1/admin/organizations/{org_id}/coupons",
            json={"code": limited["code"], "invoice_id": first},
            headers=admin.operator,
        )
        assert ok.status_code == 201
        exhausted = await admin.client.post(
            f"/v1/admin/organizations/{org_id}/coupons",
            json={"code": limited["code"], "invoice_id": second},
            headers=admin.operator,
        )
        assert exhausted.status_code == 409
        assert exhausted.json()["error"]["code"] == "coupon_exhausted"


class TestCreditPacks:
    async def test_operator_creates_tenant_buys(self, admin: Admin, customer: TestTenant) -> None:
        pack_code = random_code("pack").replace("_", "-")
        created = await admin.client.post(
            "/v1/admin/credit-packs",
            json={
                "code": pack_code,
                "name": "1k credits",
                "credits": 1000,
                "price": 999,
                "currency": "USD",
            },
            headers=admin.operator,
        )
        assert created.status_code == 201, created.text
        duplicate = await admin.client.post(
            "/v1/admin/credit-packs",
            json={"code": pack_code, "credits": 1, "price": 1, "currency": "USD"},
            headers=admin.operator,
        )
        assert duplicate.json()["error"]["code"] == "credit_pack_exists"
        on_sale = await admin.client.get("/v1/credit-packs", headers=customer.headers)
        assert on_sale.status_code == 200
        assert pack_code in [p["code"] for p in on_sale.json()]

        bought = await admin.client.post(
            "/v1/credit-packs/purchase", json={"code": pack_code}, headers=customer.headers
        )
        assert bought.status_code == 201, bought.text
        invoice = bought.json()
        assert invoice["status"] == "open"
        assert invoice["number"] is not None
        assert invoice["subtotal"] == 999
        stored = await admin.core.invoices.get(customer.organization_id, uuid.UUID(invoice["id"]))
        assert stored.lines[0].metadata_ == {
            "kind": LineKind.CREDIT_PACK.value,
            "credit_pack": pack_code,
            "credits": 1000,
        }

        # Paying the invoice in full, in two parts, grants the pack's credits once.
        async def balance() -> int:
            answer = await admin.client.get("/v1/credits", headers=customer.headers)
            assert answer.status_code == 200, answer.text
            value: int = answer.json()["balance"]
            return value

        before = await balance()
        payments = f"/v1/admin/invoices/{invoice['id']}/payments"
        for amount in (500, 499 + invoice["tax_amount"]):
            paid = await admin.client.post(
                payments, json={"amount": amount, "method": "cash"}, headers=admin.operator
            )
            assert paid.status_code == 201, paid.text
        assert paid.json()["credits_awarded"] == 1000
        assert await balance() == before + 1000
        settled = await admin.client.get(f"/v1/invoices/{invoice['id']}", headers=customer.headers)
        assert (settled.json()["status"], settled.json()["amount_due"]) == ("paid", 0)

    async def test_refusals(self, admin: Admin, customer: TestTenant) -> None:
        for body in (
            {"code": "Bad Code", "credits": 1, "price": 1, "currency": "USD"},
            {"code": "ok", "credits": 0, "price": 1, "currency": "USD"},
            {"code": "ok", "credits": 1, "price": 0, "currency": "USD"},
            {"code": "ok", "credits": 1, "price": 1, "currency": "usdx"},
        ):
            answer = await admin.client.post(
                "/v1/admin/credit-packs", json=body, headers=admin.operator
            )
            assert answer.status_code == 422, body
        missing = await admin.client.post(
            "/v1/credit-packs/purchase", json={"code": "no-such-pack"}, headers=customer.headers
        )
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "credit_pack_not_found"
        tenant_admin = await admin.client.get("/v1/admin/credit-packs", headers=customer.headers)
        assert tenant_admin.status_code == 403


class TestCreditPackDeactivation:
    async def test_a_deactivated_pack_is_off_sale_and_its_invoice_stays_payable(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        pack_code = random_code("pack").replace("_", "-")
        created = await admin.client.post(
            "/v1/admin/credit-packs",
            json={"code": pack_code, "credits": 10, "price": 100, "currency": "USD"},
            headers=admin.operator,
        )
        assert created.status_code == 201, created.text
        bought = await admin.client.post(
            "/v1/credit-packs/purchase", json={"code": pack_code}, headers=customer.headers
        )
        assert bought.status_code == 201, bought.text
        path = f"/v1/admin/credit-packs/{pack_code}/deactivate"
        for _ in range(2):  # twice changes nothing
            done = await admin.client.post(path, headers=admin.operator)
            assert done.status_code == 200, done.text
            assert (done.json()["code"], done.json()["active"]) == (pack_code, False)
        on_sale = await admin.client.get("/v1/credit-packs", headers=customer.headers)
        assert pack_code not in [p["code"] for p in on_sale.json()]
        again = await admin.client.post(
            "/v1/credit-packs/purchase", json={"code": pack_code}, headers=customer.headers
        )
        assert again.json()["error"]["code"] == "credit_pack_not_found"
        invoice = bought.json()
        paid = await admin.client.post(
            f"/v1/admin/invoices/{invoice['id']}/payments",
            json={"amount": invoice["amount_due"], "method": "cash"},
            headers=admin.operator,
        )
        assert paid.status_code == 201, paid.text
        assert paid.json()["credits_awarded"] == 10

    async def test_unknown_codes_and_tenants_are_refused(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        for path_code in ("no-such-pack", "x" * 64, "%1b[31m"):
            missing = await admin.client.post(
                f"/v1/admin/credit-packs/{path_code}/deactivate", headers=admin.operator
            )
            assert missing.status_code == 404, (path_code, missing.text)
            assert missing.json()["error"]["code"] == "credit_pack_not_found"
        tenant = await admin.client.post(
            "/v1/admin/credit-packs/no-such-pack/deactivate", headers=customer.headers
        )
        assert tenant.status_code == 403


class TestOrganizationCountry:
    async def test_an_operator_creates_an_organisation_in_a_country(self, admin: Admin) -> None:
        created = await admin.client.post(
            "/v1/admin/organizations",
            json={"name": "Riyadh Dates", "country": "SA"},
            headers=admin.operator,
        )
        assert created.status_code == 201, created.text
        org = await admin.core.orgs.get(uuid.UUID(created.json()["id"]))
        assert (org.country, org.tax_rate_bps) == ("SA", 1500)
        for country in ("XX", "S", "SAU", "1A"):
            refused = await admin.client.post(
                "/v1/admin/organizations",
                json={"name": "Nowhere", "country": country},
                headers=admin.operator,
            )
            assert refused.status_code == 422, (country, refused.text)

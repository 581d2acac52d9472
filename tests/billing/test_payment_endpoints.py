"""The payment routes over HTTP, through the real app: operators record payments (partial,
failed, idempotent) and refunds against invoices; tenants read their own payment history only,
page by page."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from saascore.testing import TestTenant
from tests.admin import Admin, by_operator, customer_of, entries, stored

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def open_invoice(admin: Admin, org_id: uuid.UUID, amount: int = 10_000) -> str:
    created = await admin.client.post(
        f"/v1/admin/organizations/{org_id}/invoices",
        json={"currency": "USD", "lines": [{"description": "Workshop", "unit_amount": amount}]},
        headers=admin.operator,
    )
    assert created.status_code == 201, created.text
    invoice_id: str = created.json()["id"]
    finalized = await admin.client.post(
        f"/v1/admin/invoices/{invoice_id}/finalize", headers=admin.operator
    )
    assert finalized.status_code == 200, finalized.text
    return invoice_id


async def pay(admin: Admin, invoice_id: str, **body: Any) -> Any:
    return await admin.client.post(
        f"/v1/admin/invoices/{invoice_id}/payments",
        json={"amount": 4_000, "method": "card", **body},
        headers=admin.operator,
    )


class TestOperator:
    async def test_partial_payments_then_the_rest(self, admin: Admin, customer: TestTenant) -> None:
        invoice_id = await open_invoice(admin, customer.organization_id)
        first = await pay(admin, invoice_id, idempotency_key="p-1")
        assert first.status_code == 201, first.text
        body = first.json()
        assert (body["status"], body["amount"], body["method"]) == (
            "succeeded",
            4_000,
            "credit_card",
        )
        replay = await pay(admin, invoice_id, idempotency_key="p-1")
        assert replay.status_code == 201
        assert replay.json()["id"] == body["id"]
        reused = await pay(admin, invoice_id, idempotency_key="p-1", amount=1)
        assert reused.status_code == 409
        assert reused.json()["error"]["code"] == "idempotency_conflict"
        rest = await pay(admin, invoice_id, amount=6_000, method="tharwatt")
        assert rest.status_code == 201, rest.text
        assert (rest.json()["method"], rest.json()["method_name"]) == ("other", "tharwatt")
        invoice = await admin.client.get(f"/v1/invoices/{invoice_id}", headers=customer.headers)
        assert (invoice.json()["status"], invoice.json()["amount_due"]) == ("paid", 0)
        listed = await admin.client.get(
            f"/v1/admin/invoices/{invoice_id}/payments", headers=admin.operator
        )
        assert [p["amount"] for p in listed.json()] == [6_000, 4_000]
        audited = await entries(admin, customer.organization_id, "payment.succeeded")
        assert len(audited) == 2
        assert all(by_operator(admin, entry) for entry in audited)

    async def test_refusals_change_nothing(self, admin: Admin, customer: TestTenant) -> None:
        org_id = customer.organization_id
        invoice_id = await open_invoice(admin, org_id)
        before = await stored(admin.database, org_id)
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"amount": 10_001}, 409, "overpayment"),
            ({"amount": 0}, 422, "validation_error"),
            ({"amount": 2**63}, 422, "validation_error"),
            ({"amount": 1.5}, 422, "validation_error"),
            ({"method": "no such; method"}, 422, "invalid_payment"),
            ({"idempotency_key": "bad\u0007key"}, 422, "invalid_character"),
            ({"status": "failed"}, 422, "invalid_payment"),
            ({"status": "pending"}, 422, "invalid_payment"),
        ]
        for body, status_code, code in cases:
            answer = await pay(admin, invoice_id, **body)
            assert answer.status_code == status_code, (body, answer.text)
            assert answer.json()["error"]["code"] == code, body
        missing = await pay(admin, str(uuid.uuid4()))
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "invoice_not_found"
        assert await stored(admin.database, org_id) == before

    async def test_failed_payment_and_refunds(self, admin: Admin, customer: TestTenant) -> None:
        invoice_id = await open_invoice(admin, customer.organization_id)
        failed = await pay(admin, invoice_id, status="failed", failure_reason="card declined")
        assert failed.status_code == 201, failed.text
        assert failed.json()["failure_reason"] == "card declined"
        paid = (await pay(admin, invoice_id, amount=10_000)).json()
        refund = await admin.client.post(
            f"/v1/admin/payments/{paid['id']}/refunds",
            json={"amount": 2_500, "reason": "goodwill"},
            headers=admin.operator,
        )
        assert refund.status_code == 200, refund.text
        assert (refund.json()["status"], refund.json()["refunded_amount"]) == (
            "partially_refunded",
            2_500,
        )
        too_much = await admin.client.post(
            f"/v1/admin/payments/{paid['id']}/refunds",
            json={"amount": 7_501},
            headers=admin.operator,
        )
        assert too_much.status_code == 409
        assert too_much.json()["error"]["code"] == "refund_exceeds_payment"
        of_failed = await admin.client.post(
            f"/v1/admin/payments/{failed.json()['id']}/refunds",
            json={"amount": 1},
            headers=admin.operator,
        )
        assert of_failed.json()["error"]["code"] == "payment_not_refundable"


class TestTenantHistory:
    async def test_history_pages_and_isolation(self, admin: Admin, customer: TestTenant) -> None:
        invoice_id = await open_invoice(admin, customer.organization_id)
        for _ in range(3):
            assert (await pay(admin, invoice_id, amount=1_000)).status_code == 201
        first = await admin.client.get(
            "/v1/payments", params={"limit": 2}, headers=customer.headers
        )
        assert first.status_code == 200, first.text
        page = first.json()
        assert len(page["items"]) == 2
        assert page["next_cursor"]
        second = await admin.client.get(
            "/v1/payments",
            params={"limit": 2, "cursor": page["next_cursor"]},
            headers=customer.headers,
        )
        ids = [p["id"] for p in page["items"] + second.json()["items"]]
        assert len(ids) == len(set(ids)) == 3
        one = await admin.client.get(f"/v1/payments/{ids[0]}", headers=customer.headers)
        assert one.status_code == 200
        other = await customer_of(admin)
        theirs = await admin.client.get(f"/v1/payments/{ids[0]}", headers=other.headers)
        assert theirs.status_code == 404
        assert theirs.json()["error"]["code"] == "payment_not_found"
        empty = await admin.client.get("/v1/payments", headers=other.headers)
        assert empty.json()["items"] == []
        refused = await admin.client.post(
            f"/v1/admin/invoices/{invoice_id}/payments",
            json={"amount": 1, "method": "card"},
            headers=customer.headers,
        )
        assert refused.status_code == 403

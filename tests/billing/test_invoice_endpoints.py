"""The invoice routes over HTTP, through the real app: operators make drafts, finalise, void
and write off invoices and set tax rates; tenants read their own invoices only."""

from __future__ import annotations

import re
import uuid

import pytest

from saascore.testing import TestTenant
from tests.admin import Admin, customer_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

NUMBER = re.compile(r"INV-\d{4}-\d{4,}")


async def draft(admin: Admin, org_id: uuid.UUID, **body: object) -> dict[str, object]:
    payload = {
        "currency": "USD",
        "lines": [
            {"description": "Workshop", "unit_amount": 50000},
            {"description": "Seats", "unit_amount": 1000, "quantity": 3},
        ],
        **body,
    }
    answer = await admin.client.post(
        f"/v1/admin/organizations/{org_id}/invoices", json=payload, headers=admin.operator
    )
    assert answer.status_code == 201, answer.text
    created: dict[str, object] = answer.json()
    return created


class TestOperator:
    async def test_draft_finalize_void(self, admin: Admin, customer: TestTenant) -> None:
        org_id = customer.organization_id
        rate = await admin.client.put(
            f"/v1/admin/organizations/{org_id}/tax-rate",
            json={"tax_rate_bps": 1500},
            headers=admin.operator,
        )
        assert rate.status_code == 200, rate.text
        assert rate.json() == {"tax_rate_bps": 1500}
        created = await draft(admin, org_id, notes_localized={"ar": "شكرا لكم"})
        assert created["number"] is None
        assert created["status"] == "draft"
        assert (created["subtotal"], created["tax_amount"], created["total"]) == (
            53000,
            7950,
            60950,
        )
        lines = created["lines"]
        assert isinstance(lines, list)
        assert [line["total"] for line in lines] == [57500, 3450]

        finalized = await admin.client.post(
            f"/v1/admin/invoices/{created['id']}/finalize", headers=admin.operator
        )
        assert finalized.status_code == 200, finalized.text
        body = finalized.json()
        assert body["status"] == "open"
        assert NUMBER.fullmatch(body["number"])
        assert body["overdue"] is False
        assert body["due_date"] is not None
        again = await admin.client.post(
            f"/v1/admin/invoices/{created['id']}/finalize", headers=admin.operator
        )
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "invalid_transition"

        voided = await admin.client.post(
            f"/v1/admin/invoices/{created['id']}/void", headers=admin.operator
        )
        assert voided.status_code == 200, voided.text
        assert voided.json()["status"] == "void"
        assert voided.json()["number"] == body["number"]

    async def test_refusals(self, admin: Admin, customer: TestTenant) -> None:
        org_id = customer.organization_id
        path = f"/v1/admin/organizations/{org_id}/invoices"
        cases = [
            ({"currency": "XYZ"}, 422, "unknown_currency"),
            ({"currency": "USD", "lines": [{"description": "x", "unit_amount": 1.5}]}, 422, None),
            (
                {"currency": "USD", "lines": [{"description": "\x07", "unit_amount": 1}]},
                422,
                "invalid_invoice_line",
            ),
        ]
        for body, code, error in cases:
            answer = await admin.client.post(path, json=body, headers=admin.operator)
            assert answer.status_code == code, answer.text
            if error is not None:
                assert answer.json()["error"]["code"] == error
        empty = await draft(admin, org_id, lines=[])
        refused = await admin.client.post(
            f"/v1/admin/invoices/{empty['id']}/finalize", headers=admin.operator
        )
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "empty_invoice"
        credit = await draft(admin, org_id, lines=[{"description": "Credit", "unit_amount": -5}])
        refused = await admin.client.post(
            f"/v1/admin/invoices/{credit['id']}/finalize", headers=admin.operator
        )
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "negative_invoice_total"
        missing = await admin.client.post(
            f"/v1/admin/invoices/{uuid.uuid4()}/void", headers=admin.operator
        )
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "invoice_not_found"
        rate = await admin.client.put(
            f"/v1/admin/organizations/{org_id}/tax-rate",
            json={"tax_rate_bps": 100_001},
            headers=admin.operator,
        )
        assert rate.status_code == 422

    async def test_a_tenant_may_not_use_the_operator_routes(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        answer = await admin.client.post(
            f"/v1/admin/organizations/{customer.organization_id}/invoices",
            json={"currency": "USD"},
            headers=customer.headers,
        )
        assert answer.status_code == 403


class TestTenantRoutes:
    async def test_list_and_get_own_invoices_only(self, admin: Admin, customer: TestTenant) -> None:
        other = await customer_of(admin)
        mine = await draft(admin, customer.organization_id)
        theirs = await draft(admin, other.organization_id)
        await admin.client.post(f"/v1/admin/invoices/{mine['id']}/finalize", headers=admin.operator)

        listed = await admin.client.get("/v1/invoices", headers=customer.headers)
        assert listed.status_code == 200, listed.text
        ids = [item["id"] for item in listed.json()["items"]]
        assert mine["id"] in ids
        assert theirs["id"] not in ids
        open_only = await admin.client.get(
            "/v1/invoices", params={"status": "open", "limit": 1}, headers=customer.headers
        )
        assert [item["status"] for item in open_only.json()["items"]] == ["open"]
        overdue = await admin.client.get(
            "/v1/invoices", params={"status": "overdue"}, headers=customer.headers
        )
        assert overdue.json()["items"] == []  # due in 14 days

        got = await admin.client.get(f"/v1/invoices/{mine['id']}", headers=customer.headers)
        assert got.status_code == 200
        assert got.json()["id"] == mine["id"]
        hidden = await admin.client.get(f"/v1/invoices/{theirs['id']}", headers=customer.headers)
        assert hidden.status_code == 404
        assert hidden.json()["error"]["code"] == "invoice_not_found"

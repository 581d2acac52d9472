"""Findings of a newcomer's trial of invoices, over HTTP through the real app: nothing is due
on a settled invoice (JSON and HTML), operators read any invoice, discard drafts, and a new
tax rate shows on drafts at once; a trial canceled at its period's end ends with the trial."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from saascore.billing.invoices import OWED_STATUSES, amount_owed
from saascore.kit.inputs import INT64_MAX
from saascore.models import Invoice, InvoiceStatus
from saascore.testing import TestTenant
from tests.admin import Admin, by_operator, customer_of, entries, stored

ASYNC = pytest.mark.asyncio(loop_scope="session")

APRIL = "2024-04-01T00:00:00Z"


async def draft(admin: Admin, org_id: uuid.UUID, amount: int = 10_000) -> dict[str, Any]:
    created = await admin.client.post(
        f"/v1/admin/organizations/{org_id}/invoices",
        json={"currency": "USD", "lines": [{"description": "Workshop", "unit_amount": amount}]},
        headers=admin.operator,
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def post(admin: Admin, path: str, **body: Any) -> Any:
    answer = await admin.client.post(path, json=body or None, headers=admin.operator)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


async def html(admin: Admin, customer: TestTenant, invoice_id: str) -> str:
    page = await admin.client.get(
        f"/v1/invoices/{invoice_id}.html", params={"locale": "en"}, headers=customer.headers
    )
    assert page.status_code == 200, page.text
    return page.text


class TestAmountOwed:
    @pytest.mark.parametrize("status", list(InvoiceStatus))
    def test_owed_only_while_open_or_uncollectible(self, status: InvoiceStatus) -> None:
        invoice = Invoice(status=status, amount_due=1725)
        expected = 1725 if status in OWED_STATUSES else 0
        assert amount_owed(invoice) == expected
        assert (status in OWED_STATUSES) == (
            status in (InvoiceStatus.OPEN, InvoiceStatus.OVERDUE, InvoiceStatus.UNCOLLECTIBLE)
        )

    @ASYNC
    async def test_settled_invoices_show_nothing_due(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        org_id = customer.organization_id
        created = await draft(admin, org_id)
        assert (created["amount_due"], created["amount_owed"]) == (10_000, 0)
        assert "Amount due" not in await html(admin, customer, created["id"])
        opened = await post(admin, f"/v1/admin/invoices/{created['id']}/finalize")
        assert (opened["amount_due"], opened["amount_owed"]) == (10_000, 10_000)
        page = await html(admin, customer, created["id"])
        assert "Amount due" in page
        assert "$100.00" in page
        paid = await post(
            admin, f"/v1/admin/invoices/{created['id']}/payments", amount=10_000, method="card"
        )
        await post(admin, f"/v1/admin/payments/{paid['id']}/refunds", amount=10_000)
        refunded = await admin.client.get(f"/v1/invoices/{created['id']}", headers=customer.headers)
        assert refunded.json()["status"] == "refunded"
        assert refunded.json()["amount_owed"] == 0
        assert "Amount due" not in await html(admin, customer, created["id"])

        voided = await draft(admin, org_id, 1725)
        await post(admin, f"/v1/admin/invoices/{voided['id']}/finalize")
        body = await post(admin, f"/v1/admin/invoices/{voided['id']}/void")
        assert (body["status"], body["amount_due"], body["amount_owed"]) == ("void", 1725, 0)
        assert "Amount due" not in await html(admin, customer, voided["id"])


@ASYNC
class TestOperatorReads:
    async def test_any_invoice_and_an_organisations_list(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        other = await customer_of(admin)
        mine = await draft(admin, customer.organization_id)
        theirs = await draft(admin, other.organization_id)
        read = await admin.client.get(f"/v1/admin/invoices/{theirs['id']}", headers=admin.operator)
        assert read.status_code == 200, read.text
        assert read.json() == theirs
        listed = await admin.client.get(
            f"/v1/admin/organizations/{customer.organization_id}/invoices",
            params={"limit": 10},
            headers=admin.operator,
        )
        assert listed.status_code == 200, listed.text
        assert [item["id"] for item in listed.json()["items"]] == [mine["id"]]
        for path, code in (
            (f"/v1/admin/invoices/{uuid.uuid4()}", "invoice_not_found"),
            (f"/v1/admin/organizations/{uuid.uuid4()}/invoices", "organization_not_found"),
        ):
            missing = await admin.client.get(path, headers=admin.operator)
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == code
        bad_cursor = await admin.client.get(
            f"/v1/admin/organizations/{customer.organization_id}/invoices",
            params={"cursor": "\x00"},
            headers=admin.operator,
        )
        assert bad_cursor.status_code == 422
        # A tenant's key (even with every scope) is no operator's.
        for path in (
            f"/v1/admin/invoices/{mine['id']}",
            f"/v1/admin/organizations/{customer.organization_id}/invoices",
        ):
            assert (await admin.client.get(path, headers=customer.headers)).status_code == 403


@ASYNC
class TestDeleteDraft:
    async def test_a_draft_is_deleted_and_audited(self, admin: Admin, customer: TestTenant) -> None:
        org_id = customer.organization_id
        first = await draft(admin, org_id)
        first = await post(admin, f"/v1/admin/invoices/{first['id']}/finalize")
        created = await draft(admin, org_id)
        tenant = await admin.client.delete(
            f"/v1/admin/invoices/{created['id']}", headers=customer.headers
        )
        assert tenant.status_code == 403
        deleted = await admin.client.delete(
            f"/v1/admin/invoices/{created['id']}", headers=admin.operator
        )
        assert deleted.status_code == 204, deleted.text
        gone = await admin.client.get(f"/v1/admin/invoices/{created['id']}", headers=admin.operator)
        assert gone.status_code == 404
        again = await admin.client.delete(
            f"/v1/admin/invoices/{created['id']}", headers=admin.operator
        )
        assert again.status_code == 404
        [entry] = await entries(admin, org_id, "invoice.draft_deleted")
        assert by_operator(admin, entry)
        assert entry.details["total"] == 10_000
        # The next invoice takes the next number: a draft never had one, so no gap is left.
        issued = await draft(admin, org_id)
        opened = await post(admin, f"/v1/admin/invoices/{issued['id']}/finalize")
        prefix, _, sequence = first["number"].rpartition("-")
        assert opened["number"] == f"{prefix}-{int(sequence) + 1:04d}"

    async def test_issued_invoices_and_prorations_stay(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        org_id = customer.organization_id
        issued = await draft(admin, org_id)
        await post(admin, f"/v1/admin/invoices/{issued['id']}/finalize")
        refused = await admin.client.delete(
            f"/v1/admin/invoices/{issued['id']}", headers=admin.operator
        )
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "invoice_not_draft"

        subscription = f"/v1/admin/organizations/{org_id}/subscription"
        await post(admin, subscription, plan="starter", trial_days=0, at=APRIL)
        await post(admin, f"{subscription}/change-plan", plan="pro", at="2024-04-16T00:00:00Z")
        listed = await admin.client.get(
            f"/v1/admin/organizations/{org_id}/invoices",
            params={"status": "draft"},
            headers=admin.operator,
        )
        [upcoming] = listed.json()["items"]
        before = await stored(admin.database, org_id)
        kept = await admin.client.delete(
            f"/v1/admin/invoices/{upcoming['id']}", headers=admin.operator
        )
        assert kept.status_code == 409
        assert kept.json()["error"]["code"] == "draft_not_deletable"
        assert await stored(admin.database, org_id) == before
        still = await admin.client.get(
            f"/v1/admin/invoices/{upcoming['id']}", headers=admin.operator
        )
        assert still.json() == upcoming


@ASYNC
class TestTaxRateOnDrafts:
    async def test_drafts_show_the_new_rate_at_once(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        org_id = customer.organization_id
        other = await customer_of(admin)
        created = await draft(admin, org_id, 2_000)
        elsewhere = await draft(admin, other.organization_id, 2_000)
        issued = await draft(admin, org_id, 2_000)
        await post(admin, f"/v1/admin/invoices/{issued['id']}/finalize")
        rate = await admin.client.put(
            f"/v1/admin/organizations/{org_id}/tax-rate",
            json={"tax_rate_bps": 1500},
            headers=admin.operator,
        )
        assert rate.status_code == 200, rate.text
        read = (
            await admin.client.get(f"/v1/admin/invoices/{created['id']}", headers=admin.operator)
        ).json()
        assert (read["tax_rate_bps"], read["tax_amount"], read["total"]) == (1500, 300, 2300)
        assert read["amount_due"] == 2300
        for untouched in (elsewhere, issued):
            body = (
                await admin.client.get(
                    f"/v1/admin/invoices/{untouched['id']}", headers=admin.operator
                )
            ).json()
            assert (body["tax_rate_bps"], body["total"]) == (0, 2_000)

    async def test_a_rate_that_overflows_a_draft_changes_nothing(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        org_id = customer.organization_id
        created = await draft(admin, org_id, INT64_MAX // 2)
        before = await stored(admin.database, org_id)
        refused = await admin.client.put(
            f"/v1/admin/organizations/{org_id}/tax-rate",
            json={"tax_rate_bps": 100_000},
            headers=admin.operator,
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "amount_out_of_range"
        assert await stored(admin.database, org_id) == before
        read = (
            await admin.client.get(f"/v1/admin/invoices/{created['id']}", headers=admin.operator)
        ).json()
        assert read == created


@ASYNC
class TestTrialCancel:
    async def test_canceled_at_period_end_during_a_trial_ends_with_the_trial(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        org_id = customer.organization_id
        subscription = f"/v1/admin/organizations/{org_id}/subscription"
        created = await post(admin, subscription, plan="starter", at=APRIL)
        assert created["status"] == "trialing"
        assert created["trial_end"].startswith("2024-04-15")
        assert created["current_period_end"].startswith("2024-05-01")
        canceling = await post(admin, f"{subscription}/cancel", at="2024-04-05T00:00:00Z")
        assert canceling["cancel_at_period_end"] is True
        assert canceling["ends_at"].startswith("2024-04-15")
        late = await admin.client.post(
            f"{subscription}/resume", json={"at": "2024-04-16T00:00:00Z"}, headers=admin.operator
        )
        assert late.status_code == 409
        assert late.json()["error"]["code"] == "period_ended"
        early = await admin.core.subscriptions.end_due(
            org_id, at=datetime(2024, 4, 14, 23, 59, tzinfo=UTC)
        )
        assert early.actions == []
        done = await admin.core.subscriptions.end_due(org_id, at=datetime(2024, 4, 15, tzinfo=UTC))
        assert "canceled" in done.actions
        read = (await admin.client.get(subscription, headers=admin.operator)).json()
        assert read["status"] == "canceled"
        assert read["ends_at"].startswith("2024-04-15")

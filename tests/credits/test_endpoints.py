"""`/v1/credits` through the real app on both databases: the balance with its grants, the
ledger page by page, and what other organisations and scopes may see; and the operator route
`/v1/admin/organizations/{id}/credits/grants` (idempotent on its key, audited).

Credits are granted with the `CreditService` on the module's scratch database and consumed
with it or with `POST /v1/credits/consume`; organisations are moved to a plan without rate
limits. Registration grants the free plan's credits for the month; most tests start from an
empty ledger instead (`tenant` here wipes it), so their numbers are the ones they grant.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest_asyncio
import sqlalchemy as sa

from saascore.credits.service import CreditService
from saascore.kit.db import Database
from saascore.kit.time import month_start, next_month_start, utcnow
from saascore.models import AuditLog, CreditAllocation, CreditGrant, CreditTransaction, UsageLimits
from saascore.testing import TestTenant
from tests.admin import Admin, by_operator, customer_of, entries
from tests.http import tenant as registered_tenant


async def wipe_credits(database: Database, org_id: uuid.UUID) -> None:
    """Take the organisation back to an empty ledger, behind the app's back (the plan's
    credits that registration granted, and their cached totals)."""
    async with database.transaction() as session:
        for table in (CreditAllocation, CreditTransaction, CreditGrant):
            await session.execute(sa.delete(table).where(table.organization_id == org_id))
        await session.execute(
            sa.update(UsageLimits)
            .where(UsageLimits.organization_id == org_id)
            .values(
                credit_balance=0,
                credits_granted_total=0,
                last_credit_refill_at=None,
                next_credit_refill_at=None,
            )
        )


async def operator_grants(admin: Admin, org_id: uuid.UUID) -> list[AuditLog]:
    """The organisation's `credits.granted` entries but the plan's (registration's grant,
    audited like every grant, stays in the chain when `wipe_credits` empties the ledger)."""
    granted = await entries(admin, org_id, "credits.granted")
    return [entry for entry in granted if entry.details["source"] != "plan"]


async def tenant(api: httpx.AsyncClient, database: Database, **options: Any) -> TestTenant:
    """`tests.http.tenant`, its ledger then emptied."""
    registered = await registered_tenant(api, database, **options)
    await wipe_credits(database, registered.organization_id)
    return registered


@pytest_asyncio.fixture(loop_scope="session")
async def customer(admin: Admin) -> TestTenant:
    registered = await customer_of(admin)
    await wipe_credits(admin.database, registered.organization_id)
    return registered


class TestPlanCreditsOnRegistration:
    async def test_a_new_organisation_has_its_plans_credits_for_the_month(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        registered = await registered_tenant(api, scratch)
        body = await get(api, "/v1/credits", registered.headers)
        [grant] = body["grants"]
        free = 10  # the default catalog's free plan
        assert (body["balance"], grant["amount"], grant["source"]) == (free, free, "plan")
        [tx] = (await get(api, "/v1/credits/transactions", registered.headers))["items"]
        granted_at = datetime.fromisoformat(tx["created_at"])
        assert (tx["type"], tx["grant_id"]) == ("grant", grant["id"])
        assert tx["description"] == f"plan credits for {month_start(granted_at):%Y-%m}"
        assert datetime.fromisoformat(grant["expires_at"]) == next_month_start(granted_at)


async def get(api: httpx.AsyncClient, path: str, headers: dict[str, str], **params: Any) -> Any:
    response = await api.get(path, headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


class TestBalance:
    async def test_an_empty_ledger_has_no_balance(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        headers = (await tenant(api, scratch)).headers
        assert await get(api, "/v1/credits", headers) == {
            "balance": 0,
            "low_threshold": None,
            "grants": [],
        }

    async def test_the_balance_and_the_grants_in_draw_order(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        registered = await tenant(api, scratch)
        org, headers = registered.organization_id, registered.headers
        credits = CreditService(scratch)
        tomorrow = utcnow() + timedelta(days=1)
        lasting = await credits.grant(org, 100, description="lasting")
        expiring = await credits.grant(org, 50, expires_at=tomorrow, description="expiring")
        await credits.consume(org, 30)  # from the grant that expires first
        body = await get(api, "/v1/credits", headers)
        assert body["balance"] == 120
        grants = [(g["id"], g["amount"], g["remaining"], g["source"]) for g in body["grants"]]
        assert grants == [
            (str(expiring.grant_id), 50, 20, "manual"),
            (str(lasting.grant_id), 100, 100, "manual"),
        ]
        assert body["grants"][0]["expires_at"] is not None
        assert body["grants"][1]["expires_at"] is None

    async def test_a_spent_grant_is_no_longer_listed(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        registered = await tenant(api, scratch)
        org, headers = registered.organization_id, registered.headers
        credits = CreditService(scratch)
        await credits.grant(org, 10)
        await credits.consume(org, 10)
        assert await get(api, "/v1/credits", headers) == {
            "balance": 0,
            "low_threshold": None,
            "grants": [],
        }


class TestTransactions:
    async def test_newest_first_page_by_page(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        registered = await tenant(api, scratch)
        org, headers = registered.organization_id, registered.headers
        credits = CreditService(scratch)
        granted = await credits.grant(org, 100)
        consumed = await credits.consume(org, 30, reference="job-1")
        refunded = await credits.refund(org, consumed.id, 10)
        first = await get(api, "/v1/credits/transactions", headers, limit=2)
        assert [(t["id"], t["type"], t["amount"], t["balance_after"]) for t in first["items"]] == [
            (str(refunded.id), "refund", 10, 80),
            (str(consumed.id), "consume", -30, 70),
        ]
        assert first["items"][0]["related_transaction_id"] == str(consumed.id)
        assert first["items"][1]["reference"] == "job-1"
        assert first["next_cursor"] is not None
        second = await get(
            api, "/v1/credits/transactions", headers, limit=2, cursor=first["next_cursor"]
        )
        assert [t["id"] for t in second["items"]] == [str(granted.id)]
        assert second["next_cursor"] is None

    async def test_a_cursor_it_did_not_give_is_422(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        headers = (await tenant(api, scratch)).headers
        response = await api.get(
            "/v1/credits/transactions", headers=headers, params={"cursor": "not-a-cursor"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_cursor"


class TestWhoSeesWhat:
    async def test_another_organisations_credits_are_not_shown(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        rich = (await tenant(api, scratch)).organization_id
        headers = (await tenant(api, scratch)).headers
        await CreditService(scratch).grant(rich, 500)
        assert await get(api, "/v1/credits", headers) == {
            "balance": 0,
            "low_threshold": None,
            "grants": [],
        }
        ledger = await get(api, "/v1/credits/transactions", headers)
        assert ledger == {"items": [], "next_cursor": None}

    async def test_a_key_without_billing_read_is_refused(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        registered = await tenant(api, scratch)
        org, headers = registered.organization_id, registered.headers
        await CreditService(scratch).grant(org, 5)
        created = await api.post(
            "/v1/api-keys", json={"name": "usage only", "scopes": ["usage:read"]}, headers=headers
        )
        key = {"X-API-Key": created.json()["key"]}
        for path in ("/v1/credits", "/v1/credits/transactions"):
            response = await api.get(path, headers=key)
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "permission_denied"

    async def test_a_key_with_billing_read_sees_them(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        registered = await tenant(api, scratch)
        org, headers = registered.organization_id, registered.headers
        await CreditService(scratch).grant(org, 5)
        created = await api.post(
            "/v1/api-keys", json={"name": "billing", "scopes": ["billing:read"]}, headers=headers
        )
        key = {"X-API-Key": created.json()["key"]}
        assert (await get(api, "/v1/credits", key))["balance"] == 5

    async def test_credits_need_credentials(self, api: httpx.AsyncClient) -> None:
        for path in ("/v1/credits", "/v1/credits/transactions"):
            response = await api.get(path)
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == "unauthenticated"


class TestAdminCreditGrants:
    async def test_grant_is_idempotent_on_its_key(self, admin: Admin, customer: TestTenant) -> None:
        org_id = customer.organization_id
        path = f"/v1/admin/organizations/{org_id}/credits/grants"
        body = {"amount": 500, "idempotency_key": "goodwill-1", "source": "promotion"}
        first = await admin.client.post(path, json=body, headers=admin.operator)
        assert first.status_code == 201, first.text
        assert (first.json()["type"], first.json()["amount"], first.json()["balance_after"]) == (
            "grant",
            500,
            500,
        )
        retry = await admin.client.post(path, json=body, headers=admin.operator)
        assert retry.status_code == 200, retry.text
        assert retry.json() == first.json()
        assert await admin.core.credits.balance(org_id) == 500
        [entry] = await operator_grants(admin, org_id)
        assert by_operator(admin, entry)
        assert (entry.target_id, entry.details["amount"], entry.details["source"]) == (
            first.json()["id"],
            500,
            "promotion",
        )

        conflict = await admin.client.post(
            path, json={**body, "amount": 501}, headers=admin.operator
        )
        assert (conflict.status_code, conflict.json()["error"]["code"]) == (
            409,
            "idempotency_conflict",
        )
        assert await admin.core.credits.balance(org_id) == 500
        assert len(await operator_grants(admin, org_id)) == 1

    async def test_racing_retries_grant_once(self, admin: Admin, customer: TestTenant) -> None:
        org_id = customer.organization_id
        path = f"/v1/admin/organizations/{org_id}/credits/grants"
        body = {"amount": 70, "idempotency_key": "raced"}
        answers = await asyncio.gather(
            *(admin.client.post(path, json=body, headers=admin.operator) for _ in range(6))
        )
        assert sorted(answer.status_code for answer in answers) == [200] * 5 + [201]
        assert len({answer.json()["id"] for answer in answers}) == 1
        assert await admin.core.credits.balance(org_id) == 70
        assert len(await operator_grants(admin, org_id)) == 1

    async def test_refusals_grant_nothing(self, admin: Admin, customer: TestTenant) -> None:
        org_id = customer.organization_id
        path = f"/v1/admin/organizations/{org_id}/credits/grants"
        past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        for body, status, code in (
            ({"amount": 0, "idempotency_key": "a"}, 422, "validation_error"),
            ({"amount": 5}, 422, "validation_error"),
            ({"amount": 5, "idempotency_key": "b", "expires_at": past}, 422, "invalid_input"),
        ):
            response = await admin.client.post(path, json=body, headers=admin.operator)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        lost = await admin.client.post(
            f"/v1/admin/organizations/{uuid.uuid4()}/credits/grants",
            json={"amount": 5, "idempotency_key": "c"},
            headers=admin.operator,
        )
        assert (lost.status_code, lost.json()["error"]["code"]) == (404, "organization_not_found")
        assert await admin.core.credits.balance(org_id) == 0
        assert await operator_grants(admin, org_id) == []

    async def test_a_grant_past_the_largest_balance_is_refused(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        org_id = customer.organization_id
        path = f"/v1/admin/organizations/{org_id}/credits/grants"
        most = 2**63 - 1
        first = await admin.client.post(
            path, json={"amount": most, "idempotency_key": "most"}, headers=admin.operator
        )
        assert first.status_code == 201, first.text
        one = await admin.client.post(
            path, json={"amount": 1, "idempotency_key": "one"}, headers=admin.operator
        )
        assert (one.status_code, one.json()["error"]["code"]) == (422, "credit_balance_overflow")
        assert await admin.core.credits.balance(org_id) == most
        assert len(await operator_grants(admin, org_id)) == 1
        account = await get(admin.client, "/v1/credits", customer.headers)
        assert [grant["amount"] for grant in account["grants"]] == [most]

    async def test_an_expiry_at_the_end_of_the_calendar_is_refused(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        org_id = customer.organization_id
        path = f"/v1/admin/organizations/{org_id}/credits/grants"
        for index, moment in enumerate(
            ("9999-12-31T23:59:59-05:00", "9999-06-01T00:00:00Z", "0001-01-01T00:00+03:00")
        ):
            response = await admin.client.post(
                path,
                json={"amount": 5, "idempotency_key": f"far-{index}", "expires_at": moment},
                headers=admin.operator,
            )
            assert (response.status_code, response.json()["error"]["code"]) == (
                422,
                "validation_error",
            ), response.text
            assert response.json()["error"]["details"]["errors"][0]["type"] == "instant_range"
        assert await admin.core.credits.balance(org_id) == 0


class TestConsume:
    @staticmethod
    async def backend_key(
        api: httpx.AsyncClient, registered: TestTenant, scopes: list[str]
    ) -> dict[str, str]:
        created = await api.post(
            "/v1/api-keys",
            json={"name": "backend", "scopes": scopes},
            headers=registered.headers,
        )
        assert created.status_code == 201, created.text
        return {"X-API-Key": created.json()["key"]}

    async def test_a_backend_draws_credits_once_per_key(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        registered = await tenant(api, scratch)
        org = registered.organization_id
        await CreditService(scratch).grant(org, 100)
        key = await self.backend_key(api, registered, ["credits:write"])
        body = {"amount": 30, "idempotency_key": "job-1", "reference": "job-1"}

        first = await api.post("/v1/credits/consume", json=body, headers=key)
        assert first.status_code == 201, first.text
        assert (first.json()["type"], first.json()["amount"], first.json()["balance_after"]) == (
            "consume",
            -30,
            70,
        )
        assert first.json()["reference"] == "job-1"
        retry = await api.post("/v1/credits/consume", json=body, headers=key)
        assert retry.status_code == 200, retry.text
        assert retry.json() == first.json()
        conflict = await api.post("/v1/credits/consume", json={**body, "amount": 31}, headers=key)
        assert (conflict.status_code, conflict.json()["error"]["code"]) == (
            409,
            "idempotency_conflict",
        )
        assert await CreditService(scratch).balance(org) == 70
        assert await CreditService(scratch).verify() == []

    async def test_a_short_balance_is_402_and_draws_nothing(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        registered = await tenant(api, scratch)
        org = registered.organization_id
        await CreditService(scratch).grant(org, 20)
        response = await api.post(
            "/v1/credits/consume",
            json={"amount": 21, "idempotency_key": "too-much"},
            headers=registered.headers,
        )
        assert response.status_code == 402, response.text
        error = response.json()["error"]
        assert error["code"] == "insufficient_credits"
        assert (error["details"]["balance"], error["details"]["requested"]) == (20, 21)
        assert await CreditService(scratch).balance(org) == 20
        ledger = await get(api, "/v1/credits/transactions", registered.headers)
        assert [t["type"] for t in ledger["items"]] == ["grant"]
        # The key was not used up: the same request succeeds once there is enough.
        await CreditService(scratch).grant(org, 1)
        again = await api.post(
            "/v1/credits/consume",
            json={"amount": 21, "idempotency_key": "too-much"},
            headers=registered.headers,
        )
        assert again.status_code == 201, again.text

    async def test_bad_bodies_are_422_and_draw_nothing(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        registered = await tenant(api, scratch)
        org = registered.organization_id
        await CreditService(scratch).grant(org, 50)
        for body, code in (
            ({"amount": 0, "idempotency_key": "a"}, "validation_error"),
            ({"amount": -5, "idempotency_key": "b"}, "validation_error"),
            ({"amount": "5", "idempotency_key": "c"}, "validation_error"),
            ({"amount": 2**63, "idempotency_key": "d"}, "validation_error"),
            ({"amount": 5}, "validation_error"),
            ({"amount": 5, "idempotency_key": ""}, "validation_error"),
            ({"amount": 5, "idempotency_key": "e\x00"}, "invalid_character"),
            (
                {"amount": 5, "idempotency_key": "f", "organization_id": str(org)},
                "validation_error",
            ),
        ):
            response = await api.post("/v1/credits/consume", json=body, headers=registered.headers)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"]["code"] == code
        assert await CreditService(scratch).balance(org) == 50

    async def test_consuming_needs_credits_write(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        registered = await tenant(api, scratch)
        await CreditService(scratch).grant(registered.organization_id, 50)
        body = {"amount": 5, "idempotency_key": "x"}
        for scopes in (["billing:read", "usage:write"], ["billing:write"]):
            key = await self.backend_key(api, registered, scopes)
            response = await api.post("/v1/credits/consume", json=body, headers=key)
            assert (response.status_code, response.json()["error"]["code"]) == (
                403,
                "permission_denied",
            )
        anonymous = await api.post("/v1/credits/consume", json=body)
        assert anonymous.status_code == 401, anonymous.text
        assert await CreditService(scratch).balance(registered.organization_id) == 50

    async def test_another_organisations_credits_are_not_drawn(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        rich = (await tenant(api, scratch)).organization_id
        poor = await tenant(api, scratch)
        await CreditService(scratch).grant(rich, 500)
        response = await api.post(
            "/v1/credits/consume",
            json={"amount": 5, "idempotency_key": "steal"},
            headers=poor.headers,
        )
        assert response.status_code == 402, response.text
        assert await CreditService(scratch).balance(rich) == 500

    async def test_racing_consumers_never_overdraw(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        """Jepsen's bank, over HTTP: 24 consumers of 7 race for 100 credits; exactly 14 win,
        each answered 201, the others 402, and the ledger adds up."""
        registered = await tenant(api, scratch)
        org = registered.organization_id
        await CreditService(scratch).grant(org, 100)
        answers = await asyncio.gather(
            *(
                api.post(
                    "/v1/credits/consume",
                    json={"amount": 7, "idempotency_key": f"racer-{n}"},
                    headers=registered.headers,
                )
                for n in range(24)
            )
        )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [201] * 14 + [402] * 10, [a.text for a in answers]
        assert {a.json()["error"]["code"] for a in answers if a.status_code == 402} == {
            "insufficient_credits"
        }
        assert sorted(a.json()["balance_after"] for a in answers if a.status_code == 201) == list(
            range(2, 100, 7)
        )
        assert await CreditService(scratch).balance(org) == 2
        assert await CreditService(scratch).verify() == []

    async def test_racing_retries_draw_once(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        registered = await tenant(api, scratch)
        org = registered.organization_id
        await CreditService(scratch).grant(org, 100)
        answers = await asyncio.gather(
            *(
                api.post(
                    "/v1/credits/consume",
                    json={"amount": 40, "idempotency_key": "once"},
                    headers=registered.headers,
                )
                for _ in range(6)
            )
        )
        assert sorted(answer.status_code for answer in answers) == [200] * 5 + [201]
        assert len({answer.json()["id"] for answer in answers}) == 1
        assert await CreditService(scratch).balance(org) == 60

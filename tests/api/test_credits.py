"""`/v1/credits` through the real app on both databases: the balance with its grants, the
ledger page by page, and what other organisations and scopes may see.

Credits are granted and consumed with the `CreditService` on the module's scratch database
(the API only reads them); organisations are moved to a plan without rate limits.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from saascore.credits.service import CreditService
from saascore.kit.db import Database
from saascore.kit.time import utcnow
from tests.http import tenant


async def get(api: httpx.AsyncClient, path: str, headers: dict[str, str], **params: Any) -> Any:
    response = await api.get(path, headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


class TestBalance:
    async def test_a_new_organisation_has_none(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        _, headers = await tenant(api, scratch)
        assert await get(api, "/v1/credits", headers) == {"balance": 0, "grants": []}

    async def test_the_balance_and_the_grants_in_draw_order(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org, headers = await tenant(api, scratch)
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
        org, headers = await tenant(api, scratch)
        credits = CreditService(scratch)
        await credits.grant(org, 10)
        await credits.consume(org, 10)
        assert await get(api, "/v1/credits", headers) == {"balance": 0, "grants": []}


class TestTransactions:
    async def test_newest_first_page_by_page(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org, headers = await tenant(api, scratch)
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
        _, headers = await tenant(api, scratch)
        response = await api.get(
            "/v1/credits/transactions", headers=headers, params={"cursor": "not-a-cursor"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_cursor"


class TestWhoSeesWhat:
    async def test_another_organisations_credits_are_not_shown(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        rich, _ = await tenant(api, scratch)
        _, headers = await tenant(api, scratch)
        await CreditService(scratch).grant(rich, 500)
        assert await get(api, "/v1/credits", headers) == {"balance": 0, "grants": []}
        ledger = await get(api, "/v1/credits/transactions", headers)
        assert ledger == {"items": [], "next_cursor": None}

    async def test_a_key_without_billing_read_is_refused(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org, headers = await tenant(api, scratch)
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
        org, headers = await tenant(api, scratch)
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

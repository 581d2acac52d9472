"""What recording usage refuses, through the real app on both databases and through the
library: counters, day totals, costs and reservations that would pass a BIGINT
(`counter_overflow`), events dated outside the current period by a tenant (`period_closed`;
backfill is the operators'), and a `user_id` that is not a user of the organisation
(`unknown_user`). Each refusal writes nothing, and what fits is still recorded after it.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.time import month_start, utcnow
from saascore.metering import CounterOverflow, UsageService
from saascore.models import ModelPricing, UsageCounter, UsageDailySummary, UsageEvent
from saascore.testing import TestTenant
from tests.admin import Admin
from tests.factories import create_organization, create_plan, random_code
from tests.helpers import Clock
from tests.http import tenant

MAX = 2**63 - 1


async def new_org(database: Database) -> uuid.UUID:
    """A committed organisation on a plan of its own, without limits."""
    async with database.transaction() as session:
        plan = await create_plan(session)
        return (await create_organization(session, plan=plan)).id


def event(key: str, metric: str = "tokens", quantity: int = 1, **fields: Any) -> dict[str, Any]:
    return {"id": key, "metric": metric, "quantity": quantity, **fields}


async def stored_keys(database: Database, org_id: uuid.UUID) -> list[str]:
    async with database.session(readonly=True) as session:
        keys = await session.scalars(
            sa.select(UsageEvent.idempotency_key)
            .where(UsageEvent.organization_id == org_id)
            .order_by(UsageEvent.idempotency_key)
        )
        return list(keys)


async def totals(database: Database, org_id: uuid.UUID) -> tuple[list[int], list[int]]:
    """The organisation's counters' `used` and its day rollups' total tokens."""
    async with database.session(readonly=True) as session:
        used = await session.scalars(
            sa.select(UsageCounter.used).where(UsageCounter.organization_id == org_id)
        )
        tokens = await session.scalars(
            sa.select(UsageDailySummary.total_tokens).where(
                UsageDailySummary.organization_id == org_id
            )
        )
        return sorted(used), sorted(tokens)


async def post(api: httpx.AsyncClient, who: TestTenant, body: dict[str, Any]) -> httpx.Response:
    return await api.post("/v1/usage/events", json=body, headers=who.headers)


def code_of(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


class TestCounterOverflow:
    async def test_a_counter_at_the_maximum_refuses_more_and_stays_usable(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)  # tokens unlimited
        assert (await post(api, org, event("big", quantity=MAX - 10))).status_code == 201
        assert (await post(api, org, event("five", quantity=5))).status_code == 201

        refused = await post(api, org, event("ten", quantity=10))
        assert refused.status_code == 422, refused.text
        assert code_of(refused) == "counter_overflow"
        check = await api.post(
            "/v1/usage/check", json={"metric": "tokens", "quantity": 10}, headers=org.headers
        )
        assert check.status_code == 200
        assert check.json()["allowed"] is False

        fits = await post(api, org, event("last", quantity=5))  # exactly the maximum
        assert fits.status_code == 201, fits.text
        assert fits.json()["used"] == MAX
        assert (await post(api, org, event("zero", quantity=0))).status_code == 201
        assert code_of(await post(api, org, event("one", quantity=1))) == "counter_overflow"
        limits = await api.get("/v1/usage/limits", headers=org.headers)
        assert limits.status_code == 200, limits.text
        summary = await api.get("/v1/usage/summary", headers=org.headers)
        assert summary.status_code == 200, summary.text
        assert await stored_keys(scratch, org.organization_id) == ["big", "five", "last", "zero"]

    async def test_tokens_that_would_pass_the_days_total_are_refused(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        # api_calls counts events; the day's total of tokens is what would overflow.
        first = event("first", "api_calls", input_tokens=MAX - 1)
        assert (await post(api, org, first)).status_code == 201
        one = await post(api, org, event("one", "api_calls", input_tokens=1))
        assert one.status_code == 201, one.text
        refused = await post(api, org, event("two", "api_calls", output_tokens=1))
        assert refused.status_code == 422, refused.text
        assert code_of(refused) == "counter_overflow"
        batch = await api.post(
            "/v1/usage/events",
            json={"events": [event("b1", "api_calls", input_tokens=1), event("b2", "api_calls")]},
            headers=org.headers,
        )
        assert batch.status_code == 200, batch.text
        assert [(r["status"], r["code"]) for r in batch.json()["results"]] == [
            ("invalid", "counter_overflow"),
            ("accepted", None),
        ]
        assert await stored_keys(scratch, org.organization_id) == ["b2", "first", "one"]
        assert (await totals(scratch, org.organization_id))[1] == [MAX]

    async def test_a_cost_that_would_overflow_is_refused(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        model = random_code("model")
        async with scratch.transaction() as session:
            session.add(
                ModelPricing(
                    provider="acme",
                    model=model,
                    input_micros_per_million=2_000_000,  # two micro-units a token
                    output_micros_per_million=2_000_000,
                    effective_from=datetime(2000, 1, 1, tzinfo=UTC),
                )
            )
        org = await tenant(api, scratch)
        body = event("costly", "api_calls", model=model, provider="acme", input_tokens=MAX // 2)
        assert (await post(api, org, body)).status_code == 201
        again = event("again", "api_calls", model=model, provider="acme", input_tokens=MAX // 2)
        refused = await post(api, org, again)
        assert refused.status_code == 422, refused.text
        assert code_of(refused) == "counter_overflow"
        assert await stored_keys(scratch, org.organization_id) == ["costly"]

    async def test_a_reservation_of_the_maximum_leaves_no_room_to_overflow(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        hold = await api.post(
            "/v1/usage/reservations",
            json={"metric": "tokens", "quantity": MAX},
            headers=org.headers,
        )
        assert hold.status_code == 201, hold.text
        more = await api.post(
            "/v1/usage/reservations", json={"metric": "tokens", "quantity": 1}, headers=org.headers
        )
        assert more.status_code == 422, more.text
        assert code_of(more) == "counter_overflow"
        assert code_of(await post(api, org, event("e", quantity=1))) == "counter_overflow"
        assert (await post(api, org, event("nothing", quantity=0))).status_code == 201
        settled = await api.post(
            f"/v1/usage/reservations/{hold.json()['id']}/settle",
            json={"quantity": MAX},
            headers=org.headers,
        )
        assert settled.status_code == 200, settled.text
        assert settled.json()["used"] == MAX
        assert (await totals(scratch, org.organization_id))[0] == [MAX]

    async def test_racing_events_take_what_fits_and_refuse_the_rest(
        self, scratch: Database
    ) -> None:
        org_id = await new_org(scratch)
        usage = UsageService(scratch)
        third = MAX // 3 + 1  # two fit in a day's total, three do not

        async def send(n: int) -> object:
            try:
                return await usage.record(
                    org_id, "api_calls", 1, idempotency_key=f"k{n}", input_tokens=third
                )
            except CounterOverflow as error:
                return error

        results = await asyncio.gather(*(send(n) for n in range(4)))
        refused = [r for r in results if isinstance(r, CounterOverflow)]
        assert len(refused) == 2
        assert (await totals(scratch, org_id))[1] == [2 * third]
        assert len(await stored_keys(scratch, org_id)) == 2

    async def test_storage_refuses_to_pass_the_maximum(self, scratch: Database) -> None:
        org_id = await new_org(scratch)
        usage = UsageService(scratch)
        assert await usage.update_storage_used(org_id, MAX - 1) == MAX - 1
        for delta in (2, 2**64):
            with pytest.raises(CounterOverflow):
                await usage.update_storage_used(org_id, delta)
        assert await usage.update_storage_used(org_id, 1) == MAX
        assert await usage.update_storage_used(org_id, -MAX) == 0


class TestPeriodClosed:
    @pytest.mark.parametrize(
        "occurred_at",
        [
            "earlier month",
            "later month",
            "1970-01-01T00:00:00+00:00",
            "9998-06-01T00:00:00+00:00",
            "in ten minutes",
        ],
    )
    async def test_a_used_up_limit_cannot_be_escaped_by_dating_events(
        self, api: httpx.AsyncClient, scratch: Database, occurred_at: str
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=100)
        assert (await post(api, org, event("all", quantity=100))).status_code == 201
        now = utcnow()
        when = {
            "earlier month": month_start(now) - timedelta(days=20),
            "later month": month_start(now) + timedelta(days=40),
            "in ten minutes": now + timedelta(minutes=10),
        }.get(occurred_at)
        dated = when.isoformat() if when is not None else occurred_at

        refused = await post(api, org, event("dated", quantity=100, occurred_at=dated))
        assert refused.status_code == 422, refused.text
        assert code_of(refused) == "period_closed"
        batch = await api.post(
            "/v1/usage/events",
            json={"events": [event("in-batch", quantity=100, occurred_at=dated)]},
            headers=org.headers,
        )
        assert [(r["status"], r["code"]) for r in batch.json()["results"]] == [
            ("invalid", "period_closed")
        ]
        assert await stored_keys(scratch, org.organization_id) == ["all"]
        assert await totals(scratch, org.organization_id) == ([100], [0])

    async def test_the_window_runs_from_the_periods_start_to_five_minutes_ahead(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        start = month_start(utcnow())
        soon = utcnow() + timedelta(minutes=4)
        for key, when in (("start", start), ("soon", soon)):
            response = await post(api, org, event(key, occurred_at=when.isoformat()))
            assert response.status_code == 201, response.text

    async def test_operators_backfill_any_period(self, admin: Admin, customer: TestTenant) -> None:
        org = customer.organization_id
        route = f"/v1/admin/organizations/{org}/usage/events"
        old = event("old", quantity=7, occurred_at="1970-01-01T00:00:00+00:00")
        response = await admin.client.post(route, json=old, headers=admin.operator)
        assert response.status_code == 201, response.text
        batch = {"events": [event("far", quantity=1, occurred_at="9998-06-01T00:00:00+00:00")]}
        response = await admin.client.post(route, json=batch, headers=admin.operator)
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 1
        assert await stored_keys(admin.database, org) == ["far", "old"]

        forbidden = await admin.client.post(route, json=old, headers=customer.headers)
        assert forbidden.status_code == 403, forbidden.text
        missing = await admin.client.post(
            f"/v1/admin/organizations/{uuid.uuid4()}/usage/events", json=old, headers=admin.operator
        )
        assert missing.status_code == 404, missing.text

    async def test_a_retry_after_its_period_closed_is_still_a_duplicate(
        self, scratch: Database
    ) -> None:
        org_id = await new_org(scratch)
        clock = Clock()
        usage = UsageService(scratch, clock=clock)
        when = clock.now
        first = await usage.record(org_id, "tokens", 3, idempotency_key="k", occurred_at=when)
        clock.advance(month_start(when) + timedelta(days=40) - when)
        again = await usage.record(org_id, "tokens", 3, idempotency_key="k", occurred_at=when)
        assert (again.status, again.event_id) == ("duplicate", first.event_id)


class TestUnknownUser:
    async def test_a_user_id_must_be_a_user_of_the_organisation(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org, other = await tenant(api, scratch), await tenant(api, scratch)
        for key, user in (("theirs", other.user_id), ("random", uuid.uuid4())):
            refused = await post(api, org, event(key, user_id=str(user)))
            assert refused.status_code == 422, refused.text
            assert code_of(refused) == "unknown_user"
        batch = await api.post(
            "/v1/usage/events",
            json={"events": [event("b", user_id=str(other.user_id)), event("c")]},
            headers=org.headers,
        )
        assert [(r["status"], r["code"]) for r in batch.json()["results"]] == [
            ("invalid", "unknown_user"),
            ("accepted", None),
        ]
        own = await post(api, org, event("own", user_id=str(org.user_id)))
        assert own.status_code == 201, own.text
        assert await stored_keys(scratch, org.organization_id) == ["c", "own"]

    async def test_settling_for_another_tenants_user_is_refused_and_keeps_the_hold(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org, other = await tenant(api, scratch), await tenant(api, scratch)
        hold = await api.post(
            "/v1/usage/reservations", json={"metric": "tokens", "quantity": 5}, headers=org.headers
        )
        path = f"/v1/usage/reservations/{hold.json()['id']}/settle"
        refused = await api.post(
            path, json={"quantity": 5, "user_id": str(other.user_id)}, headers=org.headers
        )
        assert refused.status_code == 422, refused.text
        assert code_of(refused) == "unknown_user"
        settled = await api.post(
            path, json={"quantity": 5, "user_id": str(org.user_id)}, headers=org.headers
        )
        assert settled.status_code == 200, settled.text


class TestLibraryProperties:
    @pytest.mark.parametrize(
        "bad",
        [
            float("nan"),
            float("inf"),
            {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
        ],
    )
    async def test_properties_that_no_database_can_store_are_refused_by_the_library(
        self, scratch: Database, bad: Any
    ) -> None:
        """The API's schema refuses them before the service; a library caller meets the
        same check in the service (PostgreSQL refuses NaN in JSON; SQLite would store it)."""
        org_id = await new_org(scratch)
        usage = UsageService(scratch)
        with pytest.raises(InvalidInput) as refused:
            await usage.record(org_id, "tokens", 1, idempotency_key="nan", properties={"x": bad})
        assert refused.value.details["field"] == "properties"
        await usage.record(org_id, "tokens", 1, idempotency_key="ok", properties={"x": 1.5})
        assert await stored_keys(scratch, org_id) == ["ok"]

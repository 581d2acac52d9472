"""`/v1/usage` through the real app on both databases: one event (accepted, duplicate, conflict,
refused), batches, checks, reservations (hold, settle, release, another organisation's), limits
and summaries, and the whole path a backend takes; and the operator routes
`/v1/admin/organizations/{id}/limits/{metric}` (overrides set and cleared, audited).

Each test registers organisations of its own and moves them to a plan made for it, with the
limits it needs and no rate limits (the default plan allows 5 requests a minute), except the
full path, which runs on the default plan as a new customer would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from saascore.kit.db import Database
from saascore.kit.time import utcnow
from saascore.metering.schemas import UsageEventPayload
from saascore.models import ModelPricing, UsageEvent
from saascore.testing import TestTenant
from tests.admin import Admin, by_operator, entries, stored
from tests.factories import random_code
from tests.http import tenant


async def stored_events(scratch: Database, organization_id: uuid.UUID) -> list[tuple[str, int]]:
    """The organisation's stored events as (idempotency key, quantity), by key."""
    async with scratch.session(readonly=True) as session:
        rows = await session.execute(
            sa.select(UsageEvent.idempotency_key, UsageEvent.quantity)
            .where(UsageEvent.organization_id == organization_id)
            .order_by(UsageEvent.idempotency_key)
        )
        return [(key, quantity) for key, quantity in rows]


async def usage_of(api: httpx.AsyncClient, who: TestTenant, metric: str) -> dict[str, Any]:
    response = await api.get("/v1/usage/limits", headers=who.headers)
    assert response.status_code == 200, response.text
    (row,) = [row for row in response.json()["limits"] if row["metric"] == metric]
    return row


async def key_with(api: httpx.AsyncClient, who: TestTenant, *scopes: str) -> dict[str, str]:
    response = await api.post(
        "/v1/api-keys", json={"name": "scoped", "scopes": list(scopes)}, headers=who.headers
    )
    assert response.status_code == 201, response.text
    return {"X-API-Key": response.json()["key"]}


def event(key: str, metric: str = "tokens", quantity: int = 1, **fields: Any) -> dict[str, Any]:
    return {"id": key, "metric": metric, "quantity": quantity, **fields}


class TestOneEvent:
    async def test_an_accepted_event_answers_201_with_its_counter(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=1000)
        response = await api.post(
            "/v1/usage/events", json=event("e1", quantity=300), headers=org.headers
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["id"] == "e1"
        assert body["status"] == "accepted"
        assert (body["metric"], body["quantity"]) == ("tokens", 300)
        assert (body["used"], body["limit"], body["over_soft_limit"]) == (300, 1000, False)
        assert uuid.UUID(body["event_id"])
        assert await stored_events(scratch, org.organization_id) == [("e1", 300)]

    async def test_the_cost_comes_from_the_models_price(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        model = random_code("model")
        async with scratch.transaction() as session:
            session.add(
                ModelPricing(
                    provider="acme",
                    model=model,
                    input_micros_per_million=2_500_000,
                    output_micros_per_million=10_000_000,
                    effective_from=datetime(2000, 1, 1, tzinfo=UTC),
                )
            )
        org = await tenant(api, scratch)
        body = event(
            "priced",
            quantity=1550,
            model=model,
            provider="acme",
            input_tokens=1200,
            output_tokens=350,
        )
        response = await api.post("/v1/usage/events", json=body, headers=org.headers)
        assert response.status_code == 201, response.text
        # 1200 * 2.5 + 350 * 10 micro-units per token.
        assert response.json()["cost_micros"] == 6500

    async def test_a_retry_answers_200_duplicate_with_the_first_result(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=1000)
        first = await api.post(
            "/v1/usage/events", json=event("e1", quantity=300), headers=org.headers
        )
        again = await api.post(
            "/v1/usage/events", json=event("e1", quantity=300), headers=org.headers
        )
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "duplicate"
        assert again.json()["event_id"] == first.json()["event_id"]
        assert again.json()["used"] == 300
        assert await stored_events(scratch, org.organization_id) == [("e1", 300)]

    async def test_a_retry_is_a_duplicate_even_when_the_quota_is_full(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=100)
        first = await api.post(
            "/v1/usage/events", json=event("e1", quantity=100), headers=org.headers
        )
        assert first.status_code == 201, first.text
        again = await api.post(
            "/v1/usage/events", json=event("e1", quantity=100), headers=org.headers
        )
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "duplicate"

    async def test_the_same_id_with_another_event_is_409_and_records_nothing(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        await api.post("/v1/usage/events", json=event("e1", quantity=300), headers=org.headers)
        response = await api.post(
            "/v1/usage/events", json=event("e1", quantity=301), headers=org.headers
        )
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "idempotency_conflict"
        assert error["details"] == {"idempotency_key": "e1"}
        assert await stored_events(scratch, org.organization_id) == [("e1", 300)]

    async def test_over_a_hard_limit_is_402_with_the_numbers(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=100)
        await api.post("/v1/usage/events", json=event("e1", quantity=60), headers=org.headers)
        response = await api.post(
            "/v1/usage/events", json=event("e2", quantity=50), headers=org.headers
        )
        assert response.status_code == 402, response.text
        error = response.json()["error"]
        assert error["code"] == "limit_exceeded"
        assert error["details"] == {"metric": "tokens", "limit": 100, "used": 60, "requested": 50}
        assert await stored_events(scratch, org.organization_id) == [("e1", 60)]

    async def test_a_soft_limit_accepts_and_flags(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, limits={"api_calls": (2, False)})
        for key in ("a", "b"):
            await api.post("/v1/usage/events", json=event(key, "api_calls"), headers=org.headers)
        response = await api.post(
            "/v1/usage/events", json=event("c", "api_calls"), headers=org.headers
        )
        assert response.status_code == 201, response.text
        assert (response.json()["used"], response.json()["over_soft_limit"]) == (3, True)

    async def test_an_organization_id_in_the_body_is_refused(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        other = await tenant(api, scratch)
        body = event("e1", organization_id=str(other.organization_id))
        response = await api.post("/v1/usage/events", json=body, headers=org.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
        assert "organization_id" in response.json()["error"]["message"]
        assert await stored_events(scratch, org.organization_id) == []
        assert await stored_events(scratch, other.organization_id) == []

    async def test_an_unknown_metric_is_422(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        response = await api.post(
            "/v1/usage/events", json=event("e1", "no_such_metric"), headers=org.headers
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unknown_metric"

    @pytest.mark.parametrize(
        ("fields", "code"),
        [
            ({"quantity": -1}, "validation_error"),
            ({"id": ""}, "validation_error"),
            ({"occurred_at": "2025-01-01T00:00:00"}, "validation_error"),
            ({"occurred_at": "9999-06-01T00:00:00+00:00"}, "validation_error"),
            ({"properties": {"note": "lone \ud800 surrogate"}}, "invalid_character"),
            ({"properties": {"nested": [{"\udfff": 1}]}}, "invalid_character"),
        ],
    )
    async def test_values_the_database_cannot_hold_are_422(
        self, api: httpx.AsyncClient, scratch: Database, fields: dict[str, Any], code: str
    ) -> None:
        org = await tenant(api, scratch)
        response = await api.post(
            "/v1/usage/events",
            content=json.dumps({**event("e1"), **fields}),  # escapes lone surrogates
            headers={**org.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code
        assert await stored_events(scratch, org.organization_id) == []

    @pytest.mark.parametrize(
        "fields",
        [
            {"feature": "nul\x00byte"},
            {"id": "nul\x00"},
            {"properties": {"deep": [{"note": "nul\x00byte"}]}},
            {"properties": {"nul\x00key": 1}},
        ],
    )
    def test_the_event_schema_refuses_nul_characters(self, fields: dict[str, Any]) -> None:
        """PostgreSQL cannot store them. (The app refuses them at the door too; the schema
        also serves `saascore usage import` and routers mounted in other apps.)"""
        with pytest.raises(ValidationError):
            UsageEventPayload.model_validate({**event("e1"), **fields})

    async def test_recording_needs_usage_write(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        reader = await key_with(api, org, "usage:read")
        response = await api.post("/v1/usage/events", json=event("e1"), headers=reader)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "permission_denied"
        assert await stored_events(scratch, org.organization_id) == []

    async def test_recording_needs_credentials(self, api: httpx.AsyncClient) -> None:
        response = await api.post("/v1/usage/events", json=event("e1"))
        assert response.status_code == 401, response.text


class TestBatch:
    async def test_each_event_gets_its_outcome(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=100)
        await api.post("/v1/usage/events", json=event("earlier", quantity=10), headers=org.headers)
        batch = [
            event("a", quantity=50),
            event("a", quantity=50),  # a copy of the event before it
            event("b", quantity=60),  # 10 + 50 + 60 > 100
            event("c", "no_such_metric"),
            event("earlier", quantity=11),  # the key of another event
            event("d", quantity=40),
        ]
        response = await api.post("/v1/usage/events", json={"events": batch}, headers=org.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        outcomes = [(r["index"], r["id"], r["status"], r["code"]) for r in body["results"]]
        assert outcomes == [
            (0, "a", "accepted", None),
            (1, "a", "duplicate", None),
            (2, "b", "refused", "limit_exceeded"),
            (3, "c", "invalid", "unknown_metric"),
            (4, "earlier", "invalid", "idempotency_conflict"),
            (5, "d", "accepted", None),
        ]
        assert body["results"][0]["event_id"] == body["results"][1]["event_id"]
        assert body["results"][2]["message"]
        assert (body["accepted"], body["duplicate"], body["refused"], body["invalid"]) == (
            2,
            1,
            1,
            2,
        )
        assert await stored_events(scratch, org.organization_id) == [
            ("a", 50),
            ("d", 40),
            ("earlier", 10),
        ]

    async def test_a_batch_sent_again_is_all_duplicates(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        batch = {"events": [event(f"e{n}", "api_calls") for n in range(5)]}
        first = await api.post("/v1/usage/events", json=batch, headers=org.headers)
        again = await api.post("/v1/usage/events", json=batch, headers=org.headers)
        assert first.json()["accepted"] == 5
        assert again.status_code == 200, again.text
        assert again.json()["duplicate"] == 5
        assert [r["event_id"] for r in again.json()["results"]] == [
            r["event_id"] for r in first.json()["results"]
        ]
        assert len(await stored_events(scratch, org.organization_id)) == 5

    async def test_a_thousand_events_is_the_most(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        most = {"events": [event(f"e{n}", "api_calls") for n in range(1000)]}
        response = await api.post("/v1/usage/events", json=most, headers=org.headers)
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 1000
        too_many = {"events": [event(f"f{n}", "api_calls") for n in range(1001)]}
        refused = await api.post("/v1/usage/events", json=too_many, headers=org.headers)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "validation_error"
        assert len(await stored_events(scratch, org.organization_id)) == 1000

    async def test_an_empty_batch_is_422(self, api: httpx.AsyncClient, scratch: Database) -> None:
        org = await tenant(api, scratch)
        response = await api.post("/v1/usage/events", json={"events": []}, headers=org.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"

    async def test_an_event_naming_an_organisation_fails_the_whole_batch(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        other = await tenant(api, scratch)
        batch = {"events": [event("a"), event("b", organization_id=str(other.organization_id))]}
        response = await api.post("/v1/usage/events", json=batch, headers=org.headers)
        assert response.status_code == 422, response.text
        assert await stored_events(scratch, org.organization_id) == []
        assert await stored_events(scratch, other.organization_id) == []


class TestCheck:
    async def test_says_whether_a_quantity_fits_and_records_nothing(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=100)
        await api.post("/v1/usage/events", json=event("e1", quantity=70), headers=org.headers)
        fits = await api.post(
            "/v1/usage/check", json={"metric": "tokens", "quantity": 30}, headers=org.headers
        )
        assert fits.status_code == 200, fits.text
        assert fits.json() == {
            "allowed": True,
            "metric": "tokens",
            "requested": 30,
            "used": 70,
            "reserved": 0,
            "limit": 100,
            "hard": True,
            "remaining": 30,
        }
        too_much = await api.post(
            "/v1/usage/check", json={"metric": "tokens", "quantity": 31}, headers=org.headers
        )
        assert too_much.json()["allowed"] is False
        assert (await usage_of(api, org, "tokens"))["used"] == 70

    async def test_a_viewer_key_may_check(self, api: httpx.AsyncClient, scratch: Database) -> None:
        org = await tenant(api, scratch)
        reader = await key_with(api, org, "usage:read")
        response = await api.post(
            "/v1/usage/check", json={"metric": "api_calls", "quantity": 1}, headers=reader
        )
        assert response.status_code == 200, response.text
        assert response.json()["allowed"] is True


class TestReservations:
    async def reserve(
        self, api: httpx.AsyncClient, who: TestTenant, quantity: int, **fields: Any
    ) -> httpx.Response:
        return await api.post(
            "/v1/usage/reservations",
            json={"metric": "tokens", "quantity": quantity, **fields},
            headers=who.headers,
        )

    async def test_a_reservation_holds_quota(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=100)
        response = await self.reserve(api, org, 80, ttl_seconds=60)
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["metric"], body["quantity"], body["status"]) == ("tokens", 80, "held")
        expires = datetime.fromisoformat(body["expires_at"])
        created = datetime.fromisoformat(body["created_at"])
        assert expires - created == timedelta(seconds=60)
        usage = await usage_of(api, org, "tokens")
        assert (usage["used"], usage["reserved"], usage["remaining"]) == (0, 80, 20)
        refused = await api.post(
            "/v1/usage/events", json=event("e1", quantity=21), headers=org.headers
        )
        assert refused.status_code == 402, refused.text

    async def test_past_the_limit_is_402(self, api: httpx.AsyncClient, scratch: Database) -> None:
        org = await tenant(api, scratch, monthly_token_limit=100)
        response = await self.reserve(api, org, 101)
        assert response.status_code == 402, response.text
        assert response.json()["error"]["code"] == "limit_exceeded"
        assert (await usage_of(api, org, "tokens"))["reserved"] == 0

    async def test_a_retry_with_its_key_answers_the_first_reservation(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=100)
        first = await self.reserve(api, org, 40, idempotency_key="job-1")
        again = await self.reserve(api, org, 40, idempotency_key="job-1")
        assert again.json()["id"] == first.json()["id"]
        assert (await usage_of(api, org, "tokens"))["reserved"] == 40
        other = await self.reserve(api, org, 41, idempotency_key="job-1")
        assert other.status_code == 409, other.text
        assert other.json()["error"]["code"] == "idempotency_conflict"

    async def test_copies_racing_with_one_key_hold_once(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        """Found by the attack: copies of one reservation sent at once lost the race for the
        key's unique index with a 500 (PostgreSQL), their hold left in the counter until the
        rollback. Each copy answers the one reservation, and the quota is held once."""
        org = await tenant(api, scratch, monthly_token_limit=1000)
        copies = await asyncio.gather(
            *(self.reserve(api, org, 40, idempotency_key="job-race") for _ in range(8))
        )
        assert [response.status_code for response in copies] == [201] * 8, [
            response.text for response in copies
        ]
        assert len({response.json()["id"] for response in copies}) == 1
        assert (await usage_of(api, org, "tokens"))["reserved"] == 40
        other = await asyncio.gather(
            *(self.reserve(api, org, 40 + n, idempotency_key="job-race-2") for n in range(4))
        )
        statuses = sorted(response.status_code for response in other)
        assert statuses == [201, 409, 409, 409], [response.text for response in other]
        assert (await usage_of(api, org, "tokens"))["reserved"] == 40 + sum(
            response.json()["quantity"] for response in other if response.status_code == 201
        )

    async def test_settling_records_the_real_quantity_and_frees_the_hold(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=100)
        reservation = (await self.reserve(api, org, 80)).json()
        response = await api.post(
            f"/v1/usage/reservations/{reservation['id']}/settle",
            json={"quantity": 55, "feature": "summarize", "input_tokens": 40, "output_tokens": 15},
            headers=org.headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == f"reservation:{reservation['id']}"
        assert (body["status"], body["quantity"], body["used"]) == ("accepted", 55, 55)
        usage = await usage_of(api, org, "tokens")
        assert (usage["used"], usage["reserved"]) == (55, 0)
        assert await stored_events(scratch, org.organization_id) == [
            (f"reservation:{reservation['id']}", 55)
        ]
        twice = await api.post(
            f"/v1/usage/reservations/{reservation['id']}/settle",
            json={"quantity": 55},
            headers=org.headers,
        )
        assert twice.status_code == 409, twice.text
        assert twice.json()["error"]["code"] == "reservation_not_held"
        assert twice.json()["error"]["details"]["status"] == "settled"

    async def test_settling_more_than_the_limit_allows_is_402_and_keeps_the_hold(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=100)
        reservation = (await self.reserve(api, org, 80)).json()
        response = await api.post(
            f"/v1/usage/reservations/{reservation['id']}/settle",
            json={"quantity": 101},
            headers=org.headers,
        )
        assert response.status_code == 402, response.text
        assert response.json()["error"]["code"] == "limit_exceeded"
        usage = await usage_of(api, org, "tokens")
        assert (usage["used"], usage["reserved"]) == (0, 80)

    async def test_releasing_frees_the_hold_without_usage(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch, monthly_token_limit=100)
        reservation = (await self.reserve(api, org, 80)).json()
        response = await api.delete(
            f"/v1/usage/reservations/{reservation['id']}", headers=org.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "released"
        usage = await usage_of(api, org, "tokens")
        assert (usage["used"], usage["reserved"]) == (0, 0)
        assert await stored_events(scratch, org.organization_id) == []
        again = await api.delete(f"/v1/usage/reservations/{reservation['id']}", headers=org.headers)
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "reservation_not_held"

    async def test_another_organisations_reservation_is_404_and_stays_held(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        owner = await tenant(api, scratch, monthly_token_limit=100)
        stranger = await tenant(api, scratch, monthly_token_limit=100)
        reservation = (await self.reserve(api, owner, 80)).json()
        path = f"/v1/usage/reservations/{reservation['id']}"
        settle = await api.post(f"{path}/settle", json={"quantity": 1}, headers=stranger.headers)
        release = await api.delete(path, headers=stranger.headers)
        for response in (settle, release):
            assert response.status_code == 404, response.text
            assert response.json()["error"]["code"] == "reservation_not_found"
        assert (await usage_of(api, owner, "tokens"))["reserved"] == 80
        assert (await usage_of(api, stranger, "tokens"))["used"] == 0
        assert await stored_events(scratch, stranger.organization_id) == []

    async def test_an_unknown_reservation_is_404(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        response = await api.delete(f"/v1/usage/reservations/{uuid.uuid4()}", headers=org.headers)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "reservation_not_found"


class TestLimitsAndSummary:
    async def test_limits_list_every_meter_of_the_plan(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(
            api,
            scratch,
            monthly_token_limit=1000,
            max_api_calls_per_day=50,
            max_storage_mb=1,
        )
        await api.post("/v1/usage/events", json=event("e1", quantity=300), headers=org.headers)
        response = await api.get("/v1/usage/limits", headers=org.headers)
        assert response.status_code == 200, response.text
        rows = {row["metric"]: row for row in response.json()["limits"]}
        assert {"tokens", "api_calls", "storage_bytes"} <= set(rows)
        tokens = rows["tokens"]
        assert (tokens["used"], tokens["limit"], tokens["remaining"]) == (300, 1000, 700)
        assert (rows["api_calls"]["limit"], rows["storage_bytes"]["limit"]) == (50, 1024 * 1024)
        assert rows["storage_bytes"]["period_end"] is None
        start = datetime.fromisoformat(tokens["period_start"])
        assert (start.day, start.hour) == (1, 0)

    async def test_summary_groups_by_metric_model_and_day(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        events = [
            event("a", quantity=100, model="m1", input_tokens=60, output_tokens=40),
            event("b", quantity=50, model="m2", input_tokens=50),
            event("c", "api_calls", quantity=3),
        ]
        await api.post("/v1/usage/events", json={"events": events}, headers=org.headers)
        today = utcnow().date().isoformat()
        by_metric = await api.get(
            "/v1/usage/summary",
            params={"start": today, "end": today, "by": "metric"},
            headers=org.headers,
        )
        assert by_metric.status_code == 200, by_metric.text
        body = by_metric.json()
        assert (body["start"], body["end"], body["by"]) == (today, today, "metric")
        rows = {row["key"]: row for row in body["rows"]}
        assert (rows["tokens"]["quantity"], rows["tokens"]["event_count"]) == (150, 2)
        assert (rows["tokens"]["input_tokens"], rows["tokens"]["output_tokens"]) == (110, 40)
        assert rows["api_calls"]["quantity"] == 3
        by_model = await api.get(
            "/v1/usage/summary",
            params={"start": today, "end": today, "by": "model", "metric": "tokens"},
            headers=org.headers,
        )
        assert {r["key"]: r["quantity"] for r in by_model.json()["rows"]} == {"m1": 100, "m2": 50}
        by_day = await api.get("/v1/usage/summary", headers=org.headers)
        assert by_day.status_code == 200, by_day.text
        # A row per day and metric: 3 calls and 150 tokens are never added together.
        assert [
            (r["key"], r["metric"], r["unit"], r["quantity"], r["event_count"])
            for r in by_day.json()["rows"]
        ] == [(today, "api_calls", "call", 3, 1), (today, "tokens", "token", 150, 2)]
        by_feature = await api.get(
            "/v1/usage/summary", params={"by": "feature"}, headers=org.headers
        )
        assert [(r["key"], r["metric"], r["quantity"]) for r in by_feature.json()["rows"]] == [
            ("", "api_calls", 3),
            ("", "tokens", 150),
        ]

    async def test_a_summary_past_int64_is_exact_not_unavailable(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        """Two accepted events whose input tokens add up past int64 made every summary a 503
        `database_unavailable` on SQLite ("integer overflow"), for good."""
        top = 2**63 - 1
        org = await tenant(api, scratch)
        for key, model, inputs in (("a", "m1", top), ("b", "m2", 1)):
            one = event(key, quantity=1, model=model, input_tokens=inputs)
            response = await api.post("/v1/usage/events", json=one, headers=org.headers)
            assert response.status_code == 201, response.text
        for by in ("metric", "day"):
            summary = await api.get("/v1/usage/summary", params={"by": by}, headers=org.headers)
            assert summary.status_code == 200, summary.text
            [row] = summary.json()["rows"]
            assert (row["metric"], row["quantity"], row["event_count"]) == ("tokens", 2, 2)
            assert row["input_tokens"] == row["total_tokens"] == top + 1

    async def test_a_summary_of_an_unknown_metric_is_422(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        response = await api.get(
            "/v1/usage/summary", params={"metric": "nosuch"}, headers=org.headers
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unknown_metric"

    async def test_a_summary_shows_only_the_callers_usage(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        other = await tenant(api, scratch)
        await api.post("/v1/usage/events", json=event("a", quantity=7), headers=other.headers)
        response = await api.get("/v1/usage/summary", headers=org.headers)
        assert response.status_code == 200, response.text
        assert response.json()["rows"] == []

    async def test_a_start_after_the_end_is_422(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        response = await api.get(
            "/v1/usage/summary",
            params={"start": "2025-02-02", "end": "2025-02-01"},
            headers=org.headers,
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_input"
        bad_group = await api.get("/v1/usage/summary", params={"by": "hour"}, headers=org.headers)
        assert bad_group.status_code == 422, bad_group.text
        assert bad_group.json()["error"]["code"] == "validation_error"

    @pytest.mark.parametrize("day", ["0", "1800000000", "1.8e9"])
    async def test_a_day_is_a_date_not_unix_time(
        self, api: httpx.AsyncClient, scratch: Database, day: str
    ) -> None:
        """Found by schemathesis (ST201): `start=0` was read as 1970-01-01, where the
        document says a `date`."""
        org = await tenant(api, scratch)
        for param in ("start", "end"):
            response = await api.get("/v1/usage/summary", params={param: day}, headers=org.headers)
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "validation_error"


class TestTheWholePath:
    async def test_register_key_record_until_refused_then_read_the_summary(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        """As a new customer on a plan with the free plan's 100,000 tokens a month, and the API
        access that the free plan lacks."""
        owner = (await tenant(api, scratch, monthly_token_limit=100_000)).headers
        created = await api.post(
            "/v1/api-keys",
            json={"name": "backend", "scopes": ["usage:write", "usage:read"]},
            headers=owner,
        )
        assert created.status_code == 201, created.text
        key = {"X-API-Key": created.json()["key"]}
        statuses = []
        for n in range(3):
            response = await api.post(
                "/v1/usage/events", json=event(f"call-{n}", quantity=40_000), headers=key
            )
            statuses.append(response.status_code)
        assert statuses == [201, 201, 402]
        assert response.json()["error"]["code"] == "limit_exceeded"
        assert response.json()["error"]["details"]["limit"] == 100_000
        summary = await api.get("/v1/usage/summary", params={"by": "metric"}, headers=key)
        assert summary.status_code == 200, summary.text
        assert [(r["key"], r["quantity"], r["event_count"]) for r in summary.json()["rows"]] == [
            ("tokens", 80_000, 2)
        ]


class TestAdminLimitOverrides:
    async def test_set_and_clear(self, admin: Admin, customer: TestTenant) -> None:
        org_id = customer.organization_id
        await admin.core.orgs.change_plan(org_id, "starter")  # 1,000 API calls a day
        path = f"/v1/admin/organizations/{org_id}/limits/api_calls"

        response = await admin.client.put(path, json={"limit": 1}, headers=admin.operator)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "metric": "api_calls",
            "limit": 1,
            "hard": True,
            "overridden": True,
        }
        assert not (await admin.core.usage.check(org_id, "api_calls", 2)).allowed
        same = await admin.client.put(path, json={"limit": 1, "hard": True}, headers=admin.operator)
        assert same.status_code == 200
        [entry] = await entries(admin, org_id, "limit.overridden")
        assert by_operator(admin, entry)
        assert entry.details == {
            "metric": "api_calls",
            "from": None,
            "to": {"limit": 1, "hard": True},
        }

        unlimited = await admin.client.put(path, json={"limit": None}, headers=admin.operator)
        assert unlimited.json()["limit"] is None
        assert len(await entries(admin, org_id, "limit.overridden")) == 2

        cleared = await admin.client.delete(path, headers=admin.operator)
        assert cleared.status_code == 200, cleared.text
        assert cleared.json() == {
            "metric": "api_calls",
            "limit": 1_000,
            "hard": True,
            "overridden": False,
        }
        again = await admin.client.delete(path, headers=admin.operator)
        assert again.json()["limit"] == 1_000
        [entry] = await entries(admin, org_id, "limit.override_cleared")
        assert entry.details == {"metric": "api_calls", "from": {"limit": None, "hard": True}}
        assert await admin.core.audit.verify(org_id) == []

    async def test_refusals_change_nothing(self, admin: Admin, customer: TestTenant) -> None:
        org_id = customer.organization_id
        before = await stored(admin.core.database, org_id)
        base = f"/v1/admin/organizations/{org_id}/limits"
        for method, path, body, status, code in (
            ("PUT", f"{base}/no_such_meter", {"limit": 5}, 422, "unknown_metric"),
            # Clearing answered 200 "unlimited" for a metric that does not exist.
            ("DELETE", f"{base}/no_such_meter", None, 422, "unknown_metric"),
            ("DELETE", f"{base}/%E2%80%AE", None, 422, "unknown_metric"),
            ("PUT", f"{base}/tokens", {"limit": -5}, 422, "validation_error"),
            ("PUT", f"{base}/tokens", {"limit": 5, "soft": True}, 422, "validation_error"),
            (
                "PUT",
                f"/v1/admin/organizations/{uuid.uuid4()}/limits/tokens",
                {"limit": 5},
                404,
                "organization_not_found",
            ),
        ):
            response = await admin.client.request(method, path, json=body, headers=admin.operator)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        assert await stored(admin.core.database, org_id) == before

"""The shared input checks (`saascore.kit.validation`): JSON values and instants, on their own
and through the real app at every place that stores them, on both databases. Each refusal is
a 422 with a stable code and writes nothing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError

from saascore.events.bus import EventBus
from saascore.identity.api_keys import ApiKeyService
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.validation import (
    MAX_JSON_DEPTH,
    Instant,
    JSONObject,
    canonical_json,
    checked_instant,
    checked_json,
    json_problem,
)
from saascore.models import Organization, SubscriptionPlan, UsageEvent, UsageReservation
from saascore.testing import TestTenant
from tests.admin import Admin
from tests.factories import create_organization, create_plan
from tests.http import tenant

#: JSON texts Python's `json` reads, which PostgreSQL refuses (1e400 reads as infinity).
NOT_FINITE = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400")
#: Instants whose UTC value lies outside the calendar (or past saascore's range).
FAR_INSTANTS = (
    "9999-12-31T23:59:59-05:00",
    "0001-01-01T00:00+03:00",
    "9999-06-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
)


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


def post_text(
    client: httpx.AsyncClient, method: str, path: str, text: str, headers: dict[str, str]
) -> Any:
    """A request whose body is `text` as it is (NaN and 1e400 reach the server unchanged)."""
    return client.request(
        method, path, content=text, headers={**headers, "Content-Type": "application/json"}
    )


class TestJsonProblem:
    @pytest.mark.parametrize(
        "value",
        [
            {"a": float("nan")},
            {"a": [1, {"b": float("inf")}]},
            {"a": -float("inf")},
            {"nul\x00": 1},
            {"a": "lone \ud800"},
            {1: "key not text"},
            {"a": datetime(2025, 1, 1, tzinfo=UTC)},
            {"a": {1, 2}},
            nested(MAX_JSON_DEPTH + 1),
            [[[]]] * 1 + [nested(MAX_JSON_DEPTH)],
        ],
    )
    def test_what_a_json_column_cannot_hold(self, value: Any) -> None:
        assert json_problem(value) is not None
        with pytest.raises(InvalidInput) as info:
            checked_json(value, field="f", mapping=False)
        assert (info.value.code, info.value.details) == ("invalid_input", {"field": "f"})
        with pytest.raises(ValidationError):
            TypeAdapter(JSONObject).validate_python(value)

    @pytest.mark.parametrize(
        "value",
        [
            {},
            {"a": None, "b": True, "c": -0.0, "d": 1e308, "e": 2**70, "f": "é ✓"},
            nested(MAX_JSON_DEPTH),
        ],
    )
    def test_what_it_can(self, value: dict[str, Any]) -> None:
        assert json_problem(value) is None
        assert checked_json(value, field="f") is value
        assert TypeAdapter(JSONObject).validate_python(value) == value

    def test_nesting_past_the_recursion_limit_is_a_refusal_not_a_crash(self) -> None:
        assert json_problem(nested(100_000)) == f"nests deeper than {MAX_JSON_DEPTH} levels"
        assert json_problem(nested(100_000), max_depth=None) is None

    def test_the_size_cap(self) -> None:
        with pytest.raises(InvalidInput, match="at most 10"):
            checked_json({"a": "x" * 10}, field="f", max_bytes=10)
        with pytest.raises(InvalidInput, match="JSON object"):
            checked_json([1], field="f")

    def test_canonical_text_reads_back_to_itself(self) -> None:
        value = {"b": [1.10, -0.0, 1e20, 1e308, 12345678901234567890.5], "a": "é", "c": 2**70}
        text = canonical_json(value)
        assert text == (
            '{"a":"é","b":[1.1,-0.0,1e+20,1e+308,1.2345678901234567e+19],'
            '"c":1180591620717411303424}'
        )
        assert canonical_json(json.loads(text)) == text


class TestInstant:
    @pytest.mark.parametrize("text", FAR_INSTANTS)
    def test_far_instants_are_refused_without_overflow(self, text: str) -> None:
        with pytest.raises(ValidationError) as refused:
            TypeAdapter(Instant).validate_json(json.dumps(text))
        assert refused.value.errors()[0]["type"] == "instant_range"
        moment = datetime.fromisoformat(text)
        with pytest.raises(InvalidInput):
            checked_instant(moment, field="at")

    def test_the_range(self) -> None:
        adapter = TypeAdapter(Instant)
        assert adapter.validate_python(datetime(1970, 1, 1, tzinfo=UTC))
        east = timezone(timedelta(hours=14))
        assert adapter.validate_python(datetime(9998, 12, 31, 23, 59, tzinfo=UTC))
        assert adapter.validate_python(datetime(9999, 1, 1, 13, 59, tzinfo=east))
        with pytest.raises(ValidationError):
            adapter.validate_python("2025-01-01T00:00:00")  # naive


async def stored_events(database: Database, org_id: uuid.UUID) -> int:
    async with database.session(readonly=True) as session:
        count = await session.scalar(
            sa.select(sa.func.count()).where(UsageEvent.organization_id == org_id)
        )
    return count or 0


class TestUsageEvents:
    @pytest.mark.parametrize("number", NOT_FINITE)
    async def test_a_number_that_is_not_finite_in_properties_is_422(
        self, api: httpx.AsyncClient, scratch: Database, number: str
    ) -> None:
        org = await tenant(api, scratch)
        text = (
            f'{{"id": "e1", "metric": "api_calls", "quantity": 1, "properties": {{"x": {number}}}}}'
        )
        response = await post_text(api, "POST", "/v1/usage/events", text, org.headers)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"]["errors"][0]["type"] == "invalid_json"
        batch = (
            '{"events": [{"id": "b1", "metric": "api_calls", "quantity": 1},'
            f' {{"id": "b2", "metric": "api_calls", "quantity": 1,'
            f' "properties": {{"x": [{number}]}}}}]}}'
        )
        response = await post_text(api, "POST", "/v1/usage/events", batch, org.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
        assert await stored_events(scratch, org.organization_id) == 0

    async def test_properties_nested_too_deep_are_422(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        body = {"id": "e1", "metric": "api_calls", "quantity": 1, "properties": nested(260)}
        response = await api.post("/v1/usage/events", json=body, headers=org.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"]["errors"][0]["type"] == "invalid_json"
        assert await stored_events(scratch, org.organization_id) == 0

    @pytest.mark.parametrize("moment", FAR_INSTANTS)
    async def test_an_occurred_at_outside_the_calendar_is_422(
        self, api: httpx.AsyncClient, scratch: Database, moment: str
    ) -> None:
        org = await tenant(api, scratch)
        body = {"id": "e1", "metric": "api_calls", "quantity": 1, "occurred_at": moment}
        response = await api.post("/v1/usage/events", json=body, headers=org.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
        assert response.json()["error"]["details"]["errors"][0]["type"] == "instant_range"
        assert await stored_events(scratch, org.organization_id) == 0


class TestSettle:
    @pytest.mark.parametrize("number", ["NaN", "1e400"])
    async def test_a_settle_body_that_is_not_finite_is_422(
        self, api: httpx.AsyncClient, scratch: Database, number: str
    ) -> None:
        org = await tenant(api, scratch)
        held = await api.post(
            "/v1/usage/reservations",
            json={"metric": "tokens", "quantity": 10},
            headers=org.headers,
        )
        assert held.status_code == 201, held.text
        reservation = held.json()["id"]
        response = await post_text(
            api,
            "POST",
            f"/v1/usage/reservations/{reservation}/settle",
            f'{{"quantity": 5, "properties": {{"score": {number}}}}}',
            org.headers,
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"]["errors"][0]["type"] == "invalid_json"
        async with scratch.session(readonly=True) as session:
            status = await session.scalar(
                sa.select(UsageReservation.status).where(
                    UsageReservation.organization_id == org.organization_id
                )
            )
        assert status == "held"
        assert await stored_events(scratch, org.organization_id) == 0


class TestPlanFeatures:
    async def features_of(self, admin: Admin, code: str) -> dict[str, Any]:
        async with admin.database.session(readonly=True) as session:
            features: dict[str, Any] = (
                await session.scalars(
                    sa.select(SubscriptionPlan.features).where(SubscriptionPlan.code == code)
                )
            ).one()
        return features

    @pytest.mark.parametrize("number", ["NaN", "Infinity", "1e400"])
    async def test_features_that_are_not_finite_are_422(self, admin: Admin, number: str) -> None:
        before = await self.features_of(admin, admin.plan)
        response = await post_text(
            admin.client,
            "PATCH",
            f"/v1/admin/plans/{admin.plan}",
            f'{{"features": {{"quota": {number}}}}}',
            admin.operator,
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"]["errors"][0]["type"] == "invalid_json"
        assert await self.features_of(admin, admin.plan) == before

    async def test_a_catalog_with_features_that_are_not_finite_is_422(self, admin: Admin) -> None:
        code = f"nan-{uuid.uuid4().hex[:8]}"
        catalog = f'{{"plans": {{"{code}": {{"name": "NaN", "features": {{"x": NaN}}}}}}}}'
        response = await post_text(
            admin.client, "POST", "/v1/admin/plans/load", catalog, admin.operator
        )
        assert response.status_code == 422, response.text
        async with admin.database.session(readonly=True) as session:
            assert (
                await session.scalar(
                    sa.select(sa.func.count()).where(SubscriptionPlan.code == code)
                )
            ) == 0


class TestOrganizationSettings:
    async def settings_of(self, database: Database, who: TestTenant) -> dict[str, Any]:
        async with database.session(readonly=True) as session:
            settings: dict[str, Any] = (
                await session.scalars(
                    sa.select(Organization.settings).where(Organization.id == who.organization_id)
                )
            ).one()
        return settings

    @pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 260])
    async def test_settings_nested_too_deep_are_422(
        self, api: httpx.AsyncClient, scratch: Database, depth: int
    ) -> None:
        org = await tenant(api, scratch)
        response = await api.patch(
            "/v1/organization", json={"settings": nested(depth)}, headers=org.headers
        )
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (error["code"], error["details"]) == ("invalid_input", {"field": "settings"})
        assert await self.settings_of(scratch, org) == {}

    async def test_settings_as_deep_as_allowed_are_kept(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        deepest = nested(MAX_JSON_DEPTH)
        response = await api.patch(
            "/v1/organization", json={"settings": deepest}, headers=org.headers
        )
        assert response.status_code == 200, response.text
        assert await self.settings_of(scratch, org) == deepest


class TestApiKeyExpiry:
    @pytest.mark.parametrize("moment", FAR_INSTANTS)
    async def test_an_expiry_outside_the_calendar_is_422(
        self, api: httpx.AsyncClient, scratch: Database, moment: str
    ) -> None:
        org = await tenant(api, scratch)
        response = await api.post(
            "/v1/api-keys", json={"name": "far", "expires_at": moment}, headers=org.headers
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"]["errors"][0]["type"] == "instant_range"
        listed = await api.get("/v1/api-keys", headers=org.headers)
        assert listed.status_code == 200, listed.text
        assert "far" not in json.dumps(listed.json())

    @pytest.mark.parametrize("moment", FAR_INSTANTS[:2])
    async def test_the_library_refuses_it_too(self, scratch: Database, moment: str) -> None:
        """`ApiKeyService.create` checks as the API does: an expiry past the calendar's end in
        UTC is `InvalidInput`, never an `OverflowError` from the driver."""
        async with scratch.transaction() as session:
            org = await create_organization(session, plan=await create_plan(session))
        keys = ApiKeyService(scratch, EventBus())
        expires_at = datetime.fromisoformat(moment)
        with pytest.raises(InvalidInput) as refused:
            await keys.create(org.id, name="far", scopes=["usage:read"], expires_at=expires_at)
        assert refused.value.details["field"] == "expires_at"
        with pytest.raises(InvalidInput) as refused:
            await keys.create_operator_key(name="far", expires_at=expires_at)
        assert refused.value.details["field"] == "expires_at"

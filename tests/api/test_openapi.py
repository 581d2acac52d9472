"""The OpenAPI document states what the server enforces, and the server keeps to it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from saascore.kit.db import Database
from saascore.kit.inputs import INT64_MAX
from tests.http import tenant


def integer_schemas(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [found for item in node for found in integer_schemas(item)]
    if not isinstance(node, dict):
        return []
    own = [node] if node.get("type") == "integer" else []
    return own + [found for value in node.values() for found in integer_schemas(value)]


def prop(document: dict[str, Any], schema: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"][schema]["properties"][name]
    return found


def branch(node: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an optional property."""
    for option in node.get("anyOf", [node]):
        if option.get("type") != "null":
            return option  # type: ignore[no-any-return]
    raise AssertionError(node)


class TestTheDocument:
    async def test_integer_bounds_are_integers(self, api: httpx.AsyncClient) -> None:
        document = (await api.get("/openapi.json")).json()
        bounds = [
            schema[key]
            for schema in integer_schemas(document)
            for key in ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum")
            if key in schema
        ]
        assert bounds
        assert all(type(bound) is int for bound in bounds)
        assert prop(document, "UsageEventRequest", "quantity")["maximum"] == INT64_MAX
        assert '"maximum":9223372036854775807' in (await api.get("/openapi.json")).text

    async def test_the_rules_are_stated(self, api: httpx.AsyncClient) -> None:
        document = (await api.get("/openapi.json")).json()
        assert prop(document, "ApiKeyCreate", "scopes")["minItems"] == 1
        for schema in ("RegisterRequest", "LoginRequest", "UserCreate", "ProvisionRequest"):
            assert prop(document, schema, "email")["format"] == "email"
        for schema in (
            "OrganizationUpdate",
            "OrganizationCreate",
        ):  # the latter found by the attack
            assert prop(document, schema, "billing_email")["format"] == "email"
        currency = branch(prop(document, "OrganizationUpdate", "currency"))
        assert currency["pattern"] == "^[A-Za-z]{3}$"
        assert prop(document, "PriceSpec", "currency")["pattern"] == "^[A-Z]{3}$"

    async def test_a_plan_update_states_the_bounds_of_a_new_plan(
        self, api: httpx.AsyncClient
    ) -> None:
        """Found by the attack: `PATCH /v1/admin/plans/{code}` refused what `PlanSpec`
        refuses (`sort_order` 2**31, `trial_days` -1) while its document stated no bounds."""
        document = (await api.get("/openapi.json")).json()
        for name, spec in document["components"]["schemas"]["PlanSpec"]["properties"].items():
            if name in document["components"]["schemas"]["PlanUpdate"]["properties"]:
                stated = branch(prop(document, "PlanUpdate", name))
                for bound in ("minimum", "maximum"):
                    assert stated.get(bound) == branch(spec).get(bound), (name, bound)


class TestStrictIntegers:
    @pytest.mark.parametrize("quantity", [True, False, "5", 5.0, 1.5])
    async def test_an_event_quantity_must_be_an_integer(
        self, api: httpx.AsyncClient, scratch: Database, quantity: object
    ) -> None:
        owner = await tenant(api, scratch, scopes=["usage:write", "usage:read"])
        event = {"id": "strict", "metric": "tokens", "quantity": quantity}
        response = await api.post("/v1/usage/events", json=event, headers=owner.key_headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
        tokens = next(
            limit
            for limit in (await api.get("/v1/usage/limits", headers=owner.key_headers)).json()[
                "limits"
            ]
            if limit["metric"] == "tokens"
        )
        assert tokens["used"] == 0

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("/v1/usage/check", {"metric": "tokens", "quantity": True}),
            ("/v1/usage/reservations", {"metric": "tokens", "quantity": True}),
            ("/v1/usage/reservations", {"metric": "tokens", "quantity": 5, "ttl_seconds": "60"}),
            (
                "/v1/usage/events",
                {"id": "t", "metric": "tokens", "quantity": 1, "input_tokens": True},
            ),
        ],
    )
    async def test_every_request_integer_is_strict(
        self, api: httpx.AsyncClient, scratch: Database, path: str, body: dict[str, object]
    ) -> None:
        owner = await tenant(api, scratch, scopes=["usage:write", "usage:read"])
        response = await api.post(path, json=body, headers=owner.key_headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"


class TestStrictBooleansAndDates:
    """Found by the attack (schemathesis, ST201): `is_active: 0` deactivated a user and
    `occurred_at: 0` was read as Unix time, where the document says `boolean` and a
    `date-time` string."""

    @pytest.mark.parametrize("value", [0, 1, "true", "no"])
    async def test_a_boolean_must_be_true_or_false(
        self, api: httpx.AsyncClient, scratch: Database, value: object
    ) -> None:
        owner = await tenant(api, scratch)
        member = await api.post(
            "/v1/users",
            json={"email": "strict@example.com", "password": "a long enough password"},
            headers=owner.headers,
        )
        assert member.status_code == 201, member.text
        path = f"/v1/users/{member.json()['id']}"
        response = await api.patch(path, json={"is_active": value}, headers=owner.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
        assert (await api.get(path, headers=owner.headers)).json()["is_active"] is True

    @pytest.mark.parametrize("value", [0, 1_800_000_000, "1800000000", "1.8e9", True])
    async def test_a_date_time_must_be_a_date_time_string(
        self, api: httpx.AsyncClient, scratch: Database, value: object
    ) -> None:
        owner = await tenant(api, scratch, scopes=["usage:write", "usage:read"])
        event = {"id": "when", "metric": "tokens", "quantity": 1, "occurred_at": value}
        recorded = await api.post("/v1/usage/events", json=event, headers=owner.key_headers)
        assert recorded.status_code == 422, recorded.text
        assert recorded.json()["error"]["code"] == "validation_error"
        keys = (await api.get("/v1/api-keys", headers=owner.headers)).json()["items"]
        key = {"name": "k", "scopes": ["usage:read"], "expires_at": value}
        created = await api.post("/v1/api-keys", json=key, headers=owner.headers)
        assert created.status_code == 422, created.text
        assert created.json()["error"]["code"] == "validation_error"
        assert (await api.get("/v1/api-keys", headers=owner.headers)).json()["items"] == keys


class TestMethodNotAllowed:
    @pytest.mark.parametrize(
        ("method", "path", "allowed"),
        [
            ("DELETE", "/v1/users", "GET, POST"),
            ("PUT", "/v1/api-keys", "GET, POST"),
            ("POST", "/v1/organization", "GET, PATCH"),
            ("PUT", "/v1/users/0190d2c4-0000-7000-8000-000000000000", "DELETE, GET, PATCH"),
        ],
    )
    async def test_allow_lists_every_method_of_the_path(
        self, api: httpx.AsyncClient, method: str, path: str, allowed: str
    ) -> None:
        response = await api.request(method, path)
        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"
        assert response.headers["Allow"] == allowed

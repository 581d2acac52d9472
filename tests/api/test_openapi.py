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
        currency = branch(prop(document, "OrganizationUpdate", "currency"))
        assert currency["pattern"] == "^[A-Za-z]{3}$"
        assert prop(document, "PriceSpec", "currency")["pattern"] == "^[A-Z]{3}$"


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

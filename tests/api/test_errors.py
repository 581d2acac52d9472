"""Every error, whatever raised it, answers `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import BaseModel, Field

from saascore import SessionDep
from saascore.kit.errors import Conflict, NotFound


class Item(BaseModel):
    name: str = Field(min_length=1)
    quantity: int = Field(ge=0)


@pytest.fixture
def routes(app: FastAPI) -> FastAPI:
    """Extra routes on the real app, so its real error handlers answer."""

    @app.post("/_test/items")
    async def create_item(item: Item) -> Item:
        return item

    @app.get("/_test/missing")
    async def missing() -> None:
        raise NotFound("no such widget", widget="w1")

    @app.get("/_test/conflict")
    async def conflict() -> None:
        raise Conflict("it changed meanwhile")

    @app.get("/_test/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals")

    @app.get("/_test/overflow")
    async def overflow(session: SessionDep) -> None:
        # abs(-2**63) overflows int64 on both backends (an OperationalError on SQLite).
        await session.execute(sa.text("SELECT abs(CAST(-9223372036854775807 AS BIGINT) - 1)"))

    return app


def assert_envelope(body: object, code: str) -> dict[str, object]:
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["details"], dict)
    return error


@pytest.mark.usefixtures("routes")
class TestErrorEnvelope:
    async def test_validation_error(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/_test/items", json={"name": "", "quantity": -1})
        assert response.status_code == 422
        error = assert_envelope(response.json(), "validation_error")
        locations = {entry["location"] for entry in error["details"]["errors"]}  # type: ignore[index]
        assert locations == {"body.name", "body.quantity"}

    async def test_malformed_json(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/_test/items", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert_envelope(response.json(), "validation_error")

    async def test_domain_errors_keep_their_code_and_details(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/_test/missing")
        assert response.status_code == 404
        error = assert_envelope(response.json(), "not_found")
        assert error["details"] == {"widget": "w1"}
        response = await client.get("/_test/conflict")
        assert response.status_code == 409
        assert_envelope(response.json(), "conflict")

    async def test_unknown_route_and_wrong_method(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/no/such/route")
        assert response.status_code == 404
        assert_envelope(response.json(), "not_found")
        response = await client.delete("/health")
        assert response.status_code == 405
        assert_envelope(response.json(), "method_not_allowed")

    async def test_an_unexpected_error_hides_its_internals(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/_test/crash")
        assert response.status_code == 500
        error = assert_envelope(response.json(), "internal_error")
        assert "secret" not in response.text
        assert error["details"] == {}

    async def test_an_arithmetic_error_is_a_500_not_an_unavailable_database(
        self, client: httpx.AsyncClient
    ) -> None:
        """SQLite raises "integer overflow" as an OperationalError, like a lost database: it
        was answered 503 `database_unavailable` with Retry-After, when retrying cannot help."""
        response = await client.get("/_test/overflow")
        assert response.status_code == 500
        assert_envelope(response.json(), "internal_error")
        assert "Retry-After" not in response.headers

    async def test_openapi_documents_the_error_shape(self, client: httpx.AsyncClient) -> None:
        schema = (await client.get("/openapi.json")).json()
        assert "ErrorResponse" in schema["components"]["schemas"]
        healthz = schema["paths"]["/healthz"]["get"]["responses"]
        assert "503" in healthz

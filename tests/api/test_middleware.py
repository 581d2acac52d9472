"""What every request goes through: the request id and the input guard."""

from __future__ import annotations

import httpx
import pytest

from saascore.kit.db import Database
from tests.http import api_app, serving

pytestmark = pytest.mark.asyncio(loop_scope="session")

REGISTER = "/v1/auth/register"
JSON = {"content-type": "application/json"}
#: A registration as raw JSON text, to send escapes that httpx's encoder would never write.
REGISTRATION = (
    '{"email": "guard@example.com", "password": "long enough password", '
    '"organization_name": "NAME"}'
)


def registration(name: str) -> dict[str, str]:
    return {
        "email": "guard@example.com",
        "password": "long enough password",
        "organization_name": name,
    }


class TestRequestId:
    async def test_a_sane_id_from_the_client_comes_back(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/health", headers={"X-Request-ID": "trace-42.a:b"})
        assert response.headers["X-Request-ID"] == "trace-42.a:b"

    async def test_anything_else_is_replaced_by_a_new_id(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/health", headers={"X-Request-ID": "no spaces <allowed>"})
        assert response.headers["X-Request-ID"] != "no spaces <allowed>"
        assert len(response.headers["X-Request-ID"]) == 32

    async def test_errors_carry_it_too(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/v1/me")
        assert response.status_code == 401
        assert response.headers["X-Request-ID"]


class TestInputGuard:
    async def test_a_nul_in_a_json_string_is_refused_on_both_databases(
        self, api: httpx.AsyncClient
    ) -> None:
        response = await api.post(REGISTER, json=registration("Nul\u0000Org"))
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_character"
        again = await api.post(REGISTER, json=registration("Nul Org"))
        assert again.status_code == 201, "the refused request wrote the organisation"

    async def test_an_escaped_backslash_before_u0000_is_text(self, api: httpx.AsyncClient) -> None:
        response = await api.post(REGISTER, json=registration("Back\\u0000slash"))
        assert response.status_code == 201, response.text

    @pytest.mark.parametrize("text", ["\\ud800", "\\udc00", "a\\ud83dz"])
    async def test_half_a_surrogate_pair_is_refused(
        self, api: httpx.AsyncClient, text: str
    ) -> None:
        body = REGISTRATION.replace("NAME", text).encode()
        response = await api.post(REGISTER, content=body, headers=JSON)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_character"

    async def test_a_whole_surrogate_pair_is_text(self, api: httpx.AsyncClient) -> None:
        body = REGISTRATION.replace("NAME", "Smile \\ud83d\\ude00").encode()
        response = await api.post(REGISTER, content=body, headers=JSON)
        assert response.status_code == 201, response.text
        assert response.json()["organization_id"]

    async def test_a_nul_in_the_query_is_refused(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/v1/plans?x=%00")
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_character"

    async def test_a_body_over_the_limit_is_refused_unread(self, scratch: Database) -> None:
        application, core = api_app(scratch, max_request_bytes=2048)
        async with serving(application, core) as client:
            response = await client.post(REGISTER, json=registration("x" * 4096))
        assert response.status_code == 413
        assert response.json()["error"] == {
            "code": "payload_too_large",
            "message": "the body is over the limit of 2048 bytes",
            "details": {"limit": 2048},
        }

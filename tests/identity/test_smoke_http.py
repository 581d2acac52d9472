from __future__ import annotations

import httpx
import pytest

from saascore.testing import register_and_login

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_register_me_key_and_refresh(api: httpx.AsyncClient) -> None:
    headers = await register_and_login(api, email="smoke@example.com", password="p" * 12)
    me = await api.get("/v1/me", headers=headers)
    assert me.status_code == 200, me.text
    assert me.json()["role"] == "owner"
    assert me.headers["X-Request-ID"]
    created = await api.post("/v1/api-keys", json={"name": "w"}, headers=headers)
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    me2 = await api.get("/v1/me", headers={"X-API-Key": key})
    assert me2.status_code == 200, me2.text
    assert me2.json()["kind"] == "api_key"
    login = await api.post(
        "/v1/auth/login", json={"email": "smoke@example.com", "password": "p" * 12}
    )
    assert login.status_code == 200, login.text
    refresh = login.json()["refresh_token"]
    again = await api.post("/v1/auth/refresh", json={"refresh_token": refresh})
    assert again.status_code == 200, again.text
    reused = await api.post("/v1/auth/refresh", json={"refresh_token": refresh})
    assert reused.status_code == 401, reused.text
    assert reused.json()["error"]["code"] == "token_reused"
    newest = again.json()["refresh_token"]
    revoked = await api.post("/v1/auth/refresh", json={"refresh_token": newest})
    assert revoked.status_code == 401
    keys = await api.get("/v1/api-keys", headers=headers)
    assert keys.status_code == 200, keys.text
    assert len(keys.json()["items"]) == 1

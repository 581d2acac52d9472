"""Access tokens end at once when their user's sessions end: logout, a reused refresh token, a
new password and a deactivation each set `users.tokens_valid_after`, and a token issued at or
before it is refused, while one issued right after it works."""

from __future__ import annotations

import httpx
import pytest

from saascore.models import UserRole
from saascore.testing import TestTenant
from tests.identity.support import Served, add_user, login, register

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def me(app: Served, token: str) -> httpx.Response:
    return await app.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})


async def assert_ended(app: Served, token: str) -> None:
    response = await me(app, token)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_token"


async def assert_works(app: Served, token: str) -> None:
    response = await me(app, token)
    assert response.status_code == 200, response.text


async def fresh_login(app: Served, account: TestTenant, password: str | None = None) -> str:
    response = await login(app, account.email, password or account.password)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


class TestAccessTokensEnd:
    async def test_on_logout(self, app: Served) -> None:
        owner = await register(app)
        await assert_works(app, owner.access_token)
        response = await app.client.post(
            "/v1/auth/logout", json={"refresh_token": owner.refresh_token}
        )
        assert response.status_code == 204, response.text
        await assert_ended(app, owner.access_token)
        # A login right after (within the same second) is not caught by the logout.
        await assert_works(app, await fresh_login(app, owner))

    async def test_a_repeated_logout_ends_nothing_new(self, app: Served) -> None:
        owner = await register(app)
        body = {"refresh_token": owner.refresh_token}
        assert (await app.client.post("/v1/auth/logout", json=body)).status_code == 204
        later = await fresh_login(app, owner)
        assert (await app.client.post("/v1/auth/logout", json=body)).status_code == 204
        await assert_works(app, later)

    async def test_on_refresh_token_reuse(self, app: Served) -> None:
        owner = await register(app)
        rotated = await app.client.post(
            "/v1/auth/refresh", json={"refresh_token": owner.refresh_token}
        )
        assert rotated.status_code == 200, rotated.text
        newest_access = rotated.json()["access_token"]
        await assert_works(app, newest_access)
        reused = await app.client.post(
            "/v1/auth/refresh", json={"refresh_token": owner.refresh_token}
        )
        assert reused.json()["error"]["code"] == "token_reused", reused.text
        await assert_ended(app, owner.access_token)
        await assert_ended(app, newest_access)  # "every session it began is ended"
        await assert_works(app, await fresh_login(app, owner))

    async def test_on_a_password_change(self, app: Served) -> None:
        owner = await register(app)
        member = await add_user(app, owner, UserRole.MEMBER)
        await assert_works(app, member.access_token)
        new_password = "a brand new passphrase 7"
        response = await app.client.patch(
            f"/v1/users/{member.user_id}", json={"password": new_password}, headers=owner.headers
        )
        assert response.status_code == 200, response.text
        await assert_ended(app, member.access_token)
        await assert_works(app, owner.access_token)  # only that user's tokens end
        await assert_works(app, await fresh_login(app, member, new_password))

    async def test_on_deactivation(self, app: Served) -> None:
        owner = await register(app)
        member = await add_user(app, owner, UserRole.MEMBER)
        response = await app.client.patch(
            f"/v1/users/{member.user_id}", json={"is_active": False}, headers=owner.headers
        )
        assert response.status_code == 200, response.text
        disabled = await me(app, member.access_token)
        assert disabled.json()["error"]["code"] == "account_disabled", disabled.text
        response = await app.client.patch(
            f"/v1/users/{member.user_id}", json={"is_active": True}, headers=owner.headers
        )
        assert response.status_code == 200, response.text
        await assert_ended(app, member.access_token)  # ended, not only suspended with the user
        await assert_works(app, await fresh_login(app, member))

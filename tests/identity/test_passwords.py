"""Password rules (NIST SP 800-63B) through the real app: every path that sets a password
(registration, a new user, a password change) refuses the same weak ones with 422
`weak_password`, writes nothing, and the OpenAPI document states the minimum."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from saascore.tenancy.errors import WeakPassword
from saascore.tenancy.passwords import check_password
from tests.identity.support import Served, register, table_counts, written_since

#: The issue's cases, and more of each kind; "{email}" is the account's e-mail.
WEAK = [
    pytest.param("aaaaaaaaaa", id="one-character"),
    pytest.param("1234567890", id="digits-in-a-row"),
    pytest.param(" " * 10, id="ten-spaces"),
    pytest.param("{email}", id="the-email"),
    pytest.param("{local}", id="the-local-part"),
    pytest.param("{local}2024!", id="the-local-part-decorated"),
    pytest.param("abcabcabcabc", id="a-pattern-repeated"),
    pytest.param("aaaaabbbbb", id="two-characters"),
    pytest.param("zyxwvutsrq", id="a-run-backwards"),
    pytest.param("qwertyuiop", id="breached"),
    pytest.param("Password2024!", id="breached-decorated"),
    pytest.param("basketball", id="common"),
    pytest.param("university", id="a-dictionary-word"),
]


def new_email() -> str:
    return f"grace.hopper{secrets.token_hex(3)}@example.com"


def fill(template: str, email: str) -> str:
    return template.format(email=email, local=email.partition("@")[0])


def assert_weak(response: Any) -> None:
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "weak_password", response.text


@pytest.mark.asyncio(loop_scope="session")
class TestRefused:
    @pytest.mark.parametrize("template", WEAK)
    async def test_at_registration(self, app: Served, template: str) -> None:
        email = new_email()
        before = await table_counts(app.database)
        response = await app.client.post(
            "/v1/auth/register",
            json={"email": email, "password": fill(template, email), "organization_name": "W"},
        )
        assert_weak(response)
        assert await written_since(app.database, before) == {}

    @pytest.mark.parametrize("template", WEAK)
    async def test_for_a_new_user_and_a_password_change(self, app: Served, template: str) -> None:
        owner = await register(app)
        email = new_email()
        before = await table_counts(app.database)
        created = await app.client.post(
            "/v1/users",
            json={"email": email, "password": fill(template, email)},
            headers=owner.headers,
        )
        assert_weak(created)
        assert await written_since(app.database, before) == {}
        changed = await app.client.patch(
            f"/v1/users/{owner.user_id}",
            json={"password": fill(template, owner.email)},
            headers=owner.headers,
        )
        assert_weak(changed)
        assert await written_since(app.database, before) == {}


class TestAccepted:
    @pytest.mark.parametrize(
        "password",
        ["correct horse battery staple", "Tr0ub4dor&3x!", "8402-7715-3369", "ééééé ççççç"],
    )
    def test_no_composition_rules(self, password: str) -> None:
        check_password(password, 10, email="grace@example.com")

    def test_too_short_names_the_minimum(self) -> None:
        with pytest.raises(WeakPassword) as error:
            check_password("k7#Qz", 10)
        assert error.value.details == {"minimum": 10}


@pytest.mark.asyncio(loop_scope="session")
async def test_the_openapi_document_states_the_minimum(app: Served) -> None:
    document = (await app.client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    minimum = app.core.settings.password_min_length
    assert schemas["RegisterRequest"]["properties"]["password"]["minLength"] == minimum
    for name in ("UserCreate", "UserUpdate"):
        options = schemas[name]["properties"]["password"]["anyOf"]
        assert {"type": "string", "maxLength": 256, "minLength": minimum} in options
    assert schemas["LoginRequest"]["properties"]["password"]["minLength"] == 1  # old accounts

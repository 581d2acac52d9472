"""Accounts through the real app: register, log in, log out, provision; and when an API key's
`last_used_at` is written."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import timedelta
from typing import Any

import bcrypt
import httpx
import jwt
import pytest
import sqlalchemy as sa

from saascore.audit import AuditService, audited_bus
from saascore.identity import ApiKeyService, IdentityService
from saascore.kit.db import Database
from saascore.models import (
    ApiKey,
    AuditLog,
    OperatorKey,
    Organization,
    RefreshToken,
    SubscriptionPlan,
    User,
    UserRole,
)
from saascore.plans import PlanService
from saascore.tenancy import OrganizationService
from tests.helpers import Clock, only_postgresql
from tests.identity.support import (
    Served,
    audit_actions,
    login,
    register,
    served,
    table_counts,
    written_since,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


def new_email() -> str:
    return f"user-{secrets.token_hex(4)}@example.com"


async def last_entry(database: Database, org_id: uuid.UUID) -> AuditLog:
    async with database.session(readonly=True) as s:
        entry = await s.scalar(
            sa.select(AuditLog)
            .where(AuditLog.organization_id == org_id)
            .order_by(AuditLog.seq.desc())
            .limit(1)
        )
    assert entry is not None
    return entry


async def stored_user(database: Database, user_id: uuid.UUID) -> User:
    async with database.session(readonly=True) as s:
        user = await s.scalar(sa.select(User).where(User.id == user_id))
    assert user is not None
    return user


class TestRegister:
    async def test_makes_an_organisation_on_the_default_plan_with_its_owner(
        self, app: Served
    ) -> None:
        owner = await register(app, email="  Ada.Register@Example.COM ", plan=None)
        me = await app.client.get("/v1/me", headers=owner.headers)
        assert me.status_code == 200, me.text
        body = me.json()
        assert (body["kind"], body["role"]) == ("user", "owner")
        assert body["user"]["email"] == "ada.register@example.com"
        assert body["organization"]["plan"] == app.core.settings.default_plan
        assert await audit_actions(app.database, owner.organization_id) == [
            "organization.created",  # by the registering user, who has no id yet
            "credits.granted",  # the plan's credits
            "user.registered",
        ]
        [created] = await app.core.audit.list(owner.organization_id, action="organization.created")
        assert (created.actor_type, created.actor_id) == ("user", None)
        stored = await stored_user(app.database, owner.user_id)
        assert stored.password_hash is not None
        assert stored.password_hash.startswith("$argon2id$")
        again = await login(app, "ADA.register@example.com", owner.password)
        assert again.status_code == 200, again.text

    @pytest.mark.parametrize(
        ("email", "password", "code"),
        [
            pytest.param(None, "short", "weak_password", id="short-password"),
            pytest.param(None, "x" * 257, "validation_error", id="long-password"),
            pytest.param("not-an-email", None, "invalid_input", id="no-at"),
            pytest.param("ada@localhost", None, "invalid_input", id="no-domain"),
            pytest.param("a b@example.com", None, "invalid_input", id="space"),
        ],
    )
    async def test_validates_and_writes_nothing(
        self, app: Served, email: str | None, password: str | None, code: str
    ) -> None:
        before = await table_counts(app.database)
        response = await app.client.post(
            "/v1/auth/register",
            json={
                "email": email or new_email(),
                "password": password or secrets.token_urlsafe(12),
                "organization_name": "Refused Inc",
            },
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code
        assert await written_since(app.database, before) == {}

    async def test_a_weak_password_names_the_minimum(self, app: Served) -> None:
        response = await app.client.post(
            "/v1/auth/register",
            json={"email": new_email(), "password": "123456789", "organization_name": "Weak"},
        )
        assert response.status_code == 422
        error = response.json()["error"]
        assert (error["code"], error["details"]) == ("weak_password", {"minimum": 10})


class TestLogin:
    async def test_wrong_password_and_unknown_email_answer_alike(self, app: Served) -> None:
        owner = await register(app)
        wrong = await login(app, owner.email, owner.password + "x")
        unknown = await login(app, new_email(), owner.password)
        malformed = await login(app, "not an e-mail", owner.password)
        for response in (wrong, unknown, malformed):
            assert response.status_code == 401, response.text
            assert response.json() == {
                "error": {
                    "code": "invalid_credentials",
                    "message": "the e-mail or password is wrong",
                    "details": {},
                }
            }
            assert response.headers["WWW-Authenticate"] == "Bearer"

    async def test_a_failed_login_is_audited_and_the_entry_survives_the_401(
        self, app: Served
    ) -> None:
        owner = await register(app)
        before = await table_counts(app.database)
        response = await app.client.post(
            "/v1/auth/login",
            json={"email": owner.email, "password": "wrong password"},
            headers={"User-Agent": "guesser/1"},
        )
        assert response.status_code == 401
        await app.core.identity.settle()  # the entry is written after the answer
        assert await written_since(app.database, before) == {"audit_logs": 1}
        entry = await last_entry(app.database, owner.organization_id)
        assert entry.action == "auth.login_failed"
        assert (entry.actor_type, entry.actor_id, entry.user_id) == ("anonymous", None, None)
        assert (entry.target_type, entry.target_id) == ("user", str(owner.user_id))
        assert entry.details == {"email": owner.email}
        assert entry.user_agent == "guesser/1"
        assert entry.ip_address == "127.0.0.1"
        assert entry.request_id == response.headers["X-Request-ID"]
        assert await app.core.audit.verify(owner.organization_id) == []

    async def test_an_unknown_email_writes_nothing(self, app: Served) -> None:
        before = await table_counts(app.database)
        assert (await login(app, new_email(), "whatever it is")).status_code == 401
        assert await written_since(app.database, before) == {}

    async def test_a_success_is_audited_and_stamped(self, app: Served) -> None:
        owner = await register(app)
        response = await login(app, owner.email, owner.password)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "bearer"
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        # `iat` carries microseconds; `exp` is whole seconds from the same second.
        assert claims["exp"] - int(claims["iat"]) == app.core.settings.access_token_minutes * 60
        assert 0 < body["expires_in"] <= app.core.settings.access_token_minutes * 60
        assert (await audit_actions(app.database, owner.organization_id))[-1] == "auth.login"
        assert (await stored_user(app.database, owner.user_id)).last_login_at is not None

    async def test_an_email_in_two_organisations_names_one(self, app: Served) -> None:
        email, password = new_email(), secrets.token_urlsafe(12)
        first = await register(app, email=email, password=password)
        second = await register(app, email=email, password=password)
        slugs = {}
        async with app.database.session(readonly=True) as s:
            for org_id in (first.organization_id, second.organization_id):
                slugs[org_id] = await s.scalar(
                    sa.select(Organization.slug).where(Organization.id == org_id)
                )

        before = await table_counts(app.database)
        ambiguous = await login(app, email, password)
        assert ambiguous.status_code == 409, ambiguous.text
        error = ambiguous.json()["error"]
        assert error["code"] == "organization_required"
        assert {o["id"] for o in error["details"]["organizations"]} == {
            str(first.organization_id),
            str(second.organization_id),
        }
        assert await written_since(app.database, before) == {}

        by_slug = await login(app, email, password, organization=slugs[second.organization_id])
        assert by_slug.status_code == 200, by_slug.text
        assert by_slug.json()["organization_id"] == str(second.organization_id)
        by_id = await login(app, email, password, organization=str(first.organization_id))
        assert by_id.json()["organization_id"] == str(first.organization_id)
        wrong = await login(app, email, password, organization="no-such-organisation")
        assert wrong.json()["error"]["code"] == "invalid_credentials"

    async def test_an_email_in_two_organisations_with_two_passwords(self, app: Served) -> None:
        """Only the organisation whose password matches is a match: no need to name it."""
        email = new_email()
        await register(app, email=email)
        second = await register(app, email=email)
        response = await login(app, email, second.password)
        assert response.status_code == 200, response.text
        assert response.json()["organization_id"] == str(second.organization_id)

    async def test_a_bcrypt_hash_logs_in_and_becomes_argon2id(self, app: Served) -> None:
        owner = await register(app)
        email, password = new_email(), "seed 004 password"
        user = await app.core.users.create(owner.organization_id, email=email)
        legacy = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
        async with app.database.transaction() as s:
            await s.execute(sa.update(User).where(User.id == user.id).values(password_hash=legacy))

        assert (await login(app, email, "not the password")).status_code == 401
        assert (await stored_user(app.database, user.id)).password_hash == legacy
        first = await login(app, email, password)
        assert first.status_code == 200, first.text
        upgraded = (await stored_user(app.database, user.id)).password_hash
        assert upgraded is not None
        assert upgraded.startswith("$argon2id$")
        assert (await last_entry(app.database, owner.organization_id)).details == {"rehashed": True}
        again = await login(app, email, password)
        assert again.status_code == 200, again.text
        assert (await stored_user(app.database, user.id)).password_hash == upgraded
        assert (await last_entry(app.database, owner.organization_id)).details == {
            "rehashed": False
        }

    async def test_a_disabled_user_cannot_log_in(self, app: Served) -> None:
        owner = await register(app)
        email, password = new_email(), secrets.token_urlsafe(12)
        user = await app.core.users.create(owner.organization_id, email=email, password=password)
        assert (await login(app, email, password)).status_code == 200
        await app.core.users.update(owner.organization_id, user.id, is_active=False)
        disabled = await login(app, email, password)
        unknown = await login(app, new_email(), password)
        assert disabled.status_code == 401, disabled.text
        assert disabled.json() == unknown.json()

    async def test_a_user_without_a_password_cannot_log_in(self, app: Served) -> None:
        owner = await register(app)
        email = new_email()
        await app.core.users.create(owner.organization_id, email=email)
        response = await login(app, email, "")
        assert response.status_code == 422  # an empty password is not even tried
        response = await login(app, email, "any password at all")
        assert response.json()["error"]["code"] == "invalid_credentials"


class TestLogout:
    async def test_logout_revokes_the_family(self, app: Served) -> None:
        owner = await register(app)
        rotated = await app.client.post(
            "/v1/auth/refresh", json={"refresh_token": owner.refresh_token}
        )
        assert rotated.status_code == 200, rotated.text
        newest = rotated.json()["refresh_token"]
        other_session = await login(app, owner.email, owner.password)

        response = await app.client.post("/v1/auth/logout", json={"refresh_token": newest})
        assert response.status_code == 204, response.text
        assert (await audit_actions(app.database, owner.organization_id))[-1] == "auth.logout"
        refused = await app.client.post("/v1/auth/refresh", json={"refresh_token": newest})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_token"
        async with app.database.session(readonly=True) as s:
            family = (
                await s.scalars(
                    sa.select(RefreshToken.revoked_at).where(
                        RefreshToken.organization_id == owner.organization_id,
                        RefreshToken.user_id == owner.user_id,
                    )
                )
            ).all()
        assert sum(revoked is not None for revoked in family) == 2  # this session's two
        # Another login is another session: it goes on.
        other = other_session.json()["refresh_token"]
        assert (
            await app.client.post("/v1/auth/refresh", json={"refresh_token": other})
        ).status_code == 200

        before = await table_counts(app.database)
        again = await app.client.post("/v1/auth/logout", json={"refresh_token": newest})
        assert again.status_code == 204  # idempotent, and audited once
        assert await written_since(app.database, before) == {}


async def operator_headers(app: Served) -> dict[str, str]:
    _, raw = await app.core.api_keys.create_operator_key(name="provisioner")
    return {"X-API-Key": raw}


def provision_body(**overrides: Any) -> dict[str, Any]:
    tag = secrets.token_hex(4)
    return {
        "external_platform": "shopify",
        "external_user_id": f"user-{tag}",
        "external_store_id": f"store-{tag}",
        "email": f"merchant-{tag}@example.com",
        "name": "Merchant",
        "organization_external_id": f"store-{tag}",
        "organization_name": f"Shop {tag}",
        "plan": "pro",
        **overrides,
    }


class TestProvision:
    async def test_is_idempotent(self, app: Served) -> None:
        headers = await operator_headers(app)
        body = provision_body()
        first = await app.client.post("/v1/auth/provision", json=body, headers=headers)
        assert first.status_code == 200, first.text
        assert first.json()["organization_created"] is True
        assert first.json()["user_created"] is True

        before = await table_counts(app.database)
        second = await app.client.post("/v1/auth/provision", json=body, headers=headers)
        assert second.status_code == 200, second.text
        assert second.json() == {
            **first.json(),
            "organization_created": False,
            "user_created": False,
        }
        assert await written_since(app.database, before) == {}

        org_id = uuid.UUID(first.json()["organization_id"])
        async with app.database.session(readonly=True) as s:
            plan = await s.scalar(
                sa.select(SubscriptionPlan.code)
                .join(Organization, Organization.plan_id == SubscriptionPlan.id)
                .where(Organization.id == org_id)
            )
        assert plan == "pro"
        user = await stored_user(app.database, uuid.UUID(first.json()["user_id"]))
        assert (user.role, user.external_platform, user.external_id) == (
            UserRole.OWNER,
            "shopify",
            body["external_user_id"],
        )
        assert await audit_actions(app.database, org_id) == [
            "organization.created",
            "credits.granted",
            "user.provisioned",
        ]

    async def test_a_second_user_joins_the_organisation_as_a_member(self, app: Served) -> None:
        headers = await operator_headers(app)
        body = provision_body()
        first = await app.client.post("/v1/auth/provision", json=body, headers=headers)
        second = await app.client.post(
            "/v1/auth/provision",
            json={**body, "external_user_id": "someone-else", "email": new_email()},
            headers=headers,
        )
        assert second.status_code == 200, second.text
        assert second.json()["organization_id"] == first.json()["organization_id"]
        assert (second.json()["organization_created"], second.json()["user_created"]) == (
            False,
            True,
        )
        user = await stored_user(app.database, uuid.UUID(second.json()["user_id"]))
        assert user.role is UserRole.MEMBER

    async def test_users_past_the_plans_seats_are_refused(self, app: Served) -> None:
        headers = await operator_headers(app)
        body = provision_body(plan="free")  # two seats
        joined = [
            await app.client.post(
                "/v1/auth/provision",
                json={**body, "external_user_id": f"user-{n}", "email": new_email()},
                headers=headers,
            )
            for n in range(2)
        ]
        assert [response.status_code for response in joined] == [200, 200]
        before = await table_counts(app.database)
        third = await app.client.post(
            "/v1/auth/provision",
            json={**body, "external_user_id": "user-3", "email": new_email()},
            headers=headers,
        )
        assert third.status_code == 402, third.text
        assert third.json()["error"]["code"] == "limit_exceeded"
        assert third.json()["error"]["details"]["metric"] == "users"
        assert await written_since(app.database, before) == {}

    async def test_an_email_taken_by_another_identity_is_a_conflict(self, app: Served) -> None:
        headers = await operator_headers(app)
        body = provision_body()
        assert (
            await app.client.post("/v1/auth/provision", json=body, headers=headers)
        ).status_code == 200
        before = await table_counts(app.database)
        clash = await app.client.post(
            "/v1/auth/provision", json={**body, "external_user_id": "other"}, headers=headers
        )
        assert clash.status_code == 409, clash.text
        assert clash.json()["error"]["code"] == "user_exists"
        assert await written_since(app.database, before) == {}

    async def test_an_unknown_plan(self, app: Served) -> None:
        headers = await operator_headers(app)
        before = await table_counts(app.database)
        response = await app.client.post(
            "/v1/auth/provision", json=provision_body(plan="no-such-plan"), headers=headers
        )
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "plan_not_found"
        assert await written_since(app.database, before) == {}

    async def test_needs_an_operator(self, app: Served) -> None:
        owner = await register(app)
        key = await app.client.post(
            "/v1/api-keys", json={"name": "k", "scopes": ["admin"]}, headers=owner.headers
        )
        assert key.status_code == 201, key.text
        for headers in ({"X-API-Key": key.json()["key"]}, owner.headers, {}):
            before = await table_counts(app.database)
            response = await app.client.post(
                "/v1/auth/provision", json=provision_body(), headers=headers
            )
            expected = (401, "unauthenticated") if not headers else (403, "permission_denied")
            assert (response.status_code, response.json()["error"]["code"]) == expected
            assert await written_since(app.database, before) == {}

    @only_postgresql
    async def test_racing_provisions_make_one_organisation_and_one_user(self, app: Served) -> None:
        headers = await operator_headers(app)
        body = provision_body()
        responses: list[httpx.Response] = await asyncio.gather(
            *(app.client.post("/v1/auth/provision", json=body, headers=headers) for _ in range(8))
        )
        assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
        assert len({r.json()["organization_id"] for r in responses}) == 1
        assert len({r.json()["user_id"] for r in responses}) == 1
        assert sum(r.json()["organization_created"] for r in responses) == 1
        assert sum(r.json()["user_created"] for r in responses) == 1
        async with app.database.session(readonly=True) as s:
            organizations = await s.scalar(
                sa.select(sa.func.count())
                .select_from(Organization)
                .where(Organization.external_id == body["organization_external_id"])
            )
            users = await s.scalar(
                sa.select(sa.func.count())
                .select_from(User)
                .where(User.external_id == body["external_user_id"])
            )
        assert (organizations, users) == (1, 1)


class TestLastUsed:
    """`last_used_at` is written on a key's first use, then at most once a minute."""

    async def test_tenant_key(self, scratch: Database) -> None:
        clock = Clock()
        audit = AuditService(scratch, clock=clock)
        orgs = OrganizationService(scratch, PlanService(scratch))
        identity = IdentityService(scratch, scratch.settings, orgs, audited_bus(audit), clock=clock)
        keys = ApiKeyService(scratch, audited_bus(audit), clock=clock)
        organization = await orgs.create(name="last used", plan="pro")  # API access
        row, raw = await keys.create(organization.id, name="k", scopes=["usage:read"])

        async def stamp() -> object:
            await identity.authenticate(raw)
            async with scratch.session(readonly=True) as s:
                return await s.scalar(sa.select(ApiKey.last_used_at).where(ApiKey.id == row.id))

        first_use = clock.now
        assert await stamp() == first_use
        clock.advance(seconds=59)
        assert await stamp() == first_use
        clock.advance(seconds=1)  # a minute after the last write
        assert await stamp() == clock.now
        clock.advance(seconds=30)
        assert await stamp() == first_use + timedelta(minutes=1)

    async def test_operator_key(self, scratch: Database) -> None:
        clock = Clock()
        audit = AuditService(scratch, clock=clock)
        orgs = OrganizationService(scratch, PlanService(scratch))
        identity = IdentityService(scratch, scratch.settings, orgs, audited_bus(audit), clock=clock)
        row, raw = await ApiKeyService(
            scratch, audited_bus(audit), clock=clock
        ).create_operator_key(name="op")

        async def stamp() -> object:
            await identity.authenticate(raw)
            async with scratch.session(readonly=True) as s:
                return await s.scalar(
                    sa.select(OperatorKey.last_used_at).where(OperatorKey.id == row.id)
                )

        assert await stamp() == clock.now
        first_use = clock.now
        clock.advance(seconds=45)
        assert await stamp() == first_use
        clock.advance(minutes=2)
        assert await stamp() == clock.now


class TestLimitedByAddress:
    async def test_login_past_the_limit_is_429_and_not_even_tried(self, scratch: Database) -> None:
        async with served(scratch, auth_requests_per_minute=2) as limited:
            owner = await register(limited)  # the first of two
            wrong = await login(limited, owner.email, "wrong password")
            assert wrong.status_code == 401
            await limited.core.identity.settle()
            before = await table_counts(limited.database)
            refused = await login(limited, owner.email, owner.password)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "rate_limited"
            assert int(refused.headers["Retry-After"]) > 0
            assert await written_since(limited.database, before) == {}  # no login_failed either

"""`/v1/webhook-endpoints` through the real app on both databases: what admins may do (each
change audited), the secret shown once, the SSRF guard's refusals (422 with their code, nothing
stored), another organisation's ids (404, nothing changes), members and viewers (403), the
deliveries with their attempts and their retry, and the catalogue in the OpenAPI document.

The dispatcher is off in these apps: deliveries are written here as the dispatcher would."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from standardwebhooks import Webhook

from saascore import Saascore
from saascore.config import Settings
from saascore.events.catalog import PUBLIC_EVENTS
from saascore.events.service import MAX_ENDPOINTS
from saascore.kit.db import Database
from saascore.kit.time import utcnow
from saascore.models import (
    AuditLog,
    DeliveryStatus,
    OutboxEvent,
    UserRole,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from saascore.testing import TestTenant
from tests.factories import create_plan
from tests.http import api_app, serving
from tests.http import tenant as registered

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = "a long enough password"
BASE = "/v1/webhook-endpoints"
#: A public address as an IP literal: accepted without any DNS lookup.
PUBLIC_URL = "https://93.184.215.14/hooks/saascore"


@dataclass
class World:
    client: httpx.AsyncClient
    core: Saascore
    database: Database
    plan: str


def overrides(**values: Any) -> dict[str, Any]:
    """Settings for these apps: no login rate limits, and no dispatcher (if it exists)."""
    if "dispatch" in Settings.model_fields:
        values["dispatch"] = False
    return {"auth_requests_per_minute": None, **values}


async def make_world(scratch: Database, *, allow_private: bool) -> AsyncIterator[World]:
    application, core = api_app(scratch, **overrides(webhooks_allow_private=allow_private))
    async with serving(application, core) as client:
        async with scratch.transaction() as s:
            plan = (await create_plan(s)).code
        yield World(client, core, scratch, plan)


@pytest_asyncio.fixture(loop_scope="session")
async def world(scratch: Database) -> AsyncIterator[World]:
    """The app as deployed: the SSRF guard refuses private addresses and http."""
    async for value in make_world(scratch, allow_private=False):
        yield value


@pytest_asyncio.fixture(loop_scope="session")
async def private_world(scratch: Database) -> AsyncIterator[World]:
    """The app with SAASCORE_WEBHOOKS_ALLOW_PRIVATE=true."""
    async for value in make_world(scratch, allow_private=True):
        yield value


async def new_tenant(world: World) -> TestTenant:
    """An organisation registered over HTTP, on the world's plan (no rate limits)."""
    return await registered(world.client, world.database, plan=world.plan)


@pytest_asyncio.fixture(loop_scope="session")
async def tenant(world: World) -> TestTenant:
    return await new_tenant(world)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def user_of(world: World, tenant: TestTenant, role: UserRole) -> dict[str, str]:
    email = f"{role.value}-{secrets.token_hex(4)}@example.com"
    await world.core.users.create(tenant.organization_id, email=email, role=role, password=PASSWORD)
    tokens = await world.core.identity.login(email=email, password=PASSWORD)
    return bearer(tokens.access_token)


async def create(
    world: World, tenant: TestTenant, url: str = PUBLIC_URL, **body: Any
) -> dict[str, Any]:
    response = await world.client.post(BASE, json={"url": url, **body}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def endpoint_rows(database: Database, org_id: uuid.UUID) -> list[tuple[Any, ...]]:
    async with database.session(readonly=True) as s:
        table = WebhookEndpoint.__table__
        result = await s.execute(
            sa.select(table).where(table.c.organization_id == org_id).order_by(table.c.id)
        )
        return [tuple(row) for row in result.all()]


async def snapshot(database: Database, org_id: uuid.UUID) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the organisation that these endpoints could change."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    async with database.session(readonly=True) as s:
        for model in (WebhookEndpoint, WebhookDelivery, WebhookAttempt, OutboxEvent, AuditLog):
            table = cast(sa.Table, model.__table__)
            result = await s.execute(
                sa.select(table)
                .where(table.c.organization_id == org_id)
                .order_by(*table.primary_key.columns)
            )
            rows[table.name] = [tuple(row) for row in result.all()]
    return rows


async def audit(world: World, org_id: uuid.UUID, action: str) -> list[AuditLog]:
    return list(await world.core.audit.list(org_id, action=action))


async def stored(database: Database, org_id: uuid.UUID, endpoint_id: str) -> WebhookEndpoint:
    async with database.session(readonly=True) as s:
        endpoint = await s.get(WebhookEndpoint, (org_id, uuid.UUID(endpoint_id)))
        assert endpoint is not None
        return endpoint


async def add_delivery(
    database: Database,
    org_id: uuid.UUID,
    endpoint_id: str,
    *,
    status: DeliveryStatus = DeliveryStatus.FAILED,
    attempts: int = 2,
    lease_until: Any = None,
) -> WebhookDelivery:
    """An event and its delivery to the endpoint with `attempts` failed attempts, as the
    dispatcher writes them."""
    now = utcnow()
    async with database.transaction() as s:
        event = OutboxEvent(
            organization_id=org_id,
            id=uuid.uuid4(),
            type="credits.low",
            body={"type": "credits.low", "timestamp": now.isoformat(), "data": {}},
            occurred_at=now,
            dispatched_at=now,
        )
        s.add(event)
        await s.flush()
        delivery = WebhookDelivery(
            organization_id=org_id,
            endpoint_id=uuid.UUID(endpoint_id),
            event_id=event.id,
            event_type=event.type,
            status=status,
            attempts=attempts,
            next_attempt_at=None if status is not DeliveryStatus.PENDING else now,
            lease_until=lease_until,
            last_status_code=500 if attempts else None,
            last_error="HTTP 500" if attempts else None,
            completed_at=now if status is not DeliveryStatus.PENDING else None,
        )
        s.add(delivery)
        await s.flush()
        for number in range(1, attempts + 1):
            s.add(
                WebhookAttempt(
                    organization_id=org_id,
                    delivery_id=delivery.id,
                    endpoint_id=delivery.endpoint_id,
                    number=number,
                    status_code=500,
                    duration_ms=10 * number,
                    error="HTTP 500",
                    response_body="oops",
                    attempted_at=now + timedelta(seconds=number),
                )
            )
    return delivery


# --- the lifecycle -------------------------------------------------------------------------------
class TestCreate:
    async def test_created_with_its_secret_shown_once(
        self, world: World, tenant: TestTenant
    ) -> None:
        created = await create(
            world, tenant, event_types=["credits.low", "api_key.created"], description=" alerts "
        )
        assert created["url"] == PUBLIC_URL
        assert created["event_types"] == ["api_key.created", "credits.low"]
        assert created["description"] == "alerts"
        assert created["enabled"] is True
        secret = created["secret"]
        assert secret.startswith("whsec_")
        # the secret is a Standard Webhooks key: it signs, and what it signs verifies
        hook, now = Webhook(secret), utcnow().replace(microsecond=0)
        signature = hook.sign("msg_1", now, '{"a":1}')
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }
        assert hook.verify('{"a":1}', headers) == {"a": 1}
        read = await world.client.get(f"{BASE}/{created['id']}", headers=tenant.headers)
        listed = await world.client.get(BASE, headers=tenant.headers)
        for response in (read, listed):
            assert response.status_code == 200
            assert secret not in response.text
        assert "secret" not in read.json()
        assert all("secret" not in item for item in listed.json()["items"])
        assert read.json() == {k: v for k, v in created.items() if k != "secret"}
        [entry] = await audit(world, tenant.organization_id, "webhook_endpoint.created")
        assert entry.target_id == created["id"]
        assert entry.actor_type == "user"
        assert entry.details["url"] == PUBLIC_URL
        assert secret not in str(entry.details)

    async def test_no_event_types_means_all(self, world: World, tenant: TestTenant) -> None:
        created = await create(world, tenant)
        assert created["event_types"] == []

    async def test_the_organisation_comes_from_the_caller(
        self, world: World, tenant: TestTenant
    ) -> None:
        response = await world.client.post(
            BASE,
            json={"url": PUBLIC_URL, "organization_id": str(uuid.uuid4())},
            headers=tenant.headers,
        )
        assert response.status_code == 422
        assert await endpoint_rows(world.database, tenant.organization_id) == []


class TestBadInput:
    @pytest.mark.parametrize(
        ("url", "code"),
        [
            ("https://127.0.0.1/hook", "webhook_url_private"),
            ("https://10.0.0.1/hook", "webhook_url_private"),
            ("https://192.168.0.10/hook", "webhook_url_private"),
            ("https://169.254.169.254/latest/meta-data", "webhook_url_private"),
            ("https://[::1]/hook", "webhook_url_private"),
            ("https://[::ffff:127.0.0.1]/hook", "webhook_url_private"),
            ("https://[fe80::1]/hook", "webhook_url_private"),
            ("https://100.64.0.1/hook", "webhook_url_private"),
            ("https://localhost/hook", "webhook_url_private"),
            ("https://localhost./hook", "webhook_url_private"),
            ("https://2130706433/hook", "webhook_url_invalid"),
            ("http://93.184.215.14/hook", "webhook_url_not_https"),
            ("ftp://93.184.215.14/hook", "webhook_url_not_https"),
            ("https://user:pass@93.184.215.14/hook", "webhook_url_userinfo"),
            ("https://93.184.215.14/" + "a" * 2100, "webhook_url_too_long"),
            ("https://93.184.215.14/hook#frag", "webhook_url_invalid"),
            ("not a url", "webhook_url_invalid"),
            ("https:///hook", "webhook_url_invalid"),
            ("https://93.184.215.14/a\x85b", "webhook_url_invalid"),  # C1 control (NEL)
            ("https://93.184.215.14/\u202egpj.exe", "webhook_url_invalid"),  # bidi override
            ("https://no-such-host.invalid/hook", "webhook_url_unresolvable"),
        ],
    )
    async def test_refused_urls(
        self, world: World, tenant: TestTenant, url: str, code: str
    ) -> None:
        before = await snapshot(world.database, tenant.organization_id)
        response = await world.client.post(BASE, json={"url": url}, headers=tenant.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code
        assert await snapshot(world.database, tenant.organization_id) == before

    async def test_an_organisation_has_at_most_max_endpoints(
        self, world: World, tenant: TestTenant
    ) -> None:
        # Each event goes out once per endpoint, from a dispatcher every organisation shares:
        # endpoints without number would let one organisation multiply its events at will.
        other = await new_tenant(world)
        made = [await create(world, tenant) for _ in range(MAX_ENDPOINTS)]
        before = await snapshot(world.database, tenant.organization_id)

        response = await world.client.post(BASE, json={"url": PUBLIC_URL}, headers=tenant.headers)

        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "too_many_webhook_endpoints"
        assert error["details"] == {"endpoints": MAX_ENDPOINTS, "limit": MAX_ENDPOINTS}
        assert await snapshot(world.database, tenant.organization_id) == before
        await create(world, other)  # another organisation's count is its own
        deleted = await world.client.delete(f"{BASE}/{made[0]['id']}", headers=tenant.headers)
        assert deleted.status_code == 204
        await create(world, tenant)

    async def test_racing_creations_never_pass_max_endpoints(
        self, world: World, tenant: TestTenant
    ) -> None:
        responses = await asyncio.gather(
            *(
                world.client.post(BASE, json={"url": PUBLIC_URL}, headers=tenant.headers)
                for _ in range(MAX_ENDPOINTS + 5)
            )
        )
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [201] * MAX_ENDPOINTS + [409] * 5, [r.text for r in responses]
        assert len(await endpoint_rows(world.database, tenant.organization_id)) == MAX_ENDPOINTS

    @pytest.mark.parametrize(
        "event_types",
        [["credits.lowish"], ["credits.low", "nope"], ["webhook.test"], ["auth.login"]],
    )
    async def test_unknown_event_types(
        self, world: World, tenant: TestTenant, event_types: list[str]
    ) -> None:
        before = await snapshot(world.database, tenant.organization_id)
        response = await world.client.post(
            BASE, json={"url": PUBLIC_URL, "event_types": event_types}, headers=tenant.headers
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unknown_event_type"
        assert await snapshot(world.database, tenant.organization_id) == before

    async def test_an_update_is_checked_too(self, world: World, tenant: TestTenant) -> None:
        created = await create(world, tenant)
        before = await snapshot(world.database, tenant.organization_id)
        for body, code in [
            ({"url": "https://127.0.0.1/x"}, "webhook_url_private"),
            ({"url": "https://localhost/x"}, "webhook_url_private"),
            ({"url": "http://93.184.215.14/x"}, "webhook_url_not_https"),
            ({"event_types": ["nope"]}, "unknown_event_type"),
        ]:
            response = await world.client.patch(
                f"{BASE}/{created['id']}", json=body, headers=tenant.headers
            )
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == code
        assert await snapshot(world.database, tenant.organization_id) == before

    async def test_private_and_http_with_the_private_setting(self, private_world: World) -> None:
        tenant = await new_tenant(private_world)
        for url in ("http://127.0.0.1:9/hook", "https://localhost:9/hook", "https://[::1]/x"):
            created = await create(private_world, tenant, url)
            assert created["url"] == url
        response = await private_world.client.post(
            BASE, json={"url": "https://u:p@127.0.0.1/"}, headers=tenant.headers
        )
        assert response.json()["error"]["code"] == "webhook_url_userinfo"


class TestListAndRead:
    async def test_newest_first_page_by_page(self, world: World, tenant: TestTenant) -> None:
        ids = [(await create(world, tenant, description=f"n{i}"))["id"] for i in range(3)]
        first = (await world.client.get(BASE, params={"limit": 2}, headers=tenant.headers)).json()
        assert [e["id"] for e in first["items"]] == [ids[2], ids[1]]
        second = (
            await world.client.get(
                BASE, params={"limit": 2, "cursor": first["next_cursor"]}, headers=tenant.headers
            )
        ).json()
        assert [e["id"] for e in second["items"]] == [ids[0]]
        assert second["next_cursor"] is None

    async def test_a_bad_cursor(self, world: World, tenant: TestTenant) -> None:
        response = await world.client.get(BASE, params={"cursor": "!!"}, headers=tenant.headers)
        assert response.json()["error"]["code"] == "invalid_cursor"

    async def test_the_catalogue(self, world: World, tenant: TestTenant) -> None:
        response = await world.client.get(f"{BASE}/event-types", headers=tenant.headers)
        assert response.status_code == 200
        types = {t["type"]: t for t in response.json()}
        assert set(types) == set(PUBLIC_EVENTS)
        low = types["credits.low"]
        assert low["description"].startswith("The balance fell below")
        assert set(low["schema"]["properties"]) == {"balance", "threshold"}
        assert "from" in types["organization.plan_changed"]["schema"]["properties"]


class TestUpdate:
    async def test_fields_change_and_are_audited(self, world: World, tenant: TestTenant) -> None:
        created = await create(world, tenant, description="old")
        path = f"{BASE}/{created['id']}"
        new_url = "https://93.184.215.15/v2"
        response = await world.client.patch(
            path,
            json={"url": new_url, "event_types": ["user.created"], "description": None},
            headers=tenant.headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["url"], body["event_types"], body["description"]) == (
            new_url,
            ["user.created"],
            None,
        )
        [entry] = await audit(world, tenant.organization_id, "webhook_endpoint.updated")
        assert entry.details["changes"] == {
            "url": {"from": PUBLIC_URL, "to": new_url},
            "event_types": {"from": [], "to": ["user.created"]},
            "description": {"from": "old", "to": None},
        }
        # a field left out stays; a change that changes nothing is not audited
        again = await world.client.patch(path, json={"url": new_url}, headers=tenant.headers)
        assert again.json()["event_types"] == ["user.created"]
        assert len(await audit(world, tenant.organization_id, "webhook_endpoint.updated")) == 1

    async def test_disable_and_enable(self, world: World, tenant: TestTenant) -> None:
        created = await create(world, tenant)
        path = f"{BASE}/{created['id']}"
        disabled = await world.client.post(f"{path}/disable", headers=tenant.headers)
        assert disabled.status_code == 200
        assert (disabled.json()["enabled"], disabled.json()["disabled_reason"]) == (
            False,
            "disabled by an admin",
        )
        # disabling again changes nothing
        await world.client.post(f"{path}/disable", headers=tenant.headers)
        [entry] = await audit(world, tenant.organization_id, "webhook_endpoint.disabled")
        assert entry.details["reason"] == "disabled by an admin"
        # as the dispatcher leaves an endpoint it gave up on
        async with world.database.transaction() as s:
            await s.execute(
                sa.update(WebhookEndpoint)
                .where(WebhookEndpoint.id == uuid.UUID(created["id"]))
                .values(failing_since=utcnow() - timedelta(days=3))
            )
        enabled = await world.client.patch(path, json={"enabled": True}, headers=tenant.headers)
        assert enabled.status_code == 200
        body = enabled.json()
        assert (body["enabled"], body["disabled_reason"], body["failing_since"]) == (
            True,
            None,
            None,
        )
        [entry] = await audit(world, tenant.organization_id, "webhook_endpoint.updated")
        assert entry.details["changes"] == {"enabled": {"from": False, "to": True}}
        # PATCH enabled=false is the same rule as POST .../disable
        off = await world.client.patch(path, json={"enabled": False}, headers=tenant.headers)
        assert off.json()["disabled_reason"] == "disabled by an admin"
        assert len(await audit(world, tenant.organization_id, "webhook_endpoint.disabled")) == 2

    async def test_a_disabled_endpoint_cannot_be_tested(
        self, world: World, tenant: TestTenant
    ) -> None:
        created = await create(world, tenant)
        await world.client.post(f"{BASE}/{created['id']}/disable", headers=tenant.headers)
        response = await world.client.post(f"{BASE}/{created['id']}/test", headers=tenant.headers)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "webhook_endpoint_disabled"


class TestDelete:
    async def test_deleted_with_its_deliveries(self, world: World, tenant: TestTenant) -> None:
        created = await create(world, tenant)
        await add_delivery(world.database, tenant.organization_id, created["id"])
        response = await world.client.delete(f"{BASE}/{created['id']}", headers=tenant.headers)
        assert response.status_code == 204
        rows = await snapshot(world.database, tenant.organization_id)
        assert rows["webhook_endpoints"] == []
        assert rows["webhook_deliveries"] == []
        assert rows["webhook_attempts"] == []
        [entry] = await audit(world, tenant.organization_id, "webhook_endpoint.deleted")
        assert entry.details == {"endpoint_id": created["id"], "url": PUBLIC_URL}
        again = await world.client.get(f"{BASE}/{created['id']}", headers=tenant.headers)
        assert again.json()["error"]["code"] == "webhook_endpoint_not_found"


class TestRotate:
    async def test_the_previous_secret_signs_for_24_hours(
        self, world: World, tenant: TestTenant
    ) -> None:
        created = await create(world, tenant)
        before = utcnow()
        response = await world.client.post(
            f"{BASE}/{created['id']}/rotate-secret", headers=tenant.headers
        )
        assert response.status_code == 200, response.text
        rotated = response.json()
        assert rotated["secret"].startswith("whsec_")
        assert rotated["secret"] != created["secret"]
        endpoint = await stored(world.database, tenant.organization_id, created["id"])
        assert endpoint.secret == rotated["secret"]
        assert endpoint.previous_secret == created["secret"]
        assert endpoint.previous_secret_expires_at is not None
        overlap = endpoint.previous_secret_expires_at - before
        assert timedelta(hours=24) <= overlap < timedelta(hours=24, minutes=1)
        read = await world.client.get(f"{BASE}/{created['id']}", headers=tenant.headers)
        assert rotated["secret"] not in read.text
        assert created["secret"] not in read.text
        [entry] = await audit(world, tenant.organization_id, "webhook_endpoint.secret_rotated")
        assert "whsec_" not in str(entry.details)


class TestSendTest:
    async def test_a_test_event_goes_to_the_outbox(self, world: World, tenant: TestTenant) -> None:
        created = await create(world, tenant)
        response = await world.client.post(f"{BASE}/{created['id']}/test", headers=tenant.headers)
        assert response.status_code == 202, response.text
        event_id = uuid.UUID(response.json()["event_id"])
        async with world.database.session(readonly=True) as s:
            row = await s.get(OutboxEvent, (tenant.organization_id, event_id))
        assert row is not None
        assert row.type == "webhook.test"
        assert row.body["data"]["endpoint_id"] == created["id"]


class TestDeliveries:
    async def test_newest_first_with_their_attempts(self, world: World, tenant: TestTenant) -> None:
        created = await create(world, tenant)
        org = tenant.organization_id
        first = await add_delivery(world.database, org, created["id"], attempts=1)
        second = await add_delivery(world.database, org, created["id"], attempts=3)
        path = f"{BASE}/{created['id']}/deliveries"
        page = (await world.client.get(path, params={"limit": 1}, headers=tenant.headers)).json()
        [newest] = page["items"]
        assert newest["id"] == str(second.id)
        assert newest["event_id"] == str(second.event_id)
        assert newest["status"] == "failed"
        assert [
            (a["number"], a["status_code"], a["duration_ms"], a["error"])
            for a in newest["attempts"]
        ] == [(1, 500, 10, "HTTP 500"), (2, 500, 20, "HTTP 500"), (3, 500, 30, "HTTP 500")]
        assert all(a["attempted_at"] for a in newest["attempts"])
        rest = (
            await world.client.get(
                path, params={"cursor": page["next_cursor"]}, headers=tenant.headers
            )
        ).json()
        assert [d["id"] for d in rest["items"]] == [str(first.id)]
        assert rest["next_cursor"] is None

    async def test_retry(self, world: World, tenant: TestTenant) -> None:
        created = await create(world, tenant)
        delivery = await add_delivery(world.database, tenant.organization_id, created["id"])
        before = utcnow()
        response = await world.client.post(
            f"{BASE}/{created['id']}/deliveries/{delivery.id}/retry", headers=tenant.headers
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["status"], body["completed_at"], len(body["attempts"])) == ("pending", None, 2)
        async with world.database.session(readonly=True) as s:
            row = await s.get(WebhookDelivery, (tenant.organization_id, delivery.id))
        assert row is not None
        assert row.status is DeliveryStatus.PENDING
        assert row.lease_until is None
        assert row.next_attempt_at is not None
        assert before - timedelta(seconds=1) <= row.next_attempt_at <= utcnow()
        [entry] = await audit(world, tenant.organization_id, "webhook_delivery.retried")
        assert entry.details["event_id"] == str(delivery.event_id)

    async def test_a_delivery_being_sent_is_not_retried(
        self, world: World, tenant: TestTenant
    ) -> None:
        created = await create(world, tenant)
        delivery = await add_delivery(
            world.database,
            tenant.organization_id,
            created["id"],
            status=DeliveryStatus.PENDING,
            lease_until=utcnow() + timedelta(minutes=1),
        )
        before = await snapshot(world.database, tenant.organization_id)
        response = await world.client.post(
            f"{BASE}/{created['id']}/deliveries/{delivery.id}/retry", headers=tenant.headers
        )
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "webhook_delivery_in_flight"
        assert await snapshot(world.database, tenant.organization_id) == before


# --- who may ---------------------------------------------------------------------------------
def requests_on(endpoint_id: str, delivery_id: uuid.UUID) -> list[tuple[str, str, Any]]:
    path = f"{BASE}/{endpoint_id}"
    return [
        ("GET", path, None),
        ("PATCH", path, {"description": "mine now"}),
        ("PATCH", path, {"enabled": False}),
        ("POST", f"{path}/disable", None),
        ("POST", f"{path}/rotate-secret", None),
        ("POST", f"{path}/test", None),
        ("GET", f"{path}/deliveries", None),
        ("POST", f"{path}/deliveries/{delivery_id}/retry", None),
        ("DELETE", path, None),
    ]


class TestIsolation:
    async def test_another_organisations_ids_are_not_found(self, world: World) -> None:
        owner, other = await new_tenant(world), await new_tenant(world)
        created = await create(world, owner)
        delivery = await add_delivery(world.database, owner.organization_id, created["id"])
        before = await snapshot(world.database, owner.organization_id)
        for method, path, body in requests_on(created["id"], delivery.id):
            response = await world.client.request(method, path, json=body, headers=other.headers)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "webhook_endpoint_not_found"
        # the other organisation's own endpoint with the first one's delivery
        theirs = await create(world, other)
        response = await world.client.post(
            f"{BASE}/{theirs['id']}/deliveries/{delivery.id}/retry", headers=other.headers
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "webhook_delivery_not_found"
        listed = await world.client.get(BASE, headers=other.headers)
        assert [e["id"] for e in listed.json()["items"]] == [theirs["id"]]
        assert await snapshot(world.database, owner.organization_id) == before

    @pytest.mark.parametrize("role", [UserRole.MEMBER, UserRole.VIEWER])
    async def test_members_and_viewers_may_not(
        self, world: World, tenant: TestTenant, role: UserRole
    ) -> None:
        created = await create(world, tenant)
        delivery = await add_delivery(world.database, tenant.organization_id, created["id"])
        headers = await user_of(world, tenant, role)
        before = await snapshot(world.database, tenant.organization_id)
        requests = [("POST", BASE, {"url": PUBLIC_URL}), ("GET", BASE, None)]
        for method, path, body in requests + requests_on(created["id"], delivery.id):
            response = await world.client.request(method, path, json=body, headers=headers)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "permission_denied"
        assert await snapshot(world.database, tenant.organization_id) == before


class TestOpenApi:
    async def test_the_webhooks_are_documented(self, world: World) -> None:
        document = (await world.client.get("/openapi.json")).json()
        assert document["openapi"].startswith("3.1")
        webhooks = document["webhooks"]
        assert set(webhooks) == {*PUBLIC_EVENTS, "webhook.test"}
        operation = webhooks["credits.low"]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert set(body["properties"]) == {"type", "timestamp", "data"}
        assert body["properties"]["type"]["const"] == "credits.low"
        data = document["components"]["schemas"]["CreditsLow"]
        assert set(data["properties"]) == {"balance", "threshold"}
        for path in (BASE, f"{BASE}/{{endpoint_id}}/deliveries/{{delivery_id}}/retry"):
            assert path in document["paths"]

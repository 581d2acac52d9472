"""TestTenant isolation, generated from the app's own routes.

For every route that takes an object id, an owner of organisation B (every permission) asks for
an object of organisation A: the answer is 404 and none of A's rows change. Routes are read from
the app's OpenAPI document, so a new route is covered as soon as it exists; a new *kind* of id
fails here until `OBJECTS` knows how to make one. Operator routes are checked separately: a
tenant gets 403.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from fastapi import FastAPI

from saascore import Saascore
from saascore.kit.db import Database
from saascore.kit.time import utcnow
from saascore.models import (
    Base,
    DeliveryStatus,
    GenerationType,
    OutboxEvent,
    SubscriptionPlan,
    WebhookDelivery,
    WebhookEndpoint,
)
from saascore.testing import TestTenant
from saascore.workspace.errors import RagStoreNotFound
from tests.factories import random_code
from tests.http import api_app, serving, tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")

PARAMETER = re.compile(r"{(\w+)}")
TENANT_PREFIX = "/v1/"
OPERATOR_PREFIX = "/v1/admin"


# --- how to make an object of organisation A for each kind of path parameter -------------------
async def _api_key(core: Saascore, a: TestTenant) -> uuid.UUID:
    key, _ = await core.api_keys.create(
        a.organization_id, name="a's key", scopes=["usage:read"], user_id=a.user_id
    )
    return key.id


async def _user(core: Saascore, a: TestTenant) -> uuid.UUID:
    user = await core.users.create(a.organization_id, email=f"{random_code('u')}@example.com")
    return user.id


async def _reservation(core: Saascore, a: TestTenant) -> uuid.UUID:
    reservation = await core.usage.reserve(a.organization_id, "api_calls", 1)
    return reservation.id


async def _webhook_endpoint(core: Saascore, a: TestTenant) -> uuid.UUID:
    endpoint, _ = await core.webhooks.create(a.organization_id, url="https://93.184.215.14/hook")
    return endpoint.id


async def _webhook_delivery(core: Saascore, a: TestTenant) -> uuid.UUID:
    """A delivery of A's newest endpoint (made first: `{endpoint_id}` comes first in paths)."""
    async with core.database.transaction() as s:
        endpoint_id = await s.scalar(
            sa.select(WebhookEndpoint.id)
            .where(WebhookEndpoint.organization_id == a.organization_id)
            .order_by(WebhookEndpoint.id.desc())
            .limit(1)
        )
    if endpoint_id is None:
        endpoint_id = await _webhook_endpoint(core, a)
    async with core.database.transaction() as s:
        event = OutboxEvent(
            organization_id=a.organization_id,
            type="credits.low",
            body={"type": "credits.low", "timestamp": "", "data": {}},
            occurred_at=utcnow(),
            dispatched_at=utcnow(),
        )
        s.add(event)
        await s.flush()
        delivery = WebhookDelivery(
            organization_id=a.organization_id,
            endpoint_id=endpoint_id,
            event_id=event.id,
            event_type=event.type,
            status=DeliveryStatus.FAILED,
        )
        s.add(delivery)
        await s.flush()
        return delivery.id


async def _invoice(core: Saascore, a: TestTenant) -> uuid.UUID:
    draft = await core.invoices.create_draft(a.organization_id, "USD", [("A's line", 100)])
    return draft.id


async def _payment(core: Saascore, a: TestTenant) -> uuid.UUID:
    """A payment of A's: half of an issued invoice."""
    invoice = await core.invoices.finalize(a.organization_id, await _invoice(core, a))
    payment = await core.payments.record(a.organization_id, invoice.id, 50, "cash")
    return payment.id


async def _folder(core: Saascore, a: TestTenant) -> uuid.UUID:
    return (await core.documents.create_folder(a.organization_id, random_code("folder"))).id


async def _document(core: Saascore, a: TestTenant) -> uuid.UUID:
    registered = await core.documents.register(
        a.organization_id,
        filename="a.pdf",
        size_bytes=10,
        file_hash=hashlib.sha256(random_code("doc").encode()).hexdigest(),
    )
    return registered.document.id


async def _job(core: Saascore, a: TestTenant) -> uuid.UUID:
    return (await core.jobs.submit(a.organization_id, await _document(core, a), "parse")).job.id


async def _generation(core: Saascore, a: TestTenant) -> uuid.UUID:
    generated = await core.jobs.generate(
        a.organization_id, await _document(core, a), GenerationType.SUMMARY, {"text": "a's"}
    )
    return generated.generation.id


async def _conversation(core: Saascore, a: TestTenant) -> uuid.UUID:
    summary = await core.memory.upsert_summary(
        a.organization_id, random_code("conversation"), "A's conversation", user_id=a.user_id
    )
    return summary.id


async def _rag_folder(core: Saascore, a: TestTenant) -> uuid.UUID:
    """A folder of A's RAG store (registered first if A has none)."""
    try:
        await core.rag.get(a.organization_id)
    except RagStoreNotFound:
        await core.rag.create(a.organization_id, provider="google", provider_store_id="a-store")
    return (await core.rag.create_folder(a.organization_id, random_code("folder"))).id


OBJECTS: dict[str, Callable[[Saascore, TestTenant], Awaitable[uuid.UUID]]] = {
    "key_id": _api_key,
    "user_id": _user,
    "reservation_id": _reservation,
    "endpoint_id": _webhook_endpoint,
    "delivery_id": _webhook_delivery,
    "invoice_id": _invoice,
    "payment_id": _payment,
    "folder_id": _folder,
    "document_id": _document,
    "job_id": _job,
    "generation_id": _generation,
    "summary_id": _conversation,
    "rag_folder_id": _rag_folder,
}


# --- the app, two organisations, and a snapshot of A ---------------------------------------------
@dataclass
class World:
    app: FastAPI
    core: Saascore
    client: httpx.AsyncClient
    a: TestTenant
    b: TestTenant


@pytest_asyncio.fixture(loop_scope="session")
async def world(scratch: Database) -> AsyncIterator[World]:
    application, core = api_app(scratch, auth_requests_per_minute=None)
    async with serving(application, core) as client:
        async with scratch.transaction() as s:  # off the free plan's 5 requests a minute
            plan = SubscriptionPlan(
                code=random_code("unlimited"), name="Unlimited", api_access=True
            )
            s.add(plan)
        a = await tenant(client, scratch, plan=plan.code)
        b = await tenant(client, scratch, plan=plan.code)
        yield World(application, core, client, a, b)


async def snapshot(database: Database, org_id: uuid.UUID) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every tenant table that belongs to the organisation, and its own row."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    async with database.session(readonly=True) as s:
        for table in Base.metadata.sorted_tables:
            if table.name == "organizations":
                query = sa.select(table).where(table.c.id == org_id)
            elif "organization_id" in table.c:
                query = sa.select(table).where(table.c.organization_id == org_id)
            else:
                continue
            primary = list(table.primary_key.columns)
            result = await s.execute(query.order_by(*primary))
            rows[table.name] = [tuple(row) for row in result.all()]
    return rows


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, as its OpenAPI document lists them."""
    return sorted(
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    )


#: Routes whose path parameter names no tenant object, and why: they take no credentials.
NOT_TENANT_OBJECTS = {
    "/v1/webhooks/{provider}": "a payment provider's webhooks: the signature is the proof",
    "/v1/checkout/mock/{token}": "the mock checkout's page: the signed token is the checkout",
}


#: Routes whose path names an object by the caller's own names, not by id: the same names
#: in another organisation are another object (`test_names_are_per_organisation` checks them).
NAMED_BY_THE_CALLER = {
    "/v1/memory/{namespace}": "memory entries of a namespace",
    "/v1/memory/{namespace}/{key}": "a memory entry",
}


def tenant_routes_with_ids(app: FastAPI) -> list[tuple[str, str]]:
    return [
        (method, path)
        for method, path in _routes(app)
        if path.startswith(TENANT_PREFIX)
        and not path.startswith(OPERATOR_PREFIX)
        and path not in NOT_TENANT_OBJECTS
        and path not in NAMED_BY_THE_CALLER
        and PARAMETER.search(path)
    ]


# --- a request body the route accepts, from its own schema ----------------------------------
def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def example_of(schema: dict[str, Any], spec: dict[str, Any]) -> Any:
    """A valid value for a JSON schema: its example if it has one, else the simplest value
    of its type, with only the required properties of objects."""
    schema = _resolve(schema, spec)
    if schema.get("examples"):
        return schema["examples"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [o for o in schema[key] if _resolve(o, spec).get("type") != "null"]
            return example_of(options[0], spec)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: example_of(properties[name], spec) for name in schema.get("required", [])}
    if kind == "array":
        return [example_of(schema["items"], spec)] if schema.get("minItems") else []
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return 1
    if kind == "boolean":
        return True
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    return None


def body_for(app: FastAPI, method: str, path: str) -> Any:
    spec = app.openapi()
    operation = spec["paths"][path][method.lower()]
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return None
    return example_of(content["application/json"]["schema"], spec)


# --- the tests -----------------------------------------------------------------------------
async def test_the_app_has_routes_that_take_object_ids(world: World) -> None:
    # Guards the generated test below against passing because it found nothing to check.
    assert len(tenant_routes_with_ids(world.app)) >= 4


async def test_another_organisations_objects_are_not_found(world: World) -> None:
    checked = []
    for method, path in tenant_routes_with_ids(world.app):
        values = {}
        for name in PARAMETER.findall(path):
            make = OBJECTS.get(name)
            assert make is not None, (
                f"{method} {path}: no way to make an object for {{{name}}}: add it to OBJECTS"
            )
            values[name] = await make(world.core, world.a)
        url = path.format(**values)
        before = await snapshot(world.core.database, world.a.organization_id)
        response = await world.client.request(
            method, url, json=body_for(world.app, method, path), headers=world.b.headers
        )
        assert response.status_code == 404, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        assert response.json()["error"]["code"].endswith("not_found"), response.text
        after = await snapshot(world.core.database, world.a.organization_id)
        assert after == before, f"{method} {path} changed organisation A's rows"
        checked.append((method, path))
    assert checked


async def test_the_same_requests_reach_the_objects_of_ones_own_organisation(world: World) -> None:
    """The 404s above are about the organisation, not about requests that could never work:
    A's owner, sending the same requests for A's own objects, is not refused with 404."""
    for method, path in tenant_routes_with_ids(world.app):
        values = {
            name: await OBJECTS[name](world.core, world.a) for name in PARAMETER.findall(path)
        }
        response = await world.client.request(
            method,
            path.format(**values),
            json=body_for(world.app, method, path),
            headers=world.a.headers,
        )
        assert response.status_code < 400, (
            f"{method} {path}: {response.status_code} {response.text}"
        )


async def test_operator_routes_refuse_tenants(world: World) -> None:
    routes = [(m, p) for m, p in _routes(world.app) if p.startswith(OPERATOR_PREFIX)]
    assert routes
    for method, path in routes:
        values = {name: str(uuid.uuid4()) for name in PARAMETER.findall(path)}
        before = await snapshot(world.core.database, world.a.organization_id)
        response = await world.client.request(
            method,
            path.format(**values),
            json=body_for(world.app, method, path),
            headers=world.b.headers,
        )
        assert response.status_code == 403, f"{method} {path}: {response.status_code}"
        assert await snapshot(world.core.database, world.a.organization_id) == before


async def test_provider_routes_act_on_the_callers_organisation(world: World) -> None:
    """The payment-provider routes take no ids: they act on the caller's organisation, so B
    cannot cancel, resume, re-plan or open the portal of A's subscription."""
    started = await world.client.post(
        "/v1/subscription/checkout", json={"plan": "pro"}, headers=world.a.headers
    )
    assert started.status_code == 200, started.text
    page = started.json()["url"].removeprefix("http://testserver")
    assert (await world.client.post(page)).status_code == 200
    before = await snapshot(world.core.database, world.a.organization_id)
    for path, body, status in (
        ("/v1/subscription/cancel", {"at_period_end": False}, 404),
        ("/v1/subscription/resume", None, 404),
        ("/v1/subscription/change-plan", {"plan": "business"}, 404),
        ("/v1/subscription/portal", None, 409),
    ):
        response = await world.client.post(path, json=body, headers=world.b.headers)
        assert response.status_code == status, (path, response.text)
    assert await snapshot(world.core.database, world.a.organization_id) == before
    for path in NOT_TENANT_OBJECTS:
        assert any(p == path for _, p in _routes(world.app)), path


async def test_names_are_per_organisation(world: World) -> None:
    """A memory entry is named by namespace and key within the organisation: B reading or
    deleting A's names finds nothing, and B putting them makes B's own entry."""
    assert all(any(p == path for _, p in _routes(world.app)) for path in NAMED_BY_THE_CALLER)
    url = "/v1/memory/shared-ns/shared%25key"
    put = await world.client.put(url, json={"value": {"owner": "a"}}, headers=world.a.headers)
    assert put.status_code == 200, put.text
    before = await snapshot(world.core.database, world.a.organization_id)
    for method in ("GET", "DELETE"):
        response = await world.client.request(method, url, headers=world.b.headers)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["error"]["code"] == "memory_entry_not_found"
    listed = await world.client.get("/v1/memory/shared-ns", headers=world.b.headers)
    assert listed.json() == {"items": [], "next_cursor": None}
    mine = await world.client.put(url, json={"value": {"owner": "b"}}, headers=world.b.headers)
    assert mine.status_code == 200, mine.text
    assert await snapshot(world.core.database, world.a.organization_id) == before
    theirs = await world.client.get(url, headers=world.a.headers)
    assert theirs.json()["value"] == {"owner": "a"}
    assert theirs.json()["key"] == "shared%key"

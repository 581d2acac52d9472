"""Schemathesis against the app's own `/openapi.json`, served by uvicorn on both databases:
requests generated from the schema never get a 5xx, an undocumented status, or a response
that breaks its documented schema."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import sqlalchemy as sa
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.specs.openapi import checks as openapi_checks

from saascore.api import create_app
from saascore.kit.db import Database
from saascore.models import Organization, SubscriptionPlan
from tests.cli.runner import free_port
from tests.factories import random_code
from tests.helpers import BACKENDS, examples, make_settings

CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
]


class Server:
    """The app served by uvicorn in a thread of its own (with its own event loop)."""

    def __init__(self, database: Database) -> None:
        self.settings = database.settings.model_copy(update={"auth_requests_per_minute": None})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(self.settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            assert self.thread.is_alive(), "the server stopped while starting"
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def owner_key(server: Server) -> str:
    """An API key with every scope, of a new organisation on a plan without rate limits (and
    with API access)."""
    tag = uuid.uuid4().hex[:8]
    registered = httpx.post(
        f"{server.url}/v1/auth/register",
        json={
            "email": f"fuzz-{tag}@example.com",
            "password": "a long enough password",
            "organization_name": f"Fuzz {tag}",
        },
    )
    assert registered.status_code == 201, registered.text
    tokens = registered.json()

    async def unlimited() -> None:
        database = Database(server.settings)
        try:
            async with database.transaction() as s:
                plan = SubscriptionPlan(code=random_code("fuzz"), name="Fuzz", api_access=True)
                s.add(plan)
                await s.flush()
                await s.execute(
                    sa.update(Organization)
                    .where(Organization.id == uuid.UUID(tokens["organization_id"]))
                    .values(plan_id=plan.id)
                )
        finally:
            await database.dispose()

    asyncio.run(unlimited())
    created = httpx.post(
        f"{server.url}/v1/api-keys",
        json={
            "name": "fuzz",
            "scopes": ["usage:read", "usage:write", "billing:read", "billing:write", "admin"],
        },
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert created.status_code == 201, created.text
    key: str = created.json()["key"]
    return key


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Server, str]]:
    """One server per backend for the whole module, on its scratch database."""
    database: Database = request.getfixturevalue(f"_scratch_{request.param}")
    with Server(database) as server:
        yield server, owner_key(server)


# The document the app serves; it needs no database, so it is read once, at collection.
schema = schemathesis.openapi.from_dict(create_app(make_settings()).openapi())


@schema.parametrize()
@settings(
    max_examples=examples(15),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_api_keeps_its_schema(case: schemathesis.Case, served: tuple[Server, str]) -> None:
    server, key = served
    # A generous timeout: on a loaded two-core CI machine one SQLite request once took over 10 s
    # (the default timeout), and a hang would still fail, only later.
    case.call_and_validate(
        base_url=server.url, headers={"X-API-Key": key}, checks=CHECKS, timeout=60
    )

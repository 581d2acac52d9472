"""Rate limits through HTTP: per principal, by its plan, on the memory storage and on Redis;
and `saascore serve --workers 2` on Redis admitting exactly a plan's limit across processes."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa

from saascore import Saascore
from saascore.config import Settings
from saascore.kit.db import Database
from saascore.migrations import migrate
from saascore.models import Organization, SubscriptionPlan
from saascore.plans import Catalog, PlanSpec, read_catalog
from saascore.testing import register_and_login
from tests.api.test_metrics import connections_on_each_worker, per_process, workers_cli
from tests.cli.runner import free_port
from tests.helpers import only_postgresql
from tests.http import api_app, serving, tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")

STORAGES = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest) -> str:
    """`memory://`, or the Redis server (every test makes principals of its own, so their
    windows are new; Redis is never flushed)."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest_asyncio.fixture(loop_scope="session")
async def api(scratch: Database, storage: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real app on the module's scratch database (the default catalog: the free plan
    allows 5 requests a minute and 50 an hour), its windows in `storage`."""
    application, core = api_app(scratch, rate_limit_storage=storage, auth_requests_per_minute=None)
    async with serving(application, core) as client:
        yield client


def window(response: httpx.Response) -> tuple[int, int, int]:
    """`RateLimit-Limit`, `-Remaining` and `-Reset` of an allowed response."""
    assert response.status_code == 200, response.text
    assert "Retry-After" not in response.headers
    return (
        int(response.headers["RateLimit-Limit"]),
        int(response.headers["RateLimit-Remaining"]),
        int(response.headers["RateLimit-Reset"]),
    )


def assert_refused(response: httpx.Response, limit: int, window_name: str, longest: int) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["details"]["window"] == window_name
    assert error["details"]["limit"] == limit
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= longest
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == "0"
    assert int(response.headers["RateLimit-Reset"]) == retry_after


async def create_key(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    created = await api.post("/v1/api-keys", json={"name": "worker"}, headers=headers)
    assert created.status_code == 201, created.text
    return {"X-API-Key": created.json()["key"]}


class TestByPlan:
    async def test_free_plan_five_a_minute_with_headers(self, api: httpx.AsyncClient) -> None:
        headers = await register_and_login(api)
        seen = [window(await api.get("/v1/me", headers=headers)) for _ in range(5)]
        assert [(limit, remaining) for limit, remaining, _ in seen] == [
            (5, 4),
            (5, 3),
            (5, 2),
            (5, 1),
            (5, 0),
        ]
        assert all(1 <= reset <= 60 for _, _, reset in seen)
        assert_refused(await api.get("/v1/me", headers=headers), 5, "minute", 60)
        # A refusal takes nothing: the next one is refused for the same reason.
        assert_refused(await api.get("/v1/me", headers=headers), 5, "minute", 60)

    async def test_every_authenticated_endpoint_counts(self, api: httpx.AsyncClient) -> None:
        headers = await register_and_login(api)
        assert window(await api.get("/v1/me", headers=headers))[1] == 4
        assert window(await api.get("/v1/api-keys", headers=headers))[1] == 3
        missing = await api.delete(f"/v1/api-keys/{uuid.uuid4()}", headers=headers)
        assert missing.status_code == 404  # admitted, then answered with an error: counted
        assert missing.headers["RateLimit-Remaining"] == "2"  # and the error says so
        invalid = await api.post("/v1/api-keys", json={"name": ""}, headers=headers)
        assert invalid.status_code == 422
        assert invalid.headers["RateLimit-Remaining"] == "1"
        assert window(await api.get("/v1/me", headers=headers))[1] == 0

    async def test_an_hourly_window(self, api: httpx.AsyncClient, scratch: Database) -> None:
        """A plan limited only per hour: its window resets within the hour, not the minute."""
        code = f"hourly-{secrets.token_hex(4)}"
        key = await key_on_plan(scratch, code, PlanSpec(name="Hourly", requests_per_hour=3))
        seen = [window(await api.get("/v1/me", headers=key)) for _ in range(3)]
        assert [(limit, remaining) for limit, remaining, _ in seen] == [(3, 2), (3, 1), (3, 0)]
        assert all(60 < reset <= 3600 for _, _, reset in seen)
        refused = await api.get("/v1/me", headers=key)
        assert_refused(refused, 3, "hour", 3600)
        assert int(refused.headers["Retry-After"]) > 60

    async def test_a_new_plan_applies_at_once_and_keeps_the_count(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        headers = await register_and_login(api)
        me = await api.get("/v1/me", headers=headers)
        organization = uuid.UUID(me.json()["organization"]["id"])
        for _ in range(4):
            window(await api.get("/v1/me", headers=headers))
        assert_refused(await api.get("/v1/me", headers=headers), 5, "minute", 60)
        async with scratch.transaction() as session:  # starter: 20 a minute
            starter = sa.select(SubscriptionPlan.id).where(SubscriptionPlan.code == "starter")
            await session.execute(
                sa.update(Organization)
                .where(Organization.id == organization)
                .values(plan_id=starter.scalar_subquery())
            )
        assert window(await api.get("/v1/me", headers=headers))[:2] == (20, 14)


class TestPerOrganisation:
    async def test_several_keys_and_a_user_together_get_exactly_the_plan_limit(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        """A plan's 5 a minute (the free plan's, with API access) are the organisation's: 3 keys
        and their owner, taking turns, get 5 in all (per credential they would have had 20)."""
        owner = (await tenant(api, scratch, requests_per_minute=5)).headers
        keys = [await create_key(api, owner) for _ in range(3)]  # the owner's 3 requests
        callers = [*keys, owner]
        answers = [await api.get("/v1/me", headers=callers[n % 4]) for n in range(12)]
        statuses = [answer.status_code for answer in answers]
        assert statuses == [200, 200] + [429] * 10
        assert [answer.headers["RateLimit-Remaining"] for answer in answers[:2]] == ["1", "0"]
        for answer in answers[2:]:
            assert_refused(answer, 5, "minute", 60)

    async def test_keys_racing_get_exactly_the_plan_limit(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        owner = (await tenant(api, scratch, requests_per_minute=5)).headers
        keys = [await create_key(api, owner) for _ in range(3)]  # 3 of the 5
        answers = await asyncio.gather(*(api.get("/v1/me", headers=keys[n % 3]) for n in range(15)))
        assert sorted(answer.status_code for answer in answers) == [200] * 2 + [429] * 13

    async def test_organisations_do_not_share_windows(self, api: httpx.AsyncClient) -> None:
        one, other = await register_and_login(api), await register_and_login(api)
        for _ in range(5):
            window(await api.get("/v1/me", headers=one))
        assert_refused(await api.get("/v1/me", headers=one), 5, "minute", 60)
        assert window(await api.get("/v1/me", headers=other))[:2] == (5, 4)


class TestPerCredential:
    @pytest_asyncio.fixture(loop_scope="session")
    async def api(self, scratch: Database, storage: str) -> AsyncIterator[httpx.AsyncClient]:
        """The app with `rate_limit_per_credential_per_minute=2` besides the plan's 5."""
        application, core = api_app(
            scratch,
            rate_limit_storage=storage,
            auth_requests_per_minute=None,
            rate_limit_per_credential_per_minute=2,
        )
        async with serving(application, core) as client:
            yield client

    async def test_each_credential_is_held_to_its_own_limit_within_the_plan(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        owner = (await tenant(api, scratch, requests_per_minute=5)).headers
        me = await api.get("/v1/me", headers=owner)
        assert window(me)[:2] == (2, 1)  # the owner's 1 left is tighter than the plan's 4
        first, second = await keys_of(scratch, uuid.UUID(me.json()["organization"]["id"]), 2)
        assert window(await api.get("/v1/me", headers=owner))[:2] == (2, 0)
        assert_refused(await api.get("/v1/me", headers=owner), 2, "minute", 60)
        assert window(await api.get("/v1/me", headers=first))[:2] == (2, 1)
        assert window(await api.get("/v1/me", headers=first))[:2] == (2, 0)
        assert_refused(await api.get("/v1/me", headers=first), 2, "minute", 60)
        # Refusals took nothing from the organisation: the plan has one request left.
        assert window(await api.get("/v1/me", headers=second))[:2] == (5, 0)
        assert_refused(await api.get("/v1/me", headers=second), 5, "minute", 60)


async def keys_of(database: Database, organization: uuid.UUID, count: int) -> list[dict[str, str]]:
    """`count` new API keys of `organization`, made without a request."""
    keys = []
    async with Saascore(database.settings, database=database) as core:
        for n in range(count):
            _, raw = await core.api_keys.create(organization, name=f"k{n}", scopes=["usage:read"])
            keys.append({"X-API-Key": raw})
    return keys


async def test_without_its_storage_the_limiter_refuses(scratch: Database) -> None:
    """Redis unreachable: 503 `rate_limiter_unavailable`, never an unlimited request."""
    application, core = api_app(scratch, auth_requests_per_minute=None)
    async with serving(application, core) as client:
        headers = await register_and_login(client)
    application, core = api_app(
        scratch, rate_limit_storage="redis://127.0.0.1:1/0", auth_requests_per_minute=None
    )
    async with serving(application, core) as client:
        response = await client.get("/v1/me", headers=headers)
        readiness = await client.get("/healthz")
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "rate_limiter_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert readiness.status_code == 503
    assert readiness.json()["rate_limiter"] == {"status": "unhealthy", "storage": "redis"}


async def key_on_plan(database: Database, code: str, plan: PlanSpec) -> dict[str, str]:
    """An API key of a new organisation on a new plan `code` (`plan` with API access)."""
    plan = plan.model_copy(update={"api_access": True})
    async with Saascore(database.settings, database=database) as core:
        await core.plans.load_catalog(Catalog(plans={code: plan}))
        organization = await core.orgs.create(name=f"On {code}", plan=code)
        _, raw = await core.api_keys.create(organization.id, name="k", scopes=["usage:read"])
    return {"X-API-Key": raw}


# --- across processes ------------------------------------------------------------------------
PER_MINUTE = 20


@only_postgresql
@pytest.mark.redis
async def test_two_workers_on_redis_admit_exactly_the_limit(
    empty_settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    """`saascore serve --workers 2`: many requests at once with one key, over connections held
    by both workers; exactly the plan's limit is admitted, and both workers refused some."""
    database = Database(empty_settings)
    try:
        await migrate.upgrade(database)
        async with Saascore(database.settings, database=database) as core:
            await core.plans.load_catalog(read_catalog())
        plan = PlanSpec(name="Burst", requests_per_minute=PER_MINUTE)
        keys = [await key_on_plan(database, "burst", plan) for _ in range(3)]
    finally:
        await database.dispose()
    directory = tmp_path / "prometheus"
    directory.mkdir()
    cli = workers_cli(tmp_path, database, directory).with_env(
        {"SAASCORE_RATE_LIMIT_STORAGE": redis_url}
    )
    port = free_port()
    with cli.server("serve", "--workers", "2", "--port", str(port), port=port) as server:
        await asyncio.to_thread(server.wait_until_healthy)
        async with connections_on_each_worker(server, directory, per_worker=8) as held:
            clients = [client for group in held.values() for client in group]
            for key in keys:
                refused_before = per_process(directory, "rate_limited")
                answers = await asyncio.gather(
                    *(
                        clients[n % len(clients)].get("/v1/me", headers=key)
                        for n in range(3 * PER_MINUTE)
                    )
                )
                statuses = [answer.status_code for answer in answers]
                assert statuses.count(200) == PER_MINUTE, statuses
                assert statuses.count(429) == 2 * PER_MINUTE, statuses
                refused = per_process(directory, "rate_limited")
                by_worker = {pid: refused.get(pid, 0) - refused_before.get(pid, 0) for pid in held}
                assert all(count > 0 for count in by_worker.values()), by_worker
    assert "Traceback" not in server.stderr

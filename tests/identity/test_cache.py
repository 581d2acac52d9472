"""The principal cache (`SAASCORE_AUTH_CACHE_SECONDS`): off by default; when on, changes made in
this process apply at once, changes made elsewhere within its seconds, and no entry outlives its
credential."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa

from saascore import Saascore
from saascore.events import EventBus
from saascore.events.catalog import OperatorKeyRevoked
from saascore.identity.cache import PrincipalCache
from saascore.identity.principal import Principal, PrincipalKind
from saascore.kit.db import Database
from saascore.kit.time import utcnow
from saascore.models import ApiKey
from tests.http import api_app, serving, tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Ticker:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Served:
    client: httpx.AsyncClient
    core: Saascore
    ticker: Ticker


async def _served(scratch: Database, seconds: float) -> AsyncIterator[Served]:
    application, core = api_app(scratch, auth_requests_per_minute=None, auth_cache_seconds=seconds)
    ticker = Ticker()
    core.identity.principals.clock = ticker
    async with serving(application, core) as client:
        yield Served(client, core, ticker)


@pytest_asyncio.fixture(loop_scope="session")
async def cached(scratch: Database) -> AsyncIterator[Served]:
    async for served in _served(scratch, 30):
        yield served


@pytest_asyncio.fixture(loop_scope="session")
async def uncached(scratch: Database) -> AsyncIterator[Served]:
    async for served in _served(scratch, 0):
        yield served


async def new_key(served: Served) -> tuple[uuid.UUID, dict[str, str], dict[str, str]]:
    """A new organisation's owner headers and an API key of theirs."""
    owner = await tenant(served.client, served.core.database, scopes=["usage:write", "usage:read"])
    assert owner.api_key_id is not None
    return owner.api_key_id, owner.headers, owner.key_headers


async def revoke_behind_the_process(database: Database, key_id: uuid.UUID) -> None:
    """What another process (or an operator's SQL) does: this process hears nothing of it."""
    async with database.transaction() as s:
        await s.execute(sa.update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))


async def test_off_by_default_a_change_anywhere_applies_at_once(uncached: Served) -> None:
    key_id, _, key = await new_key(uncached)
    assert (await uncached.client.get("/v1/me", headers=key)).status_code == 200
    await revoke_behind_the_process(uncached.core.database, key_id)
    assert (await uncached.client.get("/v1/me", headers=key)).status_code == 401


async def test_a_change_elsewhere_applies_when_the_entry_lapses(cached: Served) -> None:
    key_id, _, key = await new_key(cached)
    assert (await cached.client.get("/v1/me", headers=key)).status_code == 200
    await revoke_behind_the_process(cached.core.database, key_id)
    assert (await cached.client.get("/v1/me", headers=key)).status_code == 200  # cached
    cached.ticker.now += 30
    refused = await cached.client.get("/v1/me", headers=key)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_token"


async def test_a_key_revoked_in_this_process_stops_at_once(cached: Served) -> None:
    key_id, owner, key = await new_key(cached)
    assert (await cached.client.get("/v1/me", headers=key)).status_code == 200
    revoked = await cached.client.delete(f"/v1/api-keys/{key_id}", headers=owner)
    assert revoked.status_code == 200, revoked.text
    assert (await cached.client.get("/v1/me", headers=key)).status_code == 401


async def test_a_suspension_in_this_process_applies_at_once(cached: Served) -> None:
    _, owner, key = await new_key(cached)
    me = await cached.client.get("/v1/me", headers=key)
    organization = uuid.UUID(me.json()["organization"]["id"])
    await cached.core.orgs.suspend(organization, reason="unpaid")
    refused = await cached.client.get("/v1/me", headers=key)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "organization_suspended"
    assert (await cached.client.get("/v1/me", headers=owner)).status_code == 403


async def test_no_entry_outlives_its_credential() -> None:
    ticker = Ticker()
    cache = PrincipalCache(30, clock=ticker)
    principal = Principal(kind=PrincipalKind.API_KEY, id=uuid.uuid4())
    cache.put(b"expiring", principal, valid_for=timedelta(seconds=2).total_seconds())
    cache.put(b"lasting", principal)
    assert cache.get(b"expiring") is principal
    ticker.now += 2
    assert cache.get(b"expiring") is None
    assert cache.get(b"lasting") is principal
    ticker.now += 28
    assert cache.get(b"lasting") is None


async def test_an_expired_credential_is_never_kept() -> None:
    cache = PrincipalCache(30, clock=Ticker())
    cache.put(b"expired", Principal(kind=PrincipalKind.API_KEY, id=uuid.uuid4()), valid_for=-1)
    assert cache.get(b"expired") is None


async def test_a_principal_read_before_a_clear_is_not_kept() -> None:
    cache = PrincipalCache(30, clock=Ticker())
    principal = Principal(kind=PrincipalKind.API_KEY, id=uuid.uuid4())
    generation = cache.generation  # a request starts reading the credential...
    cache.clear()  # ...a revocation clears the cache meanwhile...
    cache.put(b"stale", principal, generation=generation)  # ...and its read is not kept
    assert cache.get(b"stale") is None


async def test_a_change_clears_the_cache_when_it_commits_and_not_before(
    scratch: Database,
) -> None:
    """The facade clears the cache after commit on an event that affects access: a request
    reading before the commit reads the committed (old) rows, and what it keeps goes then."""
    cache = PrincipalCache(30, clock=Ticker())
    bus = EventBus()
    bus.after_commit(lambda event: cache.clear() if event.payload.affects_access else None)
    principal = Principal(kind=PrincipalKind.API_KEY, id=uuid.uuid4())
    key_id = uuid.uuid4()
    async with scratch.transaction() as session:
        await bus.emit(session, None, OperatorKeyRevoked(key_id=key_id))
        cache.put(b"read-before-commit", principal, generation=cache.generation)
        assert cache.get(b"read-before-commit") is principal
    assert cache.get(b"read-before-commit") is None


async def test_a_change_that_rolls_back_keeps_the_cache(scratch: Database) -> None:
    cache = PrincipalCache(30, clock=Ticker())
    bus = EventBus()
    bus.after_commit(lambda event: cache.clear() if event.payload.affects_access else None)
    principal = Principal(kind=PrincipalKind.API_KEY, id=uuid.uuid4())

    async def failing_change() -> None:
        async with scratch.transaction() as session:
            await bus.emit(session, None, OperatorKeyRevoked(key_id=uuid.uuid4()))
            cache.put(b"kept", principal, generation=cache.generation)
            raise RuntimeError("the change fails")

    with pytest.raises(RuntimeError):
        await failing_change()
    assert cache.get(b"kept") is principal

"""`saascore.testing`: what a consuming project's tests get, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from saascore import Saascore
from saascore.api import create_app
from saascore.kit.db import Database
from saascore.kit.errors import ConfigurationError
from saascore.migrations import migrate
from saascore.models import Organization, SubscriptionPlan
from saascore.plans import Catalog, PlanSpec
from saascore.testing import (
    create_test_engine,
    create_test_session_factory,
    register_and_login,
    temporary_database,
)
from tests.helpers import plain_postgres_dsn

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """What a consumer passes: nothing for SQLite, its server's URL for PostgreSQL."""
    if backend == "sqlite":
        return None
    value: str = request.getfixturevalue("postgres_url")
    return value


async def plan_codes(database: Database) -> set[str]:
    async with database.session(readonly=True) as session:
        return set(await session.scalars(sa.select(SubscriptionPlan.code)))


async def schema_exists(postgres_url: str, schema: str) -> bool:
    import asyncpg

    connection = await asyncpg.connect(plain_postgres_dsn(postgres_url))
    try:
        found = await connection.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema
        )
    finally:
        await connection.close()
    return bool(found)


class TestTemporaryDatabase:
    async def test_migrated_to_head_with_the_default_catalog(self, url: str | None) -> None:
        async with temporary_database(url) as database:
            assert await migrate.current(database) == migrate.head()
            assert {"free", "starter", "pro", "business", "enterprise"} <= await plan_codes(
                database
            )
            async with Saascore(database.settings, database=database) as core:
                organization = await core.orgs.create(name="Acme")
                assert (await core.orgs.get(organization.id)).plan.code == "free"

    async def test_removed_after_the_block(self, url: str | None) -> None:
        async with temporary_database(url) as database:
            async with Saascore(database.settings, database=database) as core:
                await core.orgs.create(name="Acme")
            if url is None:
                where = Path(str(database.url.database))
                assert await asyncio.to_thread(where.exists)
            else:
                schema = database.settings.database_schema
                assert schema is not None
                assert await schema_exists(url, schema)
        if url is None:
            assert not await asyncio.to_thread(where.parent.exists)
        else:
            assert not await schema_exists(url, schema)

    async def test_each_one_is_new(self, url: str | None) -> None:
        async with temporary_database(url) as first:
            async with Saascore(first.settings, database=first) as core:
                await core.orgs.create(name="Only in the first")
            async with temporary_database(url) as second, second.session() as session:
                assert await session.scalar(sa.select(sa.func.count(Organization.id))) == 0

    async def test_a_catalog_of_its_own_or_none(self, url: str | None) -> None:
        catalog = Catalog(plans={"solo": PlanSpec(name="Solo", requests_per_minute=3)})
        async with temporary_database(url, catalog=catalog) as database:
            assert await plan_codes(database) == {"solo"}
        async with temporary_database(url, catalog=False) as database:
            assert await plan_codes(database) == set()

    async def test_settings_are_passed_on(self, url: str | None) -> None:
        async with temporary_database(url, default_plan="pro") as database:
            assert database.settings.environment == "test"
            async with Saascore(database.settings, database=database) as core:
                organization = await core.orgs.create(name="Acme")
                assert (await core.orgs.get(organization.id)).plan.code == "pro"


class TestSessionFactory:
    async def test_sessions_without_a_pool_work_from_any_event_loop(self, url: str | None) -> None:
        async with temporary_database(url) as database:
            async with Saascore(database.settings, database=database) as core:
                organization = await core.orgs.create(name="Acme")
            engine = create_test_engine(database)
            assert isinstance(engine.pool, NullPool)
            sessions = create_test_session_factory(engine)

            async def name() -> str | None:
                async with sessions() as session:
                    return await session.scalar(
                        sa.select(Organization.name).where(Organization.id == organization.id)
                    )

            # Each asyncio.run is a new loop, as pytest-asyncio gives each test by default: a
            # pooled connection from one loop cannot be used on another.
            names = [await name()]
            for _ in range(2):
                names.append(await asyncio.to_thread(asyncio.run, name()))
            assert names == ["Acme"] * 3
            await engine.dispose()

    async def test_from_the_database(self, url: str | None) -> None:
        async with temporary_database(url) as database:
            async with Saascore(database.settings, database=database) as core:
                organization = await core.orgs.create(name="Acme")
            sessions = create_test_session_factory(database)
            assert isinstance(sessions.kw["bind"].pool, NullPool)
            async with sessions() as session:
                await session.execute(
                    sa.update(Organization)
                    .where(Organization.id == organization.id)
                    .values(name="Renamed")
                )
                await session.commit()
            async with database.session(readonly=True) as session:
                stored = await session.scalar(
                    sa.select(Organization.name).where(Organization.id == organization.id)
                )
            assert stored == "Renamed"


async def test_an_app_on_it_with_an_account(url: str | None) -> None:
    """The whole path a consumer's API test takes."""
    async with temporary_database(url) as database:
        core = Saascore(database.settings, database=database)
        app = create_app(database.settings, core=core)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                headers = await register_and_login(client, email="me@example.com")
                me = await client.get("/v1/me", headers=headers)
        assert me.status_code == 200, me.text
        assert me.json()["user"]["email"] == "me@example.com"
        assert me.json()["role"] == "owner"


async def test_a_url_other_than_postgresql_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="PostgreSQL URL"):
        async with temporary_database("sqlite:///elsewhere.db"):
            pass

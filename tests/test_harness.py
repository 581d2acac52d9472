"""The test harness itself: isolation, rollback, empty databases, subprocess settings."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from saascore.config import DatabaseBackend, Settings
from saascore.kit.db import Database
from saascore.migrations import migrate
from saascore.models import Organization, SubscriptionPlan, User
from saascore.plans import PlanService
from saascore.tenancy import OrganizationService
from tests.conftest import probe_postgres, probe_redis, rollback_session, unavailable
from tests.factories import create_organization, create_plan, create_user, random_code
from tests.helpers import JoinedDatabase, settings_env


async def _exists(database: Database, column: Any, value: object) -> bool:
    """Whether a row with `column == value` is committed (seen from a new connection)."""
    async with database.session(readonly=True) as fresh:
        found = await fresh.scalar(sa.select(sa.func.count()).where(column == value))
        return bool(found)


class TestRollbackSession:
    async def test_nothing_survives_even_a_commit(self, database: Database) -> None:
        async with rollback_session(database) as session:
            organization = await create_organization(session)
            user = await create_user(session, organization)
            await session.commit()  # releases a savepoint only
            assert await session.get(User, (organization.id, user.id)) is not None
        assert not await _exists(database, Organization.id, organization.id)
        assert not await _exists(database, User.id, user.id)

    async def test_a_nested_failure_keeps_the_session_usable(self, database: Database) -> None:
        async with rollback_session(database) as session:
            plan = await create_plan(session)
            with pytest.raises(sa.exc.IntegrityError):
                async with session.begin_nested():
                    await session.execute(
                        sa.insert(SubscriptionPlan).values(id=plan.id, code="x", name="x")
                    )
            assert (await session.get(SubscriptionPlan, plan.id)) is plan
            assert (await session.scalar(sa.select(sa.func.count(SubscriptionPlan.id))) or 0) >= 1
        assert not await _exists(database, SubscriptionPlan.id, plan.id)

    async def test_session_fixture_is_in_the_database(
        self, database: Database, session: AsyncSession
    ) -> None:
        connection = session.bind
        assert isinstance(connection, AsyncConnection)
        assert connection.in_transaction()  # the outer transaction the test never sees end
        assert connection.dialect.name == database.backend.value


class TestJoinedDatabase:
    async def test_commits_release_savepoints_and_the_test_rolls_back(
        self, database: Database
    ) -> None:
        kept, failed = random_code("plan"), random_code("plan")
        async with rollback_session(database) as session:
            connection = session.bind
            assert isinstance(connection, AsyncConnection)
            joined = JoinedDatabase(database, connection)
            org = await create_organization(session)
            # A service called without a session commits its own transaction, and sees the
            # test's (uncommitted) organisation through the shared connection.
            orgs = OrganizationService(joined, PlanService(joined))
            assert (await orgs.get(org.id)).id == org.id
            async with joined.transaction() as s:
                s.add(SubscriptionPlan(code=kept, name=kept))

            async def fail() -> None:
                async with joined.transaction() as s:
                    s.add(SubscriptionPlan(code=failed, name=failed))
                    await s.flush()
                    raise RuntimeError("boom")

            with pytest.raises(RuntimeError):
                await fail()
            codes = await session.scalars(
                sa.select(SubscriptionPlan.code).where(SubscriptionPlan.code.in_([kept, failed]))
            )
            assert codes.all() == [kept]
        assert not await _exists(database, SubscriptionPlan.code, kept)
        assert not await _exists(database, Organization.id, org.id)

    async def test_fixture_shares_the_session_connection(
        self, session: AsyncSession, joined_database: JoinedDatabase
    ) -> None:
        org = await create_organization(session)
        async with joined_database.transaction() as s:
            assert s is not session
            assert (await s.get(Organization, org.id)) is not None


class TestDatabases:
    async def test_database_is_migrated_to_head(self, database: Database) -> None:
        assert await migrate.current(database) == migrate.head()

    async def test_postgres_uses_a_schema_of_its_own(self, database: Database) -> None:
        if database.backend is not DatabaseBackend.POSTGRESQL:
            assert database.url.database is not None
            assert database.url.database.endswith("test.db")
            return
        schema = database.settings.database_schema
        assert schema is not None
        assert re.fullmatch(r"t_[0-9a-f]{8}_[a-z0-9]+", schema)
        async with database.engine.connect() as connection:
            assert await connection.scalar(sa.text("SELECT current_schema()")) == schema
            tables = await connection.scalar(
                sa.text(
                    "SELECT count(*) FROM information_schema.tables "
                    "WHERE table_schema = :schema AND table_name = 'organizations'"
                ),
                {"schema": schema},
            )
        assert tables == 1

    async def test_empty_database_has_no_tables(self, empty_database: Database) -> None:
        async with empty_database.engine.connect() as connection:
            names = await connection.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert names == []
        assert await migrate.current(empty_database) is None

    async def test_settings_env_points_a_subprocess_at_the_database(
        self, empty_settings: Settings, tmp_path: Path
    ) -> None:
        script = (
            "import json; from saascore.config import load_settings; s = load_settings(); "
            "print(json.dumps([s.sqlalchemy_url.render_as_string(hide_password=False), "
            "s.database_schema, str(s.data_dir)]))"
        )
        env = {**os.environ, **settings_env(empty_settings)}
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await child.communicate()
        assert child.returncode == 0
        url, schema, data_dir = json.loads(stdout)
        expected = empty_settings.sqlalchemy_url
        assert url == expected.render_as_string(hide_password=False)
        assert schema == empty_settings.database_schema
        assert data_dir == str(empty_settings.data_dir.resolve())


class TestServers:
    def test_missing_server_skips_outside_ci(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("CI", raising=False)
        with pytest.raises(pytest.skip.Exception, match="gone"):
            unavailable("gone")

    def test_missing_server_fails_on_ci(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match="gone"):
            unavailable("gone")

    async def test_probes_report_a_closed_port(self) -> None:
        assert "unreachable" in (await probe_postgres("postgresql://postgres@127.0.0.1:1/x") or "")
        assert "unreachable" in (probe_redis("redis://127.0.0.1:1/0") or "")

    @pytest.mark.postgres
    async def test_postgres_url_answers(self, postgres_url: str) -> None:
        assert await probe_postgres(postgres_url) is None

    @pytest.mark.redis
    def test_redis_url_answers(self, redis_url: str) -> None:
        assert probe_redis(redis_url) is None


def test_tests_is_a_package() -> None:
    import tests.factories
    import tests.helpers

    assert tests.helpers.make_settings(database_url="sqlite:///x.db").environment == "test"
    assert callable(tests.factories.create_organization)

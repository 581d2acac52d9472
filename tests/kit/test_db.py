"""`Database`: transactions, sessions, pings, engines per loop, SQLite's locking, pools, Cloud SQL.

Tests that commit use a database of this module's own (`scratch`, migrated by the real
migrations), so nothing they commit reaches the shared test database; each of them writes rows
with new random keys and looks only at those.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.config import DatabaseBackend, Settings
from saascore.kit.db import Database
from saascore.kit.errors import DatabaseUnavailable
from saascore.models import BillingCycle, InvoiceSequence, PlanPrice, SubscriptionPlan
from tests.factories import random_code
from tests.helpers import (
    create_schema,
    drop_schema,
    make_settings,
    new_schema_name,
    only_sqlite,
    plain_postgres_dsn,
)


async def plan_exists(database: Database, code: str) -> bool:
    async with database.session(readonly=True) as session:
        found = await session.scalar(
            sa.select(sa.func.count()).where(SubscriptionPlan.code == code)
        )
    return bool(found)


def new_plan() -> SubscriptionPlan:
    code = random_code("plan")
    return SubscriptionPlan(code=code, name=code)


class TestTransaction:
    async def test_commits_when_the_block_ends(self, scratch: Database) -> None:
        plan = new_plan()
        async with scratch.transaction() as session:
            session.add(plan)
        assert await plan_exists(scratch, plan.code)

    async def test_rolls_back_when_the_block_raises(self, scratch: Database) -> None:
        plan = new_plan()

        async def fail() -> None:
            async with scratch.transaction() as session:
                session.add(plan)
                await session.flush()  # the row was written, then undone
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await fail()
        assert not await plan_exists(scratch, plan.code)

    async def test_session_leaves_the_commit_to_the_caller(self, scratch: Database) -> None:
        dropped, kept = new_plan(), new_plan()
        async with scratch.session() as session:
            assert isinstance(session, AsyncSession)
            session.add(dropped)
            await session.flush()
        async with scratch.session() as session:
            session.add(kept)
            await session.commit()
        assert not await plan_exists(scratch, dropped.code)
        assert await plan_exists(scratch, kept.code)

    async def test_sessions_do_not_expire_on_commit(self, scratch: Database) -> None:
        plan = new_plan()
        async with scratch.session() as session:
            session.add(plan)
            await session.commit()
            # Reading an attribute after commit must not need a (lazy, async) refresh.
            assert plan.code.startswith("plan_")
            assert "code" in plan.__dict__

    async def test_scope_without_a_session_commits_its_own(self, scratch: Database) -> None:
        plan = new_plan()
        async with scratch.scope(None) as session:
            session.add(plan)
        assert await plan_exists(scratch, plan.code)

    async def test_scope_with_a_session_joins_it_and_does_not_commit(
        self, scratch: Database
    ) -> None:
        plan = new_plan()
        async with scratch.session() as outer:
            async with scratch.scope(outer) as session:
                assert session is outer
                session.add(plan)
                await session.flush()
            assert outer.in_transaction()  # still open: scope committed nothing
            await outer.rollback()
        assert not await plan_exists(scratch, plan.code)


class TestPing:
    async def test_ping(self, database: Database) -> None:
        await database.ping()

    def test_postgresql_urls_use_asyncpg(self) -> None:
        database = Database(
            make_settings(database_url="postgresql://u:secret@db.internal:6432/app")
        )
        assert database.backend is DatabaseBackend.POSTGRESQL
        assert database.url.drivername == "postgresql+asyncpg"
        assert (database.url.host, database.url.port, database.url.database) == (
            "db.internal",
            6432,
            "app",
        )
        assert "secret" not in repr(database)

    async def test_unreachable_postgresql(self) -> None:
        database = Database(make_settings(database_url="postgresql://postgres@127.0.0.1:1/test"))
        try:
            with pytest.raises(DatabaseUnavailable) as info:
                await database.ping()
        finally:
            await database.dispose()
        message = str(info.value)
        assert message.startswith("cannot reach the database: ")
        assert "\n" not in message

    async def test_a_server_that_never_answers(self) -> None:
        clients: list[asyncio.StreamWriter] = []

        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            clients.append(writer)  # and say nothing

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        database = Database(make_settings(database_url=f"postgresql://u@127.0.0.1:{port}/x"))
        try:
            with pytest.raises(DatabaseUnavailable, match="did not answer in time"):
                await database.ping(timeout=0.2)
        finally:
            await database.dispose()
            for writer in clients:
                writer.close()
            server.close()


class TestEnginePerLoop:
    async def test_another_loop_gets_its_own_engine(self, empty_database: Database) -> None:
        here = empty_database.engine
        assert empty_database.engine is here  # cached for this loop

        async def elsewhere() -> tuple[int, int, bool]:
            engine = empty_database.engine
            try:
                async with engine.connect() as connection:
                    answer = await connection.scalar(sa.text("SELECT 42"))
                return id(engine), int(answer or 0), empty_database.engine is engine
            finally:
                await engine.dispose()

        other_id, answer, cached = await asyncio.to_thread(asyncio.run, elsewhere())
        assert other_id != id(here)
        assert (answer, cached) == (42, True)
        assert empty_database.engine is here
        await empty_database.ping()


@only_sqlite
class TestSQLite:
    async def test_connection_pragmas(self, empty_settings: Settings) -> None:
        database = Database(empty_settings.model_copy(update={"sqlite_busy_timeout_ms": 4321}))
        try:
            async with database.engine.connect() as connection:
                pragmas = {
                    name: await connection.scalar(sa.text(f"PRAGMA {name}"))
                    for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
                }
        finally:
            await database.dispose()
        assert pragmas == {
            "journal_mode": "wal",
            "foreign_keys": 1,
            "busy_timeout": 4321,
            "synchronous": 1,  # NORMAL
        }

    async def test_writers_begin_immediate_and_readers_deferred(
        self, empty_settings: Settings
    ) -> None:
        # No busy timeout: a lock conflict fails at once instead of waiting.
        database = Database(empty_settings.model_copy(update={"sqlite_busy_timeout_ms": 0}))
        try:
            async with AsyncExitStack() as stack:  # open three connections before any lock
                for _ in range(3):
                    connection = await stack.enter_async_context(database.engine.connect())
                    await connection.execute(sa.text("SELECT 1"))
            async with database.session() as writer:
                await writer.execute(sa.text("SELECT 1"))  # BEGIN IMMEDIATE: the write lock
                async with database.session(readonly=True) as reader:
                    assert await reader.scalar(sa.text("SELECT 1")) == 1
                async with database.session() as second_writer:
                    with pytest.raises(OperationalError, match="database is locked"):
                        await second_writer.execute(sa.text("SELECT 1"))
        finally:
            await database.dispose()

    async def test_concurrent_writers_wait_for_each_other(self, race_database: Database) -> None:
        series = random_code("INV")
        async with race_database.transaction() as session:
            session.add(InvoiceSequence(series=series, last_number=0))
        row = InvoiceSequence.series == series

        async def increment() -> None:
            # Read-modify-write: only correct because BEGIN IMMEDIATE serialises writers.
            async with race_database.transaction() as session:
                value = await session.scalar(sa.select(InvoiceSequence.last_number).where(row))
                assert value is not None
                await session.execute(
                    sa.update(InvoiceSequence).where(row).values(last_number=value + 1)
                )

        results = await asyncio.gather(*(increment() for _ in range(20)), return_exceptions=True)
        assert [r for r in results if r is not None] == []
        async with race_database.session(readonly=True) as session:
            assert await session.scalar(sa.select(InvoiceSequence.last_number).where(row)) == 20


@pytest.mark.postgres
class TestPostgreSQLPool:
    async def test_pool_settings_reach_the_engine(self, postgres_url: str) -> None:
        settings = make_settings(
            database_url=postgres_url,
            db_pool_size=2,
            db_max_overflow=1,
            db_pool_timeout=0.1,
            db_pool_recycle=77,
            db_pool_pre_ping=True,
        )
        database = Database(settings)
        try:
            pool: Any = database.engine.pool
            assert pool.size() == 2
            assert pool.timeout() == 0.1
            assert pool._max_overflow == 1
            assert pool._recycle == 77
            assert pool._pre_ping is True
            assert Database(make_settings(database_url=postgres_url)).settings.db_pool_pre_ping is (
                False
            )
            async with AsyncExitStack() as stack:
                for _ in range(3):  # pool_size + max_overflow
                    connection = await stack.enter_async_context(database.engine.connect())
                    await connection.execute(sa.text("SELECT 1"))
                assert pool.checkedout() == 3
                with pytest.raises(PoolTimeoutError):
                    await stack.enter_async_context(database.engine.connect())
        finally:
            await database.dispose()


class TestDriver:
    """`Database.driver()`: the asyncpg connection under a pooled one, handed back clean."""

    @pytest_asyncio.fixture
    async def small(self, postgres_url: str) -> AsyncIterator[Database]:
        database = Database(make_settings(database_url=postgres_url, db_pool_size=1))
        yield database
        await database.dispose()

    async def test_a_connection_comes_back_to_the_pool(self, small: Database) -> None:
        pids = set()
        for _ in range(3):
            async with small.driver() as driver:
                pids.add(await driver.fetchval("SELECT pg_backend_pid()"))
        assert len(pids) == 1  # one pooled connection, reused
        assert small.engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    async def test_a_lost_connection_is_unavailable_then_replaced(
        self, small: Database, postgres_url: str
    ) -> None:
        async with small.driver() as driver:
            lost = await driver.fetchval("SELECT pg_backend_pid()")
        admin = await asyncpg.connect(plain_postgres_dsn(postgres_url))
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", lost)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # the server's goodbye reaches the pooled connection
        with pytest.raises(DatabaseUnavailable):
            async with small.driver() as driver:
                await driver.fetchval("SELECT 1")
        async with small.driver() as driver:
            assert await driver.fetchval("SELECT pg_backend_pid()") != lost

    async def test_a_connection_left_in_a_transaction_is_not_reused(self, small: Database) -> None:
        async with small.driver() as driver:
            first = await driver.fetchval("SELECT pg_backend_pid()")
            await driver.execute("BEGIN")
        async with small.driver() as driver:
            assert not driver.is_in_transaction()
            assert await driver.fetchval("SELECT pg_backend_pid()") != first

    async def test_a_cancelled_statement_discards_its_connection(self, small: Database) -> None:
        async def slow() -> None:
            async with small.driver() as driver:
                await driver.execute("SELECT pg_sleep(30)")

        async with small.driver() as driver:
            first = await driver.fetchval("SELECT pg_backend_pid()")
        task = asyncio.create_task(slow())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with small.driver() as driver:
            assert await driver.fetchval("SELECT pg_backend_pid()") != first

    async def test_an_exhausted_pool_is_unavailable(self, postgres_url: str) -> None:
        database = Database(
            make_settings(
                database_url=postgres_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.1
            )
        )
        try:
            async with database.driver():
                with pytest.raises(DatabaseUnavailable):
                    async with database.driver():
                        pass
        finally:
            await database.dispose()


class TestReadRow:
    """`Database.read_row`: on PostgreSQL the raw driver, giving what SQLAlchemy gives."""

    QUERY = (
        sa.select(
            SubscriptionPlan.id,
            SubscriptionPlan.code,
            SubscriptionPlan.description,
            SubscriptionPlan.features,
            SubscriptionPlan.monthly_token_limit,
            SubscriptionPlan.api_access,
            SubscriptionPlan.created_at,
            PlanPrice.billing_cycle,
            PlanPrice.amount,
        )
        .join(PlanPrice, PlanPrice.plan_id == SubscriptionPlan.id)
        .where(SubscriptionPlan.code == sa.bindparam("code"), PlanPrice.amount > sa.bindparam("n"))
    )

    async def test_the_row_is_the_one_sqlalchemy_reads(self, scratch: Database) -> None:
        plan = new_plan()
        plan.features = {"deep": {"list": [1, 2.5, "x"]}, "flag": True}
        plan.monthly_token_limit = 2**63 - 1
        async with scratch.transaction() as session:
            session.add(plan)
            await session.flush()
            session.add(
                PlanPrice(
                    plan_id=plan.id,
                    billing_cycle=BillingCycle.YEARLY,
                    currency="EUR",
                    amount=1200,
                )
            )
        parameters = {"code": plan.code, "n": 0}
        async with scratch.engine.connect() as connection:
            expected = (await connection.execute(self.QUERY, parameters)).one()
        for _ in range(2):  # compiled once, then reused
            row = await scratch.read_row(self.QUERY, parameters)
            assert row is not None
            assert tuple(row) == tuple(expected)
            assert [type(value) for value in row] == [type(value) for value in expected]
            assert row.billing_cycle is BillingCycle.YEARLY
            assert row.features == {"deep": {"list": [1, 2.5, "x"]}, "flag": True}
        assert await scratch.read_row(self.QUERY, {"code": plan.code, "n": 5000}) is None


@dataclass
class StandInConnector:
    """What `google.cloud.sql.connector.Connector` does for us, against the local server."""

    dsn: str
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    closed: bool = False

    async def connect_async(
        self, instance_connection_string: str, driver: str, **kwargs: Any
    ) -> Any:
        self.calls.append((instance_connection_string, driver, kwargs))
        return await asyncpg.connect(
            self.dsn,
            user=kwargs["user"],
            password=kwargs["password"],
            database=kwargs["db"],
            server_settings=kwargs["server_settings"],
        )

    async def close_async(self) -> None:
        self.closed = True


@pytest.mark.postgres
class TestCloudSQLConnector:
    @pytest_asyncio.fixture(loop_scope="session")
    async def schema(self, postgres_url: str) -> AsyncIterator[str]:
        name = new_schema_name()
        await create_schema(postgres_url, name)
        yield name
        await drop_schema(postgres_url, name)

    async def test_connections_come_from_the_connector(
        self, postgres_url: str, schema: str
    ) -> None:
        server = make_url(postgres_url)
        connector = StandInConnector(plain_postgres_dsn(postgres_url))
        factory_calls = 0

        async def factory() -> StandInConnector:
            nonlocal factory_calls
            factory_calls += 1
            return connector

        settings = make_settings(
            use_cloud_sql_connector=True,
            cloud_sql_instance="proj:region:inst",
            cloud_sql_ip_type="PRIVATE",
            database_user=server.username or "postgres",
            database_password=server.password,
            database_name=server.database,
            database_schema=schema,
        )
        database = Database(settings, connector_factory=factory)
        try:
            async with database.engine.connect() as connection:
                assert await connection.scalar(sa.text("SELECT 1 + 1")) == 2
                assert await connection.scalar(sa.text("SELECT current_schema()")) == schema
            async with database.engine.connect() as connection:
                assert await connection.scalar(sa.text("SELECT 3")) == 3
        finally:
            await database.dispose()

        assert factory_calls == 1  # one connector per loop, created on first use
        assert connector.closed
        instance, driver, kwargs = connector.calls[0]
        assert (instance, driver) == ("proj:region:inst", "asyncpg")
        assert kwargs["user"] == (server.username or "postgres")
        assert kwargs["db"] == server.database
        assert kwargs["ip_type"] == "private"
        assert kwargs["server_settings"]["search_path"] == schema
        assert kwargs["server_settings"]["application_name"] == settings.service_name

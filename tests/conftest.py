"""The test harness: real databases, built once per run by the real migrations.

Fixtures (the contract other test packages code against):

- `postgres_url` (session): the PostgreSQL server's URL (`SAASCORE_TEST_POSTGRES_URL`); skips the
  test when the server is unreachable, or fails it when `CI=true`.
- `redis_url` (session): the same for Redis (`SAASCORE_TEST_REDIS_URL`).
- `backend` (function, parametrized): `"sqlite"` and `"postgresql"` (marked `postgres`).
- `database` (function): the `Database` of `backend`, migrated to head. Built once per backend
  per run (per xdist worker): a SQLite file in a session temp dir, or a PostgreSQL schema
  `t_<random>_<worker>` dropped at the end. Nothing may be committed into it except through
  `session`, which rolls back; tests that must commit use `empty_settings`.
- `scratch` (function): a migrated database with the default catalog, one per test module,
  that the module's tests may commit into.
- `race_database` (function): the database for concurrency tests, whose sessions really
  commit and race: `scratch`'s database on an engine of its own, its pool sized for racing
  workers (`RACE_POOL`), its PostgreSQL connections closed after each test (the server is
  shared). Tests make organisations of their own. Marked `@pytest.mark.race_database(fresh=True)`
  (a test or a class), a test gets instead a brand-new database of its own, migrated, without
  the catalog, for invariants over whole tables.
- `session` (function): an `AsyncSession` inside a connection-level transaction that is rolled
  back after the test; `session.commit()` only releases a savepoint.
- `empty_settings` (function): `Settings` for a brand-new, empty database (no migrations).
- `empty_database` (function): `Database(empty_settings)`, disposed after the test.
- `joined_database` (function): a `Database` whose sessions join `session`'s connection, so code
  that commits (an app's requests, services called without a session) sees the test's rows and
  is rolled back with them (`tests.helpers.JoinedDatabase`).

The app over HTTP (`tests.http`, `tests.admin`):

- `api` (function): a client of the real app on `scratch`; organisations are made with
  `tests.http.tenant` (built on `saascore.testing.register_tenant`).
- `admin` (function): `tests.admin.Admin`, the real app on `scratch` with an operator key and a
  plan without rate limits, for the operator routes (`/v1/admin`) of every domain.
- `customer` (function): a `saascore.testing.TestTenant` registered through `admin`'s app on
  its plan, with an API key of every scope: the organisation an operator test acts on.

`tests.helpers.settings_env(settings)` gives the environment for a `saascore` subprocess.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from saascore.config import Settings
from saascore.kit.db import Database
from saascore.migrations import migrate
from saascore.plans import PlanService, read_catalog
from saascore.testing import TestTenant
from tests.admin import Admin, administered, customer_of
from tests.helpers import (
    BACKENDS,
    JoinedDatabase,
    create_schema,
    drop_schema,
    load_hypothesis_profile,
    make_settings,
    migrated_database,
    new_schema_name,
    plain_postgres_dsn,
)
from tests.http import api_app, serving

load_hypothesis_profile()

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

#: Enough connections for racing workers to pile up on a lock (the rest wait for the pool, far
#: from its timeout), and few enough that two xdist workers beside other test runs and
#: benchmarks stay under the shared server's `max_connections` (100).
RACE_POOL = {"db_pool_size": 6, "db_max_overflow": 10, "db_pool_timeout": 60.0}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "race_database(fresh=False): fresh=True gives the test a new, empty race_database",
    )


# --- servers -----------------------------------------------------------------------------------
def unavailable(reason: str) -> None:
    """Skip the test for a missing server, except on CI, where a missing server is a failure."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (CI=true: servers are required)", pytrace=False)
    pytest.skip(reason)


async def probe_postgres(url: str, timeout: float = 3.0) -> str | None:
    """None if PostgreSQL answers at `url`, else why not."""
    try:
        connection = await asyncpg.connect(plain_postgres_dsn(url), timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {url} is unreachable: {' '.join(str(exc).split())}"
    await connection.close()
    return None


def probe_redis(url: str, timeout: float = 3.0) -> str | None:
    """None if Redis answers `PING` at `url`, else why not (raw RESP: no redis-py needed)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        return f"Redis at {url} is unreachable: {exc}"
    if not reply.startswith(b"+PONG"):
        return f"Redis at {url} answered {reply!r} to PING"
    return None


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def postgres_url() -> str:
    url = os.environ.get("SAASCORE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    reason = await probe_postgres(url)
    if reason is not None:
        unavailable(reason)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("SAASCORE_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    reason = probe_redis(url)
    if reason is not None:
        unavailable(reason)
    return url


# --- the migrated databases, one per backend per run ----------------------------------------
@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def _sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    async with migrated_database("sqlite", tmp_path_factory.mktemp("sqlite")) as database:
        yield database


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def _postgresql_database(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    directory = tmp_path_factory.mktemp("postgresql")
    async with migrated_database("postgresql", directory, postgres_url) as database:
        yield database


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def _scratch_sqlite(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    async with migrated_database("sqlite", tmp_path_factory.mktemp("scratch")) as database:
        await PlanService(database).load_catalog(read_catalog())
        yield database


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def _scratch_postgresql(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    directory = tmp_path_factory.mktemp("scratch")
    async with migrated_database("postgresql", directory, postgres_url) as database:
        await PlanService(database).load_catalog(read_catalog())
        yield database


@pytest.fixture
def scratch(backend: str, request: pytest.FixtureRequest) -> Database:
    """A migrated database with the default catalog, one per test module, that its tests
    commit into (concurrency tests, code that commits on its own). Tests share it within the
    module, so each makes organisations of its own."""
    database: Database = request.getfixturevalue(f"_scratch_{backend}")
    return database


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def _race_sqlite(_scratch_sqlite: Database) -> AsyncIterator[Database]:
    # SQLite keeps its connections from test to test: opening a pool's worth at once under
    # write contention costs seconds.
    database = Database(_scratch_sqlite.settings.model_copy(update=RACE_POOL))
    try:
        yield database
    finally:
        await database.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def _race_postgresql(_scratch_postgresql: Database) -> AsyncIterator[Database]:
    # A new engine for each test, closed after it (the server is shared): a disposed
    # `Database` would build its next engine without a pool, a connection per worker.
    database = Database(_scratch_postgresql.settings.model_copy(update=RACE_POOL))
    try:
        yield database
    finally:
        await database.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def _race_fresh(empty_settings: Settings) -> AsyncIterator[Database]:
    database = Database(empty_settings.model_copy(update=RACE_POOL))
    try:
        await migrate.upgrade(database)
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def race_database(backend: str, request: pytest.FixtureRequest) -> Database:
    """The database of concurrency tests: sessions that really commit and race."""
    marker = request.node.get_closest_marker("race_database")
    fresh = marker is not None and marker.kwargs.get("fresh", False)
    value: Database = request.getfixturevalue("_race_fresh" if fresh else f"_race_{backend}")
    return value


@pytest.fixture
def database(backend: str, request: pytest.FixtureRequest) -> Database:
    """The migrated database of `backend`, shared by every test of this run (and worker)."""
    # Looked up by name so that SQLite tests never need the PostgreSQL server.
    value: Database = request.getfixturevalue(f"_{backend}_database")
    return value


@asynccontextmanager
async def rollback_session(database: Database) -> AsyncIterator[AsyncSession]:
    """A session joined to an outer transaction that is always rolled back.

    SQLAlchemy's "Joining a Session into an External Transaction": the session's own
    `commit()`/`rollback()` work on SAVEPOINTs, the outer transaction discards everything.
    """
    async with database.engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(
            bind=connection,
            expire_on_commit=False,
            join_transaction_mode="create_savepoint",
        )
        try:
            yield session
        finally:
            await session.close()
            if transaction.is_active:
                await transaction.rollback()


@pytest_asyncio.fixture(loop_scope="session")
async def session(database: Database) -> AsyncIterator[AsyncSession]:
    async with rollback_session(database) as s:
        yield s


@pytest.fixture
def joined_database(database: Database, session: AsyncSession) -> JoinedDatabase:
    connection = session.bind
    assert isinstance(connection, AsyncConnection)
    return JoinedDatabase(database, connection)


# --- empty databases, one per test ---------------------------------------------------------
@pytest_asyncio.fixture(loop_scope="session")
async def _fresh_postgres_schema(postgres_url: str) -> AsyncIterator[str]:
    schema = new_schema_name()
    await create_schema(postgres_url, schema)
    try:
        yield schema
    finally:
        await drop_schema(postgres_url, schema)


@pytest.fixture
def empty_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for a new, empty database of `backend` (no migrations applied)."""
    data_dir = tmp_path / "data"
    if backend == "sqlite":
        return make_settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}", data_dir=data_dir)
    return make_settings(
        database_url=request.getfixturevalue("postgres_url"),
        database_schema=request.getfixturevalue("_fresh_postgres_schema"),
        data_dir=data_dir,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def empty_database(empty_settings: Settings) -> AsyncIterator[Database]:
    database = Database(empty_settings)
    try:
        yield database
    finally:
        await database.dispose()


# --- the app over HTTP ---------------------------------------------------------------------
@pytest_asyncio.fixture(loop_scope="session")
async def api(scratch: Database) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real app on the module's scratch database (default catalog loaded).
    Requests commit; tests make organisations of their own (`tests.http.tenant`). Login and
    registration are not rate limited here; plans' own limits are."""
    application, core = api_app(scratch, auth_requests_per_minute=None)
    async with serving(application, core) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def admin(scratch: Database) -> AsyncIterator[Admin]:
    async with administered(scratch) as value:
        yield value


@pytest_asyncio.fixture(loop_scope="session")
async def customer(admin: Admin) -> TestTenant:
    return await customer_of(admin)

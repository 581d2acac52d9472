"""Plain helpers for tests (importable as `tests.helpers`; fixtures live in `tests/conftest.py`)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from saascore.config import Settings
from saascore.kit.db import Database

#: Where the controllable clocks start: mid-month, so a month boundary is a known step away.
CLOCK_START = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@dataclass
class Clock:
    """A service's clock (`UsageService(database, clock=clock)`): time stands still until a
    test moves it, and only forward."""

    now: datetime = CLOCK_START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta = timedelta(0), **units: float) -> datetime:
        self.now += delta + timedelta(**units)
        return self.now

    def set(self, moment: datetime) -> datetime:
        assert moment >= self.now, "the clock only moves forward"
        self.now = moment
        return self.now


__all__ = [
    "BACKENDS",
    "FUZZ_FACTOR",
    "JoinedDatabase",
    "create_schema",
    "drop_schema",
    "examples",
    "load_hypothesis_profile",
    "make_settings",
    "new_schema_name",
    "only_postgresql",
    "only_sqlite",
    "plain_postgres_dsn",
    "settings_env",
    "worker_id",
]


# --- Hypothesis profiles ---------------------------------------------------------------------
#: `ci` (chosen when `CI=true`): derandomized and without the example database, so a red CI is a
#: regression, never a draw. `fuzz` (`make fuzz`, `HYPOTHESIS_PROFILE=fuzz`): fresh random seeds
#: and `FUZZ_FACTOR` times each test's examples. A failure found either way becomes an `@example`.
PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"derandomize": True, "database": None, "print_blob": True},
    "fuzz": {"derandomize": False, "print_blob": True},
}
FUZZ_FACTOR = 10
for _name, _values in PROFILES.items():
    hypothesis_settings.register_profile(
        _name,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        **_values,
    )


def hypothesis_profile() -> str:
    """The profile this run asks for: `HYPOTHESIS_PROFILE`, else `ci` on CI, else `default`."""
    chosen = os.environ.get("HYPOTHESIS_PROFILE", "").strip()
    if chosen:
        return chosen
    return "ci" if os.environ.get("CI", "").strip().lower() == "true" else "default"


def load_hypothesis_profile() -> None:
    hypothesis_settings.load_profile(hypothesis_profile())


def examples(count: int) -> int:
    """A test's number of examples: `count`, times `FUZZ_FACTOR` under the `fuzz` profile."""
    return count * FUZZ_FACTOR if hypothesis_profile() == "fuzz" else count


#: The `backend` fixture's parameters; PostgreSQL tests carry the `postgres` mark.
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]
#: Decorators that run a test using `backend` (or `database`, `session`, `empty_settings`, ...)
#: on one backend only.
only_sqlite = pytest.mark.parametrize("backend", BACKENDS[:1], indirect=True)
only_postgresql = pytest.mark.parametrize("backend", BACKENDS[1:], indirect=True)


def worker_id() -> str:
    """The pytest-xdist worker (`gw0`, `gw1`, ...), or `main` when xdist does not run."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def new_schema_name() -> str:
    """A PostgreSQL schema name no other run or worker uses: `t_<random>_<worker>`."""
    return f"t_{secrets.token_hex(4)}_{worker_id()}".lower()


def plain_postgres_dsn(url: str) -> str:
    """`postgresql+asyncpg://...` -> `postgresql://...`, the form asyncpg itself accepts."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_schema(postgres_url: str, schema: str) -> None:
    connection = await asyncpg.connect(plain_postgres_dsn(postgres_url), timeout=10)
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await connection.close()


async def drop_schema(postgres_url: str, schema: str) -> None:
    connection = await asyncpg.connect(plain_postgres_dsn(postgres_url), timeout=10)
    try:
        # A connection left idle in a transaction would make DROP wait forever; fail instead.
        await connection.execute("SET lock_timeout = '10s'")
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@asynccontextmanager
async def migrated_database(
    backend: str, directory: Path, postgres_url: str | None = None
) -> AsyncIterator[Database]:
    """A new database of `backend`, migrated to head, dropped (or left in `directory`) after.

    SQLite: a file in `directory`. PostgreSQL: a new schema on `postgres_url`.
    """
    if backend == "sqlite":
        settings = make_settings(
            database_url=f"sqlite:///{directory / 'test.db'}", data_dir=directory
        )
        schema = None
    else:
        assert postgres_url is not None
        schema = new_schema_name()
        await create_schema(postgres_url, schema)
        settings = make_settings(
            database_url=postgres_url, database_schema=schema, data_dir=directory
        )
    database = Database(settings)
    try:
        from saascore.migrations import migrate

        await migrate.upgrade(database)
        yield database
    finally:
        await database.dispose()
        if schema is not None and postgres_url is not None:
            await drop_schema(postgres_url, schema)


def make_settings(**values: Any) -> Settings:
    """`Settings` for tests: the given values win over the environment, and no `.env` is read."""
    values.setdefault("environment", "test")
    return Settings(_env_file=None, **values)


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a `saascore ...` subprocess use `settings`' database.

    Merge them over `os.environ` when starting the subprocess:
    `subprocess.run([...], env={**os.environ, **settings_env(settings)})`.
    """
    if settings.use_cloud_sql_connector:
        raise ValueError("settings_env cannot express a Cloud SQL connector configuration")
    url = settings.sqlalchemy_url
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str(Path(url.database).resolve()))  # the child may run elsewhere
    env = {
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "SAASCORE_DATA_DIR": str(Path(settings.data_dir).resolve()),
        "SAASCORE_ENVIRONMENT": settings.environment,
    }
    if settings.database_schema:
        env["SAASCORE_DATABASE_SCHEMA"] = settings.database_schema
    if settings.auto_migrate is not None:
        env["SAASCORE_AUTO_MIGRATE"] = "true" if settings.auto_migrate else "false"
    return env


class JoinedDatabase(Database):
    """A `Database` whose sessions all join one connection's transaction, which the test rolls
    back: code that commits (a request's `db.transaction()`, a service called without a session)
    only releases SAVEPOINTs, and sees the rows the test made with the same connection.

    One connection: use it from one task at a time (no `asyncio.gather` of requests).
    """

    def __init__(self, database: Database, connection: AsyncConnection) -> None:
        super().__init__(database.settings)
        self.connection = connection

    @asynccontextmanager
    async def session(self, *, readonly: bool = False) -> AsyncIterator[AsyncSession]:
        session = AsyncSession(
            bind=self.connection,
            expire_on_commit=False,
            join_transaction_mode="create_savepoint",
        )
        try:
            yield session
        finally:
            await session.close()

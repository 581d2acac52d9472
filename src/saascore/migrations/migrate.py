"""Running the Alembic migrations shipped in `saascore/migrations` from async code."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from saascore.config import DatabaseBackend
from saascore.kit.db import SQLITE_BEGIN, Database
from saascore.kit.errors import SaascoreError
from saascore.models import Base

#: The advisory lock key that serializes migrations (an arbitrary constant: "saascore").
MIGRATION_LOCK = 0x5AA5C0

__all__ = [
    "MIGRATION_LOCK",
    "MigrationError",
    "Revision",
    "alembic_config",
    "check",
    "current",
    "downgrade",
    "head",
    "history",
    "revision",
    "upgrade",
]

FILE_TEMPLATE = "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(rev)s_%%(slug)s"


class MigrationError(SaascoreError):
    """A migration could not be applied; the database was left as it was."""


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str | None
    message: str
    is_head: bool


def alembic_config(database: Database | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", "saascore:migrations")
    config.set_main_option("file_template", FILE_TEMPLATE)
    config.set_main_option("timezone", "UTC")
    config.set_section_option("post_write_hooks", "hooks", "ruff_format")
    config.set_section_option("post_write_hooks", "ruff_format.type", "module")
    config.set_section_option("post_write_hooks", "ruff_format.module", "ruff")
    config.set_section_option(
        "post_write_hooks", "ruff_format.options", "format REVISION_SCRIPT_FILENAME"
    )
    if database is not None:
        config.attributes["settings"] = database.settings
    return config


async def _run(database: Database, fn: Any, *args: Any) -> Any:
    """Run `fn(config, *args)` with Alembic bound to one connection, in one transaction."""
    config = alembic_config(database)

    def work(connection: Connection) -> Any:
        config.attributes["connection"] = connection
        return fn(config, *args)

    async with database.unbounded_connection() as connection:
        if database.backend is not DatabaseBackend.SQLITE:
            result = await connection.run_sync(work)
            await connection.commit()
            return result
        # SQLite alters a table by copying it and dropping the old one: with foreign keys on,
        # that DROP would cascade into every referencing table. So they are off while the
        # migration runs (the pragma is a no-op inside a transaction, hence before BEGIN),
        # checked before the commit, and on again after. BEGIN IMMEDIATE makes a second
        # process that migrates at the same time wait, then find the work done.
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.execute("PRAGMA foreign_keys=OFF")
        try:
            await connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            result = await connection.run_sync(work)
            broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
            if broken:
                await connection.rollback()
                raise MigrationError(
                    f"the migration would leave {len(broken)} rows with broken foreign keys "
                    f"(first in table {broken[0][0]}); nothing was changed"
                )
            await connection.commit()
        finally:
            await driver.execute("PRAGMA foreign_keys=ON")
    return result


@asynccontextmanager
async def _migration_lock(database: Database) -> AsyncIterator[None]:
    """On a SQLite file, hold an exclusive lock on `<file>.migrate.lock` (fcntl).

    Alembic commits after each migration on SQLite, so BEGIN IMMEDIATE alone lets two processes
    that start together on a new database interleave their migrations (the second then fails to
    move a version the first already moved). With the lock, one migrates and the others wait,
    then find the database at head. PostgreSQL takes an advisory lock instead (see env.py).
    Where fcntl does not exist (Windows), nothing is locked."""
    path = database.url.database if database.backend is DatabaseBackend.SQLITE else None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        path = None
    if not path or path == ":memory:" or path.startswith("file:"):
        yield
        return
    lock_path = Path(path).with_name(Path(path).name + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _moving(step: Any) -> Any:
    """`step(config, revision)` that returns the revisions before and after it, read in the
    migration's transaction: after the lock is taken, so that of several processes migrating
    at once, those that waited say they found the database already moved."""

    def move(config: Config, revision: str) -> tuple[str | None, str | None]:
        connection = config.attributes["connection"]
        settings = config.attributes.get("settings")
        options = {"version_table_schema": settings.database_schema if settings else None}
        if connection.dialect.name == "postgresql":
            # env.py takes this (re-entrant) lock too; taken here, it covers the first read.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        before = MigrationContext.configure(connection, opts=options).get_current_revision()
        step(config, revision)
        after = MigrationContext.configure(connection, opts=options).get_current_revision()
        return before, after

    return move


async def upgrade(database: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade to `revision`; returns the revisions before and after (None: no revision)."""
    async with _migration_lock(database):
        moved: tuple[str | None, str | None] = await _run(
            database, _moving(command.upgrade), revision
        )
    return moved


async def downgrade(database: Database, revision: str) -> tuple[str | None, str | None]:
    """Downgrade to `revision`; returns the revisions before and after (None: no revision)."""
    async with _migration_lock(database):
        moved: tuple[str | None, str | None] = await _run(
            database, _moving(command.downgrade), revision
        )
    return moved


async def revision(database: Database, message: str) -> str:
    """Write a new migration with what the models have that the database (at head) lacks.

    For saascore's developers: the file goes into `saascore/migrations/versions`, numbered
    after the head. Returns its path."""
    number = f"{int(head()) + 1:04d}"

    def write(config: Config) -> str:
        script = command.revision(config, message=message, autogenerate=True, rev_id=number)
        assert script is not None
        assert not isinstance(script, list)
        return str(script.path)

    path: str = await _run(database, write)
    return path


def _schema(database: Database) -> str | None:
    return database.settings.database_schema


async def current(database: Database) -> str | None:
    """The revision the database is at, or None before the first migration."""

    def read(connection: Connection) -> str | None:
        options = {"version_table_schema": _schema(database)}
        return MigrationContext.configure(connection, opts=options).get_current_revision()

    async with database.unbounded_connection() as connection:
        revision: str | None = await connection.run_sync(read)
    return revision


def not_version_table(name: str | None, type_: str, parent_names: Any) -> bool:
    """Leave Alembic's own version table out of comparisons, whatever schema it is in."""
    return not (type_ == "table" and name == "alembic_version")


async def check(database: Database) -> list[Any]:
    """The differences between the models and the database's schema (empty when in sync)."""

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "version_table_schema": _schema(database),
                "include_name": not_version_table,
            },
        )
        return list(compare_metadata(context, Base.metadata))

    async with database.unbounded_connection() as connection:
        diffs: list[Any] = await connection.run_sync(compare)
    return diffs


def history() -> list[Revision]:
    """Every revision, newest first."""
    script = ScriptDirectory.from_config(alembic_config())
    heads = set(script.get_heads())
    return [
        Revision(
            revision=rev.revision,
            down_revision=rev.down_revision if isinstance(rev.down_revision, str) else None,
            message=rev.doc or "",
            is_head=rev.revision in heads,
        )
        for rev in script.walk_revisions()
    ]


def head() -> str:
    script = ScriptDirectory.from_config(alembic_config())
    revision = script.get_current_head()
    assert revision is not None
    return revision

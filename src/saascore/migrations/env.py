"""Alembic environment. Runs on the connection it is handed (`saascore.migrations.migrate`),
or, when Alembic is run directly, on the database that `Settings` configure."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from sqlalchemy import Connection

from saascore.config import load_settings
from saascore.kit.db import Database
from saascore.kit.types import UTCDateTime
from saascore.migrations.migrate import MIGRATION_LOCK, not_version_table
from saascore.models import Base

config = context.config

target_metadata = Base.metadata


def render_item(type_: str, item: Any, autogen_context: Any) -> str | Literal[False]:
    """Write saascore's column types into migrations as the plain SQLAlchemy types they are
    stored as, so that a migration never imports saascore code that may move later."""
    if type_ == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection | None, **extra: Any) -> None:
    settings = config.attributes.get("settings")
    schema = settings.database_schema if settings is not None else None
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
        compare_server_default=False,
        version_table_schema=schema,
        include_name=not_version_table,
        render_item=render_item,
        **extra,
    )


def run_migrations(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # One migrating process at a time (workers and replicas all start together); the
            # others wait here, then find the database at the revision they wanted.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            # Fail fast rather than queue behind live traffic while holding a lock.
            connection.exec_driver_sql("SET LOCAL lock_timeout = '15s'")
        context.run_migrations()


async def _run_online() -> None:
    settings = config.attributes.get("settings") or load_settings()
    config.attributes["settings"] = settings
    database = Database(settings)
    try:
        async with database.engine.connect() as connection:
            await connection.run_sync(run_migrations)
            await connection.commit()
    finally:
        await database.dispose()


if context.is_offline_mode():
    _configure(None, url=str(load_settings().sqlalchemy_url), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    run_migrations(connection)
else:
    asyncio.run(_run_online())

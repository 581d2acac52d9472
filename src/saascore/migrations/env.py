"""Alembic environment. Runs on the connection it is handed (`saascore.kit.migrate`), or, when
Alembic is run directly, on the database that `Settings` configure."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import Connection

from saascore.config import load_settings
from saascore.kit.db import Database
from saascore.kit.migrate import not_version_table
from saascore.models import Base

config = context.config
target_metadata = Base.metadata


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
        **extra,
    )


def run_migrations(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
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

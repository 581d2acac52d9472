"""Migrations that copy tables on SQLite keep every row; engines of closed loops go away."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from saascore.kit.db import Database
from saascore.migrations import migrate
from saascore.models import Organization, User
from tests.factories import create_organization, create_user
from tests.helpers import make_settings


async def test_a_sqlite_table_copy_does_not_cascade_into_other_tables(tmp_path: Path) -> None:
    database = Database(make_settings(database_url=f"sqlite:///{tmp_path / 'm.db'}"))
    try:
        await migrate.upgrade(database)
        async with database.transaction() as session:
            organization = await create_organization(session)
            await create_user(session, organization)

        def recreate_organizations(config: Any) -> None:
            # What a future migration altering `organizations` does on SQLite: copy the table,
            # drop the old one, rename the copy. With foreign keys on, the DROP would cascade.
            operations = Operations(MigrationContext.configure(config.attributes["connection"]))
            with operations.batch_alter_table("organizations", recreate="always") as batch:
                batch.alter_column("name", existing_type=sa.String(255), nullable=False)

        await migrate._run(database, recreate_organizations)
        async with database.session(readonly=True) as session:
            assert await session.scalar(sa.select(sa.func.count()).select_from(User)) == 1
            assert await session.scalar(sa.select(sa.func.count()).select_from(Organization)) == 1
            pragma = await session.execute(sa.text("PRAGMA foreign_keys"))
            assert pragma.scalar() == 1  # on again for everything after the migration
    finally:
        await database.dispose()


def test_engines_of_closed_loops_are_forgotten(tmp_path: Path) -> None:
    database = Database(make_settings(database_url=f"sqlite:///{tmp_path / 'loops.db'}"))

    async def job() -> int:
        async with database.session(readonly=True) as session:
            return int(await session.scalar(sa.text("SELECT 1")) or 0)

    for _ in range(10):
        assert asyncio.run(job()) == 1
    # Only the newest loop's engine is kept; the pooled one belonged to the first loop only.
    assert len(database._states) == 1
    (state,) = database._states.values()
    assert isinstance(state.engine.sync_engine.pool, sa.pool.NullPool)

"""The Alembic migrations: up, down, up again, and in step with the models."""

from __future__ import annotations

import itertools

import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.migrations import migrate
from saascore.models import Base


async def _tables(database: Database) -> set[str]:
    async with database.engine.connect() as connection:
        names = await connection.run_sync(lambda c: sa.inspect(c).get_table_names())
    return set(names) - {"alembic_version"}


async def _assert_version_table_in_schema(database: Database) -> None:
    """Alembic's version table sits in the configured schema (on PostgreSQL, the test's own)."""
    schema = database.settings.database_schema
    async with database.engine.connect() as connection:
        names = await connection.run_sync(lambda c: sa.inspect(c).get_table_names(schema=schema))
        version = await connection.scalar(sa.text("SELECT version_num FROM alembic_version"))
    assert "alembic_version" in names
    assert version == migrate.head()


class TestUpgradeDowngrade:
    async def test_up_down_up(self, empty_database: Database) -> None:
        models = set(Base.metadata.tables)
        assert await migrate.current(empty_database) is None

        await migrate.upgrade(empty_database)
        assert await migrate.current(empty_database) == migrate.head()
        assert await _tables(empty_database) == models

        await migrate.downgrade(empty_database, "base")
        assert await migrate.current(empty_database) is None
        assert await _tables(empty_database) == set()

        await migrate.upgrade(empty_database)
        assert await migrate.current(empty_database) == migrate.head()
        assert await _tables(empty_database) == models
        assert await migrate.check(empty_database) == []
        await _assert_version_table_in_schema(empty_database)

    async def test_check_reports_a_difference(self, empty_database: Database) -> None:
        await migrate.upgrade(empty_database)
        async with empty_database.engine.begin() as connection:
            await connection.execute(sa.text("DROP INDEX ix_users_email"))
        diffs = await migrate.check(empty_database)
        assert [diff[0] for diff in diffs] == ["add_index"]
        assert diffs[0][1].name == "ix_users_email"


class TestRevisions:
    def test_history_lists_a_single_linear_chain(self) -> None:
        revisions = migrate.history()
        assert revisions, "no migrations found"
        assert [r.revision for r in revisions if r.is_head] == [migrate.head()]
        assert revisions[0].revision == migrate.head()  # newest first
        assert revisions[-1].down_revision is None  # the first one
        for newer, older in itertools.pairwise(revisions):
            assert newer.down_revision == older.revision
        assert all(r.message for r in revisions)

    def test_initial_revision(self) -> None:
        first = migrate.history()[-1]
        assert first.revision == "0001"
        assert first.message.strip()

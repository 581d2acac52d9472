"""Fixtures for the CLI tests: `cli` in the test's temp dir, optionally on a database."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from saascore.config import Settings
from saascore.kit.db import Database
from saascore.migrations import migrate
from tests.cli.runner import SAASCORE, Cli, clean_environment
from tests.helpers import settings_env


@pytest.fixture(scope="session")
def saascore_script() -> Path:
    if not SAASCORE.exists():
        pytest.fail(f"the saascore console script is not installed at {SAASCORE}: pip install -e .")
    return SAASCORE


@pytest.fixture
def cli(saascore_script: Path, tmp_path: Path) -> Cli:
    """`saascore` in the test's temp dir (where an embedded `./.saascore` lands), with an
    environment that names no database and no `SAASCORE_*` setting."""
    return Cli(tmp_path, clean_environment())


@pytest.fixture
def empty_cli(cli: Cli, empty_settings: Settings) -> Cli:
    """`saascore` on a new, empty database of the test's backend (SQLite or PostgreSQL)."""
    return cli.with_env(settings_env(empty_settings))


@pytest_asyncio.fixture(loop_scope="session")
async def migrated_cli(cli: Cli, empty_database: Database) -> Cli:
    """`saascore` on a new database of the test's backend, migrated to head."""
    await migrate.upgrade(empty_database)
    return cli.with_env(settings_env(empty_database.settings))

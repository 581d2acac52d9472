from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from saascore.kit.db import Database
from tests.identity.support import Served, served


@pytest_asyncio.fixture(loop_scope="session")
async def app(scratch: Database) -> AsyncIterator[Served]:
    """The real app on the module's scratch database, with its `Saascore` at hand."""
    async with served(scratch) as application:
        yield application

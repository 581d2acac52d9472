"""Fixtures of the credit tests: a clock that stands still, the service on it, an organisation."""

from __future__ import annotations

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.credits import CreditService
from saascore.kit.db import Database
from saascore.models import Organization
from tests.credits.ledger import Clock
from tests.factories import create_organization


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def credits(database: Database, clock: Clock) -> CreditService:
    """The service on the test's clock; tests pass it `session=session`."""
    return CreditService(database, clock=clock)


@pytest_asyncio.fixture(loop_scope="session")
async def org(session: AsyncSession) -> Organization:
    return await create_organization(session)

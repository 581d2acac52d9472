"""FastAPI dependencies for a request's database session, re-exported as `saascore.SessionDep`
and `saascore.ReadSessionDep` (with `get_session` and `get_read_session`).

They use the app's database when saascore's app (or lifespan) set one, else the lazily built
default `saascore.db`, so a host app can declare them without wiring anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

import saascore
from saascore.kit.db import Database

__all__ = ["ReadSessionDep", "SessionDep", "get_read_session", "get_session"]


def _database(connection: HTTPConnection) -> Database:
    database: Database | None = getattr(connection.app.state, "database", None)
    return database or saascore._default()


async def get_session(connection: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one transaction per request, committed on success, rolled back on
    error. Uses the app's database when saascore's app (or lifespan) set one, else `db`.

    Declare it through `SessionDep` (or `Depends(get_session, scope="function")`): then the
    commit happens before the response is sent, so a failed commit is an error response,
    never a 200 for work that was not saved.
    """
    async with _database(connection).transaction() as session:
        yield session


async def get_read_session(connection: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: a session for reads. It writes nothing and commits nothing, and on
    SQLite it does not queue for the write lock."""
    async with _database(connection).session(readonly=True) as session:
        yield session


#: `session: SessionDep` in an endpoint: the request's transaction, committed before responding.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
#: `session: ReadSessionDep` in an endpoint that only reads.
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]

"""saascore: the open core for multi-tenant SaaS backends.

    from saascore import Saascore, Settings

    async with Saascore(Settings()) as core:
        org = await core.orgs.create(name="Acme", plan="pro")

Seed-style scripts may use the lazily built default database instead:

    from saascore import db, get_session

    async with db.session() as session: ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from saascore.config import Settings, load_settings
from saascore.core import Saascore
from saascore.kit.db import Database
from saascore.kit.errors import (
    AlreadyExists,
    ConfigurationError,
    Conflict,
    DatabaseUnavailable,
    DomainError,
    InvalidInput,
    NotFound,
    SaascoreError,
)

if TYPE_CHECKING:
    db: Database

try:
    __version__ = version("saascore")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AlreadyExists",
    "ConfigurationError",
    "Conflict",
    "Database",
    "DatabaseUnavailable",
    "DomainError",
    "InvalidInput",
    "NotFound",
    "ReadSessionDep",
    "Saascore",
    "SaascoreError",
    "SessionDep",
    "Settings",
    "__version__",
    "db",
    "get_read_session",
    "get_session",
    "load_settings",
]

_default_database: Database | None = None


def _default() -> Database:
    global _default_database
    if _default_database is None:
        _default_database = Database(load_settings())
    return _default_database


def __getattr__(name: str) -> Any:
    if name == "db":
        return _default()
    raise AttributeError(f"module 'saascore' has no attribute {name!r}")


async def get_session(connection: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one transaction per request, committed on success, rolled back on
    error. Uses the app's database when saascore's app (or lifespan) set one, else `db`.

    Declare it through `SessionDep` (or `Depends(get_session, scope="function")`): then the
    commit happens before the response is sent, so a failed commit is an error response,
    never a 200 for work that was not saved.
    """
    database: Database | None = getattr(connection.app.state, "database", None)
    async with (database or _default()).transaction() as session:
        yield session


async def get_read_session(connection: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: a session for reads. It writes nothing and commits nothing, and on
    SQLite it does not queue for the write lock."""
    database: Database | None = getattr(connection.app.state, "database", None)
    async with (database or _default()).session(readonly=True) as session:
        yield session


#: `session: SessionDep` in an endpoint: the request's transaction, committed before responding.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
#: `session: ReadSessionDep` in an endpoint that only reads.
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]

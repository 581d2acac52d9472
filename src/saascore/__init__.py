"""saascore: the open core for multi-tenant SaaS backends.

    from saascore import Saascore, Settings

    async with Saascore(Settings()) as core:
        org = await core.orgs.create(name="Acme", plan="pro")

Seed-style scripts may use the lazily built default database instead:

    from saascore import db, get_session

    async with db.session() as session: ...

The names below are imported on first use (PEP 562), so that `import saascore.cli` and
`saascore --help` do not pay for SQLAlchemy, FastAPI and every model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saascore.api.sessions import ReadSessionDep, SessionDep, get_read_session, get_session
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

    db: Database
    __version__: str

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

#: Where each public name lives; it is imported from there on first use.
_LAZY = {
    "AlreadyExists": "saascore.kit.errors",
    "ConfigurationError": "saascore.kit.errors",
    "Conflict": "saascore.kit.errors",
    "DatabaseUnavailable": "saascore.kit.errors",
    "DomainError": "saascore.kit.errors",
    "InvalidInput": "saascore.kit.errors",
    "NotFound": "saascore.kit.errors",
    "SaascoreError": "saascore.kit.errors",
    "Database": "saascore.kit.db",
    "Settings": "saascore.config",
    "load_settings": "saascore.config",
    "Saascore": "saascore.core",
    "ReadSessionDep": "saascore.api.sessions",
    "SessionDep": "saascore.api.sessions",
    "get_read_session": "saascore.api.sessions",
    "get_session": "saascore.api.sessions",
}

_default_database: Database | None = None


def _default() -> Database:
    """The default database (`saascore.db`), built from the environment on first use."""
    global _default_database
    if _default_database is None:
        from saascore.config import load_settings
        from saascore.kit.db import Database

        _default_database = Database(load_settings())
    return _default_database


def _version() -> str:
    # importlib.metadata is a tenth of a second of imports: read only when asked for.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("saascore")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "db":
        return _default()
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'saascore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

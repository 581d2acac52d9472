"""SQL helpers that differ between PostgreSQL and SQLite."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["insert", "violates"]


def insert(session: AsyncSession, table: Any) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports `on_conflict_do_nothing/update` on the session's database."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def violates(error: IntegrityError, *columns_or_constraint: str) -> bool:
    """Whether an IntegrityError is about the given unique constraint or columns.

    PostgreSQL names the constraint; SQLite names the columns (`table.column`).
    """
    text = str(error.orig)
    return all(part in text for part in columns_or_constraint)

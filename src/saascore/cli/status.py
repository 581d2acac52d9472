"""`saascore status`: which database the CLI uses, and what state it is in.

Imported with the root command (`saascore --help` lists it), so everything heavy is imported
inside the command.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from saascore.cli._output import JsonOption, print_json
from saascore.cli._run import EXIT_ERROR, handle_errors

if TYPE_CHECKING:
    from saascore.config import Settings
    from saascore.kit.db import Database

__all__ = ["Status", "status"]

PING_TIMEOUT = 10.0


@dataclass
class Status:
    """What `saascore status` reports (its `--json` object)."""

    #: The SQLite file's path, or the URL without the driver and with the password masked.
    database: str
    backend: str
    embedded: bool
    #: Whether the SQLite file exists; for PostgreSQL, whether it answered.
    exists: bool
    reachable: bool
    error: str | None
    revision: str | None
    head: str
    at_head: bool
    plans: int | None
    organizations: int | None


def _sqlite_file(settings: Settings) -> Path | None:
    """The SQLite database's file, or None for PostgreSQL and in-memory databases."""
    from saascore.config import DatabaseBackend

    if settings.database_backend is not DatabaseBackend.SQLITE:
        return None
    name = settings.sqlalchemy_url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


async def _counts(database: Database) -> tuple[int, int]:
    import sqlalchemy as sa

    from saascore.models import Organization, SubscriptionPlan

    async with database.session(readonly=True) as session:
        plans = await session.scalar(sa.select(sa.func.count()).select_from(SubscriptionPlan))
        organizations = await session.scalar(sa.select(sa.func.count()).select_from(Organization))
    return int(plans or 0), int(organizations or 0)


def read_status(settings: Settings) -> Status:
    """The database's state, opening it only if it exists (a status never creates one)."""
    import asyncio

    from saascore.cli._output import describe_target
    from saascore.kit.db import Database
    from saascore.kit.errors import DatabaseUnavailable
    from saascore.migrations import migrate

    file = _sqlite_file(settings)
    found = Status(
        database=str(file) if file is not None else describe_target(settings),
        backend=settings.database_backend.value,
        embedded=settings.is_embedded,
        exists=file is None or file.exists(),
        reachable=False,
        error=None,
        revision=None,
        head=migrate.head(),
        at_head=False,
        plans=None,
        organizations=None,
    )
    if not found.exists:
        return found

    async def inspect() -> None:
        database = Database(settings)
        try:
            await database.ping(timeout=PING_TIMEOUT)
            found.reachable = True
            found.revision = await migrate.current(database)
            found.at_head = found.revision == found.head
            if found.revision is not None:
                found.plans, found.organizations = await _counts(database)
        finally:
            await database.dispose()

    try:
        asyncio.run(inspect())
    except DatabaseUnavailable as exc:
        found.error = str(exc)
    if file is None:
        found.exists = found.reachable
    return found


def _schema_line(found: Status) -> str:
    if found.revision is None:
        return f"no saascore schema (head is {found.head}); run 'saascore db upgrade'"
    if found.at_head:
        return f"{found.revision} (head)"
    return f"{found.revision}, head is {found.head}; run 'saascore db upgrade'"


@handle_errors
def status(as_json: JsonOption = False) -> None:
    """Print the database in use, whether it answers, its migration revision against
    saascore's head, and how many plans and organisations it holds. Exits 1 if the database
    cannot be reached. Never creates or migrates the database."""
    from saascore.config import load_settings

    found = read_status(load_settings())
    if as_json:
        print_json(asdict(found))
    else:
        kind = found.backend + (", embedded" if found.embedded else "")
        lines = [("database", f"{found.database} ({kind})")]
        if not found.exists and found.backend == "sqlite":
            lines.append(("exists", "no: the first command that needs it creates it"))
        elif not found.reachable:
            lines.append(("reachable", f"no: {found.error}"))
        else:
            lines += [
                ("reachable", "yes"),
                ("schema", _schema_line(found)),
                ("plans", "-" if found.plans is None else f"{found.plans:,}"),
                (
                    "organisations",
                    "-" if found.organizations is None else f"{found.organizations:,}",
                ),
            ]
        for label, value in lines:
            typer.echo(f"{label + ':':<16}{value}")
    if found.error is not None:
        raise typer.Exit(EXIT_ERROR)

"""`saascore db`: migrate the database and compare it with the models.

These commands never migrate on their own (whatever `SAASCORE_AUTO_MIGRATE` says): they are how
the schema is inspected and changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer

from saascore.cli._output import describe_target
from saascore.cli._run import EXIT_ERROR, handle_errors, run_with_database
from saascore.config import load_settings
from saascore.kit.db import Database
from saascore.migrations import migrate

__all__ = ["app", "describe_difference"]

app = typer.Typer(
    name="db",
    help="Migrate the database: upgrade, downgrade, current, history, check, revision.",
    no_args_is_help=True,
)

BASE = "base"


def _label(revision: str | None, head: str) -> str:
    if revision is None:
        return BASE
    return f"{revision} (head)" if revision == head else revision


Step = Callable[[Database, str], Awaitable[tuple[str | None, str | None]]]


def _move(step: Step, verb: str, revision: str) -> None:
    """Upgrade or downgrade to `revision` and say from where to where."""
    settings = load_settings()

    async def move(database: Database) -> tuple[str | None, str | None]:
        return await step(database, revision)  # both read under the migration lock

    before, after = run_with_database(settings, move)
    head, target = migrate.head(), describe_target(settings)
    if before == after:
        typer.echo(f"{target} is already at {_label(after, head)}")
    else:
        typer.echo(f"{verb} {target} from {_label(before, head)} to {_label(after, head)}")


@app.command()
@handle_errors
def upgrade(
    revision: Annotated[
        str,
        typer.Argument(metavar="REV", help="The revision to upgrade to: 'head', an id, or '+1'."),
    ] = "head",
) -> None:
    """Upgrade the database schema to a revision (the newest by default)."""
    _move(migrate.upgrade, "Upgraded", revision)


@app.command()
@handle_errors
def downgrade(
    revision: Annotated[
        str,
        typer.Argument(
            metavar="REV",
            help="The revision to downgrade to: an id, '-1', or 'base' (drops every table).",
            show_default=False,
        ),
    ],
) -> None:
    """Downgrade the database schema to an earlier revision."""
    _move(migrate.downgrade, "Downgraded", revision)


@app.command()
@handle_errors
def current() -> None:
    """Print the revision the database is at (nothing before the first migration)."""
    revision = run_with_database(load_settings(), migrate.current)
    if revision is None:
        typer.echo("no revision applied; run 'saascore db upgrade'", err=True)
        return
    typer.echo(_label(revision, migrate.head()))


@app.command()
@handle_errors
def history() -> None:
    """List the migrations, newest first."""
    for revision in migrate.history():
        down = revision.down_revision or f"<{BASE}>"
        head = " (head)" if revision.is_head else ""
        typer.echo(f"{down} -> {revision.revision}{head}, {revision.message}")


@app.command()
@handle_errors
def revision(
    message: Annotated[str, typer.Option("--message", "-m", help="What the migration does.")],
) -> None:
    """Write a new migration from the models (for saascore's developers; needs the database
    at head)."""
    path = run_with_database(load_settings(), lambda database: migrate.revision(database, message))
    typer.echo(f"wrote {path}")


@app.command()
@handle_errors
def check() -> None:
    """Compare the database with the models: exit 0 when in sync, 1 listing the differences."""
    settings = load_settings()

    async def compare(database: Database) -> tuple[list[Any], str | None]:
        return await migrate.check(database), await migrate.current(database)

    differences, revision = run_with_database(settings, compare)
    target = describe_target(settings)
    if not differences:
        typer.echo(f"{target} is in sync with the models")
        return
    count = len(differences)
    typer.echo(f"{target} differs from the models ({count} difference{'s' if count != 1 else ''}):")
    for difference in differences:
        typer.echo(f"  {describe_difference(difference)}")
    head = migrate.head()
    if revision != head:
        typer.echo(f"the database is at {_label(revision, head)}; run 'saascore db upgrade'")
    else:
        typer.echo(
            f"the database is at {_label(revision, head)}: the models changed without a migration"
        )
    raise typer.Exit(EXIT_ERROR)


_SIGNS = {"add": "+", "remove": "-", "modify": "~"}


def describe_difference(difference: Any) -> str:
    """One of Alembic's `compare_metadata` entries as a line: `+ table users`, `~ type ...`."""
    if isinstance(difference, list):
        return "; ".join(describe_difference(item) for item in difference)
    operation: str = difference[0]
    action, _, kind = operation.partition("_")
    sign = _SIGNS.get(action, "?")
    if kind == "table":
        return f"{sign} table {difference[1].name}"
    if kind == "column":
        return f"{sign} column {difference[2]}.{difference[3].name}"
    if kind in ("index", "constraint", "fk"):
        item = difference[1]
        table = getattr(item, "table", None)
        where = f" on {table.name}" if table is not None else ""
        name = item.name or type(item).__name__
        return f"{sign} {kind} {name}{where}"
    if action == "modify" and len(difference) >= 7:
        _, _, table_name, column_name, _, old, new = difference[:7]
        return f"{sign} {kind} {table_name}.{column_name}: {old} -> {new}"
    return f"{sign} {' '.join(str(part) for part in difference)}"

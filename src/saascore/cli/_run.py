"""The CLI's one error handler and the runners that take a command to the database.

Every command is wrapped in `handle_errors`. An error saascore expects becomes one line on stderr
and a non-zero exit code, never a traceback. The exit codes say whose mistake it is:

- 2, a usage error: the command line is wrong before anything is asked of the database (an
  unknown command or option, a missing file, a malformed or out-of-range value, options that
  exclude each other: click's own errors, and `fail(..., EXIT_USAGE)`), or a setting is;
- 1, a refusal: a well-formed command that the database or the domain refuses, or a check
  (`verify`, `db check`) that finds a difference;
- 130, interrupted (Ctrl-C).

In detail:

- a bad setting (`ConfigurationError`): exit 2, like any other usage mistake;
- an unreachable database (`DatabaseUnavailable`, refused, timed out, unknown host): exit 1;
- a database without saascore's tables, or with a column missing: exit 1, pointing at
  `saascore db upgrade`;
- a value the domain finds invalid by itself (`InvalidInput`: an empty name, an unknown scope,
  a malformed catalog): exit 2, a usage error like click's own, and the message names the
  option or argument of the field it is about (`--expires is in the past`);
- a refusal that depends on what is stored (`NotFound`, `AlreadyExists`, `Conflict`, too few
  credits, and the few `InvalidInput`s that depend on stored state, `stateful`): exit 1.

Anything else is a bug: it is reported on one line as well, and `SAASCORE_TRACEBACK=1` shows it
in full.

SQLAlchemy, Alembic and the facade are imported where they are used: `saascore --help` and
`--version` load none of them.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, NoReturn, ParamSpec, TypeVar

import typer

from saascore.kit.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    DomainError,
    InvalidInput,
)

if TYPE_CHECKING:
    from saascore.config import Settings
    from saascore.core import Saascore
    from saascore.kit.actors import Actor
    from saascore.kit.db import Database

__all__ = [
    "EXIT_ERROR",
    "EXIT_USAGE",
    "NO_SCHEMA",
    "cli_actor",
    "create_embedded",
    "echo_error",
    "explain",
    "explain_or_unexpected",
    "fail",
    "handle_errors",
    "name_option",
    "run_with_core",
    "run_with_database",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

EXIT_ERROR = 1
#: click exits with 2 on a usage error; a bad setting is the same kind of mistake.
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

NO_SCHEMA = "the database has no saascore schema; run 'saascore db upgrade'"
NOT_UTF8 = "an argument holds bytes that are not UTF-8 text"
TRACEBACK_VARIABLE = "SAASCORE_TRACEBACK"
PING_TIMEOUT = 10.0

OUTDATED_SCHEMA = (
    "the database schema does not match saascore's models (a column is missing); "
    "run 'saascore db upgrade', or see 'saascore db check'"
)

#: PostgreSQL's SQLSTATEs for "relation does not exist" and "column does not exist".
_UNDEFINED_TABLE = "42P01"
_UNDEFINED_COLUMN = "42703"


def echo_error(message: str) -> None:
    """Print `saascore: <message>` on stderr, as one line whatever the message holds."""
    typer.echo(f"saascore: {' '.join(message.split())}", err=True)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print `saascore: <message>` on stderr and exit with `code`."""
    echo_error(message)
    raise typer.Exit(code)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the driver error it wraps, and their causes."""
    import sqlalchemy as sa

    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = current.orig if isinstance(current, sa.exc.StatementError) else None
        pending.extend([current.__context__, current.__cause__, orig])


def is_missing_schema(exc: BaseException) -> bool:
    """Whether a query failed because saascore's tables do not exist."""
    import sqlite3

    for error in _chain(exc):
        if getattr(error, "sqlstate", None) == _UNDEFINED_TABLE:
            return True
        if isinstance(error, sqlite3.OperationalError) and str(error).startswith("no such table"):
            return True
    return False


def is_outdated_schema(exc: BaseException) -> bool:
    """Whether a query failed because a column of the models is missing from the database."""
    import sqlite3

    for error in _chain(exc):
        if getattr(error, "sqlstate", None) == _UNDEFINED_COLUMN:
            return True
        if isinstance(error, sqlite3.OperationalError) and (
            str(error).startswith("no such column") or " has no column named " in str(error)
        ):
            return True
    return False


def explain(exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit code for an error saascore expects; None for anything else."""
    import sqlalchemy as sa

    from saascore.kit.db import describe_connection_error

    if isinstance(exc, ConfigurationError):
        return str(exc), EXIT_USAGE
    if _undecodable_argument(exc):
        return NOT_UTF8, EXIT_USAGE
    if isinstance(exc, DatabaseUnavailable):
        return str(exc), EXIT_ERROR
    if isinstance(exc, InvalidInput) and not exc.stateful:
        return name_option(exc.message, exc.details.get("field")), EXIT_USAGE
    if isinstance(exc, DomainError):
        return exc.message, EXIT_ERROR
    if is_alembic_error(exc):
        return str(exc), EXIT_ERROR
    if is_missing_schema(exc):
        return NO_SCHEMA, EXIT_ERROR
    if is_outdated_schema(exc):
        return OUTDATED_SCHEMA, EXIT_ERROR
    if isinstance(exc, OSError | TimeoutError | sa.exc.InterfaceError) or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    ):
        return describe_connection_error(exc), EXIT_ERROR
    if isinstance(exc, sa.exc.DBAPIError):
        # The runners ping first, so the connection worked: the statement itself failed.
        return f"database error: {exc.orig}", EXIT_ERROR
    return None


def _undecodable_argument(exc: BaseException) -> bool:
    """Whether `exc` comes of text that cannot be encoded as UTF-8 (raised by SQLite's driver,
    or by asyncpg under its `DataError`): half a surrogate pair, which is what Python makes of
    bytes on the command line that are not UTF-8. The services refuse such text where they
    check names and notes; a look-up (a plan's code, an action to filter on) passes it on."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, UnicodeEncodeError) and cause.reason == "surrogates not allowed":
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def is_alembic_error(exc: BaseException) -> bool:
    """Whether `exc` is Alembic's refusal (an unknown revision, say). Only a process that
    imported Alembic can hold one: any other command's error is explained without loading it."""
    if "alembic" not in sys.modules:
        return False
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    return isinstance(exc, CommandError | RevisionError)


def name_option(message: str, field: object) -> str:
    """`message` with the domain's `field` named as the running command takes it: the option
    (`--expires`) or the argument (`NAME`) called after the field (or after it without `_at`).
    The field is replaced where the message starts with it, else the option leads the message."""
    from typer._click.globals import get_current_context

    context = get_current_context(silent=True)
    if not isinstance(field, str) or context is None:
        return message
    names = (field, field.removesuffix("_at"))
    for param in context.command.params:
        if param.name not in names:
            continue
        if param.param_type_name == "option":
            label = param.opts[0]
        else:
            label = param.metavar or str(param.name).upper()
        if re.match(rf"{re.escape(field)}(?![\w-])", message):
            return label + message[len(field) :]
        return f"{label}: {message}"
    return message


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command so that whatever it raises ends as one line on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # The reader went away (`saascore db check | head`): stop quietly, and keep Python
            # from failing again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_ERROR) from None
        except Exception as exc:
            report(exc)

    return wrapper


def report(exc: Exception) -> NoReturn:
    """Exit with the one line that explains `exc` (re-raised when SAASCORE_TRACEBACK is set)."""
    fail(*explain_or_unexpected(exc))


def explain_or_unexpected(exc: Exception) -> tuple[str, int]:
    """`explain(exc)`, or a line saying it is unexpected; re-raises if SAASCORE_TRACEBACK is set."""
    explained = explain(exc)
    if explained is not None:
        return explained
    if os.environ.get(TRACEBACK_VARIABLE, "").strip().lower() in ("1", "true", "yes"):
        raise exc
    return (
        f"unexpected error: {type(exc).__name__}: {exc} "
        f"(set {TRACEBACK_VARIABLE}=1 to see the traceback)",
        EXIT_ERROR,
    )


def create_embedded(settings: Settings) -> None:
    """Create the embedded SQLite file if it does not exist yet, and say so on stderr.

    The file is created empty (an empty file is an empty SQLite database) with O_EXCL, so of
    several commands started at once on a new data directory exactly one says it."""
    if not settings.is_embedded:
        return
    path = settings.sqlite_path
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return
    typer.echo(
        f"created the embedded database at {path} (set DATABASE_URL for another)",
        err=True,
    )


def run_with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run `work(database)` in a new event loop, after checking the database answers.

    The ping turns every way of failing to connect into `DatabaseUnavailable` before any work
    starts; the connections are closed however the work ends. The embedded database is
    created (and that said, once) when it does not exist.
    """

    import asyncio

    from saascore.kit.db import Database

    create_embedded(settings)

    async def main() -> T:
        database = Database(settings)
        try:
            await database.ping(timeout=PING_TIMEOUT)
            return await work(database)
        finally:
            await database.dispose()

    return asyncio.run(main())


def run_with_core(settings: Settings, work: Callable[[Saascore], Awaitable[T]]) -> T:
    """Run `work(core)` with the `Saascore` facade, which migrates where the settings say so."""
    from saascore.core import Saascore

    async def with_core(database: Database) -> T:
        async with Saascore(settings, database=database) as core:
            return await work(core)

    return run_with_database(settings, with_core)


def cli_actor() -> Actor:
    """Who ran the command, as events and the audit log name it: `cli user@host`."""
    import getpass
    import socket

    from saascore.kit.actors import Actor

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        user = "unknown"
    return Actor("cli", f"{user}@{socket.gethostname()}"[:255])

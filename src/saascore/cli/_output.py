"""Consoles, tables, JSON and the small formatters the commands share.

Every list command prints its rows with `print_rows`, in one of three formats: a table (for
people), `--json` (a JSON array of objects with typed fields: ids as strings, numbers as
numbers, times in ISO 8601) or `--ids` (one id a line, for `xargs`). A command describes its
rows once, as `Column`s, and takes the two options as `JsonOption` and `IdsOption`:

    @app.command("list")
    def list_things(as_json: JsonOption = False, only_ids: IdsOption = False) -> None:
        output = output_format(as_json, only_ids)  # both: a usage error (exit 2)
        rows = ...
        print_rows(rows, COLUMNS, output, ids=lambda row: str(row.id), empty="no things")

Every cell and title of a table is printed with its control characters escaped (`visible`):
names come from tenants, and an ESC stored in one must reach an operator's terminal as the
four characters `\x1b`, not as the start of an escape sequence. JSON escapes them itself.

rich is imported when a table is printed: it is a tenth of a second that commands printing one
line should not spend. (SQLAlchemy and the settings are imported where they are used, for the
same reason.)
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final, Generic, Literal, TypeVar

import typer

from saascore.cli._run import EXIT_USAGE, fail

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy.engine import URL

    from saascore.config import Settings

__all__ = [
    "AtOption",
    "Column",
    "IdsOption",
    "JsonOption",
    "Output",
    "console",
    "describe_target",
    "instant",
    "limit",
    "new_table",
    "output_format",
    "print_json",
    "print_rows",
    "print_table",
    "rows_as_json",
    "visible",
]

T = TypeVar("T")

#: Width when the output is a pipe or a file, so that tables are not folded at 80 columns.
PIPE_WIDTH = 200


#: The C0 controls, DEL and the C1 controls: what a terminal may act on instead of showing.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """`text` with each control character written out as `\\xNN` (ESC as `\\x1b`), so that
    printing it cannot move the cursor, recolour or rewrite the terminal."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A console on stdout (or stderr); tables keep their rows whole when piped. `width`
    overrides the terminal's."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if width is None and not (stream.isatty() or "COLUMNS" in os.environ):
        width = PIPE_WIDTH
    # Names come from users: never read them as rich markup or emoji codes.
    return Console(stderr=stderr, width=width, highlight=False, markup=False, emoji=False)


def is_id_column(header: str, ids: Collection[str] = ()) -> bool:
    """Whether a column holds ids: named `id`, `... id`, or listed in `ids`."""
    return header == "id" or header.endswith(" id") or header in ids


def new_table(*columns: str, title: str | None = None, ids: Collection[str] = ()) -> Table:
    """A table to print with `print_table`. Its id columns (see `is_id_column`) are never
    wrapped or cut, whatever the terminal's width; the other columns wrap when it is narrow."""
    from rich import box
    from rich.table import Table

    table = Table(*columns, title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for column in table.columns:
        column.no_wrap = is_id_column(str(column.header), ids)
        column.overflow = "fold"  # a long word is broken, never cut short with an ellipsis
    return table


def print_table(table: Table, *, stderr: bool = False) -> None:
    """Print `table`, its ids whole: in a terminal too narrow for the table, the other columns
    wrap; in one too narrow even for the ids beside the other columns' longest words, the table
    keeps its natural width (the terminal wraps its lines, every id stays whole on its line, to
    copy or to grep)."""
    from rich.cells import cell_len
    from rich.measure import Measurement

    out = console(stderr=stderr)
    if isinstance(table.title, str):
        table.title = visible(table.title)
    for column in table.columns:
        # Every cell, whoever added it: a table's rows are not all made by `print_rows`.
        column._cells = [visible(c) if isinstance(c, str) else c for c in column._cells]
    for column in table.columns:
        if column.no_wrap:  # a fixed width: rich narrows only the columns that may wrap
            column.width = max(cell_len(str(cell)) for cell in [column.header, *column.cells])
    width = Measurement.get(out, out.options.update_width(1_000_000), table)
    if width.minimum > out.width:
        out = console(stderr=stderr, width=width.maximum)
    out.print(table)


def limit(value: int | None, unit: str = "") -> str:
    """`1_000_000` -> `1,000,000`; None -> `unlimited`."""
    if value is None:
        return "unlimited"
    return f"{value:,}{unit}"


def describe_target(settings: Settings) -> str:
    """The database the settings point at, without the driver or the password."""
    from saascore.config import DatabaseBackend

    url: URL = settings.sqlalchemy_url
    url = url.set(drivername=url.get_backend_name())
    text = url.render_as_string(hide_password=True)
    if settings.database_schema and settings.database_backend is DatabaseBackend.POSTGRESQL:
        text += f" (schema {settings.database_schema})"
    return text


class Output(StrEnum):
    """How a list command prints its rows."""

    TABLE = "table"
    JSON = "json"
    IDS = "ids"


JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print a JSON array of objects (ids as strings, times in ISO 8601)."
    ),
]
IdsOption = Annotated[
    bool, typer.Option("--ids", help="Print only the ids, one a line (for xargs).")
]


def output_format(as_json: bool, only_ids: bool = False) -> Output:
    """The format the options ask for; `--json` with `--ids` is a usage error (exit 2)."""
    if as_json and only_ids:
        fail("--json and --ids exclude each other", EXIT_USAGE)
    if as_json:
        return Output.JSON
    return Output.IDS if only_ids else Output.TABLE


def _text(value: Any) -> str:
    """A typed value as a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return ",".join(_text(item) for item in value)
    return str(value)


@dataclass(frozen=True)
class Column(Generic[T]):
    """One field of a listed row: `value` reads it, typed, from the row (JSON prints it as it
    is); the table shows `text(value)` under `header`."""

    name: str
    value: Callable[[T], Any]
    header: str | None = None
    text: Callable[[Any], str] = _text
    justify: Literal["left", "right"] = "left"
    #: An id or code: never wrapped or cut in the table.
    is_id: bool = False
    in_table: bool = True
    in_json: bool = True

    @property
    def title(self) -> str:
        return self.header if self.header is not None else self.name.replace("_", " ")


def to_json(value: Any) -> Any:
    """`json.dumps`' fallback for the types rows hold: ids and decimals as strings, times in
    ISO 8601, enums as their values."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def rows_as_json(rows: Iterable[T], columns: Sequence[Column[T]]) -> list[dict[str, Any]]:
    """The rows as JSON objects, one key per column (the table-only columns left out)."""
    return [{c.name: c.value(row) for c in columns if c.in_json} for row in rows]


def print_json(document: Any) -> None:
    """Print `document` as JSON on stdout."""
    typer.echo(json.dumps(document, default=to_json, ensure_ascii=False, indent=2))


def print_rows(
    rows: Sequence[T],
    columns: Sequence[Column[T]],
    output: Output = Output.TABLE,
    *,
    ids: Callable[[T], str] | None = None,
    empty: str | None = None,
    title: str | None = None,
    table: Callable[[Table, Sequence[T]], None] | None = None,
) -> None:
    """Print rows as `output` asks: a table (with `title`; `empty` on stderr when there are no
    rows), a JSON array of objects, or `ids(row)` one a line. `table(table, rows)` may add to
    the table before it is printed (totals)."""
    if output is Output.JSON:
        print_json(rows_as_json(rows, columns))
        return
    if output is Output.IDS:
        if ids is None:  # a command without ids does not take --ids
            raise AssertionError("print_rows(..., Output.IDS) without ids")
        for row in rows:
            typer.echo(ids(row))
        return
    if not rows:
        if empty is not None:
            typer.echo(empty, err=True)
        return
    shown = [column for column in columns if column.in_table]
    result = new_table(
        *(column.title for column in shown),
        title=title,
        ids=[column.title for column in shown if column.is_id],
    )
    for rendered, column in zip(result.columns, shown, strict=True):
        rendered.justify = column.justify
    for row in rows:
        result.add_row(*(column.text(column.value(row)) for column in shown))
    if table is not None:
        table(result, rows)
    print_table(result)


#: A moment on the command line: ISO 8601 with a time zone, as the HTTP API takes it.
AtOption = Annotated[
    str | None,
    typer.Option(
        "--at",
        help="When, in ISO 8601 with a time zone, e.g. 2027-01-01T12:00:00Z; now when left out.",
        show_default=False,
    ),
]


#: A calendar date with a time zone and no time of day: midnight in that zone.
_DATE_IN_ZONE: Final = re.compile(r"(?P<date>\d{4}-\d{2}-\d{2})(?P<zone>Z|[+-]\d{2}:?\d{2})")


def instant(text: str | None, option: str = "--at") -> datetime | None:
    """`text` as an aware datetime, or a usage error (exit 2) naming `option`.

    A timestamp without a time zone is refused, as the HTTP API refuses it (`timezone_aware`):
    reading it as UTC would bill at another moment than the operator's clock says. A date
    with a zone (`2027-01-01Z`, `2027-01-01+03:00`) is midnight in that zone. Every command
    taking a moment parses it here, so they all refuse the same things."""
    from saascore.kit.errors import InvalidInput
    from saascore.kit.validation import checked_instant

    if text is None:
        return None
    shown = repr(text[:60])
    stripped = text.strip()
    dated = _DATE_IN_ZONE.fullmatch(stripped)
    if dated is not None:
        stripped = f"{dated['date']}T00:00{dated['zone']}"
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        fail(f"{option} {shown}: not an ISO 8601 timestamp, e.g. 2027-01-01T12:00:00Z", EXIT_USAGE)
    if moment.tzinfo is None or moment.utcoffset() is None:
        fail(
            f"{option} {shown} needs a time zone, e.g. {text.strip()[:60]}Z or +03:00",
            EXIT_USAGE,
        )
    try:
        return checked_instant(moment, field=option)
    except InvalidInput as exc:
        fail(exc.message, EXIT_USAGE)

"""Consoles, tables and the small formatters the commands share.

rich is imported when a table is printed: it is a tenth of a second that commands printing one
line should not spend. (SQLAlchemy and the settings are imported where they are used, for the
same reason.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy.engine import URL

    from saascore.config import Settings

__all__ = ["console", "describe_target", "limit", "new_table", "print_table"]

#: Width when the output is a pipe or a file, so that tables are not folded at 80 columns.
PIPE_WIDTH = 200


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

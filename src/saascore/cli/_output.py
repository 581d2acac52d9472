"""Consoles, tables and the small formatters the commands share.

rich is imported when a table is printed: it is a tenth of a second that commands printing one
line should not spend. (SQLAlchemy and the settings are imported where they are used, for the
same reason.)
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy.engine import URL

    from saascore.config import Settings

__all__ = ["console", "describe_target", "limit", "new_table"]

#: Width when the output is a pipe or a file, so that tables are not folded at 80 columns.
PIPE_WIDTH = 200


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr); tables keep their rows whole when piped."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else PIPE_WIDTH
    # Names come from users: never read them as rich markup or emoji codes.
    return Console(stderr=stderr, width=width, highlight=False, markup=False, emoji=False)


def new_table(*columns: str, title: str | None = None) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(*columns, title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for column in table.columns:
        column.no_wrap = True
    return table


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

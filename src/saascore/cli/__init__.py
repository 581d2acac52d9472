"""The `saascore` command line: serve the API, run the demo, migrate, load plans, manage orgs,
API keys and operator keys, verify the audit log.

    saascore demo                      # everything on the embedded SQLite database
    saascore db upgrade                # migrate the configured database
    saascore plans load                # the default plan catalog
    saascore orgs create Acme --plan pro
    saascore usage import events.jsonl # idempotent, resumable bulk ingest
    saascore credits verify            # check every ledger
    saascore keys create --org acme --scopes usage:write,usage:read --name ingest
    saascore keys create --operator --name staff
    saascore audit verify              # walk every organisation's audit chain
    saascore events dispatch           # deliver webhooks (also inside serve)

Every command reports an error as one line on stderr with a non-zero exit code (see `_run`).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from saascore import __version__
from saascore.cli import audit, credits, db, events, keys, orgs, plans, usage
from saascore.cli._run import echo_error, explain_or_unexpected
from saascore.cli.serve import demo, serve

__all__ = ["app", "main"]

app = typer.Typer(
    name="saascore",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(serve)
app.command()(demo)
app.add_typer(db.app)
app.add_typer(plans.app)
app.add_typer(orgs.app)
app.add_typer(usage.app)
app.add_typer(credits.app)
app.add_typer(keys.app)
app.add_typer(audit.app)
app.add_typer(events.app)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"saascore {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print saascore's version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """saascore: tenants, plans, metering and billing for multi-tenant SaaS backends.

    Settings come from the environment and .env: DATABASE_URL (or DATABASE_HOST, ...), SAASCORE_*.

    With no database configured, saascore uses an embedded SQLite file under ./.saascore.
    """


def main() -> None:
    """The `saascore` console script."""
    try:
        app()
    except Exception as exc:  # every command handles its own errors; this is the last resort
        message, code = explain_or_unexpected(exc)
        echo_error(message)
        sys.exit(code)

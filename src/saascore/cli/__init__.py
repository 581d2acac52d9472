"""The `saascore` command line: serve the API, run the demo, migrate, load plans, manage orgs,
API keys and operator keys, verify the audit log.

    saascore demo                      # everything on the embedded SQLite database
    saascore status                    # the database in use and its state
    saascore db upgrade                # migrate the configured database
    saascore plans load                # the default plan catalog (and price list)
    saascore pricing list              # model prices, with the day each was taken
    saascore orgs create Acme --plan pro
    saascore usage import events.jsonl # idempotent, resumable bulk ingest
    saascore credits verify            # check every ledger
    saascore storage verify --fix      # storage gauges equal to the documents
    saascore invoices create acme --line "Setup:29.99" && saascore invoices finalize ID
    saascore payments record INV-2026-0001 --amount 12.50 --method card --key pay-1
    saascore keys create --org acme --scopes usage:write,usage:read --name ingest
    saascore keys create --operator --name staff
    saascore audit verify              # walk every organisation's audit chain
    saascore orgs list --json          # every list: --json, and --ids for xargs
    saascore events dispatch           # deliver webhooks (also inside serve)

Every command reports an error as one line on stderr with a non-zero exit code (see `_run`).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, cast

import typer
from typer.core import TyperCommand, TyperGroup

import saascore
from saascore.cli._run import EXIT_ERROR, echo_error, explain_or_unexpected
from saascore.cli.serve import demo, serve
from saascore.cli.status import status

if TYPE_CHECKING:
    # typer ships its own copy of click: these are the classes TyperGroup's methods take.
    from typer._click import Command, Context, HelpFormatter
    from typer._click.exceptions import ClickException

__all__ = ["GROUPS", "app", "main"]

#: The command groups: name -> (module, the line `saascore --help` shows: the help of the
#: module's `app`, which a test holds them to). A group's module, with SQLAlchemy, the models and
#: the services it needs, is imported only when the group is run (or its own help is asked for):
#: `saascore --help` and `--version` load none of them. A new group is added here.
GROUPS: dict[str, tuple[str, str]] = {
    "db": (
        "saascore.cli.db",
        "Migrate the database: upgrade, downgrade, current, history, check, revision.",
    ),
    "plans": ("saascore.cli.plans", "The plan catalog: load, list."),
    "pricing": ("saascore.cli.pricing", "Model prices (per million tokens): load, list."),
    "orgs": ("saascore.cli.orgs", "Organisations (tenants): create, list."),
    "usage": ("saascore.cli.usage", "Usage: report, import, sweep."),
    "credits": ("saascore.cli.credits", "Credits: grant, refill, balance, verify."),
    "subscriptions": (
        "saascore.cli.subscriptions",
        "Subscriptions: create, show, change-plan, cancel, resume.",
    ),
    "billing": ("saascore.cli.billing", "Billing: run, overview, reconcile."),
    "invoices": (
        "saascore.cli.invoices",
        "Invoices: list, show, create, finalize, void, delete a draft, upcoming, tax-rate.",
    ),
    "payments": ("saascore.cli.payments", "Payments: record, refund, list."),
    "coupons": ("saascore.cli.coupons", "Coupons: create, list, deactivate, redeem."),
    "packs": ("saascore.cli.packs", "Credit packs: create, list, deactivate."),
    "keys": ("saascore.cli.keys", "API keys of organisations and operators: create, list, revoke."),
    "audit": ("saascore.cli.audit", "The audit log: verify, list."),
    "events": ("saascore.cli.events", "Events: deliver webhooks."),
    "webhooks": ("saascore.cli.webhooks", "Payment providers' webhooks: list, replay."),
    "storage": ("saascore.cli.storage", "Document storage: verify (and repair) the gauge."),
}


def reflow(text: str | None) -> str | None:
    """A docstring as help: each paragraph on one line, for the help to wrap to the terminal.
    A paragraph that holds an indented line (an example) or starts with `\\b` keeps its lines."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        paragraph
        if paragraph.startswith("\b") or any(line[:1].isspace() for line in paragraph.splitlines())
        else " ".join(line.strip() for line in paragraph.splitlines())
        for paragraph in paragraphs
    )


class _HelpNames:
    """The one thing `Command.get_help_option` reads of a context: the help options' names."""

    help_option_names: ClassVar[list[str]] = ["-h", "--help"]


def tidy(command: Command) -> None:
    """Lay out the help of `command` and of the commands under it alike: paragraphs that wrap,
    arguments named in capitals (ORG, AMOUNT), and no type shown for a flag (`--json`, `--help`)."""
    command.help = reflow(command.help)
    for param in command.params:
        if param.param_type_name == "argument" and param.metavar is None:
            param.metavar = str(param.name).upper()
        elif getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    help_option = command.get_help_option(cast("Context", _HelpNames()))
    if help_option is not None:
        help_option.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        if not isinstance(sub, _Unloaded):
            tidy(sub)


def describe_usage_error(error: ClickException) -> str:
    """click's message for a usage error on one line, pointing at the command's help."""
    # A value refused by a pydantic validator (an enum's, say) keeps pydantic's prefix.
    message = error.format_message().replace(": Value error, ", ": ")
    message = message[:1].lower() + message[1:] if message[1:2].islower() else message
    context = getattr(error, "ctx", None)
    if context is not None and context.help_option_names:
        message += f" (see '{context.command_path} {context.help_option_names[0]}')"
    return message


class _Unloaded(TyperCommand):
    """Stands for a group in the root's command list until the group is needed."""


class _LazyGroup(TyperGroup):
    """The root group: lists every group by its line in `GROUPS`, imports one when it is run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing = False
        for name, (_, line) in GROUPS.items():
            self.add_command(_Unloaded(name, help=line))
        tidy(self)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; a usage error is one line on stderr and exit code 2."""
        from typer._click.exceptions import ClickException, NoArgsIsHelpError

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            result = super().main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )
        except NoArgsIsHelpError as error:  # the help is printed already
            sys.exit(error.exit_code)
        except ClickException as error:
            echo_error(describe_usage_error(error))
            sys.exit(error.exit_code)
        except typer.Abort:
            echo_error("aborted")
            sys.exit(EXIT_ERROR)
        sys.exit(result if isinstance(result, int) else 0)

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = super().get_command(ctx, cmd_name)
        if isinstance(command, _Unloaded) and not self._listing:
            command = load_group(cmd_name)
            self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        self._listing = True  # the list needs only each group's line
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def load_group(name: str) -> TyperGroup:
    """Import the group `name` of `GROUPS` and build its click group."""
    group = typer.main.get_group(importlib.import_module(GROUPS[name][0]).app)
    group.name = name
    tidy(group)
    return group


app = typer.Typer(
    name="saascore",
    cls=_LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(serve)
app.command()(demo)
app.command()(status)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"saascore {saascore.__version__}")
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
    """saascore: tenants, plans, exact metering and credits for multi-tenant SaaS backends.

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

"""`saascore events`: deliver the outbox to tenants' webhook endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer

from saascore.cli._run import handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.events.dispatcher import DispatchCounts

__all__ = ["app"]

app = typer.Typer(name="events", help="Events: deliver webhooks.", no_args_is_help=True)


@app.command()
@handle_errors
def dispatch(
    once: Annotated[
        bool,
        typer.Option("--once", help="Send what is due now, print what was done, and exit."),
    ] = False,
) -> None:
    """Deliver webhooks from the outbox, until SIGTERM or SIGINT (Ctrl-C).

    Run as many as you like, beside `saascore serve` or instead of its own dispatcher
    (SAASCORE_DISPATCH=false): they share the work without sending an attempt twice."""

    async def work(core: Saascore) -> DispatchCounts | None:
        dispatcher = core.dispatcher()
        if once:
            try:
                return await dispatcher.run_once()
            finally:
                await dispatcher.aclose()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):  # not on Windows' loop
                loop.add_signal_handler(number, stop.set)
        typer.echo(f"dispatching webhooks from {core.database} (SIGTERM or Ctrl-C stops)", err=True)
        await dispatcher.run(stop)
        return None

    counts = run_with_core(load_settings(), work)
    if counts is not None:
        typer.echo(str(counts))

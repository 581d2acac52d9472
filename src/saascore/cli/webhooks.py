"""`saascore webhooks`: the payment providers' webhook events as stored (list), and applying
one again (replay: idempotent, what was applied changes nothing)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated

import typer

from saascore.cli._output import Column, IdsOption, JsonOption, output_format, print_rows
from saascore.cli._run import EXIT_USAGE, fail, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.models import WebhookEvent, WebhookOutcome
from saascore.providers.errors import UnknownProvider
from saascore.providers.registry import provider_from_url
from saascore.providers.webhooks import MAX_LIST, WebhookReceipt

__all__ = ["app"]

app = typer.Typer(
    name="webhooks",
    help="Payment providers' webhooks: list, replay.",
    no_args_is_help=True,
)

COLUMNS: list[Column[WebhookEvent]] = [
    Column("id", lambda e: str(e.id), is_id=True),
    Column("provider", lambda e: e.provider.value),
    Column("event_id", lambda e: e.event_id),
    Column("event_type", lambda e: e.event_type, header="type"),
    Column("outcome", lambda e: e.outcome.value),
    Column("organization_id", lambda e: str(e.organization_id) if e.organization_id else None),
    Column("attempts", lambda e: e.attempts, justify="right", text=str),
    Column("error", lambda e: e.error),
    Column("received_at", lambda e: e.received_at.isoformat() if e.received_at else None),
]


@app.command("list")
@handle_errors
def list_(
    provider: Annotated[
        str | None, typer.Option(help="Only this provider's: stripe, lemonsqueezy or mock.")
    ] = None,
    outcome: Annotated[
        WebhookOutcome | None, typer.Option(help="Only events with this outcome.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIST, help="At most this many.")] = 100,
    as_json: JsonOption = False,
    only_ids: IdsOption = False,
) -> None:
    """The stored webhook events, the latest first."""
    output = output_format(as_json, only_ids)
    try:
        source = provider_from_url(provider) if provider is not None else None
    except UnknownProvider as exc:
        fail(f"--provider: {exc.message}", EXIT_USAGE)

    async def work(core: Saascore) -> Sequence[WebhookEvent]:
        return await core.provider_webhooks.list(provider=source, outcome=outcome, limit=limit)

    events = list(run_with_core(load_settings(), work))
    print_rows(events, COLUMNS, output, ids=lambda e: str(e.id), empty="no webhook events")


@app.command()
@handle_errors
def replay(
    event: Annotated[str, typer.Argument(help="The stored event's id (from `webhooks list`).")],
) -> None:
    """Apply a stored event again; what it applied already changes nothing."""
    try:
        row_id = uuid.UUID(event)
    except ValueError:
        fail(f"{event[:60]!r} is not an event id (a UUID)", EXIT_USAGE)

    async def work(core: Saascore) -> WebhookReceipt:
        return await core.provider_webhooks.replay(row_id)

    receipt = run_with_core(load_settings(), work)
    reason = f" ({receipt.reason})" if receipt.reason else ""
    typer.echo(f"event {receipt.id}: {receipt.outcome.value}{reason}")

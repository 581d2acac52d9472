"""`saascore usage`: reports, bulk imports and the reservation sweep."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from saascore.cli._output import console, new_table, print_table
from saascore.cli._run import EXIT_ERROR, EXIT_USAGE, fail, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.metering import BatchOutcome, SummaryBy, SummaryRow, UsageEventIn
from saascore.metering.schemas import UsageEventPayload

__all__ = ["app"]

app = typer.Typer(name="usage", help="Usage: report, import, sweep.", no_args_is_help=True)

BATCH = 500


@app.command()
@handle_errors
def report(
    org: Annotated[str, typer.Option(help="The organisation: its id or external id.")],
    start: Annotated[
        datetime | None,
        typer.Option("--from", formats=["%Y-%m-%d"], help="First day. Default: the 1st."),
    ] = None,
    end: Annotated[
        datetime | None,
        typer.Option("--to", formats=["%Y-%m-%d"], help="Last day. Default: today (UTC)."),
    ] = None,
    by: Annotated[SummaryBy, typer.Option(help="What to group by.")] = SummaryBy.DAY,
    metric: Annotated[str | None, typer.Option(help="Only this metric.")] = None,
) -> None:
    """Usage of one organisation from the daily rollups, as a table."""
    today = datetime.now(UTC).date()
    first: date = start.date() if start else today.replace(day=1)
    last: date = end.date() if end else today
    if last < first:
        fail("--to is before --from", EXIT_USAGE)

    async def work(core: Saascore) -> list[SummaryRow]:
        organization = await core.orgs.resolve(org)
        return await core.usage.summary(
            organization.id,
            start=first,
            end=last,
            by=by,
            metric=metric,
        )

    rows = run_with_core(load_settings(), work)
    table = new_table(
        by,
        "quantity",
        "events",
        "input tokens",
        "output tokens",
        "cost (USD)",
        title=f"usage {first} .. {last}",
        ids=(by,),  # a metric's, feature's or model's name
    )
    for row in rows:
        table.add_row(
            row.key or "-",
            f"{row.quantity:,}",
            f"{row.event_count:,}",
            f"{row.input_tokens:,}",
            f"{row.output_tokens:,}",
            f"{row.cost_micros / 1_000_000:,.6f}",
        )
    if not rows:
        typer.echo("no usage in that range", err=True)
        return
    print_table(table)


@dataclass
class _Tally:
    accepted: int = 0
    duplicate: int = 0
    refused: int = 0
    invalid: int = 0
    problems: list[str] = field(default_factory=list)

    def count(self, line: int, outcome: BatchOutcome) -> None:
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)
        if outcome.status in ("refused", "invalid"):
            self.problems.append(f"line {line}: {outcome.code}: {outcome.message}")


def _checkpoint(path: Path) -> Path:
    return path.with_name(path.name + ".saascore-progress")


@app.command("import")
@handle_errors
def import_events(
    path: Annotated[
        Path, typer.Argument(metavar="FILE.jsonl", exists=True, dir_okay=False, readable=True)
    ],
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore the progress of an interrupted import.")
    ] = False,
) -> None:
    """Ingest usage events, one JSON object a line, in batches of 500.

    Each event needs `organization_id`, `id` (its idempotency key), `metric` and `quantity`.
    Importing a file twice records each event once. An interrupted import resumes after the
    last committed batch (kept in FILE.jsonl.saascore-progress); duplicates are harmless
    either way. Events may be dated in any period (backfill: `occurred_at` from 1970 to
    9998). Exits 1 if a line is invalid or refused.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    settings = load_settings()
    checkpoint = _checkpoint(path)
    offset = 0
    if checkpoint.exists() and not restart:
        offset = int(checkpoint.read_text() or 0)
    size = path.stat().st_size
    tally = _Tally()

    async def work(core: Saascore) -> None:
        with (
            path.open("rb") as stream,
            Progress(
                TextColumn("importing"),
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=console(stderr=True),
                transient=True,
            ) as progress,
        ):
            task = progress.add_task("import", total=size, completed=offset)
            stream.seek(offset)
            line_number = 0 if offset == 0 else _lines_before(path, offset)
            batch: list[tuple[int, UsageEventIn]] = []
            position = offset
            while True:
                raw = stream.readline()
                if raw:
                    line_number += 1
                    position += len(raw)
                    event = _parse(line_number, raw, tally)
                    if event is not None:
                        batch.append((line_number, event))
                if batch and (len(batch) >= BATCH or not raw):
                    outcomes = await core.usage.record_many(
                        [event for _, event in batch], backfill=True
                    )
                    for (number, _), outcome in zip(batch, outcomes, strict=True):
                        tally.count(number, outcome)
                    batch = []
                if not batch:
                    _save(checkpoint, position)
                    progress.update(task, completed=position)
                if not raw:
                    break

    run_with_core(settings, work)
    checkpoint.unlink(missing_ok=True)
    typer.echo(
        f"{tally.accepted} accepted, {tally.duplicate} duplicate, {tally.refused} refused, "
        f"{tally.invalid} invalid"
    )
    for problem in tally.problems[:20]:
        typer.echo(problem, err=True)
    if len(tally.problems) > 20:
        typer.echo(f"... and {len(tally.problems) - 20} more", err=True)
    if tally.invalid or tally.refused:
        raise typer.Exit(EXIT_ERROR)


def _parse(line: int, raw: bytes, tally: _Tally) -> UsageEventIn | None:
    text = raw.strip()
    if not text:
        return None
    try:
        payload = UsageEventPayload.model_validate(json.loads(text))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        tally.invalid += 1
        tally.problems.append(f"line {line}: not JSON: {exc}")
        return None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "event"
        tally.invalid += 1
        tally.problems.append(f"line {line}: {where}: {error['msg']}")
        return None
    if payload.organization_id is None:
        tally.invalid += 1
        tally.problems.append(f"line {line}: organization_id: Field required")
        return None
    return payload.to_event()


def _lines_before(path: Path, offset: int) -> int:
    with path.open("rb") as stream:
        return stream.read(offset).count(b"\n")


def _save(checkpoint: Path, position: int) -> None:
    temporary = checkpoint.with_name(checkpoint.name + ".tmp")
    temporary.write_text(str(position))
    os.replace(temporary, checkpoint)


@app.command()
@handle_errors
def sweep() -> None:
    """Expire reservations past their time and give their quota back."""

    async def work(core: Saascore) -> int:
        return await core.usage.sweep()

    expired = run_with_core(load_settings(), work)
    typer.echo(f"{expired} reservation{'s' if expired != 1 else ''} expired")

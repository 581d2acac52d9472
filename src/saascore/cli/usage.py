"""`saascore usage`: reports, bulk imports and the reservation sweep."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from saascore.cli._output import Column, JsonOption, console, output_format, print_rows
from saascore.cli._run import EXIT_ERROR, EXIT_USAGE, fail, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.metering import BatchOutcome, SummaryBy, SummaryRow, UsageEventIn
from saascore.metering.schemas import UsageEventPayload

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["app"]

app = typer.Typer(name="usage", help="Usage: report, import, sweep.", no_args_is_help=True)

BATCH = 500


def _usd(micros: int) -> str:
    return f"{micros / 1_000_000:,.6f}"


def _columns(by: SummaryBy) -> list[Column[SummaryRow]]:
    """A report's row: its group (`by`), the metric and unit its quantity counts, the sums."""
    columns: list[Column[SummaryRow]] = [Column(by.value, lambda r: r.key or None, is_id=True)]
    if by is not SummaryBy.METRIC:
        columns.append(Column("metric", lambda r: r.metric, is_id=True))
    return [
        *columns,
        Column("quantity", lambda r: r.quantity, justify="right"),
        Column("unit", lambda r: r.unit),
        Column("events", lambda r: r.event_count, justify="right"),
        Column("input_tokens", lambda r: r.input_tokens, justify="right"),
        Column("output_tokens", lambda r: r.output_tokens, justify="right"),
        Column("total_tokens", lambda r: r.total_tokens, in_table=False),
        Column("cost_micros", lambda r: r.cost_micros, header="cost (USD)", text=_usd,
               justify="right"),
    ]  # fmt: skip


def _totals(by: SummaryBy) -> Callable[[Table, Sequence[SummaryRow]], None]:
    """Add a total per metric (and unit) under a report's rows: never one across metrics."""

    def add(table: Table, rows: Sequence[SummaryRow]) -> None:
        if by is SummaryBy.METRIC or len({r.key for r in rows}) < 2:
            return  # each row is already one metric's total
        totals: dict[tuple[str, str], list[int]] = {}
        for row in rows:
            sums = totals.setdefault((row.metric or "", row.unit or ""), [0] * 5)
            for index, value in enumerate(
                (row.quantity, row.event_count, row.input_tokens, row.output_tokens,
                 row.cost_micros)
            ):  # fmt: skip
                sums[index] += value
        table.add_section()
        for (metric, unit), (quantity, events, inputs, outputs, cost) in sorted(totals.items()):
            table.add_row(
                "total", metric, f"{quantity:,}", unit, f"{events:,}", f"{inputs:,}",
                f"{outputs:,}", _usd(cost),
            )  # fmt: skip

    return add


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
    as_json: JsonOption = False,
) -> None:
    """Usage of one organisation from the daily rollups: a row per group and metric (different
    metrics are never added together), then each metric's total."""
    output = output_format(as_json)
    today = datetime.now(UTC).date()
    first: date = start.date() if start else today.replace(day=1)
    last: date = end.date() if end else today
    if last < first:
        fail("--to is before --from", EXIT_USAGE)

    async def work(core: Saascore) -> list[SummaryRow]:
        organization = await core.orgs.resolve(org)
        return await core.usage.summary(
            organization.id, start=first, end=last, by=by, metric=metric
        )

    rows = run_with_core(load_settings(), work)
    print_rows(
        rows,
        _columns(by),
        output,
        empty="no usage in that range",
        title=f"usage {first} .. {last}",
        table=_totals(by),
    )


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
    Importing a file twice records each event once (the second time, as "already applied").
    An interrupted import resumes after the last committed batch (kept in
    FILE.jsonl.saascore-progress); duplicates are harmless either way. Events may be dated
    in any period (backfill: `occurred_at` from 1970 to 9998). Exits 1 if a line is invalid
    or refused.
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
        f"{tally.accepted} accepted, {tally.duplicate} already applied, {tally.refused} refused, "
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
    except RecursionError:  # Python's parser gives up on arrays or objects nested too deep
        tally.invalid += 1
        tally.problems.append(f"line {line}: not JSON: it nests too deeply")
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

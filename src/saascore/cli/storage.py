"""`saascore storage`: check that each organisation's storage gauge equals its documents."""

from __future__ import annotations

from typing import Annotated

import typer

from saascore.cli._output import print_json
from saascore.cli._run import EXIT_ERROR, cli_actor, handle_errors, run_with_core
from saascore.config import load_settings
from saascore.core import Saascore
from saascore.workspace.documents import StorageDrift

__all__ = ["app"]

app = typer.Typer(
    name="storage",
    help="Document storage: verify (and repair) the gauge.",
    no_args_is_help=True,
)


@app.command()
@handle_errors
def verify(
    fix: Annotated[
        bool, typer.Option("--fix", help="Set each gauge that differs, with an audit entry.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the differences as JSON.")] = False,
) -> None:
    """Recompute every organisation's storage_used_bytes from its documents and report the
    differences. Exits 1 on any difference left unrepaired."""
    actor = cli_actor()

    async def work(core: Saascore) -> list[StorageDrift]:
        return await core.documents.verify_storage(fix=fix, actor=actor)

    drifts = run_with_core(load_settings(), work)
    if as_json:
        print_json(
            [
                {
                    "organization_id": str(drift.organization_id),
                    "recorded_bytes": drift.recorded_bytes,
                    "actual_bytes": drift.actual_bytes,
                    "repaired": drift.repaired,
                }
                for drift in drifts
            ]
        )
    else:
        for drift in drifts:
            verb = "repaired" if drift.repaired else "differs"
            typer.echo(
                f"organisation {drift.organization_id}: {verb}: gauge {drift.recorded_bytes}"
                f" bytes, documents {drift.actual_bytes} bytes",
                err=not drift.repaired,
            )
        if not drifts:
            typer.echo("storage consistent")
    if drifts and not fix:
        if not as_json:
            count = len(drifts)
            typer.echo(f"{count} difference{'s' if count != 1 else ''} found", err=True)
        raise typer.Exit(EXIT_ERROR)

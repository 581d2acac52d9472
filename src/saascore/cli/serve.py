"""`saascore serve` and `saascore demo`: run the HTTP service."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from saascore.cli._output import console
from saascore.cli._run import EXIT_USAGE, fail, handle_errors, run_with_core, run_with_database

if TYPE_CHECKING:
    from saascore.config import Settings
    from saascore.core import Saascore
    from saascore.models import Organization

__all__ = ["DEMO_EXTERNAL_ID", "demo", "demo_settings", "serve"]

APP_FACTORY = "saascore.api.app:app_factory"
DEMO_HOST = "127.0.0.1"
DEMO_EXTERNAL_ID = "demo"
DEMO_NAME = "Demo Organization"
DEMO_PLAN = "pro"
#: How long a worker of `serve --workers N` may take to answer uvicorn's health check.
WORKER_HEALTHCHECK_SECONDS = 30


@handle_errors
def serve(
    host: Annotated[
        str | None,
        typer.Option(
            help="The address to bind. Default: SAASCORE_HOST (127.0.0.1).", show_default=False
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="The port. Default: SAASCORE_PORT (8000).", show_default=False
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    reload: Annotated[
        bool, typer.Option("--reload", help="Restart when the code changes (development).")
    ] = False,
) -> None:
    """Serve the HTTP API with uvicorn (settings from the environment and .env).

    With several workers, set SAASCORE_RATE_LIMIT_STORAGE=redis://... (shared rate limits)
    and PROMETHEUS_MULTIPROC_DIR (metrics summed over the workers; emptied at start).
    /metrics is served with SAASCORE_METRICS_TOKEN, or on SAASCORE_METRICS_PORT.
    """
    import uvicorn

    from saascore.config import load_settings
    from saascore.migrations import migrate

    if reload and workers > 1:
        fail("--reload and --workers cannot be combined", EXIT_USAGE)
    clear_metrics_directory()
    settings = load_settings()  # a bad setting stops here, before any worker starts
    if settings.metrics_port is not None:
        start_metrics_listener(settings, workers=workers, reload=reload, port=port)
    if settings.should_auto_migrate:
        # Once here rather than once per worker, where they would race to create the tables.
        run_with_database(settings, migrate.upgrade)
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        reload=reload,
        log_level=settings.log_level,
        # uvicorn's own proxy handling believes X-Forwarded-For from any loopback peer; the
        # app reads it only from SAASCORE_TRUSTED_PROXIES (`saascore.api.deps.client_address`).
        proxy_headers=False,
        # With --workers, uvicorn restarts a worker that has not answered its ping within
        # this many seconds, starting up included: its default (5 s) killed workers over and
        # over on a loaded host, where importing and starting the app can take longer.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
    )


def start_metrics_listener(
    settings: Settings, *, workers: int, reload: bool, port: int | None
) -> None:
    """Serve `/metrics` on `SAASCORE_METRICS_HOST:SAASCORE_METRICS_PORT` from this process.
    Workers in processes of their own count in theirs: the listener then needs
    PROMETHEUS_MULTIPROC_DIR to see them."""
    from saascore.api.metrics import MULTIPROC_DIR_VARIABLE, serve_metrics

    assert settings.metrics_port is not None
    if (workers > 1 or reload) and not os.environ.get(MULTIPROC_DIR_VARIABLE):
        fail(
            "SAASCORE_METRICS_PORT with --workers or --reload needs PROMETHEUS_MULTIPROC_DIR: "
            "the workers count in processes of their own",
            EXIT_USAGE,
        )
    if settings.metrics_port == (port or settings.port):
        fail("SAASCORE_METRICS_PORT must differ from the API's port", EXIT_USAGE)
    try:
        serve_metrics(settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        fail(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc}")


def clear_metrics_directory() -> None:
    """Remove the metric files that earlier runs left in `PROMETHEUS_MULTIPROC_DIR`: the
    new workers' counts would be added to theirs. (This process's own file stays: it is open.)"""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    own = f"_{os.getpid()}.db"
    for path in Path(directory).glob("*.db"):
        if not path.name.endswith(own):
            path.unlink(missing_ok=True)


def demo_settings() -> Settings:
    """The environment's settings, but on the embedded SQLite database, migrated at start."""
    from saascore.config import load_settings

    return load_settings(
        database_url=None,
        database_host=None,
        database_name=None,
        database_schema=None,
        use_cloud_sql_connector=False,
        cloud_sql_instance=None,
        auto_migrate=True,
    )


async def prepare_demo(core: Saascore) -> Organization:
    """Load the default catalog and create the demo organisation unless it exists."""
    from saascore.plans import read_catalog
    from saascore.tenancy import OrganizationExists, OrganizationNotFound

    await core.plans.load_catalog(read_catalog())
    try:
        return await core.orgs.get_by_external_id(DEMO_EXTERNAL_ID)
    except OrganizationNotFound:
        pass
    try:
        return await core.orgs.create(name=DEMO_NAME, plan=DEMO_PLAN, external_id=DEMO_EXTERNAL_ID)
    except OrganizationExists:  # another demo created it meanwhile
        return await core.orgs.get_by_external_id(DEMO_EXTERNAL_ID)


@handle_errors
def demo(
    port: Annotated[int, typer.Option(min=1, max=65535, help="The port to serve on.")] = 8000,
) -> None:
    """Run saascore on the embedded SQLite database with a demo organisation: no setup needed.

    Ignores the DATABASE_* variables. The data stays under ./.saascore (SAASCORE_DATA_DIR).
    """
    _check_port_free(DEMO_HOST, port)
    import uvicorn
    from rich.panel import Panel
    from rich.table import Table

    from saascore.api.app import create_app

    settings = demo_settings()
    organization = run_with_core(settings, prepare_demo)
    base = f"http://{DEMO_HOST}:{port}"
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("database", str(Path(settings.sqlite_path).resolve()))
    facts.add_row("organization", f"{organization.name} ({organization.plan.code} plan)")
    facts.add_row("organization id", str(organization.id))
    facts.add_row("health", f"{base}/healthz")
    facts.add_row("API docs", f"{base}/docs")
    out = console()
    out.print(Panel(facts, title="saascore demo", title_align="left", expand=False))
    out.file.flush()
    uvicorn.run(
        create_app(settings),
        host=DEMO_HOST,
        port=port,
        log_level=settings.log_level,
        proxy_headers=False,  # as in `serve`: SAASCORE_TRUSTED_PROXIES decides
    )


def _check_port_free(host: str, port: int) -> None:
    """Fail with one line, before any work or banner, when `port` is taken on `host`."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            fail(
                f"port {port} on {host} is in use: stop what holds it, or pick another with "
                "--port (make demo PORT=8010)"
            )

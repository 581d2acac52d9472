"""`saascore serve` and `saascore demo`: run the HTTP service."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from saascore.cli._output import console
from saascore.cli._run import EXIT_USAGE, fail, handle_errors, run_with_core, run_with_database

if TYPE_CHECKING:
    from saascore.config import Settings
    from saascore.core import Saascore
    from saascore.models import Organization
    from saascore.plans.catalog import Catalog

__all__ = [
    "DEMO_EMAIL",
    "DEMO_EXTERNAL_ID",
    "DEMO_PASSWORD",
    "DemoAccess",
    "demo",
    "demo_catalog",
    "demo_settings",
    "prepare_demo",
    "serve",
]

APP_FACTORY = "saascore.api.app:app_factory"
DEMO_HOST = "127.0.0.1"
DEMO_EXTERNAL_ID = "demo"
DEMO_NAME = "Demo Organization"
#: A hidden plan that only the demo loads (see `demo_catalog`).
DEMO_PLAN = "demo"
#: The demo organisation's owner. The demo serves on 127.0.0.1 only, so the password can be
#: fixed and documented (the README's walkthrough logs in with it).
DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "saascore-demo-walkthrough"  # noqa: S105 (printed and documented on purpose)
DEMO_USER_NAME = "Demo Owner"
DEMO_KEY_NAME = "demo"
#: Every tenant permission but `admin`: the printed key reaches each tenant endpoint a
#: walkthrough tries (usage, credits, billing and checkout, the workspace and the LLM client).
DEMO_KEY_SCOPES = (
    "usage:read",
    "usage:write",
    "billing:read",
    "billing:write",
    "credits:write",
    "workspace:read",
    "workspace:write",
)
#: More worker processes than any host runs usefully (and a bound for the option).
MAX_WORKERS = 1024
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
    workers: Annotated[int, typer.Option(min=1, max=MAX_WORKERS, help="Worker processes.")] = 1,
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


def returning_to(settings: Settings, base: str) -> Settings:
    """`settings` with a checkout's return addresses on `base` where they are not set: the
    mock checkout then returns to the demo on whatever port it serves."""
    update = {
        name: f"{base}/?checkout={outcome}"
        for name, outcome in (
            ("checkout_success_url", "success"),
            ("checkout_cancel_url", "cancel"),
        )
        if name not in settings.model_fields_set
    }
    return settings.model_copy(update=update)


def demo_catalog() -> Catalog:
    """The default catalog and the hidden `demo` plan: every feature of the top tier, without
    a limit a walkthrough could hit (no rate limits, token, storage, seat or call limits).
    It lives here, not in the default catalog, so no other deployment ever loads it."""
    from saascore.models import BillingCycle
    from saascore.plans import read_catalog
    from saascore.plans.catalog import LIMIT_FIELDS, PriceSpec

    catalog = read_catalog()
    top = max(catalog.plans.values(), key=lambda plan: plan.sort_order)
    unlimited: dict[str, Any] = dict.fromkeys(LIMIT_FIELDS)
    demo = top.model_copy(
        update={
            **unlimited,
            "name": "Demo",
            "description": "saascore demo: every feature, no limit a walkthrough can hit.",
            "sort_order": top.sort_order + 1,
            "api_access": True,
            "is_public": False,
            "trial_days": 0,
            "limits": {},
            "prices": [PriceSpec(billing_cycle=BillingCycle.MONTHLY, currency="USD", amount=0)],
        }
    )
    return catalog.model_copy(update={"plans": {**catalog.plans, DEMO_PLAN: demo}})


@dataclass(frozen=True)
class DemoAccess:
    """What `saascore demo` prints: the organisation, its owner's login and a new API key."""

    organization: Organization
    email: str
    password: str
    api_key: str


async def prepare_demo(core: Saascore) -> DemoAccess:
    """Set up the demo, idempotently: load the catalog, make sure the demo organisation
    exists with an active owner whose password is `DEMO_PASSWORD`, and
    replace its `demo` API key with a new `sk_test_` key (a raw key is shown only once, so
    each start makes one and revokes the one before). It is put on the demo plan unless it
    has a live subscription, whose plan it keeps."""
    from saascore.billing.errors import SubscriptionNotFound
    from saascore.models import LIVE_SUBSCRIPTION_STATUSES, ApiKeyEnvironment, UserRole
    from saascore.tenancy import OrganizationExists, OrganizationNotFound
    from saascore.tenancy.errors import UserNotFound
    from saascore.tenancy.passwords import verify_password

    await core.plans.load_catalog(demo_catalog())
    try:
        organization = await core.orgs.get_by_external_id(DEMO_EXTERNAL_ID)
    except OrganizationNotFound:
        try:
            organization = await core.orgs.create(
                name=DEMO_NAME, plan=DEMO_PLAN, external_id=DEMO_EXTERNAL_ID
            )
        except OrganizationExists:  # another demo created it meanwhile
            organization = await core.orgs.get_by_external_id(DEMO_EXTERNAL_ID)
    async with core.database.transaction() as session:
        # A demo database from before the demo plan has its organisation on another one; an
        # organisation with a live subscription (a checkout in the demo) keeps its plan.
        try:
            subscription = await core.subscriptions.get(organization.id, session=session)
        except SubscriptionNotFound:
            subscription = None
        if subscription is None or subscription.status not in LIVE_SUBSCRIPTION_STATUSES:
            organization = await core.orgs.change_plan(organization.id, DEMO_PLAN, session=session)
        try:
            user = await core.users.get_by_email(organization.id, DEMO_EMAIL, session=session)
        except UserNotFound:
            await core.users.create(
                organization.id,
                email=DEMO_EMAIL,
                name=DEMO_USER_NAME,
                role=UserRole.OWNER,
                password=DEMO_PASSWORD,
                session=session,
            )
        else:
            # Keep the user (and its sessions) as it is when the printed login works.
            works, _ = await verify_password(DEMO_PASSWORD, user.password_hash)
            if not (works and user.is_active and user.role is UserRole.OWNER):
                await core.users.update(
                    organization.id,
                    user.id,
                    role=UserRole.OWNER,
                    is_active=True,
                    password=None if works else DEMO_PASSWORD,
                    session=session,
                )
        after = None
        while keys := await core.api_keys.list(organization.id, after=after, session=session):
            for key in keys:
                if key.name == DEMO_KEY_NAME:
                    await core.api_keys.revoke(organization.id, key.id, session=session)
            after = keys[-1].id
        _, raw_key = await core.api_keys.create(
            organization.id,
            name=DEMO_KEY_NAME,
            scopes=DEMO_KEY_SCOPES,
            environment=ApiKeyEnvironment.TEST,
            session=session,
        )
    return DemoAccess(organization, DEMO_EMAIL, DEMO_PASSWORD, raw_key)


def demo_curl(base: str, api_key: str) -> str:
    """A command that records one event with `api_key`: a new event id each start, so the
    first paste answers 201 and a second one 200, the duplicate."""
    import json
    import secrets

    event = {"id": f"demo-{secrets.token_hex(4)}", "metric": "tokens", "quantity": 1200}
    return (
        f'curl -s -X POST {base}/v1/usage/events -H "Authorization: Bearer {api_key}" '
        f"-H 'Content-Type: application/json' -d '{json.dumps(event)}'"
    )


@handle_errors
def demo(
    port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="The port. Default: SAASCORE_PORT (8000).", show_default=False
        ),
    ] = None,
) -> None:
    """Run saascore on the embedded SQLite database with a demo organisation: no setup needed.

    Ignores the DATABASE_* variables. The data stays under ./.saascore (SAASCORE_DATA_DIR).
    """
    settings = demo_settings()  # a bad setting stops here, as in `serve`
    port = port or settings.port
    _check_port_free(DEMO_HOST, port)
    import uvicorn
    from rich.panel import Panel
    from rich.table import Table

    from saascore.api.app import create_app

    base = f"http://{DEMO_HOST}:{port}"
    settings = returning_to(settings, base)
    access = run_with_core(settings, prepare_demo)
    organization = access.organization
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("database", str(Path(settings.sqlite_path).resolve()))
    facts.add_row("organization", f"{organization.name} ({organization.plan.code} plan)")
    facts.add_row("organization id", str(organization.id))
    facts.add_row("login e-mail", access.email)
    facts.add_row("password", access.password)
    facts.add_row("API key", access.api_key)
    facts.add_row("health", f"{base}/healthz")
    facts.add_row("API docs", f"{base}/docs")
    out = console()
    out.print(Panel(facts, title="saascore demo", title_align="left", expand=False))
    out.print("The API key is new at each start (the last one is revoked). Record an event:")
    out.print(demo_curl(base, access.api_key), soft_wrap=True)  # one line, to paste
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

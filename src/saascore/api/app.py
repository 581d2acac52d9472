"""`create_app(settings)`: saascore as a FastAPI service."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from saascore import __version__
from saascore.api.admin import create_admin_router
from saascore.api.docs import install_docs, install_home
from saascore.api.errors import ErrorResponse, install_error_handlers
from saascore.api.health import create_health_router
from saascore.api.metrics import create_metrics_router, install_metrics
from saascore.api.middleware import InputGuardMiddleware, RequestIdMiddleware
from saascore.api.openapi import OPENAPI_TAGS, install_openapi
from saascore.audit.endpoints import create_audit_router
from saascore.billing.endpoints import (
    create_billing_router,
    create_credit_packs_router,
    create_invoices_router,
    create_payments_router,
    create_subscription_router,
)
from saascore.config import Settings, load_settings
from saascore.core import Saascore
from saascore.credits.endpoints import create_credits_router
from saascore.events.endpoints import create_webhooks_router, document_webhooks
from saascore.identity.endpoints import create_api_keys_router, create_auth_router
from saascore.llm.endpoints import create_llm_router
from saascore.metering.endpoints import create_usage_router
from saascore.plans.endpoints import create_plans_router
from saascore.providers.endpoints import (
    create_mock_checkout_router,
    create_provider_subscription_router,
    create_provider_webhooks_router,
)
from saascore.tenancy.endpoints import create_organization_router, create_users_router
from saascore.workspace.endpoints import (
    create_conversations_router,
    create_documents_router,
    create_folders_router,
    create_generations_router,
    create_jobs_router,
    create_memory_router,
    create_rag_store_router,
)

__all__ = [
    "app_factory",
    "create_app",
    "install",
    "mounted_lifespan",
    "saascore_lifespan",
    "setup_cors",
]

logger = logging.getLogger("saascore.api")


def setup_cors(app: FastAPI, cors_origins: list[str]) -> None:
    """Allow browser calls from these origins (seed 004's `setup_cors`)."""
    if cors_origins:
        # Credentials (cookies, Authorization) only go to origins named one by one: with "*"
        # the browser would send them to any site that calls the API.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_credentials="*" not in cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
        )


def saascore_lifespan(
    core: Saascore, *, owned: bool = True
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI lifespan that starts `core` (migrating when `auto_migrate` is on), puts it in
    `app.state` where saascore's routers find it, runs the webhook dispatcher beside the app
    when `settings.should_dispatch` (stopped, its requests in flight given a few seconds, at
    shutdown), and closes `core` at shutdown (unless not `owned`). A host app mounting
    saascore's routers passes it to `FastAPI(lifespan=...)`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await core.start()
        app.state.saascore = core
        app.state.database = core.database
        logger.info("saascore %s serving on %s", __version__, core.database)
        stop = asyncio.Event()
        dispatcher: asyncio.Task[None] | None = None
        if core.settings.should_dispatch:
            dispatcher = asyncio.create_task(core.dispatcher().run(stop))
        try:
            yield
        finally:
            if dispatcher is not None:
                stop.set()
                try:
                    await dispatcher
                except Exception:
                    logger.exception("the webhook dispatcher failed")
            if owned:
                await core.close()

    return lifespan


def mounted_lifespan(
    *apps: FastAPI, then: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan for a host app that mounts `apps` (made by `create_app`): it runs their
    lifespans, which start their `Saascore`, since Starlette runs only the lifespan of the
    app it serves, never those of mounted apps. `then` is the host's own lifespan, run
    inside theirs::

        saas = create_app(settings)
        host = FastAPI(lifespan=mounted_lifespan(saas))
        host.mount("/saas", saas)
    """

    @asynccontextmanager
    async def lifespan(host: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for app in apps:
                await stack.enter_async_context(app.router.lifespan_context(app))
            if then is not None:
                await stack.enter_async_context(then(host))
            yield

    return lifespan


def install(app: FastAPI, settings: Settings) -> None:
    """What saascore's routers expect of the app that mounts them: the error envelope, the
    request id, the input guard, CORS from settings, request metrics, and both credential schemes
    in the OpenAPI document."""
    install_error_handlers(app)
    install_openapi(app, settings)
    app.add_middleware(InputGuardMiddleware, max_body_bytes=settings.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    setup_cors(app, settings.cors_origins)
    install_metrics(app)


def create_app(
    settings: Settings | None = None,
    *,
    core: Saascore | None = None,
    docs_url: str | None = "/docs",
    redoc_url: str | None = "/redoc",
) -> FastAPI:
    """The saascore service: every router, on a `Saascore` built from `settings` at start
    (or on `core`, which the caller then closes); Swagger UI at `docs_url` and ReDoc at
    `redoc_url` (None leaves one out), both working offline, and a home page at `/`."""
    settings = settings if settings is not None else load_settings()
    lifespan = saascore_lifespan(core or Saascore(settings), owned=core is None)
    app = FastAPI(
        title="saascore",
        version=__version__,
        description="Tenants, identity, plans, exact metering, credits and audit.",
        lifespan=lifespan,
        # FastAPI's own pages load their assets from a CDN: install_docs serves them instead.
        docs_url=None,
        redoc_url=None,
        openapi_tags=OPENAPI_TAGS,
        # 400, 413, 422 and 503 are added per operation, where it can meet them (openapi.py).
        responses={500: {"model": ErrorResponse, "description": "An unexpected error"}},
    )
    install(app, settings)
    app.include_router(_health_router(settings.service_name, __version__))
    if settings.metrics_token is not None:
        app.include_router(create_metrics_router(token=settings.metrics_token.get_secret_value()))
    for router in _service_routers():
        app.include_router(router)
    document_webhooks(app)
    install_docs(app, docs_url=docs_url, redoc_url=redoc_url)
    install_home(app, health_urls={"liveness": "/health", "readiness": "/healthz"})
    return app


#: The health routes, by service name and version (built once for each).
_health_router = functools.cache(create_health_router)


@functools.cache
def _service_routers() -> tuple[APIRouter, ...]:
    """The service's routers, built once per process and included in every app made.

    Building a router is most of what `create_app` costs (a pydantic adapter per parameter of
    every operation), and a router holds nothing of one app: its endpoints reach their app's
    `Saascore` through the request. So a process that makes many apps (tests, a host
    mounting several) pays it once.

    Routes are matched in order, one by one (over a hundred of them), so the hot paths come
    first: recording usage, then the payment providers' webhooks (one route, which no other
    path of the service matches)."""
    return (
        create_usage_router(),
        create_provider_webhooks_router(),
        create_auth_router(),
        create_api_keys_router(),
        create_users_router(),
        create_organization_router(),
        create_plans_router(),
        create_credits_router(),
        create_subscription_router(),
        create_provider_subscription_router(),
        create_invoices_router(),
        create_billing_router(),
        create_payments_router(),
        create_credit_packs_router(),
        create_audit_router(),
        create_admin_router(),
        create_webhooks_router(),
        create_mock_checkout_router(),
        create_folders_router(),
        create_documents_router(),
        create_jobs_router(),
        create_generations_router(),
        create_memory_router(),
        create_conversations_router(),
        create_rag_store_router(),
        create_llm_router(),
    )


def app_factory() -> FastAPI:
    """For `uvicorn --factory saascore.api.app:app_factory` (what `saascore serve` runs):
    settings from the environment."""
    app = create_app(load_settings())
    # Modules, routes and schemas live as long as the process: keep the collector from walking
    # them in every full collection that per-request garbage triggers (measured in
    # bench/http_api.py: server CPU per request -18 %, p99 halved).
    gc.freeze()
    return app

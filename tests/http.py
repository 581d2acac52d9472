"""Helpers for tests through the real app over HTTP (the `api` fixture is in conftest)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from saascore import Saascore
from saascore.api import create_app
from saascore.kit.db import Database


def api_app(database: Database, **overrides: Any) -> tuple[FastAPI, Saascore]:
    """The real app on `database`, with settings overridden (e.g. rate limits)."""
    settings = database.settings.model_copy(update=overrides)
    core = Saascore(settings, database=database)
    return create_app(settings, core=core), core


@asynccontextmanager
async def serving(application: FastAPI, core: Saascore) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app, its lifespan running; the rate limiter closed after."""
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield c
        finally:
            await core.rate_limiter.close()

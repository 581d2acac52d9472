"""Liveness and readiness (seed 003's `/healthz`, seed 004's `create_health_router`)."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from saascore.kit.db import Database
from saascore.kit.errors import DatabaseUnavailable
from saascore.kit.time import utcnow

logger = logging.getLogger("saascore.api")

__all__ = ["DatabaseHealth", "Liveness", "Readiness", "create_health_router"]


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"
    service: str
    timestamp: str


class DatabaseHealth(BaseModel):
    status: Literal["healthy", "unhealthy"]
    database: str


class Readiness(BaseModel):
    status: Literal["ok", "unhealthy"]
    service: str
    version: str
    database: DatabaseHealth


def create_health_router(service_name: str = "saascore", version: str | None = None) -> APIRouter:
    """`GET /health` (the process is up) and `GET /healthz` (it can reach its database).

    The database comes from `app.state.database`, which saascore's lifespan sets; a host app
    mounting this router on its own sets it too.
    """
    if version is None:
        from saascore import __version__ as version
    router = APIRouter(tags=["health"])

    @router.head("/health", include_in_schema=False)
    @router.get("/health", response_model=Liveness, summary="Liveness")
    async def health() -> Liveness:
        """The process is up. Does not touch the database."""
        return Liveness(service=service_name, timestamp=utcnow().isoformat())

    @router.head("/healthz", include_in_schema=False)
    @router.get(
        "/healthz",
        response_model=Readiness,
        summary="Readiness",
        responses={503: {"model": Readiness, "description": "The database is unreachable"}},
    )
    async def healthz(request: Request) -> JSONResponse:
        """Ready to serve: the database answers. 503 with `"unhealthy"` when it does not."""
        database: Database = request.app.state.database
        try:
            await database.ping(timeout=3.0)
        except DatabaseUnavailable as exc:
            # The reason goes to the log, not to whoever can reach this endpoint.
            logger.warning("readiness check failed: %s", exc)
            body = Readiness(
                status="unhealthy",
                service=service_name,
                version=version,
                database=DatabaseHealth(status="unhealthy", database=database.backend.value),
            )
            return JSONResponse(body.model_dump(), status_code=503)
        body = Readiness(
            status="ok",
            service=service_name,
            version=version,
            database=DatabaseHealth(status="healthy", database=database.backend.value),
        )
        return JSONResponse(body.model_dump())

    return router

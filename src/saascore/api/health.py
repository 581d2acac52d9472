"""Liveness and readiness (seed 003's `/healthz`, seed 004's `create_health_router`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from saascore.kit.db import Database
from saascore.kit.errors import DatabaseUnavailable, RateLimiterUnavailable
from saascore.kit.time import utcnow
from saascore.metering.ratelimit import RateLimiter

logger = logging.getLogger("saascore.api")

__all__ = [
    "DatabaseHealth",
    "Liveness",
    "RateLimiterHealth",
    "Readiness",
    "create_health_router",
]

#: Seconds each dependency has to answer a readiness check.
CHECK_TIMEOUT = 3.0


class Liveness(BaseModel):
    status: Literal["ok"] = Field(default="ok", description="Always `ok` when the process answers")
    service: str = Field(description="The service's name", examples=["saascore"])
    timestamp: str = Field(description="The server's time, ISO 8601 UTC")


class DatabaseHealth(BaseModel):
    status: Literal["healthy", "unhealthy"] = Field(
        description="Whether the database answered in time"
    )
    database: str = Field(
        description="The database backend: `postgresql` or `sqlite`", examples=["postgresql"]
    )


class RateLimiterHealth(BaseModel):
    status: Literal["healthy", "unhealthy"] = Field(
        description="Whether the rate limiter's storage answered in time"
    )
    #: `memory` (in the process: always healthy) or `redis`.
    storage: str = Field(description="`memory` (in the process: always healthy) or `redis`.")


class Readiness(BaseModel):
    status: Literal["ok", "unhealthy"] = Field(
        description="`ok` when every dependency answers, else `unhealthy` (503)"
    )
    service: str = Field(description="The service's name", examples=["saascore"])
    version: str = Field(description="The saascore version")
    database: DatabaseHealth = Field(description="The database's health")
    #: Absent when the app has no rate limiter.
    rate_limiter: RateLimiterHealth | None = Field(
        default=None, description="The rate limiter's health; absent without one"
    )


def create_health_router(service_name: str = "saascore", version: str | None = None) -> APIRouter:
    """`GET /health` (the process is up) and `GET /healthz` (it can reach its database, and
    the Redis of its rate limits when they live there).

    The database comes from `app.state.database` and the rate limiter from the facade in
    `app.state.saascore`, which saascore's lifespan sets; a host app mounting this router on
    its own sets `app.state.database` too, and `app.state.rate_limiter` if it has one.
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
        response_model_exclude_none=True,
        summary="Readiness",
        responses={
            503: {
                "model": Readiness,
                "description": "The database or the rate limiter's Redis is unreachable",
            }
        },
    )
    async def healthz(request: Request) -> JSONResponse:
        """Ready to serve: the database answers, and so does the rate limiter's Redis when
        rate limits live there (without it every authenticated request would answer 503).
        503 with `"unhealthy"` when one does not."""
        database: Database = request.app.state.database
        limiter = _rate_limiter(request)
        database_ok, limiter_ok = await asyncio.gather(
            _database_answers(database),
            _rate_limiter_answers(limiter) if limiter is not None else _healthy(),
        )
        body = Readiness(
            status="ok" if database_ok and limiter_ok else "unhealthy",
            service=service_name,
            version=version,
            database=DatabaseHealth(
                status="healthy" if database_ok else "unhealthy", database=database.backend.value
            ),
            rate_limiter=None
            if limiter is None
            else RateLimiterHealth(
                status="healthy" if limiter_ok else "unhealthy", storage=limiter.storage
            ),
        )
        return JSONResponse(
            body.model_dump(exclude_none=True), status_code=200 if body.status == "ok" else 503
        )

    return router


def _rate_limiter(request: Request) -> RateLimiter | None:
    """`app.state.rate_limiter` if a host app set one, else the saascore facade's."""
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        limiter = getattr(getattr(request.app.state, "saascore", None), "rate_limiter", None)
    return limiter if isinstance(limiter, RateLimiter) else None


async def _database_answers(database: Database) -> bool:
    try:
        await database.ping(timeout=CHECK_TIMEOUT)
    except DatabaseUnavailable as exc:
        # The reason goes to the log, not to whoever can reach this endpoint.
        logger.warning("readiness check failed: %s", exc)
        return False
    return True


async def _rate_limiter_answers(limiter: RateLimiter) -> bool:
    try:
        await asyncio.wait_for(limiter.ping(), CHECK_TIMEOUT)
    except (RateLimiterUnavailable, TimeoutError) as exc:
        logger.warning("readiness check failed: rate limiter: %s", exc)
        return False
    return True


async def _healthy() -> bool:
    return True

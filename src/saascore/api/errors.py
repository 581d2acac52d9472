"""One place where errors become HTTP responses: `{"error": {"code", "message", "details"}}`.

Every envelope answered is counted in `saascore_http_errors_total{status, code}` (see
`saascore.api.metrics`), so refusals can be watched by code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from saascore.api.metrics import HTTP_ERRORS
from saascore.kit.db import is_arithmetic_error, is_timeout
from saascore.kit.errors import (
    DatabaseUnavailable,
    DomainError,
    InvalidCharacter,
    InvalidInput,
    RateLimiterUnavailable,
)

__all__ = [
    "BadRequest",
    "ErrorBody",
    "ErrorClass",
    "ErrorResponse",
    "InvalidCharacter",
    "PayloadTooLarge",
    "ValidationFailed",
    "allowed_methods",
    "document_errors",
    "error_response",
    "error_responses",
    "install_error_handlers",
]

logger = logging.getLogger("saascore.api")


class ErrorBody(BaseModel):
    code: str = Field(
        description="A stable, machine-readable code to switch on", examples=["limit_exceeded"]
    )
    message: str = Field(
        description="What went wrong, for a human",
        examples=["the tokens limit of this period is reached"],
    )
    details: dict[str, Any] = Field(
        default={},
        description=(
            "Facts about the error, by code (the metric and limit, the fields refused, ...)"
        ),
        examples=[{"metric": "tokens", "limit": 100000}],
    )


class ErrorResponse(BaseModel):
    """Every error saascore answers has this shape; switch on `error.code`."""

    error: ErrorBody = Field(description="The error")


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error envelope as a response, counted by status and code."""
    HTTP_ERRORS.labels(str(status_code), code).inc()
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status_code, headers=headers)


class BadRequest(DomainError):
    """(400) The body cannot be read at all (not UTF-8, or cut off)."""

    code = "bad_request"
    status_code = 400


class PayloadTooLarge(DomainError):
    """(413) The body is over the size limit (`SAASCORE_MAX_REQUEST_BYTES`, 4 MiB by default);
    `details.limit` states it."""

    code = "payload_too_large"
    status_code = 413


class ValidationFailed(InvalidInput):
    """(422) A parameter or a field of the body breaks its schema (type, bound, format,
    required); `details.errors` lists each problem with its location."""

    code = "validation_error"


#: An error the API answers with a stable `code`: a domain refusal, or an unavailable part.
ErrorClass = type[DomainError] | type[DatabaseUnavailable] | type[RateLimiterUnavailable]


def error_responses(*errors: ErrorClass) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the domain errors an endpoint can answer, grouped by status,
    with an example of each code:

        @router.post("/v1/things", responses=error_responses(ThingExists, RateLimited))
    """
    by_status: dict[int, list[ErrorClass]] = {}
    for error in errors:
        by_status.setdefault(error.status_code, []).append(error)
    return {
        status: {
            "model": ErrorResponse,
            "description": " / ".join(f"`{error.code}`" for error in group),
            "content": {"application/json": {"examples": _examples(group)}},
        }
        for status, group in sorted(by_status.items())
    }


_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}


def document_errors(responses: dict[str, Any], *errors: ErrorClass) -> None:
    """Add `errors` to the `responses` of an operation in an OpenAPI document (where
    `error_responses` serves a route's declaration): each joins the codes its status already
    lists, or replaces a response of another shape (FastAPI's own 422)."""
    for error in errors:
        status = str(error.status_code)
        response = responses.get(status)
        content = (response or {}).get("content", {}).get("application/json", {})
        if response is None or content.get("schema") != _ERROR_SCHEMA:
            json_content = {"schema": _ERROR_SCHEMA}
            response = {"description": "", "content": {"application/json": json_content}}
            responses[status] = response
            content = response["content"]["application/json"]
        examples = content.setdefault("examples", {})
        if error.code in examples:
            continue
        examples.update(_examples([error]))
        described = response["description"] if "`" in response["description"] else ""
        response["description"] = " / ".join(filter(None, (described, f"`{error.code}`")))
    ordered = sorted(responses.items(), key=lambda item: item[0])
    responses.clear()
    responses.update(ordered)


def _examples(errors: list[ErrorClass]) -> dict[str, Any]:
    return {
        error.code: {
            "summary": _summary(error),
            "value": {"error": {"code": error.code, "message": _summary(error), "details": {}}},
        }
        for error in errors
    }


def _summary(error: ErrorClass) -> str:
    """The first paragraph of the error's docstring, whole, without its status: what a client
    reads in the document."""
    doc = error.__doc__ if error.__doc__ not in (None, DomainError.__doc__) else None
    paragraph = (doc or "").strip().split("\n\n")[0]
    text = " ".join(paragraph.split())
    if text.startswith(f"({error.status_code})"):
        text = text[len(f"({error.status_code})") :].strip()
    return text or f"The request is refused with `{error.code}`."


_HTTP_CODES = {
    400: BadRequest.code,
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: PayloadTooLarge.code,
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _rate_limit_headers(request: Request) -> dict[str, str]:
    """The `RateLimit-*` headers of a request that was counted before it failed."""
    return dict(getattr(request.state, "rate_limit_headers", {}))


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    headers = {**_rate_limit_headers(request), **exc.headers}
    return error_response(exc.status_code, exc.code, exc.message, exc.details, headers or None)


def _message(text: Any) -> str:
    """A validation message without pydantic's prefix of a validator's own `ValueError`."""
    return str(text).removeprefix("Value error, ")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "location": ".".join(str(part) for part in error.get("loc", ())),
            "message": _message(error.get("msg", "invalid")),
            "type": error.get("type", "value_error"),
        }
        for error in exc.errors()
    ]
    first = errors[0] if errors else {"location": "request", "message": "invalid"}
    message = f"invalid request: {first['location']}: {first['message']}"
    headers = _rate_limit_headers(request) or None
    # A text refused for its characters alone answers as the middleware's NUL check does.
    code = (
        InvalidCharacter.code
        if errors and all(error["type"] == InvalidCharacter.code for error in errors)
        else ValidationFailed.code
    )
    return error_response(422, code, message, {"errors": errors}, headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    headers = exc.headers
    if exc.status_code == 405:
        methods = allowed_methods(request.app.router.routes, request.scope)
        if methods:
            headers = {**(headers or {}), "Allow": ", ".join(methods)}
    return error_response(exc.status_code, code, message, headers=headers)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route serves at the request's path (Starlette's 405 names only the
    first route's), in a stable order. Asks each route whether it would fully match the
    request with another method, so included routers answer for their own routes."""
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


#: How long a client should wait before retrying a request that the database could not serve.
DATABASE_RETRY_AFTER_SECONDS = 5


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.error("database unavailable: %s", exc)
    headers = {**_rate_limit_headers(request), "Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}
    code = DatabaseUnavailable.code
    return error_response(503, code, "the database is unavailable", None, headers)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """Losing the database mid-request, or waiting past a timeout (connect, pool checkout,
    statement, lock) is a 503 the client may retry; any other database error is a bug (500),
    a statement's arithmetic error too (SQLite's "integer overflow" is an OperationalError, but
    retrying cannot help)."""
    if is_arithmetic_error(exc):
        return await _unexpected(request, exc)
    if (
        isinstance(
            exc,
            OSError
            | TimeoutError
            | sa_exc.TimeoutError
            | sa_exc.OperationalError
            | sa_exc.InterfaceError,
        )
        or (isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated)
        or is_timeout(exc)
    ):
        return await _database_unavailable(request, exc)
    return await _unexpected(request, exc)


#: Seconds a client is asked to wait after a 503 for an unreachable rate-limit storage.
RATE_LIMITER_RETRY_AFTER = 5


async def _rate_limit_storage_down(_request: Request, exc: Exception) -> JSONResponse:
    # Fail closed: without its windows the service cannot keep its plans' promises.
    logger.error("rate-limit storage unavailable: %s", exc)
    return error_response(
        503,
        RateLimiterUnavailable.code,
        "rate limiting is unavailable",
        headers={"Retry-After": str(RATE_LIMITER_RETRY_AFTER)},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    # Starlette answers unhandled errors outside every middleware: name the request here.
    request_id = getattr(request.state, "request_id", None)
    headers = {"X-Request-ID": request_id} if request_id else None
    return error_response(500, "internal_error", "an unexpected error occurred", headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DatabaseUnavailable, _database_unavailable)
    app.add_exception_handler(sa_exc.DBAPIError, _database_error)
    app.add_exception_handler(OSError, _database_error)
    app.add_exception_handler(TimeoutError, _database_error)
    app.add_exception_handler(sa_exc.TimeoutError, _database_error)  # no pooled connection in time
    app.add_exception_handler(RateLimiterUnavailable, _rate_limit_storage_down)
    app.add_exception_handler(Exception, _unexpected)

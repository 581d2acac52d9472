"""The OpenAPI document as the server enforces it.

FastAPI's OpenAPI models hold `maximum` and `minimum` as floats, so a bound of 2**63 - 1 was
published as 9.223372036854776e18, which is 2**63: a client or fuzzer that trusts it sends a
number PostgreSQL's bigint cannot hold. `install_openapi` puts the integers back.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from saascore.api.deps import offer_bearer
from saascore.config import Settings
from saascore.identity.schemas import publish_password_rules
from saascore.kit.inputs import INT64_MAX, INT64_MIN

__all__ = ["allowed_methods", "install_openapi", "integer_bounds"]

_BOUNDS = ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum")


def _as_integer(value: float) -> int:
    # float(2**63 - 1) rounds up to 2**63: every bound saascore states fits a bigint.
    return max(INT64_MIN, min(INT64_MAX, int(value)))


def integer_bounds(node: Any) -> Any:
    """`node` with the float bounds of every integer schema in it written as integers."""
    if isinstance(node, list):
        return [integer_bounds(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: integer_bounds(value) for key, value in node.items()}
    if result.get("type") == "integer":
        for key in _BOUNDS:
            value = result.get(key)
            if isinstance(value, float) and value.is_integer():
                result[key] = _as_integer(value)
    return result


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve the app's OpenAPI document as the server enforces it: integer bounds as
    integers, the bearer token offered beside the API key, the password rules of `settings`."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            offer_bearer(document)
            publish_password_rules(document, settings.password_min_length)
            app.openapi_schema = integer_bounds(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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

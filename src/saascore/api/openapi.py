"""The OpenAPI document as the server enforces it, and as a reader meets it.

`OPENAPI_TAGS` declares the tags in reading order, each with a description; every operation
carries one of them. `install_openapi` adds to each operation the errors the app answers
around every route (a body it cannot read or too large, a schema or a character refused, the
database or the rate limiter unreachable) where the route can meet them, then to its
description who may call it (read from its `Caller` dependency) and the error codes it can
answer (from its `responses=`), so the two never drift from the code.

FastAPI's OpenAPI models hold `maximum` and `minimum` as floats, so a bound of 2**63 - 1 was
published as 9.223372036854776e18, which is 2**63: a client or fuzzer that trusts it sends a
number PostgreSQL's bigint cannot hold. `install_openapi` puts the integers back.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from starlette.routing import BaseRoute

from saascore.api.deps import Caller, get_core, offer_bearer
from saascore.api.errors import (
    BadRequest,
    ErrorClass,
    InvalidCharacter,
    PayloadTooLarge,
    ValidationFailed,
    allowed_methods,
    document_errors,
)
from saascore.api.sessions import get_read_session, get_session
from saascore.config import Settings
from saascore.identity.schemas import publish_password_rules
from saascore.kit.errors import DatabaseUnavailable, RateLimiterUnavailable
from saascore.kit.inputs import INT64_MAX, INT64_MIN

__all__ = [
    "OPENAPI_TAGS",
    "allowed_methods",
    "describe_access",
    "describe_app_errors",
    "describe_fastapi_schemas",
    "install_openapi",
    "integer_bounds",
]

#: The document's tags, in the order a reader meets them: the tenant's way in, then what a
#: tenant's backend calls, then the platform operators' endpoints.
OPENAPI_TAGS: list[dict[str, str]] = [
    {
        "name": "health",
        "description": "Liveness, readiness and Prometheus metrics, for load balancers, "
        "orchestrators and scrapers. No tenant credentials.",
    },
    {
        "name": "auth",
        "description": "Accounts and tokens: register an organisation, log in for a 15-minute "
        "access token and a single-use refresh token, refresh, log out. Operators provision "
        "organisations and users by their ids on an external platform.",
    },
    {
        "name": "me",
        "description": "Who the credentials sent belong to: the user or key, its role and "
        "permissions, and its organisation.",
    },
    {
        "name": "users",
        "description": "The users of your organisation and their roles (owner, admin, "
        "member, viewer). Managing them needs the `admin` permission.",
    },
    {
        "name": "organization",
        "description": "Your organisation: its plan, status, limits and settings. The "
        "organisation is always the caller's own, never named in the path.",
    },
    {
        "name": "api-keys",
        "description": "API keys for a backend (`X-API-Key` or a bearer token): created with "
        "scopes within your own permissions, shown once, revoked at once. The plan must "
        "include API access.",
    },
    {
        "name": "plans",
        "description": "The public plan catalog: prices, limits, rate limits, credits and "
        "features of each plan.",
    },
    {
        "name": "usage",
        "description": "Metered usage with exact limits: record events (idempotent by their "
        "`id`), check before doing work, reserve and settle, read limits and summaries.",
    },
    {
        "name": "credits",
        "description": "Prepaid credits: the balance and its grants, the append-only ledger, "
        "idempotent consumption, and the low-balance threshold.",
    },
    {
        "name": "billing",
        "description": "Billing: your organisation's subscription, its plan, status and "
        "current period.",
    },
    {
        "name": "invoices",
        "description": "Your organisation's invoices: drafts, open, paid, void and "
        "uncollectible, with tax per line, gapless numbers and a computed `overdue`.",
    },
    {
        "name": "workspace",
        "description": "The AI workspace: nested folders, documents registered against the "
        "storage limit, processing jobs answered from a result cache, the generation cache "
        "and your generation preferences.",
    },
    {
        "name": "payments",
        "description": "Your organisation's payment history: payments against invoices, "
        "partial or in full, failed ones with their reason, and refunds.",
    },
    {
        "name": "coupons",
        "description": "For platform operators: the coupon catalog (a percentage or a fixed "
        "amount, once, repeating or forever, with a redemption limit and an expiry), "
        "redemptions for an organisation, and the credit-pack catalog.",
    },
    {
        "name": "webhooks",
        "description": "Your webhook endpoints, the events they receive (signed per Standard "
        "Webhooks, retried with backoff) and each delivery's attempts.",
    },
    {
        "name": "payment-providers",
        "description": "The payment providers' webhooks (Stripe, Lemon Squeezy, and the "
        "mock provider of development), verified on the raw body, stored once and applied "
        "once, and the mock provider's checkout confirmation page.",
    },
    {
        "name": "memory",
        "description": "Memory for agents: namespaced key-value entries that may expire "
        "(listed by key prefix) and summaries of conversations (long-term memory).",
    },
    {
        "name": "rag",
        "description": "Your organisation's retrieval (RAG) store at a model provider, one "
        "per organisation, and the folders inside it.",
    },
    {
        "name": "llm",
        "description": "Chat completions through the LLM gateway, metered as your "
        "organisation's tokens: held against the limit before the call, priced after.",
    },
    {
        "name": "audit",
        "description": "The organisation's audit trail: every change, who made it and from "
        "where, hash-chained so that tampering is detectable.",
    },
    {
        "name": "admin",
        "description": "For platform operators only (operator keys; a tenant's credentials "
        "get 403): organisations, plans and suspension, limit overrides, usage backfill, "
        "credit grants, invoices, payments and refunds, tax rates, and the plan catalog. "
        "Every change is audited with the operator as the actor.",
    },
]

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
            describe_app_errors(document, app.routes)
            describe_access(document, app.routes)
            describe_fastapi_schemas(document)
            app.openapi_schema = integer_bounds(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


#: The fields of the schemas FastAPI adds on its own (for the 422 of a webhook's receiver).
_FASTAPI_FIELDS = {
    "HTTPValidationError": {"detail": "What is wrong with the request, one entry per problem"},
    "ValidationError": {
        "loc": "Where the problem is: `body`, `query` or `path`, then the field's path",
        "msg": "What is wrong, for a human",
        "type": "The kind of problem, stable",
        "input": "The value refused",
        "ctx": "Facts about the problem (the bound crossed, the pattern missed)",
    },
}


def describe_fastapi_schemas(document: dict[str, Any]) -> None:
    """Describe the fields of FastAPI's own validation error schemas, where the document
    has them."""
    schemas = document.get("components", {}).get("schemas", {})
    for name, fields in _FASTAPI_FIELDS.items():
        properties = schemas.get(name, {}).get("properties", {})
        for field, description in fields.items():
            if field in properties:
                properties[field].setdefault("description", description)


def _callers(dependant: Dependant) -> list[Caller]:
    found = [dependant.call] if isinstance(dependant.call, Caller) else []
    return found + [caller for sub in dependant.dependencies for caller in _callers(sub)]


def _who(callers: list[Caller]) -> str:
    if any(caller.operator for caller in callers):
        return "an operator key."
    permissions = sorted({f"`{c.permission}`" for c in callers if c.permission is not None})
    if permissions:
        return (
            "a user's access token or an API key of an organisation, holding "
            f"{' and '.join(permissions)} (a user by their role, a key by its scopes)."
        )
    if any(caller.tenant for caller in callers):
        return "a user's access token or an API key of an organisation."
    if callers:
        return "any access token or API key (a user's, an organisation key or an operator key)."
    return "none."


def _errors(responses: dict[str, Any]) -> str | None:
    listed = [
        f"{status} {response['description']}"
        for status, response in sorted(responses.items())
        if status.isdigit() and int(status) >= 400 and "`" in response.get("description", "")
    ]
    return "; ".join(listed) + "." if listed else None


def describe_access(document: dict[str, Any], routes: list[BaseRoute]) -> None:
    """Add to the description of each operation of `document` who may call it (from the
    route's `Caller` dependency) and the error codes it declares, unless it says so itself."""
    paths = document.get("paths", {})
    for route in routing.iter_route_contexts(routes):
        dependant = getattr(route, "dependant", None)
        if not isinstance(dependant, Dependant) or not getattr(route, "include_in_schema", False):
            continue
        who = _who(_callers(dependant))
        for method in route.methods or ():
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            parts = [operation.get("description", "").strip()]
            if "**Credentials:**" not in parts[0]:
                parts.append(f"**Credentials:** {who}")
            errors = _errors(operation.get("responses", {}))
            if errors is not None and "**Errors:**" not in parts[0]:
                parts.append(f"**Errors:** {errors}")
            operation["description"] = "\n\n".join(part for part in parts if part)


_BODY_METHODS = {"post", "put", "patch", "delete"}  # the ones `InputGuardMiddleware` reads
_DATABASE_DEPENDENCIES = (get_core, get_session, get_read_session)


def _touches_database(dependant: Dependant) -> bool:
    if isinstance(dependant.call, Caller) or dependant.call in _DATABASE_DEPENDENCIES:
        return True
    return any(_touches_database(sub) for sub in dependant.dependencies)


def _app_errors(method: str, operation: dict[str, Any], dependant: Dependant) -> list[ErrorClass]:
    """The errors answered around a route rather than by it, where it can meet them."""
    errors: list[ErrorClass] = []
    if "requestBody" in operation:
        errors.append(BadRequest)
    if method in _BODY_METHODS:
        errors.append(PayloadTooLarge)
    if "requestBody" in operation or operation.get("parameters"):
        errors.append(ValidationFailed)
    errors.append(InvalidCharacter)  # a NUL in the path reaches every route
    if _touches_database(dependant):
        errors.append(DatabaseUnavailable)
    examples = operation.get("responses", {}).get("429", {}).get("content", {})
    if "rate_limited" in examples.get("application/json", {}).get("examples", {}):
        errors.append(RateLimiterUnavailable)  # what counts the requests may be unreachable
    return errors


def describe_app_errors(document: dict[str, Any], routes: list[BaseRoute]) -> None:
    """Add to each operation of `document` the app-wide errors it can answer, each with its
    example: 400 `bad_request`, 413 `payload_too_large`, 422 `validation_error` and
    `invalid_character`, 503 `database_unavailable` and `rate_limiter_unavailable`."""
    paths = document.get("paths", {})
    for route in routing.iter_route_contexts(routes):
        dependant = getattr(route, "dependant", None)
        if not isinstance(dependant, Dependant) or not getattr(route, "include_in_schema", False):
            continue
        for method in route.methods or ():
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is not None:
                errors = _app_errors(method.lower(), operation, dependant)
                document_errors(operation.setdefault("responses", {}), *errors)

"""FastAPI dependencies shared by the routers: the facade, the caller and their permissions.

    @router.get("/v1/things")
    async def things(principal: Annotated[Principal, Depends(require(Permission.USAGE_READ))]):
        ...  # principal.tenant is the only organisation this request may touch

Authenticating also counts the request against the principal's rate limits (its organisation's
plan, shared by all its users and keys, plus `SAASCORE_RATE_LIMIT_PER_CREDENTIAL_PER_MINUTE` per
credential when set; the operators' setting for an operator key) and answers 429 `rate_limited`
past them, with `Retry-After` and
`RateLimit-*` headers on every authenticated response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from saascore import ReadSessionDep, SessionDep
from saascore.audit.service import Origin
from saascore.core import Saascore
from saascore.identity.errors import PermissionDenied, Unauthenticated
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.metering.ratelimit import RateLimited

__all__ = [
    "CoreDep",
    "OperatorDep",
    "OriginDep",
    "PrincipalDep",
    "ReadSessionDep",
    "SessionDep",
    "TenantDep",
    "get_core",
    "get_origin",
    "get_principal",
    "require",
]

_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `sk_live_...` or `sk_test_...` (`sk_op_...` for operators).",
)
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="Bearer",
    description="An access token from `/v1/auth/login`, or an API key.",
)


async def get_core(request: Request) -> Saascore:  # async: a plain def would run in a thread
    core: Saascore = request.app.state.saascore
    return core


CoreDep = Annotated[Saascore, Depends(get_core)]


def get_origin(request: Request) -> Origin:
    """Where the request came from, for the audit log. Behind a proxy, run uvicorn with
    `--proxy-headers --forwarded-allow-ips ...` so that the client's address is the real one."""
    return Origin(
        ip_address=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        request_id=getattr(request.state, "request_id", None),
    )


OriginDep = Annotated[Origin, Depends(get_origin)]


async def get_principal(
    request: Request,
    response: Response,
    core: CoreDep,
    api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> Principal:
    """The authenticated caller, counted against its rate limits."""
    credential = api_key or (bearer.credentials if bearer is not None else None)
    if not credential:
        raise Unauthenticated("authentication required: send an API key or a bearer token")
    principal = await core.identity.authenticate(credential)
    request.state.principal = principal
    per_credential = core.settings.rate_limit_per_credential_per_minute
    result = await core.rate_limiter.hit_many(principal.rate_limits_by_key(per_credential))
    if not result.allowed:
        raise RateLimited(result)
    headers = result.http_headers()
    request.state.rate_limit_headers = headers  # for an error answered after this point
    response.headers.update(headers)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(permission: Permission | None = None) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: a user or key of an organisation, holding `permission` when one is named."""

    async def tenant_principal(principal: PrincipalDep) -> Principal:
        if principal.organization_id is None:
            raise PermissionDenied("this endpoint is for an organisation's users and keys")
        if permission is not None:
            principal.require(permission)
        return principal

    return tenant_principal


async def get_operator(principal: PrincipalDep) -> Principal:
    if not principal.is_operator:
        raise PermissionDenied("this endpoint is for operators")
    return principal


#: Any user or key of an organisation.
TenantDep = Annotated[Principal, Depends(require())]
#: An operator key.
OperatorDep = Annotated[Principal, Depends(get_operator)]

"""FastAPI dependencies shared by the routers: the facade, the caller and their permissions.

    @router.get("/v1/things")
    async def things(principal: Annotated[Principal, Depends(require(Permission.USAGE_READ))]):
        ...  # principal.tenant is the only organisation this request may touch

Authenticating also counts the request against the principal's rate limits (its plan's, or the
operators' setting) and answers 429 `rate_limited` past them, with `Retry-After` and
`RateLimit-*` headers on every authenticated response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
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
    "client_address",
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


def _parse(value: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(value.strip())
    except ValueError:
        return None


def _trusted(
    address: IPv4Address | IPv6Address, proxies: Sequence[IPv4Network | IPv6Network]
) -> bool:
    return any(address.version == proxy.version and address in proxy for proxy in proxies)


def client_address(request: Request) -> str | None:
    """The client's address: the peer that connected, unless that peer is a trusted proxy
    (`SAASCORE_TRUSTED_PROXIES`), in which case `X-Forwarded-For` is read from the right, past
    every trusted proxy, to the first address that is not one. A header from any other peer
    is ignored, so a client cannot name itself another address (and escape a per-address
    limit) by sending one."""
    if request.client is None:
        return None
    peer = request.client.host
    core: Saascore | None = getattr(request.app.state, "saascore", None)
    proxies = core.settings.trusted_proxies if core is not None else ()
    address = _parse(peer)
    if not proxies or address is None or not _trusted(address, proxies):
        return peer
    hops = [hop for value in request.headers.getlist("x-forwarded-for") for hop in value.split(",")]
    client = peer
    for hop in reversed(hops):
        parsed = _parse(hop)
        if parsed is None:  # garbage: the last address known good stands
            break
        client = str(parsed)
        if not _trusted(parsed, proxies):
            break
    return client


def get_origin(request: Request) -> Origin:
    """Where the request came from, for the audit log (the client's address as
    `client_address` finds it, behind trusted proxies too)."""
    return Origin(
        ip_address=client_address(request),
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
    result = await core.rate_limiter.hit(principal.rate_limit_key, principal.rate_limits)
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

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

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.openapi.models import APIKey
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from saascore.api.sessions import ReadSessionDep, SessionDep
from saascore.audit.service import Origin
from saascore.core import Saascore
from saascore.identity.errors import PermissionDenied, Unauthenticated
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.metering.ratelimit import RateLimited

__all__ = [
    "Caller",
    "CoreDep",
    "OperatorDep",
    "OriginDep",
    "PrincipalDep",
    "ReadSessionDep",
    "RequireFeature",
    "SessionDep",
    "TenantDep",
    "client_address",
    "get_core",
    "get_origin",
    "get_principal",
    "offer_bearer",
    "require",
]

#: The two ways to present a credential, as the OpenAPI document names them.
API_KEY_SCHEME = APIKey.model_validate(
    {
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key: `sk_live_...` or `sk_test_...` (`sk_op_...` for operators).",
    }
)
BEARER_SCHEME = HTTPBearerModel(description="An access token from `/v1/auth/login`, or an API key.")


async def get_core(request: Request) -> Saascore:  # async: a plain def would run in a thread
    core: Saascore | None = getattr(request.app.state, "saascore", None)
    if core is None:
        raise RuntimeError(
            "saascore's lifespan has not run in this app: pass saascore_lifespan(core) to "
            "FastAPI(lifespan=...), or, for an app made by create_app() and mounted in "
            "another, give the host FastAPI(lifespan=mounted_lifespan(app)) (Starlette runs "
            "no lifespan of a mounted app)"
        )
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


def presented_credential(request: Request) -> str | None:
    """The credential of a request: its `X-API-Key` header or its bearer token. Both at once
    are refused unless they are the same (`Unauthenticated`): which one counts would otherwise
    be the server's guess, and an invalid one would pass unnoticed beside a valid one."""
    headers = request.headers
    api_key = headers.get("x-api-key") or None
    scheme, _, token = headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    if api_key is not None and bearer is not None and api_key != bearer:
        raise Unauthenticated("send one credential: an X-API-Key header or a bearer token")
    return api_key or bearer


async def get_principal(request: Request, response: Response) -> Principal:
    """The authenticated caller, counted against its rate limits (once per request, however
    many dependencies ask for it)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal
    credential = presented_credential(request)
    if not credential:
        raise Unauthenticated("authentication required: send an API key or a bearer token")
    core: Saascore = request.app.state.saascore
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


class Caller(SecurityBase):
    """A dependency: the authenticated caller, who must be of an organisation (`tenant`),
    hold `permission`, or be an operator (`operator`).

    One dependency rather than a chain of them (credential headers, the facade, the caller,
    the check): FastAPI resolves every node of a chain on every request, which the hot paths
    feel. The OpenAPI document still names both schemes: this one is the API key, and
    `offer_bearer` adds the bearer token beside it."""

    def __init__(
        self,
        *,
        tenant: bool = False,
        permission: Permission | None = None,
        operator: bool = False,
    ) -> None:
        self.model = API_KEY_SCHEME
        self.scheme_name = "ApiKey"
        self.tenant = tenant or permission is not None
        self.permission = permission
        self.operator = operator

    async def __call__(self, request: Request, response: Response) -> Principal:
        principal = await get_principal(request, response)
        if self.operator and not principal.is_operator:
            raise PermissionDenied("this endpoint is for operators")
        if self.tenant:
            if principal.organization_id is None:
                raise PermissionDenied("this endpoint is for an organisation's users and keys")
            if self.permission is not None:
                principal.require(self.permission)
        return principal


class RequireFeature(Caller):
    """A dependency for a host app's routes: a user or key of an organisation (holding
    `permission` when one is named) whose plan includes `feature`, else 403
    `plan_feature_missing` (`core.plans.require`):

        @app.post("/uploads", responses=error_responses(PlanFeatureMissing))
        async def upload(principal: Annotated[Principal, Depends(RequireFeature("csv_upload"))]):
            ...

    A feature is a key of the plan's `features` (or `api_access`). Countable limits are meters:
    `await core.usage.check(principal.tenant, "items", 1)`."""

    def __init__(self, feature: str, *, permission: Permission | None = None) -> None:
        super().__init__(tenant=True, permission=permission)
        self.feature = feature

    async def __call__(self, request: Request, response: Response) -> Principal:
        principal = await super().__call__(request, response)
        core: Saascore = request.app.state.saascore
        await core.plans.require(principal.tenant, feature=self.feature)
        return principal


def require(permission: Permission | None = None) -> Caller:
    """A dependency: a user or key of an organisation, holding `permission` when one is named."""
    return Caller(tenant=True, permission=permission)


def offer_bearer(document: dict[str, Any]) -> None:
    """Have an OpenAPI `document` offer the bearer token wherever it asks for an API key
    (`Caller` declares the one; both are accepted)."""
    schemes = document.get("components", {}).get("securitySchemes", {})
    if "ApiKey" not in schemes:
        return
    schemes["Bearer"] = BEARER_SCHEME.model_dump(mode="json", by_alias=True, exclude_none=True)
    for path in document.get("paths", {}).values():
        for operation in path.values():
            security = operation.get("security") if isinstance(operation, dict) else None
            if security and {"ApiKey": []} in security and {"Bearer": []} not in security:
                security.append({"Bearer": []})


#: The authenticated caller: any user or key, of an organisation or an operator.
PrincipalDep = Annotated[Principal, Depends(Caller())]
#: Any user or key of an organisation.
TenantDep = Annotated[Principal, Depends(require())]
#: An operator key.
OperatorDep = Annotated[Principal, Depends(Caller(operator=True))]

"""Router factories: `create_auth_router()` (`/v1/auth/...` and `/v1/me`) and
`create_api_keys_router()` (`/v1/api-keys`)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from saascore.api.deps import (
    CoreDep,
    OperatorDep,
    OriginDep,
    PrincipalDep,
    ReadSessionDep,
    SessionDep,
    TenantDep,
    client_address,
)
from saascore.api.errors import error_responses
from saascore.identity.errors import (
    AccountDisabled,
    ApiKeyNotFound,
    InvalidCredentials,
    InvalidToken,
    OrganizationRequired,
    OrganizationSuspended,
    PermissionDenied,
    TokenReused,
    Unauthenticated,
    UserExists,
    WeakPassword,
)
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal, PrincipalKind
from saascore.identity.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    LoginRequest,
    MeResponse,
    OrganizationRef,
    ProvisionRequest,
    ProvisionResponse,
    RefreshRequest,
    RegisterRequest,
    TokenResponse,
    UserOut,
)
from saascore.identity.service import TokenPair
from saascore.kit.errors import InvalidInput
from saascore.kit.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidCursor,
    Page,
    paginate,
    uuid_cursor,
)
from saascore.metering.errors import LimitExceeded
from saascore.metering.ratelimit import PlanRateLimits, RateLimited
from saascore.plans.errors import PlanFeatureMissing, PlanNotFound
from saascore.tenancy.service import OrganizationExists

__all__ = ["create_api_keys_router", "create_auth_router"]

#: What every authenticated endpoint can answer besides its own errors.
AUTH_ERRORS = (Unauthenticated, InvalidToken, AccountDisabled, OrganizationSuspended, RateLimited)
#: What every operator endpoint can answer an operator key besides its own errors (403: not an
#: operator). An operator key has no account to disable and no organisation to suspend.
OPERATOR_ERRORS = (Unauthenticated, InvalidToken, PermissionDenied, RateLimited)


async def limit_by_address(request: Request, response: Response, core: CoreDep) -> None:
    """Unauthenticated endpoints (register, login, refresh) are limited per client address,
    which slows password guessing (`SAASCORE_AUTH_REQUESTS_PER_MINUTE`)."""
    per_minute = core.settings.auth_requests_per_minute
    if per_minute is None:
        return
    address = client_address(request) or "unknown"
    result = await core.rate_limiter.hit(f"auth:{address}", PlanRateLimits(per_minute=per_minute))
    if not result.allowed:
        raise RateLimited(result)
    response.headers.update(result.http_headers())


def _tokens(pair: TokenPair, core: CoreDep) -> TokenResponse:
    now = core.identity.clock()
    return TokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=int((pair.access_expires_at - now).total_seconds()),
        refresh_expires_in=int((pair.refresh_expires_at - now).total_seconds()),
        user_id=pair.user_id,
        organization_id=pair.organization_id,
    )


def create_auth_router() -> APIRouter:
    """Accounts and tokens: register, login, refresh, logout, provision, and `GET /v1/me`."""
    router = APIRouter(prefix="/v1")
    limited = [Depends(limit_by_address)]

    @router.post(
        "/auth/register",
        summary="Register an organisation",
        tags=["auth"],
        status_code=status.HTTP_201_CREATED,
        dependencies=limited,
        responses=error_responses(WeakPassword, InvalidInput, RateLimited),
    )
    async def register(body: RegisterRequest, core: CoreDep, origin: OriginDep) -> TokenResponse:
        """Create an organisation on the default plan with you as its owner, and log in."""
        pair = await core.identity.register(
            email=body.email,
            password=body.password,
            name=body.name,
            organization_name=body.organization_name,
            origin=origin,
        )
        return _tokens(pair, core)

    @router.post(
        "/auth/login",
        summary="Log in",
        tags=["auth"],
        dependencies=limited,
        responses=error_responses(
            InvalidCredentials, OrganizationRequired, OrganizationSuspended, RateLimited
        ),
    )
    async def login(body: LoginRequest, core: CoreDep, origin: OriginDep) -> TokenResponse:
        """Exchange an e-mail and password for an access token (15 minutes) and a refresh
        token. An e-mail with accounts in several organisations names one. Failed logins are
        limited per e-mail and client address, and per e-mail from all addresses: past the
        limit, 429 until the oldest attempt leaves the window."""
        pair = await core.identity.login(
            email=body.email,
            password=body.password,
            organization=body.organization,
            origin=origin,
        )
        return _tokens(pair, core)

    @router.post(
        "/auth/refresh",
        summary="Refresh tokens",
        tags=["auth"],
        dependencies=limited,
        responses=error_responses(
            InvalidToken, TokenReused, AccountDisabled, OrganizationSuspended, RateLimited
        ),
    )
    async def refresh(body: RefreshRequest, core: CoreDep, origin: OriginDep) -> TokenResponse:
        """Spend a refresh token for new tokens. A refresh token works once: presenting a spent
        one ends every session that descends from its login.

        **Credentials:** none: the refresh token in the body."""
        return _tokens(await core.identity.refresh(body.refresh_token, origin=origin), core)

    @router.post(
        "/auth/logout",
        summary="Log out",
        tags=["auth"],
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=limited,
        responses=error_responses(InvalidToken, RateLimited),
    )
    async def logout(body: RefreshRequest, core: CoreDep, origin: OriginDep) -> None:
        """End the session of a refresh token (its access tokens expire on their own).

        **Credentials:** none: the refresh token in the body."""
        await core.identity.logout(body.refresh_token, origin=origin)

    @router.post(
        "/auth/provision",
        summary="Provision an external user",
        tags=["auth"],
        responses=error_responses(
            *AUTH_ERRORS,
            PermissionDenied,
            InvalidInput,
            PlanNotFound,
            UserExists,
            OrganizationExists,
            LimitExceeded,
        ),
    )
    async def provision(
        body: ProvisionRequest, core: CoreDep, _operator: OperatorDep, origin: OriginDep
    ) -> ProvisionResponse:
        """(Operators) Find or create an organisation and user by their ids on an external
        platform. Idempotent: the same ids give the same organisation and user."""
        result = await core.identity.provision(
            external_platform=body.external_platform,
            external_user_id=body.external_user_id,
            external_store_id=body.external_store_id,
            email=body.email,
            name=body.name,
            organization_external_id=body.organization_external_id,
            organization_name=body.organization_name,
            plan=body.plan,
            origin=origin,
        )
        return ProvisionResponse(
            organization_id=result.organization.id,
            user_id=result.user.id,
            organization_created=result.organization_created,
            user_created=result.user_created,
        )

    @router.get("/me", summary="Who am I", tags=["me"], responses=error_responses(*AUTH_ERRORS))
    async def me(principal: PrincipalDep, core: CoreDep, session: ReadSessionDep) -> MeResponse:
        """Who these credentials belong to, their organisation and what they may do."""
        user = organization = None
        if principal.organization_id is not None:
            org = await core.orgs.get(principal.organization_id, session=session)
            organization = OrganizationRef(
                id=org.id, name=org.name, slug=org.slug, plan=org.plan.code, status=org.status.value
            )
            if principal.user_id is not None:
                user = await core.users.get(org.id, principal.user_id, session=session)
        return MeResponse(
            kind=principal.kind.value,
            id=principal.id,
            role=principal.role,
            permissions=sorted(principal.permissions),
            user=UserOut.model_validate(user) if user is not None else None,
            organization=organization,
        )

    return router


def create_api_keys_router() -> APIRouter:
    """`/v1/api-keys`: create (the key is shown once), list (prefixes only) and revoke.

    Anyone may manage their own keys, with scopes within their own permissions; `admin`
    manages every key of the organisation."""
    router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])

    def own_only(principal: Principal) -> uuid.UUID | None:
        """The user whose keys the principal may manage, or None for every key. A user manages
        their own keys; a key manages keys only with `admin` (else a leaked read-only key could
        mint a successor, or revoke its user's other keys)."""
        if principal.can(Permission.ADMIN):
            return None
        if principal.kind is not PrincipalKind.USER or principal.user_id is None:
            raise PermissionDenied("managing keys with an API key needs the 'admin' scope")
        return principal.user_id

    @router.post(
        "",
        summary="Create an API key",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, PlanFeatureMissing, InvalidInput),
    )
    async def create_api_key(
        body: ApiKeyCreate,
        principal: TenantDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> ApiKeyCreated:
        """Create a key acting for you (or, for a service key made with an admin key, for the
        organisation). Its scopes cannot exceed your own permissions, and the organisation's
        plan must include API access (403 `plan_feature_missing` otherwise)."""
        own_only(principal)
        beyond = sorted(set(body.scopes) - principal.permissions)
        if beyond:
            raise PermissionDenied(
                f"you cannot grant scopes you do not hold: {', '.join(beyond)}", scopes=beyond
            )
        key, raw = await core.api_keys.create(
            principal.tenant,
            name=body.name,
            scopes=body.scopes,
            user_id=principal.user_id,
            expires_at=body.expires_at,
            environment=body.environment,
            actor=principal.actor(origin),
            session=session,
        )
        return ApiKeyCreated(**ApiKeyOut.model_validate(key).model_dump(), key=raw)

    @router.get(
        "",
        summary="List API keys",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidCursor),
    )
    async def list_api_keys(
        principal: TenantDep,
        core: CoreDep,
        session: SessionDep,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        include_revoked: bool = False,
    ) -> Page[ApiKeyOut]:
        """Your keys (every key of the organisation for `admin`), newest first, without the
        keys themselves."""
        keys = await core.api_keys.list(
            principal.tenant,
            user_id=own_only(principal),
            include_revoked=include_revoked,
            limit=limit + 1,
            after=uuid_cursor(cursor),
            session=session,
        )
        items, next_cursor = paginate(keys, limit, lambda key: key.id)
        return Page(items=[ApiKeyOut.model_validate(k) for k in items], next_cursor=next_cursor)

    @router.delete(
        "/{key_id}",
        summary="Revoke an API key",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, ApiKeyNotFound),
    )
    async def revoke_api_key(
        key_id: uuid.UUID,
        principal: TenantDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> ApiKeyOut:
        """Revoke a key; it stops working at once."""
        key = await core.api_keys.revoke(
            principal.tenant,
            key_id,
            user_id=own_only(principal),
            actor=principal.actor(origin),
            session=session,
        )
        return ApiKeyOut.model_validate(key)

    return router

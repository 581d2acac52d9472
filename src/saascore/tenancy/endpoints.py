"""Router factories: `create_users_router()` (`/v1/users`, for admins) and
`create_organization_router()` (`/v1/organization`, the caller's own organisation).

Changes run in the request's transaction; reads in read-only sessions of their own, so that
on SQLite they do not queue for the write lock."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.api.deps import (
    CoreDep,
    OperatorDep,
    OriginDep,
    ReadSessionDep,
    SessionDep,
    require,
)
from saascore.api.errors import error_responses
from saascore.identity.endpoints import AUTH_ERRORS, OPERATOR_ERRORS
from saascore.identity.errors import (
    LastOwner,
    PermissionDenied,
    UserExists,
    UserNotFound,
    WeakPassword,
)
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
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
from saascore.models import OrganizationStatus, UserRole
from saascore.plans.errors import PlanNotFound
from saascore.tenancy.errors import CurrencyInUse, OrganizationExists, OrganizationNotFound
from saascore.tenancy.schemas import (
    OrganizationCreate,
    OrganizationOut,
    OrganizationSummary,
    OrganizationUpdate,
    PlanChange,
    Resumption,
    Suspension,
    UserCreate,
    UserOut,
    UserUpdate,
)
from saascore.tenancy.service import OrganizationDeleted

__all__ = [
    "create_organization_router",
    "create_organizations_admin_router",
    "create_users_router",
]

AdminDep = Annotated[Principal, Depends(require(Permission.ADMIN))]
ReaderDep = Annotated[Principal, Depends(require(Permission.USAGE_READ))]

#: Fields of `PATCH /v1/organization` that are billing changes (`billing:write`): the country
#: sets the default tax rate of the organisation's invoices.
BILLING_FIELDS = frozenset({"billing_email", "currency", "country"})


def acting_role(principal: Principal) -> UserRole:
    """The role a change is made with: the user's, or `admin` for an API key of the
    organisation that acts for no user (never `owner`)."""
    return principal.role if principal.role is not None else UserRole.ADMIN


def create_users_router() -> APIRouter:
    """`/v1/users`: list, add, read, change and remove the organisation's users (`admin`).

    Only an owner may make, change or remove an owner, and an organisation always keeps an
    active owner (409 `last_owner`)."""
    router = APIRouter(prefix="/v1/users", tags=["users"])

    @router.get(
        "",
        summary="List users",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidCursor),
    )
    async def list_users(
        principal: AdminDep,
        core: CoreDep,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Page[UserOut]:
        """The organisation's users, oldest first."""
        users = await core.users.list(principal.tenant, limit=limit + 1, after=uuid_cursor(cursor))
        items, next_cursor = paginate(users, limit, lambda user: user.id)
        return Page(items=[UserOut.model_validate(u) for u in items], next_cursor=next_cursor)

    @router.post(
        "",
        summary="Create a user",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, UserExists, WeakPassword, InvalidInput, LimitExceeded
        ),
    )
    async def create_user(
        body: UserCreate,
        principal: AdminDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> UserOut:
        """Add a user to the organisation (402 `limit_exceeded` when the plan's seats are
        taken)."""
        user = await core.users.create(
            principal.tenant,
            email=body.email,
            name=body.name,
            role=body.role,
            password=body.password,
            acting_role=acting_role(principal),
            actor=principal.actor(origin),
            session=session,
        )
        return UserOut.model_validate(user)

    @router.get(
        "/{user_id}",
        summary="Get a user",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, UserNotFound),
    )
    async def get_user(user_id: uuid.UUID, principal: AdminDep, core: CoreDep) -> UserOut:
        """One user of the organisation."""
        return UserOut.model_validate(await core.users.get(principal.tenant, user_id))

    @router.patch(
        "/{user_id}",
        summary="Update a user",
        responses=error_responses(
            *AUTH_ERRORS,
            PermissionDenied,
            UserNotFound,
            LastOwner,
            WeakPassword,
            InvalidInput,
            LimitExceeded,
        ),
    )
    async def update_user(
        user_id: uuid.UUID,
        body: UserUpdate,
        principal: AdminDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> UserOut:
        """Change a user's name, role, activity or password. A new password or a deactivation
        ends the user's sessions."""
        user = await core.users.update(
            principal.tenant,
            user_id,
            name=body.name,
            role=body.role,
            is_active=body.is_active,
            password=body.password,
            acting_role=acting_role(principal),
            actor=principal.actor(origin),
            session=session,
        )
        return UserOut.model_validate(user)

    @router.delete(
        "/{user_id}",
        summary="Delete a user",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, UserNotFound, LastOwner),
    )
    async def delete_user(
        user_id: uuid.UUID,
        principal: AdminDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> None:
        """Remove a user, with their API keys and sessions."""
        await core.users.delete(
            principal.tenant,
            user_id,
            acting_role=acting_role(principal),
            actor=principal.actor(origin),
            session=session,
        )

    return router


def create_organization_router() -> APIRouter:
    """`/v1/organization`: the caller's organisation, read by anyone in it (`usage:read`),
    changed by its admins."""
    router = APIRouter(prefix="/v1/organization", tags=["organization"])

    @router.get(
        "",
        summary="Get your organisation",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied),
    )
    async def get_organization(
        principal: ReaderDep, core: CoreDep, session: ReadSessionDep
    ) -> OrganizationOut:
        """Your organisation: plan, status, limits with this period's usage, settings and
        billing details."""
        organization = await core.orgs.get(principal.tenant, session=session)
        limits = await core.usage.limits(organization.id, session=session)
        return OrganizationOut.with_limits(organization, limits)

    @router.patch(
        "",
        summary="Update your organisation",
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, InvalidInput, OrganizationDeleted, CurrencyInUse
        ),
    )
    async def update_organization(
        body: OrganizationUpdate,
        principal: AdminDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> OrganizationOut:
        """Change your organisation's name, domain, locale, settings (`admin`) or billing
        e-mail, currency and country (`admin` and `billing:write`: the country sets the
        default tax rate of its invoices, unless an operator set one). The currency stays
        while a live subscription or an unpaid invoice is in it (409 `currency_in_use`)."""
        changes = body.changes()
        if BILLING_FIELDS & changes.keys():
            principal.require(Permission.BILLING_WRITE)
        organization = await core.orgs.update(
            principal.tenant, **changes, actor=principal.actor(origin), session=session
        )
        limits = await core.usage.limits(organization.id, session=session)
        return OrganizationOut.with_limits(organization, limits)

    return router


async def _organization_out(core: CoreDep, org_id: uuid.UUID, s: AsyncSession) -> OrganizationOut:
    organization = await core.orgs.get(org_id, session=s)
    return OrganizationOut.with_limits(organization, await core.usage.limits(org_id, session=s))


def create_organizations_admin_router() -> APIRouter:
    """`/v1/admin/organizations`, for operators: list, create, read, change plan, suspend and
    resume organisations; every change is audited with the operator as the actor."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.get(
        "/organizations",
        summary="List organisations",
        responses=error_responses(*OPERATOR_ERRORS, InvalidCursor),
    )
    async def list_organizations(
        _operator: OperatorDep,
        core: CoreDep,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        status_: Annotated[OrganizationStatus | None, Query(alias="status")] = None,
    ) -> Page[OrganizationSummary]:
        """Every organisation, oldest first (only those with `status` when given)."""
        organizations = await core.orgs.list(
            limit=limit + 1, after=uuid_cursor(cursor), status=status_
        )
        items, next_cursor = paginate(organizations, limit, lambda org: org.id)
        return Page(items=[OrganizationSummary.of(org) for org in items], next_cursor=next_cursor)

    @router.post(
        "/organizations",
        summary="Create an organisation",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(*OPERATOR_ERRORS, InvalidInput, PlanNotFound, OrganizationExists),
    )
    async def create_organization(
        body: OrganizationCreate,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> OrganizationOut:
        """Create an organisation (with no users yet) on a plan."""
        organization = await core.orgs.create(
            name=body.name,
            plan=body.plan,
            external_id=body.external_id,
            domain=body.domain,
            billing_email=body.billing_email,
            country=body.country,
            actor=operator.actor(origin),
            session=session,
        )
        return await _organization_out(core, organization.id, session)

    @router.get(
        "/organizations/{org_id}",
        summary="Get an organisation",
        responses=error_responses(*OPERATOR_ERRORS, OrganizationNotFound),
    )
    async def get_organization(
        org_id: uuid.UUID, _operator: OperatorDep, core: CoreDep, session: ReadSessionDep
    ) -> OrganizationOut:
        """One organisation, with its limits and this period's usage."""
        return await _organization_out(core, org_id, session)

    @router.post(
        "/organizations/{org_id}/plan",
        summary="Change an organisation's plan",
        responses=error_responses(
            *OPERATOR_ERRORS, OrganizationNotFound, PlanNotFound, OrganizationDeleted
        ),
    )
    async def change_plan(
        org_id: uuid.UUID,
        body: PlanChange,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> OrganizationOut:
        """Move the organisation to another plan (audited as `plan.changed`)."""
        await core.orgs.change_plan(
            org_id, body.plan, actor=operator.actor(origin), session=session
        )
        return await _organization_out(core, org_id, session)

    @router.post(
        "/organizations/{org_id}/suspend",
        summary="Suspend an organisation",
        responses=error_responses(
            *OPERATOR_ERRORS, OrganizationNotFound, InvalidInput, OrganizationDeleted
        ),
    )
    async def suspend_organization(
        org_id: uuid.UUID,
        body: Suspension,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> OrganizationOut:
        """Suspend the organisation: its users and keys get 403 `organization_suspended`
        until it is resumed (audited as `organization.suspended`)."""
        await core.orgs.suspend(
            org_id, reason=body.reason, actor=operator.actor(origin), session=session
        )
        return await _organization_out(core, org_id, session)

    @router.post(
        "/organizations/{org_id}/resume",
        summary="Resume an organisation",
        responses=error_responses(
            *OPERATOR_ERRORS, OrganizationNotFound, InvalidInput, OrganizationDeleted
        ),
    )
    async def resume_organization(
        org_id: uuid.UUID,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
        body: Resumption | None = None,
    ) -> OrganizationOut:
        """Lift the organisation's suspension (audited as `organization.resumed`)."""
        await core.orgs.resume(
            org_id,
            reason=body.reason if body is not None else None,
            actor=operator.actor(origin),
            session=session,
        )
        return await _organization_out(core, org_id, session)

    # --- credits -------------------------------------------------------------------------------

    return router

"""`create_admin_router()`: `/v1/admin/...`, the platform operators' endpoints (operator keys
only; a tenant's credentials get 403).

Organisations (list, create, change plan, limit overrides, suspend and resume), the plan
catalog (load, update) and credit grants. Every change to an organisation is recorded in its
audit chain with the operator as the actor.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.api.deps import CoreDep, OperatorDep, OriginDep, ReadSessionDep, SessionDep
from saascore.api.errors import error_responses
from saascore.core import Saascore
from saascore.credits.schemas import CreditTransactionOut
from saascore.identity.endpoints import AUTH_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.kit.errors import IdempotencyConflict, InvalidInput
from saascore.kit.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidCursor,
    Page,
    paginate,
    uuid_cursor,
)
from saascore.metering.errors import UnknownMetric
from saascore.models import CreditSource, OrganizationStatus, SubscriptionPlan
from saascore.plans.catalog import INT32, INT64, LIMIT_FIELDS, Catalog
from saascore.plans.schemas import PlanOut
from saascore.plans.service import CatalogConflict, PlanNotFound
from saascore.tenancy.schemas import OrganizationOut, OrganizationSummary
from saascore.tenancy.service import OrganizationDeleted, OrganizationExists, OrganizationNotFound

__all__ = ["create_admin_router"]

#: What every operator endpoint can answer besides its own errors (403: not an operator).
OPERATOR_ERRORS = (*AUTH_ERRORS, PermissionDenied)

_METRIC = Path(min_length=1, max_length=100, examples=["tokens"])
_PLAN_CODE = Path(min_length=1, max_length=50, examples=["pro"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrganizationCreate(_Body):
    name: str = Field(min_length=1, max_length=255, examples=["Analytical Engines"])
    plan: str | None = Field(
        default=None, max_length=50, description="Default: the default plan", examples=["pro"]
    )
    external_id: str | None = Field(default=None, max_length=255, examples=["store-17"])
    domain: str | None = Field(default=None, max_length=255, examples=["engines.example"])
    billing_email: str | None = Field(
        default=None, max_length=320, examples=["billing@engines.example"]
    )


class PlanChange(_Body):
    plan: str = Field(min_length=1, max_length=50, examples=["business"])


class LimitOverride(_Body):
    limit: int | None = Field(ge=0, le=INT64, description="null: unlimited", examples=[250_000])
    hard: bool = Field(
        default=True, description="A hard limit refuses; a soft one only flags", examples=[True]
    )


class LimitOut(BaseModel):
    """The limit that applies to the organisation on a metric now."""

    metric: str = Field(examples=["tokens"])
    limit: int | None = Field(description="null: unlimited", examples=[250_000])
    hard: bool = Field(examples=[True])
    overridden: bool = Field(description="Set for this organisation, not by its plan")


class Suspension(_Body):
    reason: str = Field(min_length=1, max_length=500, examples=["unpaid invoices"])


class Resumption(_Body):
    reason: str | None = Field(default=None, max_length=500, examples=["invoices paid"])


class CreditGrantCreate(_Body):
    amount: int = Field(ge=1, le=INT64, examples=[5_000])
    idempotency_key: str = Field(
        min_length=1,
        max_length=255,
        description="Retrying with the same key returns the first grant and grants nothing",
        examples=["goodwill-2025-03-ticket-812"],
    )
    source: CreditSource = Field(default=CreditSource.MANUAL, examples=[CreditSource.PROMOTION])
    priority: int = Field(
        default=0, ge=-INT32, le=INT32, description="Lower is drawn first", examples=[0]
    )
    expires_at: AwareDatetime | None = Field(default=None, examples=[None])
    description: str | None = Field(default=None, max_length=1000, examples=["goodwill credits"])


class CatalogLoaded(BaseModel):
    """The codes a catalog load created and updated."""

    plans_created: list[str] = Field(examples=[["team"]])
    plans_updated: list[str] = Field(examples=[["free", "pro"]])
    meters_created: list[str] = Field(examples=[[]])
    meters_updated: list[str] = Field(examples=[["tokens"]])


class PlanUpdate(_Body):
    """The fields to change; those left out stay as they are. On a limit, null or -1 means
    unlimited; on `description`, null clears it; on the other fields null changes nothing.
    `limits` (on other meters) is merged: a metric set to null loses its limit."""

    name: str | None = Field(default=None, min_length=1, max_length=255, examples=["Pro"])
    description: str | None = Field(default=None, examples=["Full API access."])
    sort_order: int | None = Field(default=None, examples=[20])
    is_active: bool | None = Field(
        default=None, description="Offered to new customers", examples=[True]
    )
    is_public: bool | None = Field(default=None, description="Listed in /v1/plans", examples=[True])
    monthly_token_limit: int | None = Field(default=None, examples=[5_000_000])
    max_storage_mb: int | None = Field(default=None, examples=[10_240])
    max_api_calls_per_day: int | None = Field(default=None, examples=[10_000])
    max_products_per_batch: int | None = Field(default=None, examples=[100])
    max_items: int | None = Field(default=None, examples=[10_000])
    max_secondary: int | None = Field(default=None, examples=[10])
    max_users: int | None = Field(default=None, examples=[20])
    requests_per_minute: int | None = Field(default=None, examples=[60])
    requests_per_hour: int | None = Field(default=None, examples=[2_000])
    credits_per_period: int | None = Field(default=None, examples=[1_000])
    credits_rollover: bool | None = Field(default=None, examples=[True])
    api_access: bool | None = Field(default=None, examples=[True])
    trial_days: int | None = Field(default=None, examples=[14])
    features: dict[str, Any] | None = Field(default=None, examples=[{"custom_templates": True}])
    limits: dict[str, LimitOverride | None] | None = Field(
        default=None, examples=[{"api_calls": {"limit": 20_000, "hard": True}}]
    )

    def changes(self) -> dict[str, Any]:
        """The fields the request sets, as `PlanService.update` takes them."""
        return {
            field: value
            for field, value in self.model_dump(exclude_unset=True).items()
            if value is not None or field in _NULLABLE_PLAN_FIELDS
        }


_NULLABLE_PLAN_FIELDS = frozenset({"description", *LIMIT_FIELDS})


class AdminPlanOut(PlanOut):
    """A plan as operators see it, whether or not it is offered."""

    is_active: bool
    is_public: bool
    sort_order: int

    @classmethod
    def of(cls, plan: SubscriptionPlan) -> AdminPlanOut:
        return cls(
            **PlanOut.of(plan).model_dump(),
            is_active=plan.is_active,
            is_public=plan.is_public,
            sort_order=plan.sort_order,
        )


_CATALOG_EXAMPLE = {
    "version": 1,
    "meters": {"pages": {"name": "Pages", "unit": "page", "reset_period": "month"}},
    "plans": {
        "team": {
            "name": "Team",
            "monthly_token_limit": 2_000_000,
            "requests_per_minute": 60,
            "prices": [{"billing_cycle": "monthly", "currency": "USD", "amount": 4_900}],
            "limits": {"pages": {"limit": 5_000}},
        }
    },
}


async def _organization_out(core: Saascore, org_id: uuid.UUID, s: AsyncSession) -> OrganizationOut:
    organization = await core.orgs.get(org_id, session=s)
    return OrganizationOut.with_limits(organization, await core.usage.limits(org_id, session=s))


def create_admin_router() -> APIRouter:
    """`/v1/admin`: organisations, plans and credit grants, for operators."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    # --- organisations -------------------------------------------------------------------------
    @router.get("/organizations", responses=error_responses(*OPERATOR_ERRORS, InvalidCursor))
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
            actor=operator.actor(origin),
            session=session,
        )
        return await _organization_out(core, organization.id, session)

    @router.get(
        "/organizations/{org_id}",
        responses=error_responses(*OPERATOR_ERRORS, OrganizationNotFound),
    )
    async def get_organization(
        org_id: uuid.UUID, _operator: OperatorDep, core: CoreDep, session: ReadSessionDep
    ) -> OrganizationOut:
        """One organisation, with its limits and this period's usage."""
        return await _organization_out(core, org_id, session)

    @router.post(
        "/organizations/{org_id}/plan",
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

    @router.put(
        "/organizations/{org_id}/limits/{metric}",
        responses=error_responses(*OPERATOR_ERRORS, OrganizationNotFound, UnknownMetric),
    )
    async def set_limit(
        org_id: uuid.UUID,
        metric: Annotated[str, _METRIC],
        body: LimitOverride,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> LimitOut:
        """Override the plan's limit on a metric for this organisation (audited as
        `limit.overridden`)."""
        await core.orgs.get(org_id, session=session)
        limit = await core.usage.set_limit(
            org_id,
            metric,
            body.limit,
            hard=body.hard,
            actor=operator.actor(origin),
            session=session,
        )
        return LimitOut(metric=metric, limit=limit.value, hard=limit.hard, overridden=True)

    @router.delete(
        "/organizations/{org_id}/limits/{metric}",
        responses=error_responses(*OPERATOR_ERRORS, OrganizationNotFound),
    )
    async def clear_limit(
        org_id: uuid.UUID,
        metric: Annotated[str, _METRIC],
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> LimitOut:
        """Drop the organisation's override on a metric: its plan's limit applies again
        (audited as `limit.override_cleared`). Answers the limit that now applies."""
        await core.orgs.get(org_id, session=session)
        limit = await core.usage.clear_limit(
            org_id, metric, actor=operator.actor(origin), session=session
        )
        return LimitOut(metric=metric, limit=limit.value, hard=limit.hard, overridden=False)

    @router.post(
        "/organizations/{org_id}/suspend",
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
    @router.post(
        "/organizations/{org_id}/credits/grants",
        status_code=status.HTTP_201_CREATED,
        responses={
            200: {
                "description": "A retry: the grant its key made before",
                "model": CreditTransactionOut,
            },
            **error_responses(
                *OPERATOR_ERRORS, OrganizationNotFound, InvalidInput, IdempotencyConflict
            ),
        },
    )
    async def grant_credits(
        org_id: uuid.UUID,
        body: CreditGrantCreate,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
        response: Response,
    ) -> CreditTransactionOut:
        """Grant credits to the organisation (audited as `credits.granted`). Idempotent on
        `idempotency_key`: a retry answers 200 with the first grant's transaction and grants
        nothing; the same key with other values is 409 `idempotency_conflict`."""
        await core.orgs.get(org_id, session=session)
        granted = await core.credits.grant_once(
            org_id,
            body.amount,
            source=body.source,
            priority=body.priority,
            expires_at=body.expires_at,
            idempotency_key=body.idempotency_key,
            description=body.description,
            actor=operator.actor(origin),
            session=session,
        )
        if granted.replayed:
            response.status_code = status.HTTP_200_OK
        return CreditTransactionOut.model_validate(granted.transaction)

    # --- plans ---------------------------------------------------------------------------------
    @router.post("/plans/load", responses=error_responses(*OPERATOR_ERRORS, CatalogConflict))
    async def load_plans(
        catalog: Annotated[
            Catalog, Body(openapi_examples={"a plan and a meter": {"value": _CATALOG_EXAMPLE}})
        ],
        _operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
    ) -> CatalogLoaded:
        """Load a plan catalog (the JSON form of a catalog file): meters and plans are
        created or updated by code, so loading the same catalog twice changes nothing."""
        result = await core.plans.load_catalog(catalog, session=session)
        return CatalogLoaded(
            plans_created=result.plans_created,
            plans_updated=result.plans_updated,
            meters_created=result.meters_created,
            meters_updated=result.meters_updated,
        )

    @router.patch(
        "/plans/{code}", responses=error_responses(*OPERATOR_ERRORS, PlanNotFound, InvalidInput)
    )
    async def update_plan(
        code: Annotated[str, _PLAN_CODE],
        body: PlanUpdate,
        _operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
    ) -> AdminPlanOut:
        """Change a plan's name, activity, visibility, limits, rate limits, credits, features
        or trial; every organisation on it has the new values at once."""
        plan = await core.plans.update(code, body.changes(), session=session)
        return AdminPlanOut.of(plan)

    return router

"""Subscription routes: the tenant's `GET /v1/subscription`, and the operators'
`/v1/admin/organizations/{org_id}/subscription` (create, change the plan, cancel, resume).
Every change is an event of `SubscriptionService`, audited with the operator as the actor."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, status

from saascore.api.deps import CoreDep, OperatorDep, OriginDep, SessionDep, require
from saascore.api.errors import error_responses
from saascore.billing.errors import (
    InvalidTransition,
    NaiveDatetime,
    OutsidePeriod,
    PeriodEnded,
    PeriodOutOfRange,
    PlanPriceMissing,
    SubscriptionExists,
    SubscriptionNotFound,
)
from saascore.billing.schemas import (
    SubscriptionCancel,
    SubscriptionCreate,
    SubscriptionOut,
    SubscriptionPlanChange,
    SubscriptionResume,
)
from saascore.identity.endpoints import AUTH_ERRORS, OPERATOR_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.kit.errors import InvalidInput
from saascore.plans.errors import PlanNotFound
from saascore.tenancy.errors import OrganizationNotFound

__all__ = ["create_subscription_admin_router", "create_subscription_router"]

BillingReader = Annotated[Principal, Depends(require(Permission.BILLING_READ))]
_PATH = "/organizations/{org_id}/subscription"


def create_subscription_router() -> APIRouter:
    """`/v1/subscription`: the caller's organisation's subscription."""
    router = APIRouter(prefix="/v1/subscription", tags=["billing"])

    @router.get(
        "",
        summary="Get the subscription",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, SubscriptionNotFound),
    )
    async def get_subscription(principal: BillingReader, core: CoreDep) -> SubscriptionOut:
        """Your organisation's subscription: the live one, else the last that ended (404
        `subscription_not_found` when there never was one)."""
        return SubscriptionOut.of(await core.subscriptions.get(principal.tenant))

    return router


def create_subscription_admin_router() -> APIRouter:
    """`/v1/admin/organizations/{org_id}/subscription`, for operators."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.get(
        _PATH,
        summary="Get an organisation's subscription",
        responses=error_responses(*OPERATOR_ERRORS, OrganizationNotFound, SubscriptionNotFound),
    )
    async def get_organization_subscription(
        org_id: uuid.UUID, operator: OperatorDep, core: CoreDep, session: SessionDep
    ) -> SubscriptionOut:
        """The organisation's subscription: the live one, else the last that ended."""
        await core.orgs.get(org_id, session=session)
        return SubscriptionOut.of(await core.subscriptions.get(org_id, session=session))

    @router.post(
        _PATH,
        summary="Subscribe an organisation to a plan",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(
            *OPERATOR_ERRORS,
            OrganizationNotFound,
            PlanNotFound,
            SubscriptionExists,
            PlanPriceMissing,
            PeriodOutOfRange,
            NaiveDatetime,
            InvalidInput,
        ),
    )
    async def create_subscription(
        org_id: uuid.UUID,
        body: SubscriptionCreate,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> SubscriptionOut:
        """Subscribe the organisation to `plan` for `cycle`, at the plan's price in the
        organisation's currency (422 `plan_price_missing` without one). With trial days (the
        plan's by default) it starts `trialing`, else `active`; the organisation moves to the
        plan. A second live subscription is 409 `subscription_exists`."""
        subscription = await core.subscriptions.create(
            org_id,
            body.plan,
            body.cycle,
            trial_days=body.trial_days,
            at=body.at,
            actor=operator.actor(origin),
            session=session,
        )
        return SubscriptionOut.of(subscription)

    @router.post(
        f"{_PATH}/change-plan",
        summary="Change a subscription's plan",
        responses=error_responses(
            *OPERATOR_ERRORS,
            OrganizationNotFound,
            SubscriptionNotFound,
            PlanNotFound,
            InvalidTransition,
            PlanPriceMissing,
            OutsidePeriod,
            NaiveDatetime,
            InvalidInput,
        ),
    )
    async def change_subscription_plan(
        org_id: uuid.UUID,
        body: SubscriptionPlanChange,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> SubscriptionOut:
        """An upgrade (a higher price per period) applies at once, its proration (a credit
        for the unused time, a charge for the new plan's) going on the upcoming invoice; a
        downgrade waits for the period's end (`scheduled_plan`)."""
        await core.orgs.get(org_id, session=session)
        subscription = await core.subscriptions.change_plan(
            org_id, body.plan, at=body.at, actor=operator.actor(origin), session=session
        )
        return SubscriptionOut.of(subscription)

    @router.post(
        f"{_PATH}/cancel",
        summary="Cancel a subscription",
        responses=error_responses(
            *OPERATOR_ERRORS,
            OrganizationNotFound,
            SubscriptionNotFound,
            InvalidTransition,
            NaiveDatetime,
            InvalidInput,
        ),
    )
    async def cancel_subscription(
        org_id: uuid.UUID,
        body: SubscriptionCancel,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> SubscriptionOut:
        """Cancel at the current period's end (the default) or now. The organisation keeps
        its plan until the end of what was paid (`ends_at`)."""
        await core.orgs.get(org_id, session=session)
        subscription = await core.subscriptions.cancel(
            org_id,
            at_period_end=body.at_period_end,
            at=body.at,
            actor=operator.actor(origin),
            session=session,
        )
        return SubscriptionOut.of(subscription)

    @router.post(
        f"{_PATH}/resume",
        summary="Resume a canceled subscription",
        responses=error_responses(
            *OPERATOR_ERRORS,
            OrganizationNotFound,
            SubscriptionNotFound,
            InvalidTransition,
            PeriodEnded,
            NaiveDatetime,
            InvalidInput,
        ),
    )
    async def resume_subscription(
        org_id: uuid.UUID,
        body: SubscriptionResume,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> SubscriptionOut:
        """Withdraw a cancellation at the period's end, before that end (409 `period_ended`
        after it)."""
        await core.orgs.get(org_id, session=session)
        subscription = await core.subscriptions.resume(
            org_id, at=body.at, actor=operator.actor(origin), session=session
        )
        return SubscriptionOut.of(subscription)

    return router

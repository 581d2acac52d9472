"""`create_admin_router()`: `/v1/admin/...`, the platform operators' endpoints (operator keys
only; a tenant's credentials get 403), gathered from the domains that own them.

Organisations (tenancy), limit overrides and usage backfill (metering), credit grants
(credits) and the plan catalog with its model prices (plans). Every change is an event of its
domain's service, audited in the organisation's chain with the operator as the actor.
"""

from __future__ import annotations

from fastapi import APIRouter

from saascore.billing.endpoints import (
    create_coupons_admin_router,
    create_credit_packs_admin_router,
    create_invoices_admin_router,
    create_payments_admin_router,
    create_subscription_admin_router,
)
from saascore.credits.endpoints import create_credit_grants_admin_router
from saascore.metering.endpoints import create_limits_admin_router, create_usage_admin_router
from saascore.plans.endpoints import create_model_pricing_admin_router, create_plans_admin_router
from saascore.tenancy.endpoints import create_organizations_admin_router

__all__ = ["create_admin_router"]


def create_admin_router() -> APIRouter:
    """`/v1/admin`: organisations, limits, usage backfill, credit grants and plans, for
    operators."""
    router = APIRouter()
    router.include_router(create_organizations_admin_router())
    router.include_router(create_limits_admin_router())
    router.include_router(create_usage_admin_router())
    router.include_router(create_credit_grants_admin_router())
    router.include_router(create_subscription_admin_router())
    router.include_router(create_invoices_admin_router())
    router.include_router(create_payments_admin_router())
    router.include_router(create_coupons_admin_router())
    router.include_router(create_credit_packs_admin_router())
    router.include_router(create_plans_admin_router())
    router.include_router(create_model_pricing_admin_router())
    return router

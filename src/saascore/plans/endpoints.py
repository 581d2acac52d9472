"""`create_plans_router()`: `GET /v1/plans`, the public plan catalog (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from saascore.api.deps import CoreDep, ReadSessionDep
from saascore.plans.schemas import PlanOut, PlansResponse

__all__ = ["create_plans_router"]

#: Clients and proxies may keep the catalog this long: it changes only when a catalog is loaded.
CACHE_SECONDS = 60


def create_plans_router() -> APIRouter:
    """`/v1/plans`: the public catalog."""
    router = APIRouter(prefix="/v1/plans", tags=["plans"])

    @router.get("")
    async def list_plans(
        core: CoreDep, session: ReadSessionDep, response: Response
    ) -> PlansResponse:
        """The active public plans in catalog order, with their prices, limits, rate limits,
        credits, features and trial days."""
        plans = await core.plans.list(session=session)
        response.headers["Cache-Control"] = f"public, max-age={CACHE_SECONDS}"
        return PlansResponse(plans=[PlanOut.of(plan) for plan in plans if plan.is_public])

    return router

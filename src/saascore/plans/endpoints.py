"""`create_plans_router()`: `GET /v1/plans`, the public plan catalog (no authentication)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response, status

from saascore.api.deps import CoreDep, OperatorDep, ReadSessionDep, SessionDep
from saascore.api.errors import error_responses
from saascore.identity.endpoints import OPERATOR_ERRORS
from saascore.kit.errors import InvalidInput
from saascore.plans.catalog import Catalog, ModelPriceSpec
from saascore.plans.errors import CatalogConflict, PlanNotFound
from saascore.plans.schemas import (
    AdminPlanOut,
    CatalogLoaded,
    ModelPriceOut,
    ModelPricesResponse,
    ModelPriceWritten,
    PlanOut,
    PlansResponse,
    PlanUpdate,
)

__all__ = [
    "create_model_pricing_admin_router",
    "create_plans_admin_router",
    "create_plans_router",
]

#: Clients and proxies may keep the catalog this long: it changes only when a catalog is loaded.
CACHE_SECONDS = 60


def create_plans_router() -> APIRouter:
    """`/v1/plans`: the public catalog."""
    router = APIRouter(prefix="/v1/plans", tags=["plans"])

    @router.get("", summary="List the public plans")
    async def list_plans(
        core: CoreDep, session: ReadSessionDep, response: Response
    ) -> PlansResponse:
        """The active public plans in catalog order, with their prices, limits, rate limits,
        credits, features and trial days."""
        plans = await core.plans.list(session=session)
        response.headers["Cache-Control"] = f"public, max-age={CACHE_SECONDS}"
        return PlansResponse(plans=[PlanOut.of(plan) for plan in plans if plan.is_public])

    return router


_PLAN_CODE = Path(min_length=1, max_length=50, examples=["pro"])

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


def create_plans_admin_router() -> APIRouter:
    """`/v1/admin/plans`, for operators: load a catalog, change one plan."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.post(
        "/plans/load",
        summary="Load a plan catalog",
        responses=error_responses(*OPERATOR_ERRORS, CatalogConflict),
    )
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
        "/plans/{code}",
        summary="Update a plan",
        responses=error_responses(*OPERATOR_ERRORS, PlanNotFound, InvalidInput),
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


_PRICE_EXAMPLE = {
    "provider": "openai",
    "model": "gpt-4o",
    "input_micros_per_million": 2_500_000,
    "cached_input_micros_per_million": 1_250_000,
    "output_micros_per_million": 10_000_000,
    "effective_from": "2025-09-01",
    "source": "https://openai.com/api/pricing/",
    "as_of": "2025-09-01",
}


def create_model_pricing_admin_router() -> APIRouter:
    """`/v1/admin/model-pricing`, for operators: list model prices, set one price version."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.get(
        "/model-pricing",
        summary="List the model prices",
        responses=error_responses(*OPERATOR_ERRORS),
    )
    async def list_model_prices(
        _operator: OperatorDep,
        core: CoreDep,
        session: ReadSessionDep,
        provider: Annotated[str | None, Query(min_length=1, max_length=50)] = None,
        model: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
    ) -> ModelPricesResponse:
        """Every price version (micro-units per million tokens), newest first per model,
        with the day each price was taken and its source."""
        rows = await core.pricing.list(provider=provider, model=model, session=session)
        return ModelPricesResponse(prices=[ModelPriceOut.of(row) for row in rows])

    async def put_model_price(
        body: Annotated[
            ModelPriceSpec, Body(openapi_examples={"a price": {"value": _PRICE_EXAMPLE}})
        ],
        _operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        response: Response,
    ) -> ModelPriceWritten:
        """Create a price version (201), or bring the version of the same provider, model
        and `effective_from` to these values (200; `unchanged` for a replay). A later
        `effective_from` is a new version: usage already recorded keeps its cost."""
        row, outcome = await core.pricing.put(body, session=session)
        if outcome != "created":
            response.status_code = status.HTTP_200_OK
        return ModelPriceWritten(**ModelPriceOut.of(row).model_dump(), outcome=outcome)

    for method in ("PUT", "POST"):
        router.add_api_route(
            "/model-pricing",
            put_model_price,
            methods=[method],
            status_code=status.HTTP_201_CREATED,
            summary="Set one model price version",
            responses=error_responses(*OPERATOR_ERRORS),
            operation_id=f"{method.lower()}_model_price",
        )

    return router

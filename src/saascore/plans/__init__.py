"""The plan catalog: plans, their prices and limits, and the meters usage is recorded on."""

from saascore.plans.catalog import (
    Catalog,
    MeterSpec,
    ModelPriceSpec,
    PlanSpec,
    PriceSpec,
    read_catalog,
    read_default_pricing,
)
from saascore.plans.errors import CatalogConflict, PlanFeatureMissing, PlanNotFound
from saascore.plans.pricing import ModelPricingService, PricingLoadResult
from saascore.plans.service import CatalogLoadResult, PlanService

__all__ = [
    "Catalog",
    "CatalogConflict",
    "CatalogLoadResult",
    "MeterSpec",
    "ModelPriceSpec",
    "ModelPricingService",
    "PlanFeatureMissing",
    "PlanNotFound",
    "PlanService",
    "PlanSpec",
    "PriceSpec",
    "PricingLoadResult",
    "read_catalog",
    "read_default_pricing",
]

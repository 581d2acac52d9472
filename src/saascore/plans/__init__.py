"""The plan catalog: plans, their prices and limits, and the meters usage is recorded on."""

from saascore.plans.catalog import Catalog, MeterSpec, PlanSpec, PriceSpec, read_catalog
from saascore.plans.errors import CatalogConflict, PlanFeatureMissing, PlanNotFound
from saascore.plans.service import CatalogLoadResult, PlanService

__all__ = [
    "Catalog",
    "CatalogConflict",
    "CatalogLoadResult",
    "MeterSpec",
    "PlanFeatureMissing",
    "PlanNotFound",
    "PlanService",
    "PlanSpec",
    "PriceSpec",
    "read_catalog",
]

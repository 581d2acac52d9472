"""The plan catalog's refusals."""

from __future__ import annotations

from saascore.kit.errors import Conflict, NotFound, PermissionDenied

__all__ = ["CatalogConflict", "PlanFeatureMissing", "PlanNotFound", "ProviderPriceUnknown"]


class PlanNotFound(NotFound):
    """No plan with this code in the catalog."""

    code = "plan_not_found"


class CatalogConflict(Conflict):
    """The catalog clashes with itself or with the stored one (nothing was loaded)."""

    code = "catalog_conflict"


class PlanFeatureMissing(PermissionDenied):
    """The organisation's plan does not include this feature: a higher plan does."""

    code = "plan_feature_missing"


class ProviderPriceUnknown(NotFound):
    """No active plan price has this payment provider's price (or variant) id."""

    code = "provider_price_unknown"

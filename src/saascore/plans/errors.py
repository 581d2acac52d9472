"""The plan catalog's refusals."""

from __future__ import annotations

from saascore.kit.errors import Conflict, NotFound

__all__ = ["CatalogConflict", "PlanNotFound"]


class PlanNotFound(NotFound):
    code = "plan_not_found"


class CatalogConflict(Conflict):
    """The catalog clashes with itself or with the stored one (nothing was loaded)."""

    code = "catalog_conflict"

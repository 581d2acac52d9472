"""Model prices: the `[[model_pricing]]` of a catalog, loaded as price versions.

A price version is one row of `model_pricing` per provider, model and `effective_from`. Usage
is priced with the version in force when it occurred (see `saascore.metering`), so a new price
is a new version with a later `effective_from`: the versions before it keep pricing the past.
Loading is idempotent: a version whose values are all stored already is left as it is
(`unchanged`); one whose values differ is corrected in place (`updated`), which changes no
cost already recorded (events store their cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, time
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.db import Database
from saascore.kit.ids import new_id
from saascore.kit.sql import insert
from saascore.kit.time import utcnow
from saascore.models import ModelPricing
from saascore.plans.catalog import ModelPriceSpec

__all__ = ["ModelPricingService", "PriceOutcome", "PricingLoadResult", "load_model_prices"]

#: What loading one price version did.
PriceOutcome = Literal["created", "updated", "unchanged"]


@dataclass
class PricingLoadResult:
    """What loading prices did, each version named `provider/model from YYYY-MM-DD...`."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def add(self, price: ModelPriceSpec, outcome: PriceOutcome) -> None:
        getattr(self, outcome).append(label(price))


def label(price: ModelPriceSpec) -> str:
    """`openai/gpt-4o from 2025-06-01` (a date-time where the start is not midnight UTC)."""
    start = price.effective_from.astimezone(UTC)
    when = start.date().isoformat() if start.time() == time() else start.isoformat()
    return f"{price.provider}/{price.model} from {when}"


async def load_model_price(s: AsyncSession, price: ModelPriceSpec) -> PriceOutcome:
    """Create one price version, or bring the stored one to the spec's values.

    Two statements, each atomic, so concurrent loads neither duplicate a version nor
    mistake who created it: `INSERT ... ON CONFLICT DO NOTHING RETURNING`, then (when the
    version exists) an `UPDATE` only where some value differs.
    """
    values = {**price.columns(), "is_active": True}
    created = await s.scalar(
        insert(s, ModelPricing)
        .values(
            id=new_id(),
            provider=price.provider,
            model=price.model,
            effective_from=price.effective_from,
            **values,
        )
        .on_conflict_do_nothing(
            index_elements=[ModelPricing.provider, ModelPricing.model, ModelPricing.effective_from]
        )
        .returning(ModelPricing.id)
    )
    if created is not None:
        return "created"
    table = ModelPricing.__table__
    changed = await s.scalar(
        sa.update(ModelPricing)
        .where(
            ModelPricing.provider == price.provider,
            ModelPricing.model == price.model,
            ModelPricing.effective_from == price.effective_from,
            sa.or_(*(table.c[name].is_distinct_from(value) for name, value in values.items())),
        )
        .values(**values, updated_at=utcnow())
        .returning(ModelPricing.id),
        execution_options={"synchronize_session": False},
    )
    return "unchanged" if changed is None else "updated"


async def load_model_prices(s: AsyncSession, prices: Sequence[ModelPriceSpec]) -> PricingLoadResult:
    """Load price versions in the session (see `load_model_price`)."""
    result = PricingLoadResult()
    for price in prices:
        result.add(price, await load_model_price(s, price))
    return result


class ModelPricingService:
    """Model prices: load a price list, set one price version, list them.

    `core.pricing.load(read_catalog(path).model_pricing)`; `core.plans.load_catalog` loads a
    catalog's `[[model_pricing]]` the same way.
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    async def load(
        self, prices: Sequence[ModelPriceSpec], *, session: AsyncSession | None = None
    ) -> PricingLoadResult:
        """Create or correct every price version (idempotent: the same list twice changes
        nothing and answers every version `unchanged`)."""
        async with self.database.scope(session) as s:
            return await load_model_prices(s, prices)

    async def put(
        self, price: ModelPriceSpec, *, session: AsyncSession | None = None
    ) -> tuple[ModelPricing, PriceOutcome]:
        """Create or correct one price version; answers the stored row and what was done."""
        async with self.database.scope(session) as s:
            outcome = await load_model_price(s, price)
            row = await s.scalar(
                sa.select(ModelPricing)
                .where(
                    ModelPricing.provider == price.provider,
                    ModelPricing.model == price.model,
                    ModelPricing.effective_from == price.effective_from,
                )
                .execution_options(populate_existing=True)
            )
            assert row is not None  # written just above, in this transaction
            return row, outcome

    async def list(
        self,
        *,
        provider: str | None = None,
        model: str | None = None,
        session: AsyncSession | None = None,
    ) -> Sequence[ModelPricing]:
        """Every price version, by provider and model, the newest version first."""
        query = sa.select(ModelPricing).order_by(
            ModelPricing.provider, ModelPricing.model, ModelPricing.effective_from.desc()
        )
        if provider is not None:
            query = query.where(ModelPricing.provider == provider)
        if model is not None:
            query = query.where(ModelPricing.model == model)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

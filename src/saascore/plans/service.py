"""Reading and loading the plan catalog."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from saascore.kit.db import Database
from saascore.kit.errors import NotFound
from saascore.kit.ids import new_id
from saascore.kit.sql import insert
from saascore.kit.time import utcnow
from saascore.models import Meter, PlanLimit, PlanPrice, SubscriptionPlan
from saascore.plans.catalog import Catalog, LimitSpec, PlanSpec, PriceSpec

__all__ = ["CatalogLoadResult", "PlanNotFound", "PlanService"]


class PlanNotFound(NotFound):
    code = "plan_not_found"


@dataclass
class CatalogLoadResult:
    """What loading a catalog did: the codes it created and the codes it updated."""

    plans_created: list[str] = field(default_factory=list)
    plans_updated: list[str] = field(default_factory=list)
    meters_created: list[str] = field(default_factory=list)
    meters_updated: list[str] = field(default_factory=list)


#: The columns of `subscription_plans` that a catalog sets (its prices and extra limits are rows
#: of their own tables).
_PLAN_FIELDS = tuple(name for name in PlanSpec.model_fields if name not in ("prices", "limits"))


class PlanService:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def list(
        self, *, include_inactive: bool = False, session: AsyncSession | None = None
    ) -> Sequence[SubscriptionPlan]:
        """Plans in catalog order, with their prices and extra limits loaded."""
        query = (
            sa.select(SubscriptionPlan)
            .options(selectinload(SubscriptionPlan.prices), selectinload(SubscriptionPlan.limits))
            .order_by(SubscriptionPlan.sort_order, SubscriptionPlan.code)
            .execution_options(populate_existing=True)
        )
        if not include_inactive:
            query = query.where(SubscriptionPlan.is_active.is_(True))
        async with self.database.scope(session) as s:
            return (await s.scalars(query)).all()

    async def get_by_code(
        self, code: str, *, session: AsyncSession | None = None
    ) -> SubscriptionPlan:
        query = (
            sa.select(SubscriptionPlan)
            .where(SubscriptionPlan.code == code)
            .options(selectinload(SubscriptionPlan.prices), selectinload(SubscriptionPlan.limits))
            .execution_options(populate_existing=True)
        )
        async with self.database.scope(session) as s:
            plan = (await s.scalars(query)).one_or_none()
        if plan is None:
            raise PlanNotFound(f"no plan with code {code!r}", plan=code)
        return plan

    async def load_catalog(
        self, catalog: Catalog, *, session: AsyncSession | None = None
    ) -> CatalogLoadResult:
        """Create or update every meter and plan of the catalog, matched by code.

        Each row is written with one `INSERT ... ON CONFLICT (code) DO UPDATE`, so concurrent
        loads cannot create duplicates, and loading the same catalog twice leaves the same rows
        with the same values (only `updated_at` moves). Whether a row was created or updated is
        read from the statement's own `RETURNING id`, so it is right under concurrent loads.
        Prices missing from the catalog are deactivated, not deleted: subscriptions may still
        point at them.
        """
        result = CatalogLoadResult()
        now = utcnow()
        async with self.database.scope(session) as s:
            for code, meter in catalog.meters.items():
                values = meter.model_dump()
                row_id = new_id()
                upsert = insert(s, Meter).values(id=row_id, code=code, **values)
                upsert = upsert.on_conflict_do_update(
                    index_elements=[Meter.code], set_={**values, "updated_at": now}
                )
                meter_id = (await s.execute(upsert.returning(Meter.id))).scalar_one()
                (result.meters_created if meter_id == row_id else result.meters_updated).append(
                    code
                )

            for code, spec in catalog.plans.items():
                values = {name: getattr(spec, name) for name in _PLAN_FIELDS}
                row_id = new_id()
                upsert = insert(s, SubscriptionPlan).values(id=row_id, code=code, **values)
                upsert = upsert.on_conflict_do_update(
                    index_elements=[SubscriptionPlan.code], set_={**values, "updated_at": now}
                )
                plan_id = (await s.execute(upsert.returning(SubscriptionPlan.id))).scalar_one()
                await self._load_prices(s, plan_id, spec.prices, now)
                await self._load_limits(s, plan_id, spec.limits)
                (result.plans_created if plan_id == row_id else result.plans_updated).append(code)
            await s.flush()
        return result

    async def _load_prices(
        self, s: AsyncSession, plan_id: UUID, prices: Sequence[PriceSpec], now: datetime
    ) -> None:
        keep: list[tuple[str, str]] = []
        for price in prices:
            values = price.model_dump(exclude={"billing_cycle", "currency"})
            statement = insert(s, PlanPrice).values(
                id=new_id(),
                plan_id=plan_id,
                billing_cycle=price.billing_cycle,
                currency=price.currency,
                is_active=True,
                **values,
            )
            statement = statement.on_conflict_do_update(
                index_elements=[PlanPrice.plan_id, PlanPrice.billing_cycle, PlanPrice.currency],
                set_={**values, "is_active": True, "updated_at": now},
            )
            await s.execute(statement)
            keep.append((price.billing_cycle.value, price.currency))
        stale = sa.update(PlanPrice).where(
            PlanPrice.plan_id == plan_id, PlanPrice.is_active.is_(True)
        )
        if keep:
            stale = stale.where(sa.tuple_(PlanPrice.billing_cycle, PlanPrice.currency).not_in(keep))
        await s.execute(stale.values(is_active=False, updated_at=now))

    async def _load_limits(
        self, s: AsyncSession, plan_id: UUID, limits: dict[str, LimitSpec]
    ) -> None:
        delete = sa.delete(PlanLimit).where(PlanLimit.plan_id == plan_id)
        if limits:
            delete = delete.where(PlanLimit.metric.not_in(list(limits)))
        await s.execute(delete)
        for metric, limit in limits.items():
            values = {"limit_value": limit.limit, "is_hard": limit.hard}
            statement = insert(s, PlanLimit).values(
                id=new_id(), plan_id=plan_id, metric=metric, **values
            )
            statement = statement.on_conflict_do_update(
                index_elements=[PlanLimit.plan_id, PlanLimit.metric], set_=values
            )
            await s.execute(statement)

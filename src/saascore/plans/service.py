"""Reading, loading and changing the plan catalog."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from saascore.events.bus import Event, EventBus
from saascore.events.catalog import CatalogChanged
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput, NotFound
from saascore.kit.ids import new_id
from saascore.kit.sql import insert, violates
from saascore.kit.time import utcnow
from saascore.models import Meter, Organization, PlanLimit, PlanPrice, SubscriptionPlan
from saascore.models.catalog import BillingCycle
from saascore.models.enums import PaymentProvider
from saascore.plans.catalog import Catalog, LimitSpec, PlanSpec, PriceSpec, spec_error
from saascore.plans.errors import (
    CatalogConflict,
    PlanFeatureMissing,
    PlanNotFound,
    ProviderPriceUnknown,
)
from saascore.plans.pricing import PricingLoadResult, load_model_prices

__all__ = ["API_ACCESS", "UPDATABLE", "CatalogLoadResult", "PlanService", "plan_has"]


#: The feature that lets an organisation make API keys: the plan's `api_access` column.
API_ACCESS: Final = "api_access"
#: Seconds a provider price's plan and cycle are remembered (`PlanService.plan_of_price`): a
#: catalog change in this process forgets them at once, one made by another process is
#: seen within this.
PRICE_CACHE_SECONDS: Final = 30.0
_PRICE_CACHE_SIZE: Final = 4096


def plan_has(plan: SubscriptionPlan, feature: str) -> bool:
    """Whether a plan includes a feature: `api_access` is the plan's column, any other feature
    an entry of its `features` that is true (a missing, false, zero or empty entry is not)."""
    if feature == API_ACCESS:
        return bool(plan.api_access)
    return bool(plan.features.get(feature))


@dataclass
class CatalogLoadResult:
    """What loading a catalog did: the codes it created and the codes it updated."""

    plans_created: list[str] = field(default_factory=list)
    plans_updated: list[str] = field(default_factory=list)
    meters_created: list[str] = field(default_factory=list)
    meters_updated: list[str] = field(default_factory=list)
    #: The catalog's `[[model_pricing]]` versions: created, updated, unchanged.
    prices: PricingLoadResult = field(default_factory=PricingLoadResult)
    #: The codes among the updated ones whose stored values the catalog already had: loading
    #: them again was a replay that changed nothing.
    plans_unchanged: list[str] = field(default_factory=list)
    meters_unchanged: list[str] = field(default_factory=list)


#: The columns of `subscription_plans` that a catalog sets (its prices and extra limits are rows
#: of their own tables).
_PLAN_FIELDS = tuple(name for name in PlanSpec.model_fields if name not in ("prices", "limits"))
#: What `PlanService.update` may change: everything a catalog sets but the prices, which
#: subscriptions and payment providers refer to (load a catalog to change them).
UPDATABLE: Final = frozenset((*_PLAN_FIELDS, "limits"))


async def _unchanged(s: AsyncSession, catalog: Catalog) -> tuple[list[str], list[str]]:
    """The codes of the catalog's plans and meters stored with exactly its values (read before
    the load writes them)."""
    meters = {
        meter.code: meter
        for meter in await s.scalars(sa.select(Meter).where(Meter.code.in_(list(catalog.meters))))
    }
    same_meters = [
        code
        for code, spec in catalog.meters.items()
        if code in meters
        and all(getattr(meters[code], name) == value for name, value in spec.model_dump().items())
    ]
    plans = {
        plan.code: plan
        for plan in await s.scalars(
            sa.select(SubscriptionPlan)
            .where(SubscriptionPlan.code.in_(list(catalog.plans)))
            .options(selectinload(SubscriptionPlan.prices), selectinload(SubscriptionPlan.limits))
            .execution_options(populate_existing=True)
        )
    }
    same_plans = []
    for code, spec in catalog.plans.items():
        plan = plans.get(code)
        if plan is None or any(getattr(plan, name) != getattr(spec, name) for name in _PLAN_FIELDS):
            continue
        prices = {
            (price.billing_cycle, price.currency): price for price in plan.prices if price.is_active
        }
        if set(prices) != {(price.billing_cycle, price.currency) for price in spec.prices}:
            continue
        if any(
            getattr(prices[(price.billing_cycle, price.currency)], name) != value
            for price in spec.prices
            for name, value in price.model_dump(exclude={"billing_cycle", "currency"}).items()
        ):
            continue
        limits = {
            limit.metric: (
                limit.limit_value,
                limit.is_hard,
                limit.overage_prices,
                limit.overage_per,
            )
            for limit in plan.limits
        }
        if limits == {
            metric: (limit.limit, limit.hard, dict(limit.overage), limit.overage_per)
            for metric, limit in spec.limits.items()
        }:
            same_plans.append(code)
    return same_plans, same_meters


async def _unknown_plan(s: AsyncSession, code: str) -> PlanNotFound:
    """The error for a plan code that does not exist, listing the active plans' codes."""
    codes = list(
        (
            await s.scalars(
                sa.select(SubscriptionPlan.code)
                .where(SubscriptionPlan.is_active.is_(True))
                .order_by(SubscriptionPlan.sort_order, SubscriptionPlan.code)
            )
        ).all()
    )
    valid = f"valid plans are {', '.join(codes)}" if codes else "no plans are loaded"
    return PlanNotFound(f"unknown plan {code!r}: {valid}", plan=code, valid_plans=codes)


class PlanService:
    def __init__(self, database: Database, events: EventBus | None = None) -> None:
        self.database = database
        #: A change emits `catalog.changed`: principals carry their plan's rate limits.
        self.events = events if events is not None else EventBus()
        self._price_plans: dict[tuple[PaymentProvider, str], tuple[float, str, BillingCycle]] = {}
        self.events.after_commit(self._catalog_committed)

    def _catalog_committed(self, emitted: Event) -> None:
        if emitted.type == CatalogChanged.type:
            self._price_plans.clear()

    async def list(
        self,
        *,
        include_inactive: bool = False,
        include_hidden: bool = True,
        session: AsyncSession | None = None,
    ) -> Sequence[SubscriptionPlan]:
        """Plans in catalog order, with their prices and extra limits loaded; without
        `include_hidden`, only the public ones (those `GET /v1/plans` offers)."""
        query = (
            sa.select(SubscriptionPlan)
            .options(selectinload(SubscriptionPlan.prices), selectinload(SubscriptionPlan.limits))
            .order_by(SubscriptionPlan.sort_order, SubscriptionPlan.code)
            .execution_options(populate_existing=True)
        )
        if not include_inactive:
            query = query.where(SubscriptionPlan.is_active.is_(True))
        if not include_hidden:
            query = query.where(SubscriptionPlan.is_public.is_(True))
        async with self.database.scope(session, readonly=True) as s:
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
        async with self.database.scope(session, readonly=True) as s:
            plan = (await s.scalars(query)).one_or_none()
            if plan is None:
                raise await _unknown_plan(s, code)
        return plan

    async def resolve_price_id(
        self, provider: PaymentProvider, price_id: str, *, session: AsyncSession | None = None
    ) -> PlanPrice:
        """The plan price (its plan loaded) that the provider sells as `price_id`: a Stripe
        price or a Lemon Squeezy variant of the catalog (seed 004's
        `resolve_plan_from_price_id`); `provider_price_unknown` otherwise."""
        column = {
            PaymentProvider.STRIPE: PlanPrice.stripe_price_id,
            PaymentProvider.LEMON_SQUEEZY: PlanPrice.lemon_squeezy_variant_id,
        }.get(PaymentProvider(provider))
        price = None
        if column is not None and isinstance(price_id, str):
            async with self.database.scope(session, readonly=True) as s:
                price = await s.scalar(
                    sa.select(PlanPrice)
                    .where(column == price_id)
                    .options(selectinload(PlanPrice.plan))
                )
        if price is None:
            raise ProviderPriceUnknown(
                f"no plan is sold at {provider.value} as {str(price_id)[:100]!r}",
                provider=provider.value,
                price_id=str(price_id)[:100],
            )
        return price

    async def plan_of_price(
        self, provider: PaymentProvider, price_id: str, *, session: AsyncSession | None = None
    ) -> tuple[str, BillingCycle]:
        """The plan code and cycle that the provider sells as `price_id` (`resolve_price_id`),
        remembered for `PRICE_CACHE_SECONDS`: the webhook intake asks it of every event, and
        the catalog changes rarely. An unknown price is asked again every time."""
        key = (PaymentProvider(provider), price_id)
        now = time.monotonic()
        known = self._price_plans.get(key)
        if known is not None and now - known[0] < PRICE_CACHE_SECONDS:
            return known[1], known[2]
        price = await self.resolve_price_id(provider, price_id, session=session)
        if len(self._price_plans) >= _PRICE_CACHE_SIZE:
            self._price_plans.clear()
        self._price_plans[key] = (now, price.plan.code, price.billing_cycle)
        return price.plan.code, price.billing_cycle

    async def get_price(
        self, price_id: UUID, *, session: AsyncSession | None = None
    ) -> PlanPrice | None:
        """The plan price with this id (its plan loaded), if any."""
        async with self.database.scope(session, readonly=True) as s:
            return await s.scalar(
                sa.select(PlanPrice)
                .where(PlanPrice.id == price_id)
                .options(selectinload(PlanPrice.plan))
            )

    async def plan_of(
        self, org_id: UUID, *, session: AsyncSession | None = None
    ) -> SubscriptionPlan:
        """The plan an organisation is on (`NotFound` for an organisation that does not exist)."""
        query = (
            sa.select(SubscriptionPlan)
            .join(Organization, Organization.plan_id == SubscriptionPlan.id)
            .where(Organization.id == org_id)
        )
        async with self.database.scope(session, readonly=True) as s:
            plan = (await s.scalars(query)).one_or_none()
        if plan is None:
            raise NotFound(f"no organisation {org_id}", organization=str(org_id))
        return plan

    async def has(self, org_id: UUID, *, feature: str, session: AsyncSession | None = None) -> bool:
        """Whether the organisation's plan includes `feature` (see `plan_has`)."""
        return plan_has(await self.plan_of(org_id, session=session), feature)

    async def require(
        self, org_id: UUID, *, feature: str, session: AsyncSession | None = None
    ) -> None:
        """`PlanFeatureMissing` (403 `plan_feature_missing`) unless the organisation's plan
        includes `feature`: `api_access`, or any key of the plan's `features`
        (`await core.plans.require(org_id, feature="csv_upload")`). Countable limits are
        meters instead: `await core.usage.check(org_id, "items", 1)`."""
        plan = await self.plan_of(org_id, session=session)
        if not plan_has(plan, feature):
            label = "API access" if feature == API_ACCESS else repr(feature)
            raise PlanFeatureMissing(
                f"the {plan.name} plan does not include {label}",
                feature=feature,
                plan=plan.code,
            )

    async def update(
        self, code: str, changes: Mapping[str, Any], *, session: AsyncSession | None = None
    ) -> SubscriptionPlan:
        """Change some of a plan's fields, as a catalog would set them (`UPDATABLE`).

        The plan with its changes must still be a valid catalog entry (`InvalidInput`
        otherwise, and nothing is written); a limit of -1 means unlimited, as in a catalog.
        `limits` is merged into the plan's limits on other meters: `{metric: {"limit": N,
        "hard": true}}` sets one, `{metric: null}` removes it. `features` is replaced whole.
        """
        unknown = sorted(set(changes) - UPDATABLE)
        if unknown:
            raise InvalidInput(f"cannot change {', '.join(unknown)} here", field=unknown[0])
        async with self.database.scope(session) as s:
            plan = (
                await s.scalars(
                    sa.select(SubscriptionPlan)
                    .where(SubscriptionPlan.code == code)
                    .options(selectinload(SubscriptionPlan.limits))
                    .with_for_update(of=SubscriptionPlan)
                    .execution_options(populate_existing=True)
                )
            ).one_or_none()
            if plan is None:
                raise await _unknown_plan(s, code)
            limits: dict[str, Any] = {
                limit.metric: {
                    "limit": limit.limit_value,
                    "hard": limit.is_hard,
                    "overage": limit.overage_prices,
                    "overage_per": limit.overage_per,
                }
                for limit in plan.limits
            }
            for metric, value in (changes.get("limits") or {}).items():
                if value is None:
                    limits.pop(metric, None)
                else:
                    limits[metric] = value
            current = {name: getattr(plan, name) for name in _PLAN_FIELDS}
            fields = {name: value for name, value in changes.items() if name != "limits"}
            try:
                spec = PlanSpec.model_validate({**current, **fields, "limits": limits})
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(part) for part in error["loc"])
                raise spec_error(error)(f"{where}: {error['msg']}", field=where) from None
            if "limits" in changes:
                await self._check_metrics(s, changes["limits"] or {})
            for name in fields:
                setattr(plan, name, getattr(spec, name))
            await s.flush()
            if "limits" in changes:
                await self._load_limits(s, plan.id, spec.limits)
            await self.events.emit(s, None, CatalogChanged(plans=[code]))
            return await self.get_by_code(code, session=s)

    async def _check_metrics(self, s: AsyncSession, limits: Mapping[str, Any]) -> None:
        """`InvalidInput` for a limit on a metric no meter records (it could never apply)."""
        named = {metric for metric, value in limits.items() if value is not None}
        if not named:
            return
        known = set((await s.scalars(sa.select(Meter.code).where(Meter.code.in_(named)))).all())
        missing = sorted(named - known)
        if missing:
            raise InvalidInput(
                f"no meter {missing[0]!r}: limits apply to metered metrics",
                field=f"limits.{missing[0]}",
            )

    async def load_catalog(
        self, catalog: Catalog, *, session: AsyncSession | None = None
    ) -> CatalogLoadResult:
        """Create or update every meter and plan of the catalog, matched by code.

        Each row is written with one `INSERT ... ON CONFLICT (code) DO UPDATE`, so concurrent
        loads cannot create duplicates, and loading the same catalog twice leaves the same rows
        with the same values (only `updated_at` moves). Whether a row was created or updated is
        read from the statement's own `RETURNING id`, so it is right under concurrent loads.
        Prices missing from the catalog are deactivated, not deleted: subscriptions may still
        point at them. The catalog's `[[model_pricing]]` versions are loaded as
        `saascore.plans.pricing` says (a version is never deleted: it prices the past).
        """
        result = CatalogLoadResult()
        now = utcnow()
        try:
            async with self.database.scope(session) as s:
                result.plans_unchanged, result.meters_unchanged = await _unchanged(s, catalog)
                await self.events.emit(s, None, CatalogChanged(plans=sorted(catalog.plans)))
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
                    (result.plans_created if plan_id == row_id else result.plans_updated).append(
                        code
                    )
                result.prices = await load_model_prices(s, catalog.model_pricing)
                await s.flush()
        except IntegrityError as error:
            if violates(error, "stripe_price_id") or violates(error, "lemon_squeezy_variant_id"):
                raise CatalogConflict(
                    "a provider price id (stripe_price_id or lemon_squeezy_variant_id) would "
                    "belong to two prices"
                ) from None
            raise
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
            values = {
                "limit_value": limit.limit,
                "is_hard": limit.hard,
                "overage_prices": dict(limit.overage),
                "overage_per": limit.overage_per,
            }
            statement = insert(s, PlanLimit).values(
                id=new_id(), plan_id=plan_id, metric=metric, **values
            )
            statement = statement.on_conflict_do_update(
                index_elements=[PlanLimit.plan_id, PlanLimit.metric], set_=values
            )
            await s.execute(statement)

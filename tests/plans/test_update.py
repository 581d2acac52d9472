"""Changing one plan in place (`PlanService.update`), and catalogs that clash on provider ids."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.models import PlanLimit, SubscriptionPlan
from saascore.plans import Catalog, PlanNotFound, PlanService, read_catalog
from saascore.plans.errors import CatalogConflict

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def plans(database: Database, session: AsyncSession) -> PlanService:
    service = PlanService(database)
    await service.load_catalog(read_catalog(), session=session)
    return service


async def stored(session: AsyncSession, code: str) -> dict[str, Any]:
    """The plan's row and its extra limits, as the database holds them."""
    row = (
        await session.execute(
            sa.select(SubscriptionPlan.__table__).where(SubscriptionPlan.code == code)
        )
    ).one()
    limits = await session.execute(
        sa.select(PlanLimit.metric, PlanLimit.limit_value, PlanLimit.is_hard)
        .where(PlanLimit.plan_id == row.id)
        .order_by(PlanLimit.metric)
    )
    values = {key: value for key, value in row._asdict().items() if key != "updated_at"}
    values["limits"] = [tuple(limit) for limit in limits]
    return values


class TestUpdate:
    async def test_changes_only_the_given_fields(
        self, plans: PlanService, session: AsyncSession
    ) -> None:
        before = await stored(session, "starter")
        plan = await plans.update(
            "starter",
            {
                "name": "Starter 2025",
                "is_active": False,
                "requests_per_minute": 40,
                "monthly_token_limit": -1,
                "features": {"csv_upload": True},
            },
            session=session,
        )
        assert (plan.name, plan.is_active, plan.requests_per_minute) == ("Starter 2025", False, 40)
        assert len(plan.prices) == 2  # loaded with it
        after = await stored(session, "starter")
        assert after["monthly_token_limit"] is None  # -1 is unlimited, as in a catalog
        assert after["features"] == {"csv_upload": True}
        changed = {"name", "is_active", "requests_per_minute", "monthly_token_limit", "features"}
        assert {k: v for k, v in after.items() if k not in changed} == {
            k: v for k, v in before.items() if k not in changed
        }

    async def test_limits_are_merged(self, plans: PlanService, session: AsyncSession) -> None:
        await plans.update(
            "pro",
            {"limits": {"api_calls": {"limit": 500}, "tokens": {"limit": 9, "hard": False}}},
            session=session,
        )
        assert (await stored(session, "pro"))["limits"] == [
            ("api_calls", 500, True),
            ("tokens", 9, False),
        ]
        plan = await plans.update(
            "pro",
            {"limits": {"api_calls": None, "tokens": {"limit": -1}}},
            session=session,
        )
        assert (await stored(session, "pro"))["limits"] == [("tokens", None, True)]
        assert [(limit.metric, limit.limit_value) for limit in plan.limits] == [("tokens", None)]

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"trial_days": -1}, "trial_days"),
            ({"name": ""}, "name"),
            ({"name": None}, "name"),
            ({"credits_per_period": 2**63}, "credits_per_period"),
            ({"features": None}, "features"),
            ({"limits": {"api_calls": {"limit": "lots"}}}, "limits.api_calls.limit"),
            ({"limits": {"no_such_meter": {"limit": 5}}}, "limits.no_such_meter"),
            ({"prices": []}, "prices"),
            ({"code": "renamed"}, "code"),
        ],
    )
    async def test_invalid_changes_write_nothing(
        self,
        plans: PlanService,
        session: AsyncSession,
        changes: dict[str, Any],
        field: str,
    ) -> None:
        before = await stored(session, "business")
        with pytest.raises(InvalidInput) as info:
            # With a valid change beside the invalid one, which must not be written either.
            await plans.update("business", {"sort_order": 99, **changes}, session=session)
        assert info.value.details["field"] == field
        session.expunge_all()
        assert await stored(session, "business") == before

    async def test_unknown_plan(self, plans: PlanService, session: AsyncSession) -> None:
        with pytest.raises(PlanNotFound):
            await plans.update("platinum", {"name": "Platinum"}, session=session)


class TestCatalogConflict:
    async def test_a_provider_price_id_used_twice_loads_nothing(
        self, database: Database, session: AsyncSession
    ) -> None:
        price = {"billing_cycle": "monthly", "currency": "USD", "amount": 100}
        catalog = Catalog.model_validate(
            {
                "plans": {
                    "one": {"name": "One", "prices": [{**price, "stripe_price_id": "price_1"}]},
                    "two": {"name": "Two", "prices": [{**price, "stripe_price_id": "price_1"}]},
                }
            }
        )

        async def load() -> None:
            async with session.begin_nested():  # rolled back when the load fails
                await PlanService(database).load_catalog(catalog, session=session)

        with pytest.raises(CatalogConflict) as info:
            await load()
        assert (info.value.code, info.value.status_code) == ("catalog_conflict", 409)
        count = await session.scalar(
            sa.select(sa.func.count()).where(SubscriptionPlan.code.in_(["one", "two"]))
        )
        assert count == 0

"""The plan catalog: reading catalog files and loading them, idempotently, into the database."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput, NotFound
from saascore.models import BillingCycle, Meter, PlanLimit, PlanPrice, SubscriptionPlan
from saascore.plans import Catalog, PlanNotFound, PlanService, PriceSpec, read_catalog
from tests.factories import create_plan

DEFAULT_PLANS = ["free", "starter", "pro", "business", "enterprise"]
DEFAULT_METERS = ["tokens", "api_calls", "storage_bytes"]


@pytest.fixture
def plans(database: Database) -> PlanService:
    return PlanService(database)


def _row(row: Any) -> dict[str, Any]:
    """A row's columns as a dict, without `updated_at` (a load may touch it)."""
    return {key: value for key, value in row._asdict().items() if key != "updated_at"}


async def snapshot(session: AsyncSession) -> dict[str, list[dict[str, Any]]]:
    """Every catalog row, straight from the database (not the session's identity map)."""
    tables = {
        "plans": (SubscriptionPlan.__table__, "code"),
        "prices": (PlanPrice.__table__, "id"),
        "limits": (PlanLimit.__table__, "id"),
        "meters": (Meter.__table__, "code"),
    }
    result = {}
    for name, (table, order) in tables.items():
        rows = await session.execute(sa.select(table).order_by(table.c[order]))
        result[name] = [_row(row) for row in rows]
    return result


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


class TestReadCatalog:
    def test_default_catalog(self) -> None:
        catalog = read_catalog()
        assert list(catalog.plans) == DEFAULT_PLANS
        assert list(catalog.meters) == DEFAULT_METERS
        assert catalog.plans["enterprise"].monthly_token_limit is None  # left out: unlimited
        assert catalog.plans["free"].monthly_token_limit == 100_000

    def test_minus_one_means_unlimited(self, tmp_path: Path) -> None:
        catalog = read_catalog(
            write(
                tmp_path,
                "[plans.big]\nname = 'Big'\nmax_users = -1\n"
                "limits = { documents = { limit = -1 } }\n",
            )
        )
        assert catalog.plans["big"].max_users is None
        assert catalog.plans["big"].limits["documents"].limit is None

    @pytest.mark.parametrize(
        ("text", "words"),
        [
            ("[plans.free\nname = 'Free'\n", "is not valid TOML"),
            ("version = 2\n", "version"),
            ("[plans.free]\nname = 'Free'\nbogus = 1\n", "plans.free.bogus"),
            ("[plans.free]\n", "plans.free.name"),
            (
                "[plans.free]\nname = 'Free'\n"
                "prices = [{ billing_cycle = 'monthly', currency = 'USD', amount = -1 }]\n",
                "plans.free.prices.0.amount",
            ),
            (
                "[plans.free]\nname = 'Free'\n"
                "prices = [{ billing_cycle = 'weekly', currency = 'USD', amount = 1 }]\n",
                "plans.free.prices.0.billing_cycle",
            ),
            (
                "[plans.free]\nname = 'Free'\n"
                "prices = [{ billing_cycle = 'monthly', currency = 'usd', amount = 1 }]\n",
                "plans.free.prices.0.currency",
            ),
            (
                "[plans.free]\nname = 'Free'\nprices = ["
                "{ billing_cycle = 'monthly', currency = 'USD', amount = 1 },"
                "{ billing_cycle = 'monthly', currency = 'USD', amount = 2 }]\n",
                "two prices for the same billing cycle and currency",
            ),
            ("[plans.'bad code']\nname = 'Bad'\n", "bad code 'bad code'"),
            ("[meters.tokens]\nname = 'T'\naggregation = 'median'\n", "meters.tokens.aggregation"),
            ("[plans.free]\nname = 'Free'\ntrial_days = -3\n", "plans.free.trial_days"),
        ],
    )
    def test_invalid_files(self, tmp_path: Path, text: str, words: str) -> None:
        path = write(tmp_path, text)
        with pytest.raises(InvalidInput) as info:
            read_catalog(path)
        message = str(info.value)
        assert words in message
        assert str(path) in message  # says which file
        assert "\n" not in message
        assert info.value.code == "invalid_input"

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidInput, match=r"cannot read catalog .*missing\.toml"):
            read_catalog(tmp_path / "missing.toml")


class TestLoadCatalog:
    async def test_default_catalog_creates_plans_and_meters(
        self, plans: PlanService, session: AsyncSession
    ) -> None:
        result = await plans.load_catalog(read_catalog(), session=session)
        assert result.plans_created == DEFAULT_PLANS
        assert result.meters_created == DEFAULT_METERS
        assert result.plans_updated == result.meters_updated == []

        rows = await snapshot(session)
        assert [p["code"] for p in rows["plans"]] == sorted(DEFAULT_PLANS)
        assert [m["code"] for m in rows["meters"]] == sorted(DEFAULT_METERS)
        assert len(rows["prices"]) == 9  # free: monthly; the others: monthly and yearly

        listed = await plans.list(session=session)
        assert [plan.code for plan in listed] == DEFAULT_PLANS  # catalog order
        starter = next(plan for plan in listed if plan.code == "starter")
        assert {(p.billing_cycle, p.currency, p.amount) for p in starter.prices} == {
            (BillingCycle.MONTHLY, "USD", 999),
            (BillingCycle.YEARLY, "USD", 9_990),
        }
        assert starter.trial_days == 14
        assert starter.features["email_support"] is True

    async def test_loading_twice_changes_nothing(
        self, plans: PlanService, session: AsyncSession
    ) -> None:
        await plans.load_catalog(read_catalog(), session=session)
        first = await snapshot(session)
        result = await plans.load_catalog(read_catalog(), session=session)
        assert result.plans_created == result.meters_created == []
        assert result.plans_updated == DEFAULT_PLANS
        assert result.meters_updated == DEFAULT_METERS
        assert await snapshot(session) == first  # same ids, same values, same counts

    async def test_a_changed_catalog_updates_in_place(
        self, plans: PlanService, session: AsyncSession
    ) -> None:
        catalog = read_catalog()
        await plans.load_catalog(catalog, session=session)
        before = await snapshot(session)

        starter = catalog.plans["starter"].model_copy(
            update={
                "name": "Starter Plus",
                "max_users": 8,
                "prices": [
                    PriceSpec(billing_cycle=BillingCycle.MONTHLY, currency="USD", amount=1_299)
                ],
            }
        )
        changed = catalog.model_copy(update={"plans": {**catalog.plans, "starter": starter}})
        result = await plans.load_catalog(changed, session=session)
        assert result.plans_created == []
        after = await snapshot(session)

        plan_ids = {p["code"]: p["id"] for p in before["plans"]}
        assert {p["code"]: p["id"] for p in after["plans"]} == plan_ids  # updated, not replaced
        new_starter = next(p for p in after["plans"] if p["code"] == "starter")
        assert (new_starter["name"], new_starter["max_users"]) == ("Starter Plus", 8)

        def starter_prices(rows: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
            return {
                p["billing_cycle"]: (p["id"], p["amount"], p["is_active"])
                for p in rows
                if p["plan_id"] == plan_ids["starter"]
            }

        old, new = starter_prices(before["prices"]), starter_prices(after["prices"])
        assert new["monthly"] == (old["monthly"][0], 1_299, True)
        assert new["yearly"] == (old["yearly"][0], 9_990, False)  # kept, deactivated

        untouched = [p for p in after["plans"] if p["code"] != "starter"]
        assert untouched == [p for p in before["plans"] if p["code"] != "starter"]

    async def test_a_price_back_in_the_catalog_is_reactivated(
        self, plans: PlanService, session: AsyncSession
    ) -> None:
        catalog = read_catalog()
        pro = catalog.plans["pro"]
        await plans.load_catalog(catalog, session=session)
        no_prices = pro.model_copy(update={"prices": []})
        await plans.load_catalog(
            catalog.model_copy(update={"plans": {"pro": no_prices}}), session=session
        )
        active = PlanPrice.is_active.is_(True)
        pro_id = select_plan_id("pro")
        assert await session.scalar(count_prices(pro_id, active)) == 0
        await plans.load_catalog(catalog, session=session)
        assert await session.scalar(count_prices(pro_id, active)) == 2

    async def test_plan_limits_follow_the_catalog(
        self, plans: PlanService, session: AsyncSession, tmp_path: Path
    ) -> None:
        def catalog(limits: str) -> Catalog:
            return read_catalog(write(tmp_path, f"[plans.lim]\nname = 'L'\nlimits = {limits}\n"))

        async def limits() -> dict[str, tuple[int | None, bool]]:
            rows = await session.execute(
                sa.select(PlanLimit.metric, PlanLimit.limit_value, PlanLimit.is_hard).where(
                    PlanLimit.plan_id == select_plan_id("lim")
                )
            )
            return {metric: (value, hard) for metric, value, hard in rows}

        await plans.load_catalog(
            catalog("{ documents = { limit = 10 }, seats = { limit = 3, hard = false } }"),
            session=session,
        )
        assert await limits() == {"documents": (10, True), "seats": (3, False)}
        await plans.load_catalog(catalog("{ documents = { limit = -1 } }"), session=session)
        assert await limits() == {"documents": (None, True)}

    async def test_reads_after_a_reload_in_the_same_session_see_it(
        self, plans: PlanService, session: AsyncSession
    ) -> None:
        catalog = read_catalog()
        await plans.load_catalog(catalog, session=session)
        before = await plans.get_by_code("starter", session=session)  # held: in the identity map
        assert before.name == "Starter"
        renamed = catalog.plans["starter"].model_copy(update={"name": "Starter Plus"})
        await plans.load_catalog(
            catalog.model_copy(update={"plans": {"starter": renamed}}), session=session
        )
        after = await plans.get_by_code("starter", session=session)
        assert after.name == "Starter Plus"


def select_plan_id(code: str) -> sa.ScalarSelect[Any]:
    return sa.select(SubscriptionPlan.id).where(SubscriptionPlan.code == code).scalar_subquery()


def count_prices(plan_id: Any, *conditions: Any) -> sa.Select[Any]:
    return sa.select(sa.func.count(PlanPrice.id)).where(PlanPrice.plan_id == plan_id, *conditions)


class TestQueries:
    async def test_get_by_code(self, plans: PlanService, session: AsyncSession) -> None:
        plan = await create_plan(session, max_users=4)
        found = await plans.get_by_code(plan.code, session=session)
        assert found.id == plan.id
        assert found.prices == []  # loaded, not lazy

    async def test_unknown_code(self, plans: PlanService, session: AsyncSession) -> None:
        with pytest.raises(PlanNotFound) as info:
            await plans.get_by_code("no-such-plan", session=session)
        assert isinstance(info.value, NotFound)
        assert info.value.code == "plan_not_found"
        codes = [plan.code for plan in await plans.list(session=session)]
        # The message and the details name the valid codes, so a typo can be corrected.
        assert info.value.details == {"plan": "no-such-plan", "valid_plans": codes}
        assert info.value.message == (
            f"unknown plan 'no-such-plan': valid plans are {', '.join(codes)}"
            if codes
            else "unknown plan 'no-such-plan': no plans are loaded"
        )

    async def test_list_hides_inactive_plans(
        self, plans: PlanService, session: AsyncSession
    ) -> None:
        active = await create_plan(session, sort_order=1)
        retired = await create_plan(session, sort_order=2, is_active=False)
        codes = [plan.code for plan in await plans.list(session=session)]
        assert active.code in codes
        assert retired.code not in codes
        everything = await plans.list(include_inactive=True, session=session)
        assert {active.code, retired.code} <= {plan.code for plan in everything}


@pytest.mark.race_database(fresh=True)
class TestOwnTransaction:
    async def test_concurrent_loads_create_each_plan_once(self, race_database: Database) -> None:
        service = PlanService(race_database)
        results = await asyncio.gather(*(service.load_catalog(read_catalog()) for _ in range(4)))
        for result in results:
            assert sorted(result.plans_created + result.plans_updated) == sorted(DEFAULT_PLANS)
        async with race_database.session(readonly=True) as session:
            assert await session.scalar(sa.select(sa.func.count(SubscriptionPlan.id))) == 5
            assert await session.scalar(sa.select(sa.func.count(PlanPrice.id))) == 9
            assert await session.scalar(sa.select(sa.func.count(Meter.id))) == 3

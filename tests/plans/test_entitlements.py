"""Plan entitlements: API keys need a plan with `api_access` (Pro and up in the default catalog),
`core.plans.require` and `RequireFeature` check a plan's features, and countable limits are
meters checked with `core.usage.check`; the example catalog of docs/ loads and does all three."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
import pytest
import sqlalchemy as sa
from fastapi import Depends

from saascore import Saascore
from saascore.api.deps import RequireFeature
from saascore.identity.principal import Principal
from saascore.kit.db import Database
from saascore.models import ApiKey, AuditLog, Organization, SubscriptionPlan
from saascore.plans import PlanFeatureMissing, read_catalog
from saascore.testing import add_api_key
from tests.factories import create_organization, create_plan
from tests.http import api_app, serving, tenant

EXAMPLE_CATALOG = Path(__file__).parents[2] / "docs" / "examples" / "catalog.toml"

#: Fields of seed 002's and seed 004's products, which the default catalog leaves to products.
PRODUCT_FIELDS = ("max_products_per_batch", "max_items", "max_secondary")
PRODUCT_FEATURES = {"ai_generation", "csv_upload", "enhanced_generation", "custom_templates"}


async def keys_of(database: Database, org_id: object) -> int:
    async with database.session(readonly=True) as s:
        query = sa.select(sa.func.count()).where(ApiKey.organization_id == org_id)
        return int(await s.scalar(query.select_from(ApiKey)) or 0)


class TestDefaultCatalog:
    def test_api_access_from_pro_up(self) -> None:
        plans = read_catalog().plans
        assert {code: plan.api_access for code, plan in plans.items()} == {
            "free": False,
            "starter": False,
            "pro": True,
            "business": True,
            "enterprise": True,
        }

    def test_it_holds_no_product_specific_fields(self) -> None:
        for code, plan in read_catalog().plans.items():
            assert all(getattr(plan, name) is None for name in PRODUCT_FIELDS), code
            assert not PRODUCT_FEATURES & set(plan.features), code


class TestApiKeysNeedApiAccess:
    async def test_the_library_refuses_and_writes_nothing(self, scratch: Database) -> None:
        async with Saascore(scratch.settings, database=scratch) as core:
            org = await core.orgs.create(name="Free Co", plan="free")
            with pytest.raises(PlanFeatureMissing) as refused:
                await core.api_keys.create(org.id, name="k", scopes=["usage:read"])
            assert refused.value.code == "plan_feature_missing"
            assert refused.value.details == {"feature": "api_access", "plan": "free"}
            assert await keys_of(scratch, org.id) == 0
            async with scratch.session(readonly=True) as s:
                actions = (
                    await s.scalars(
                        sa.select(AuditLog.action).where(AuditLog.organization_id == org.id)
                    )
                ).all()
            assert "api_key.created" not in actions

            pro = await core.orgs.create(name="Pro Co", plan="pro")
            key, raw = await core.api_keys.create(pro.id, name="k", scopes=["usage:read"])
            assert raw.startswith("sk_live_")
            assert key.organization_id == pro.id

    async def test_operator_keys_need_no_plan(self, scratch: Database) -> None:
        async with Saascore(scratch.settings, database=scratch) as core:
            _, raw = await core.api_keys.create_operator_key(name="staff")
            assert raw.startswith("sk_op_")

    async def test_over_http_a_free_plan_is_403_and_pro_gets_its_key(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        free = await tenant(api, scratch, plan="free")
        body = {"name": "ci", "scopes": ["usage:read"]}
        refused = await api.post("/v1/api-keys", json=body, headers=free.headers)
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "plan_feature_missing"
        assert error["message"] == "the Free plan does not include API access"
        assert error["details"] == {"feature": "api_access", "plan": "free"}
        assert await keys_of(scratch, free.organization_id) == 0

        starter = await tenant(api, scratch, plan="starter")
        refused = await api.post("/v1/api-keys", json=body, headers=starter.headers)
        assert refused.json()["error"]["code"] == "plan_feature_missing"

        pro = await add_api_key(api, await tenant(api, scratch, plan="pro"), ["usage:read"])
        assert pro.api_key is not None
        assert (await api.get("/v1/me", headers=pro.key_headers)).status_code == 200

    async def test_the_refusal_is_documented(self, api: httpx.AsyncClient) -> None:
        document = (await api.get("/openapi.json")).json()
        responses = document["paths"]["/v1/api-keys"]["post"]["responses"]
        assert "plan_feature_missing" in responses["403"]["description"]


class TestRequire:
    async def test_a_feature_is_a_true_entry_of_the_plans_features(self, scratch: Database) -> None:
        async with Saascore(scratch.settings, database=scratch) as core:
            async with scratch.transaction() as s:
                with_it = await create_plan(s, features={"csv_upload": True})
                off = await create_plan(s, features={"csv_upload": False})
                without = await create_plan(s, api_access=False)
                orgs = [await create_organization(s, plan=p) for p in (with_it, off, without)]
            await core.plans.require(orgs[0].id, feature="csv_upload")
            assert await core.plans.has(orgs[0].id, feature="api_access")
            for org in orgs[1:]:
                with pytest.raises(PlanFeatureMissing, match="does not include 'csv_upload'"):
                    await core.plans.require(org.id, feature="csv_upload")
            assert not await core.plans.has(orgs[2].id, feature="api_access")

    async def test_require_feature_guards_a_host_apps_route(self, scratch: Database) -> None:
        application, core = api_app(scratch, auth_requests_per_minute=None)

        @application.post("/uploads")
        async def upload(
            principal: Annotated[Principal, Depends(RequireFeature("csv_upload"))],
        ) -> dict[str, str]:
            return {"organization": str(principal.tenant)}

        async with serving(application, core) as client:
            allowed = await tenant(client, scratch, features={"csv_upload": True})
            refused = await tenant(client, scratch, features={"ai_generation": True})
            answer = await client.post("/uploads", headers=allowed.headers)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"organization": str(allowed.organization_id)}
            answer = await client.post("/uploads", headers=refused.headers)
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"]["code"] == "plan_feature_missing"
            assert (await client.post("/uploads")).status_code == 401


class TestExampleCatalog:
    async def test_it_loads_and_its_features_and_limits_apply(self, scratch: Database) -> None:
        catalog = read_catalog(EXAMPLE_CATALOG)
        assert set(catalog.plans["pro"].features) >= PRODUCT_FEATURES
        async with Saascore(scratch.settings, database=scratch) as core:
            await core.plans.load_catalog(catalog)
            free = await core.orgs.create(name="Example Free", plan="free")
            pro = await core.orgs.create(name="Example Pro", plan="pro")

            await core.plans.require(free.id, feature="csv_upload")
            with pytest.raises(PlanFeatureMissing):
                await core.plans.require(free.id, feature="custom_templates")
            await core.plans.require(pro.id, feature="custom_templates")
            with pytest.raises(PlanFeatureMissing):
                await core.api_keys.create(free.id, name="k", scopes=["usage:read"])

            # Countable limits are meters: ask before making one, record it after.
            assert (await core.usage.check(free.id, "items", 100)).allowed
            assert not (await core.usage.check(free.id, "items", 101)).allowed
            await core.usage.record(free.id, "items", 1, idempotency_key="item-1")
            assert not (await core.usage.check(free.id, "items", 100)).allowed
            assert (await core.usage.check(free.id, "items", 99)).allowed
            assert not (await core.usage.check(free.id, "secondary", 2)).allowed
            assert (await core.usage.check(pro.id, "secondary", 10)).allowed
            async with scratch.session(readonly=True) as s:
                plan = await s.scalar(
                    sa.select(SubscriptionPlan)
                    .join(Organization, Organization.plan_id == SubscriptionPlan.id)
                    .where(Organization.id == free.id)
                )
            assert plan is not None
            assert plan.max_products_per_batch == 5

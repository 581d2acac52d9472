"""`saascore demo` started again keeps the plan of a demo organisation that subscribed (a
checkout in the demo), and puts one without a live subscription back on the demo plan."""

from __future__ import annotations

import pytest

from saascore.cli.serve import DEMO_PLAN, prepare_demo
from saascore.models import SubscriptionStatus
from tests.admin import Admin

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_restart_keeps_the_plan_of_a_live_subscription(admin: Admin) -> None:
    first = await prepare_demo(admin.core)
    org_id = first.organization.id
    demo = await admin.core.plans.get_by_code(DEMO_PLAN)
    pro = await admin.core.plans.get_by_code("pro")
    assert first.organization.plan_id == demo.id
    subscription = await admin.core.subscriptions.create(org_id, "pro", trial_days=0)
    assert subscription.status is SubscriptionStatus.ACTIVE

    again = await prepare_demo(admin.core)
    assert again.organization.id == org_id
    current = await admin.core.subscriptions.get(org_id)
    assert (current.id, current.status) == (subscription.id, SubscriptionStatus.ACTIVE)
    assert (await admin.core.orgs.get(org_id)).plan_id == current.plan_id == pro.id

    await admin.core.subscriptions.cancel(org_id, at_period_end=False)
    after = await prepare_demo(admin.core)
    assert after.organization.plan_id == demo.id

"""The billing run over many organisations, beside a bare SQL pass over the same counters.

On PostgreSQL: BENCH_ORGS organisations (default 10,000) are bulk-inserted, each with a monthly
pro subscription due at the run's moment and a month of usage (a tokens counter above the
plan's included amount, priced for overage). Then, in the same run:
  (a) `BillingRun.run` renews every one: an invoice with its plan and usage lines, finalised
      with its gapless number, the period's credits, the events and their audit entries;
  (b) the reference: one bare SQL pass reading the same subscriptions and counters.
Printed: organisations per second of (a), both times, and the ratio (b) / (a).
SAASCORE_TEST_POSTGRES_URL picks the server (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime

import asyncpg
import sqlalchemy as sa

from saascore import Saascore, Settings
from saascore.kit.ids import new_id
from saascore.migrations import migrate
from saascore.models import (
    Organization,
    PlanLimit,
    PlanPrice,
    Subscription,
    SubscriptionPlan,
    SubscriptionStatus,
    UsageCounter,
    UsageLimits,
)
from saascore.models.catalog import BillingCycle
from saascore.plans import read_catalog

URL = os.environ.get("SAASCORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ORGS = int(os.environ.get("BENCH_ORGS", "10000"))
JAN = datetime(2025, 1, 1, tzinfo=UTC)
FEB = datetime(2025, 2, 1, tzinfo=UTC)
SCHEMA = "bench_billing"

BARE = """
SELECT s.organization_id, s.unit_amount, c.used, l.limit_value, l.overage_prices
FROM subscriptions s
JOIN plan_limits l ON l.plan_id = s.plan_id
LEFT JOIN usage_counters c ON c.organization_id = s.organization_id AND c.metric = l.metric
  AND c.period_end > $1 AND c.period_end <= $2
WHERE s.status = 'active' AND s.current_period_end <= $2
"""


async def main() -> None:
    admin = await asyncpg.connect(URL)
    await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
    await admin.close()
    url = URL.replace("postgresql://", "postgresql+asyncpg://", 1)
    settings = Settings(database_url=url, database_schema=SCHEMA)
    async with Saascore(settings) as core:
        await migrate.upgrade(core.database)
        await core.plans.load_catalog(read_catalog())
        async with core.database.transaction() as s:
            plan = (
                await s.execute(
                    sa.select(SubscriptionPlan.id, PlanPrice.amount)
                    .join(PlanPrice, PlanPrice.plan_id == SubscriptionPlan.id)
                    .where(SubscriptionPlan.code == "pro", PlanPrice.currency == "USD")
                    .where(PlanPrice.billing_cycle == BillingCycle.MONTHLY)
                )
            ).one()
            await s.execute(
                sa.delete(PlanLimit).where(
                    PlanLimit.plan_id == plan.id, PlanLimit.metric == "tokens"
                )
            )
            s.add(
                PlanLimit(
                    plan_id=plan.id,
                    metric="tokens",
                    limit_value=1_000_000,
                    is_hard=False,
                    overage_prices={"USD": 2},
                    overage_per=1000,
                )
            )
            ids = [new_id() for _ in range(ORGS)]
            for start in range(0, ORGS, 2000):
                chunk = ids[start : start + 2000]
                await s.execute(
                    sa.insert(Organization),
                    [
                        {
                            "id": org_id,
                            "name": f"bench {start + n}",
                            "slug": f"bench-{start + n}",
                            "plan_id": plan.id,
                            "subscription_status": SubscriptionStatus.ACTIVE,
                        }
                        for n, org_id in enumerate(chunk)
                    ],
                )
                await s.execute(
                    sa.insert(UsageLimits), [{"organization_id": org_id} for org_id in chunk]
                )
                await s.execute(
                    sa.insert(Subscription),
                    [
                        {
                            "organization_id": org_id,
                            "id": new_id(),
                            "plan_id": plan.id,
                            "status": SubscriptionStatus.ACTIVE,
                            "billing_cycle": BillingCycle.MONTHLY,
                            "currency": "USD",
                            "unit_amount": plan.amount,
                            "quantity": 1,
                            "started_at": JAN,
                            "current_period_start": JAN,
                            "current_period_end": FEB,
                            "next_billing_at": FEB,
                            "metadata_": {},
                        }
                        for org_id in chunk
                    ],
                )
                await s.execute(
                    sa.insert(UsageCounter),
                    [
                        {
                            "organization_id": org_id,
                            "id": new_id(),
                            "metric": "tokens",
                            "period_start": JAN,
                            "period_end": FEB,
                            "used": 1_000_000 + 1_000 * (n % 500),
                        }
                        for n, org_id in enumerate(chunk)
                    ],
                )
        async with core.database.session() as s:
            await s.execute(sa.text("ANALYZE"))
            await s.commit()
        started = time.perf_counter()
        async with core.database.session(readonly=True) as s:
            rows = (
                await s.execute(
                    sa.text(BARE.replace("$1", ":a").replace("$2", ":b")), {"a": JAN, "b": FEB}
                )
            ).all()
        bare = time.perf_counter() - started
        started = time.perf_counter()
        summary = await core.billing_run.run(FEB)
        took = time.perf_counter() - started
    print(f"organisations: {ORGS}; bare SQL pass read {len(rows)} rows")
    print(f"(a) billing run:   {took:8.2f} s  {ORGS / took:8.1f} organisations/s")
    print(f"(b) bare SQL pass: {bare:8.2f} s")
    print(f"ratio (b)/(a): {bare / took:.4f}   (goal: run < 60 s, ratio >= 0.3)")
    print(f"summary: {dict(summary.counts)} failures: {len(summary.failures)}")


if __name__ == "__main__":
    asyncio.run(main())

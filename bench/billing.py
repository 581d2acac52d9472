"""The billing run over many organisations, beside the same work written as bare SQL.

BENCH_ORGS organisations (default 10,000) are bulk-inserted, each with a monthly pro
subscription due at the run's moment and a month of usage (a tokens counter above the plan's
included amount, priced for overage). Then, in the same process:

  (a) `BillingRun.run` renews every one: an invoice with its plan and usage lines, finalised
      with its gapless number, the period's credits, the events and their audit entries;
  (b) the reference, the same core work as bare SQL (`sqlalchemy.text`/Core statements, no
      domain logic, no events, no audit): per organisation, lock and read its subscription,
      read its counters, write an open invoice with its two lines (plan fee, overage) and bump
      an invoice-number counter row; organisations grouped into transactions of
      `TRANSACTION_SIZE`, as the run groups them. It runs first, writes its invoices without
      a subscription and leaves the subscriptions due, so (a) has the same work left;
  (c) an extra line: one bare SQL pass reading the same subscriptions and counters.

Printed: both times, organisations per second, and the ratio (b) / (a) (goal >= 0.3; and
(a) under 60 s for 10,000 organisations).

BENCH_DATABASE=postgresql (default; SAASCORE_TEST_POSTGRES_URL picks the server, default
postgresql://postgres@127.0.0.1:5432/test) or sqlite (a file in a temporary directory).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime

import asyncpg
import sqlalchemy as sa

from saascore import Saascore, Settings
from saascore.billing.run import TRANSACTION_SIZE
from saascore.kit.db import Database
from saascore.kit.ids import new_id
from saascore.migrations import migrate
from saascore.models import (
    Invoice,
    InvoiceLine,
    InvoiceSequence,
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
BACKEND = os.environ.get("BENCH_DATABASE", "postgresql")
JAN = datetime(2025, 1, 1, tzinfo=UTC)
FEB = datetime(2025, 2, 1, tzinfo=UTC)
MAR = datetime(2025, 3, 1, tzinfo=UTC)
SCHEMA = "bench_billing"
#: The tables that hold rows before the passes: the catalog and what `main` loads.
LOADED = (
    "subscription_plans",
    "plan_prices",
    "plan_limits",
    "organizations",
    "usage_limits",
    "subscriptions",
    "usage_counters",
)

READ = """
SELECT s.organization_id, s.unit_amount, c.used, l.limit_value, l.overage_prices
FROM subscriptions s
JOIN plan_limits l ON l.plan_id = s.plan_id
LEFT JOIN usage_counters c ON c.organization_id = s.organization_id AND c.metric = l.metric
  AND c.period_end > :a AND c.period_end <= :b
WHERE s.status = 'active' AND s.current_period_end <= :b
"""

SUBSCRIPTION = """
SELECT s.id, s.unit_amount, s.quantity, s.currency, s.plan_id FROM subscriptions s
WHERE s.organization_id = :org AND s.status = 'active' AND s.current_period_end <= :b
"""
COUNTERS = """
SELECT c.metric, c.used, l.limit_value, l.overage_prices, l.overage_per
FROM usage_counters c JOIN plan_limits l ON l.metric = c.metric AND l.plan_id = :plan
WHERE c.organization_id = :org AND c.period_end > :a AND c.period_end <= :b
"""
BUMP = """
UPDATE invoice_sequences SET last_number = last_number + 1 WHERE series = 'bench/bare'
RETURNING last_number
"""


def typed(sql: str) -> sa.TextClause:
    """`sql` with its parameters typed as the columns they compare with (SQLite needs it)."""
    columns = {
        "org": Subscription.__table__.c.organization_id,
        "plan": Subscription.__table__.c.plan_id,
        "a": UsageCounter.__table__.c.period_end,
        "b": UsageCounter.__table__.c.period_end,
    }
    names = [name for name in columns if f":{name}" in sql]
    return sa.text(sql).bindparams(*(sa.bindparam(n, type_=columns[n].type) for n in names))


async def bare_work(database: Database, ids: list[object]) -> float:
    """(b): the run's core writes as bare SQL, in the run's transaction grouping."""
    invoices = Invoice.__table__
    lines = InvoiceLine.__table__
    locking = " FOR UPDATE" if database.engine.dialect.name == "postgresql" else ""
    async with database.transaction() as s:
        await s.execute(sa.insert(InvoiceSequence), [{"series": "bench/bare", "last_number": 0}])
    started = time.perf_counter()
    for start in range(0, len(ids), TRANSACTION_SIZE):
        async with database.transaction() as s:
            for org_id in ids[start : start + TRANSACTION_SIZE]:
                sub = (
                    await s.execute(
                        typed(SUBSCRIPTION + locking).columns(
                            sa.column("id"),
                            sa.column("unit_amount"),
                            sa.column("quantity"),
                            sa.column("currency"),
                            Subscription.__table__.c.plan_id,
                        ),
                        {"org": org_id, "b": FEB},
                    )
                ).one()
                counters = (
                    await s.execute(
                        typed(COUNTERS).columns(
                            sa.column("metric"),
                            sa.column("used"),
                            sa.column("limit_value"),
                            PlanLimit.__table__.c.overage_prices,
                            sa.column("overage_per"),
                        ),
                        {"org": org_id, "plan": sub.plan_id, "a": JAN, "b": FEB},
                    )
                ).all()
                fee = sub.unit_amount * sub.quantity
                over = sum(
                    max(c.used - c.limit_value, 0) * c.overage_prices["USD"] // c.overage_per
                    for c in counters
                )
                seq = (await s.execute(typed(BUMP))).scalar_one()
                invoice_id = new_id()
                await s.execute(
                    sa.insert(invoices).values(
                        id=invoice_id,
                        organization_id=org_id,
                        number=f"BARE-{seq:06d}",
                        status="open",
                        currency="USD",
                        issue_date=FEB.date(),
                        due_date=FEB.date(),
                        period_start=FEB,
                        period_end=MAR,
                        subtotal=fee + over,
                        total=fee + over,
                        amount_due=fee + over,
                        created_at=FEB,
                        updated_at=FEB,
                    )
                )
                await s.execute(
                    sa.insert(lines),
                    [
                        {
                            "id": new_id(),
                            "organization_id": org_id,
                            "invoice_id": invoice_id,
                            "position": 0,
                            "description": "pro (monthly)",
                            "quantity": sub.quantity,
                            "unit_amount": sub.unit_amount,
                            "amount": fee,
                        },
                        {
                            "id": new_id(),
                            "organization_id": org_id,
                            "invoice_id": invoice_id,
                            "position": 1,
                            "description": "tokens",
                            "metric": "tokens",
                            "quantity": 1,
                            "unit_amount": over,
                            "amount": over,
                        },
                    ],
                )
    return time.perf_counter() - started


async def main() -> None:
    if BACKEND == "sqlite":
        folder = tempfile.mkdtemp(prefix="bench-billing-")
        settings = Settings(database_url=f"sqlite+aiosqlite:///{folder}/bench.db")
    else:
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
            # The tables just loaded only. An empty table that ANALYZE has seen is taken
            # for a small one for good (never analyzed, PostgreSQL assumes it may grow), so
            # each connection's cached plans for the rows both passes write (foreign key
            # checks on invoices and credit grants, updates of audit chain heads) would
            # scan the whole table per row, the more the longer the run: some 400 million
            # rows read over 10,000 organisations, which no database kept by autovacuum
            # would do.
            await s.execute(sa.text(f"ANALYZE {', '.join(LOADED)}"))
            await s.commit()
        started = time.perf_counter()
        async with core.database.session(readonly=True) as s:
            rows = (await s.execute(typed(READ), {"a": JAN, "b": FEB})).all()
        read = time.perf_counter() - started
        bare = await bare_work(core.database, ids)
        started = time.perf_counter()
        summary = await core.billing_run.run(FEB)
        took = time.perf_counter() - started
    print(f"{BACKEND}, organisations: {ORGS}, load: {os.getloadavg()[0]:.2f}")
    print(f"(a) billing run:          {took:8.2f} s  {ORGS / took:8.1f} organisations/s")
    print(f"(b) same work, bare SQL:  {bare:8.2f} s  {ORGS / bare:8.1f} organisations/s")
    print(f"ratio (b)/(a): {bare / took:.3f}   (goal: run < 60 s for 10,000, ratio >= 0.3)")
    print(f"(c) bare read of the same counters ({len(rows)} rows): {read:.3f} s")
    print(f"summary: {dict(summary.counts)} failures: {len(summary.failures)}")


if __name__ == "__main__":
    asyncio.run(main())

"""Recording usage: saascore beside the references it is measured against, in one run.

On PostgreSQL, at concurrency 1, 8 and 32, ops/s, p50 and p99 of:
  (a) `UsageService.record` through saascore, with group commit (the default) and without it
      (one statement and one transaction per call);
  (b) the raw reference: one asyncpg statement, a CTE doing the conditional counter
      `UPDATE ... RETURNING` and the event `INSERT` together;
  (c) the seed-style reference: an ORM session per operation with `SELECT ... FOR UPDATE`,
      the update, the insert and a commit;
then (d) `record_many` events/s beside a raw `COPY` of the same rows, (e) the hot tenant:
every worker on one organisation, (a) beside (b), and (f) the minimal reference: one
transaction per event, a CTE that updates a three-column quota row and inserts into a
five-column event table (tables of its own), driven like (a) by 32 workers from outside
the service, beside (a) at concurrency 32. Ratios are printed beside the figures.

Each worker records on its own organisation except in (e). Limits are set high enough that
nothing is refused, so every operation does the full work. SAASCORE_TEST_POSTGRES_URL picks
the server (default postgresql://postgres@127.0.0.1:5432/test); BENCH_SECONDS the time per
measurement (default 2); BENCH_ONLY the sections to run, as letters (default "abcdef": "d"
runs the batch ingest alone, any of "abc" the one-event table, "e" the hot tenant, "f" the
minimal reference).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import sqlalchemy as sa

from saascore import Saascore, Settings
from saascore.kit.ids import new_id
from saascore.kit.time import day_start
from saascore.metering import UsageEventIn, UsageService
from saascore.migrations import migrate
from saascore.models import UsageCounter, UsageEvent
from saascore.plans import read_catalog

URL = os.environ.get("SAASCORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
CONCURRENCY = tuple(int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,8,32").split(","))
ONLY = set(os.environ.get("BENCH_ONLY", "abcdef"))
METRIC = "api_calls"
LIMIT = 10**15
BATCH = 1000
Operation = Callable[[int], Awaitable[object]]

RAW_RECORD = """
WITH counted AS (
    UPDATE usage_counters SET used = used + $3, updated_at = now()
    WHERE organization_id = $1 AND metric = $2 AND period_start = $4
      AND used + reserved + $3 <= $5
    RETURNING used
)
INSERT INTO usage_events (organization_id, id, idempotency_key, payload_hash, metric, quantity,
    input_tokens, output_tokens, cached_tokens, total_tokens, cost_micros, cost_currency,
    credits_used, properties, occurred_at, recorded_at)
SELECT $1, $6, $7, '', $2, $3, 0, 0, 0, 0, 0, 'USD', 0, '{}', now(), now() FROM counted
RETURNING id
"""

#: (f): the least a metered write can be: a quota row (org, used, quota) and an event row
#: (org, id, key, quantity, at), one transaction per event.
MINIMAL_TABLES = """
CREATE TABLE minimal_quota (org uuid PRIMARY KEY, used bigint NOT NULL, quota bigint NOT NULL);
CREATE TABLE minimal_events (org uuid NOT NULL, id uuid PRIMARY KEY, key text NOT NULL,
    quantity bigint NOT NULL, at timestamptz NOT NULL);
"""
MINIMAL_RECORD = """
WITH q AS (
    UPDATE minimal_quota SET used = used + $2 WHERE org = $1 AND used + $2 <= quota
    RETURNING org
)
INSERT INTO minimal_events SELECT q.org, $3, $4, $2, now() FROM q
RETURNING id
"""


async def measure(operation: Operation, concurrency: int) -> tuple[float, float, float]:
    """ops/s, p50 ms, p99 ms of `operation(worker)` run by `concurrency` workers."""
    latencies: list[float] = []
    deadline = 0.0

    async def worker(number: int) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await operation(number)
            latencies.append(time.perf_counter() - start)

    for number in range(concurrency):  # warm up every worker's connection
        await operation(number)
    started = time.perf_counter()
    deadline = started + SECONDS
    await asyncio.gather(*(worker(number) for number in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[max(int(len(latencies) * 0.99) - 1, 0)]
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000


def header(title: str) -> str:
    return f"  {title:<34}{'ops/s':>10}{'p50 ms':>10}{'p99 ms':>10}"


def row(name: str, figures: tuple[float, float, float]) -> str:
    ops, p50, p99 = figures
    return f"  {name:<34}{ops:>10.0f}{p50:>10.2f}{p99:>10.2f}"


async def batch_ingest(usage: UsageService, pool: asyncpg.Pool, orgs: list[uuid.UUID]) -> None:
    """(d): `record_many` events/s beside a raw COPY of the same rows."""
    events = [
        UsageEventIn(METRIC, 1, str(new_id()), organization_id=orgs[n % len(orgs)])
        for n in range(20 * BATCH)
    ]
    started = time.perf_counter()
    for offset in range(0, len(events), BATCH):
        await usage.record_many(events[offset : offset + BATCH])
    batched = len(events) / (time.perf_counter() - started)
    now = datetime.now(UTC)
    records = [
        (
            event.organization_id,
            new_id(),
            str(new_id()),
            "",
            METRIC,
            1,
            0,
            0,
            0,
            0,
            0,
            "USD",
            0,
            "{}",
            now,
            now,
        )
        for event in events
    ]
    columns = [
        "organization_id",
        "id",
        "idempotency_key",
        "payload_hash",
        "metric",
        "quantity",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "total_tokens",
        "cost_micros",
        "cost_currency",
        "credits_used",
        "properties",
        "occurred_at",
        "recorded_at",
    ]
    started = time.perf_counter()
    async with pool.acquire() as connection:
        for offset in range(0, len(records), BATCH):
            await connection.copy_records_to_table(
                "usage_events", records=records[offset : offset + BATCH], columns=columns
            )
    copied = len(records) / (time.perf_counter() - started)
    print(f"\n  {'batch ingest (batches of 1,000)':<34}{'events/s':>10}")
    print(f"  {'(d) saascore record_many':<34}{batched:>10.0f}")
    print(f"  {'raw COPY of the same rows':<34}{copied:>10.0f}")
    print(f"      d/COPY = {batched / copied:.2f}")


async def minimal_reference(
    record: Operation, alone: Operation, pool: asyncpg.Pool, orgs: list[uuid.UUID]
) -> None:
    """(f): `record` at concurrency 32 (with group commit, and `alone` without) beside the
    minimal CTE, all driven by 32 workers."""
    concurrency = 32
    async with pool.acquire() as connection:
        await connection.execute(MINIMAL_TABLES)
        await connection.executemany(
            "INSERT INTO minimal_quota VALUES ($1, 0, $2)", [(org, LIMIT) for org in orgs]
        )

    async def minimal(worker: int) -> object:
        async with pool.acquire() as connection:
            return await connection.fetchval(
                MINIMAL_RECORD, orgs[worker % len(orgs)], 1, new_id(), str(new_id())
            )

    own = orgs[: max(concurrency, 1)]
    assert len(own) >= concurrency, "(f) needs 32 organisations: BENCH_CONCURRENCY up to 32"
    print("\n" + header("minimal reference, c=32"))
    f = await measure(minimal, concurrency)
    a = await measure(record, concurrency)
    a1 = await measure(alone, concurrency)
    print(row("(f) minimal CTE, 3+5 columns", f))
    print(row("(a) saascore record", a))
    print(row("    without group commit", a1))
    print(f"      a/f = {a[0] / f[0]:.2f} (goal: 0.8)   without group commit: {a1[0] / f[0]:.2f}")


async def main() -> None:
    schema = f"bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(URL)
    await admin.execute(f"CREATE SCHEMA {schema}")
    settings = Settings(
        _env_file=None,
        database_url=URL,
        database_schema=schema,
        db_pool_size=40,
        db_max_overflow=10,
    )
    try:
        async with Saascore(settings) as core:
            await migrate.upgrade(core.database)
            await core.plans.load_catalog(read_catalog())
            orgs = [
                (await core.orgs.create(name=f"bench {n}", plan="enterprise")).id
                for n in range(max(*CONCURRENCY, 32 if "f" in ONLY else 1))
            ]
            for org in orgs:
                await core.usage.set_limit(org, METRIC, LIMIT)
            period = day_start(datetime.now(UTC))
            async with core.database.transaction() as s:  # the raw reference needs the rows
                for org in orgs:
                    s.add(UsageCounter(organization_id=org, metric=METRIC, period_start=period))
            size = 40 if ONLY & set("abce") else 1  # (d) copies over one connection
            pool = await asyncpg.create_pool(
                URL, min_size=size, max_size=size, server_settings={"search_path": schema}
            )
            assert pool is not None

            alone = UsageService(core.database, group_commit=False)

            def saascore_record(
                org_of: Callable[[int], uuid.UUID], usage: UsageService = core.usage
            ) -> Operation:
                async def record(worker: int) -> object:
                    return await usage.record(
                        org_of(worker), METRIC, 1, idempotency_key=str(new_id())
                    )

                return record

            def raw_record(org_of: Callable[[int], uuid.UUID]) -> Operation:
                async def record(worker: int) -> object:
                    async with pool.acquire() as connection:
                        return await connection.fetchval(
                            RAW_RECORD,
                            org_of(worker),
                            METRIC,
                            1,
                            period,
                            LIMIT,
                            new_id(),
                            str(new_id()),
                        )

                return record

            async def seed_style(worker: int) -> object:
                org = orgs[worker]
                async with core.database.session() as s:
                    counter = (
                        await s.scalars(
                            sa.select(UsageCounter)
                            .where(
                                UsageCounter.organization_id == org,
                                UsageCounter.metric == METRIC,
                                UsageCounter.period_start == period,
                            )
                            .with_for_update()
                        )
                    ).one()
                    if counter.used + counter.reserved + 1 > LIMIT:
                        raise RuntimeError("over the limit")
                    counter.used += 1
                    now = datetime.now(UTC)
                    s.add(
                        UsageEvent(
                            organization_id=org,
                            idempotency_key=str(new_id()),
                            payload_hash="",
                            metric=METRIC,
                            quantity=1,
                            occurred_at=now,
                            recorded_at=now,
                        )
                    )
                    await s.commit()
                return counter.used

            own = orgs.__getitem__
            if ONLY & set("abc"):
                print(header("record one event"))
            for concurrency in CONCURRENCY if ONLY & set("abc") else ():
                a = await measure(saascore_record(own), concurrency)
                a1 = await measure(saascore_record(own, alone), concurrency)
                b = await measure(raw_record(own), concurrency)
                c = await measure(seed_style, concurrency)
                print(row(f"(a) saascore record      c={concurrency}", a))
                print(row(f"    without group commit c={concurrency}", a1))
                print(row(f"(b) raw asyncpg CTE      c={concurrency}", b))
                print(row(f"(c) seed-style ORM       c={concurrency}", c))
                print(
                    f"      a/b = {a[0] / b[0]:.2f}   a/c = {a[0] / c[0]:.2f}"
                    f"   without group commit: a/b = {a1[0] / b[0]:.2f}"
                )

            if "e" in ONLY:
                print("\n" + header("hot tenant (one organisation)"))

            def hot(_worker: int) -> uuid.UUID:
                return orgs[0]

            for concurrency in CONCURRENCY if "e" in ONLY else ():
                a = await measure(saascore_record(hot), concurrency)
                a1 = await measure(saascore_record(hot, alone), concurrency)
                b = await measure(raw_record(hot), concurrency)
                print(row(f"(a) saascore record      c={concurrency}", a))
                print(row(f"    without group commit c={concurrency}", a1))
                print(row(f"(b) raw asyncpg CTE      c={concurrency}", b))
                print(f"      a/b = {a[0] / b[0]:.2f}   without group commit: {a1[0] / b[0]:.2f}")

            if "f" in ONLY:
                await minimal_reference(
                    saascore_record(own), saascore_record(own, alone), pool, orgs
                )

            # The hot-tenant runs leave long chains of dead row versions behind; clean up as
            # autovacuum would, so that (d) and COPY both start from a tidy table.
            async with pool.acquire() as connection:
                await connection.execute(
                    "VACUUM ANALYZE usage_counters, usage_daily_summary, usage_events"
                )
            if "d" in ONLY:
                await batch_ingest(core.usage, pool, orgs)
            await pool.close()
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())

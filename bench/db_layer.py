"""What saascore's database layer costs over the bare driver.

Reads one organisation by primary key, N times at concurrency 1 and 8:
  (a) through saascore: `core.orgs.get(id)` — a session, a transaction, an ORM query, a commit;
  (b) the reference, in the same run: one asyncpg `fetchrow` of the same row from a pool.
Prints ops/s, p50 and p99 of each, and the ratio a/b (1.0 would mean no overhead).
Runs on PostgreSQL (SAASCORE_TEST_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test)
in a schema of its own that it drops at the end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg

from saascore import Saascore, Settings
from saascore.migrations import migrate
from saascore.plans import read_catalog

URL = os.environ.get("SAASCORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
OPERATIONS = int(os.environ.get("BENCH_OPERATIONS", "3000"))


async def measure(
    operation: Callable[[], Awaitable[object]], concurrency: int
) -> tuple[float, float, float]:
    latencies: list[float] = []
    remaining = OPERATIONS

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await operation()
            latencies.append(time.perf_counter() - start)

    for _ in range(50):  # warm up connections and caches
        await operation()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000


async def main() -> None:
    schema = f"bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(URL.replace("postgresql+asyncpg", "postgresql"))
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        settings = Settings(
            _env_file=None, database_url=URL, database_schema=schema, db_pool_size=10
        )
        async with Saascore(settings) as core:
            await migrate.upgrade(core.database)
            await core.plans.load_catalog(read_catalog())
            org = await core.orgs.create(name="Bench", plan="pro")
            pool = await asyncpg.create_pool(
                URL, min_size=10, max_size=10, server_settings={"search_path": schema}
            )
            assert pool is not None

            async def through_saascore() -> object:
                return await core.orgs.get(org.id)

            async def raw_asyncpg() -> object:
                async with pool.acquire() as connection:
                    return await connection.fetchrow(
                        "SELECT * FROM organizations WHERE id = $1", org.id
                    )

            row = "{:<28}{:>10.0f}{:>10.2f}{:>10.2f}"
            print(f"{'read one organisation':<28}{'ops/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
            for concurrency in (1, 8):
                ours = await measure(through_saascore, concurrency)
                ref = await measure(raw_asyncpg, concurrency)
                print(row.format(f"saascore  c={concurrency}", *ours))
                print(row.format(f"asyncpg   c={concurrency}", *ref))
                ratio = ours[0] / ref[0]
                print(
                    f"{f'ratio     c={concurrency}':<28}{ratio:>10.2f}  (saascore ops/s / asyncpg)"
                )
            await pool.close()
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())

"""The metered LLM client beside bare httpx calls to the same fake gateway.

A fake OpenAI-compatible gateway (`saascore.testing.FakeLLMGateway`) runs on loopback in a
process of its own. In this process, on PostgreSQL, BENCH_CALLS calls (default 3,000) at
concurrency BENCH_CONCURRENCY (default 32):
  (r) the reference: a bare `httpx.AsyncClient` posting the same chat request and parsing the
      answer, nothing else;
  (a) `core.llm.chat` through `HttpGateway`: reserve the estimated tokens, call, settle with
      the real usage priced from `model_pricing`, each step a transaction of its own; every
      worker its own organisation;
  (b) with BENCH_ONE_ORG=1, the same with every worker on one organisation: every call's
      three transactions queue on one counter row.
Printed: calls per second of each and the ratios a/r and b/r (goal: a/r >= 0.5).
SAASCORE_TEST_POSTGRES_URL picks the server (default postgresql://postgres@127.0.0.1:5432/test);
everything lives in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import httpx

from saascore import Saascore, Settings
from saascore.llm import ChatMessage, HttpGateway, LLMClient
from saascore.migrations import migrate
from saascore.plans import read_catalog
from saascore.plans.catalog import ModelPriceSpec

URL = os.environ.get("SAASCORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CALLS = int(os.environ.get("BENCH_CALLS", "3000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
ONE_ORG = os.environ.get("BENCH_ONE_ORG") == "1"
MODEL = "bench-model"
MESSAGES = [ChatMessage("system", "You are terse."), ChatMessage("user", "What is 2 + 2?")]
PAYLOAD = {
    "model": MODEL,
    "messages": [{"role": m.role, "content": m.content} for m in MESSAGES],
    "max_tokens": 64,
}

GATEWAY = """
import asyncio, sys
from saascore.testing import FakeLLMGateway

async def serve():
    async with FakeLLMGateway(completion_tokens=12) as gateway:
        print(gateway.url, flush=True)
        await asyncio.Event().wait()

asyncio.run(serve())
"""


async def timed(calls: int, concurrency: int, call: Callable[[int], Awaitable[object]]) -> float:
    """Calls per second of `calls` calls made by `concurrency` workers."""
    remaining = iter(range(calls))

    async def worker(n: int) -> None:
        for _ in remaining:
            await call(n)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:  # a failure cancels the other workers
        for n in range(concurrency):
            group.create_task(worker(n))
    return calls / (time.perf_counter() - start)


async def main(url: str) -> None:
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
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    try:
        async with Saascore(settings) as core:
            await migrate.upgrade(core.database)
            await core.plans.load_catalog(read_catalog())
            await core.pricing.put(
                ModelPriceSpec.model_validate(
                    {
                        "provider": "bench",
                        "model": MODEL,
                        "input_micros_per_million": 2_500_000,
                        "output_micros_per_million": 10_000_000,
                        "effective_from": "2020-01-01T00:00:00Z",
                    }
                )
            )
            orgs = [
                (await core.orgs.create(name=f"bench {n}", plan="enterprise")).id
                for n in range(CONCURRENCY)
            ]
            gateway = HttpGateway(url, max_connections=CONCURRENCY, max_retries=0)
            llm = LLMClient(core.usage, gateway, provider="bench")

            async def bare(worker: int, client: httpx.AsyncClient) -> object:
                response = await client.post("/v1/chat/completions", json=PAYLOAD)
                response.raise_for_status()
                return response.json()["usage"]

            def metered(org_of: Callable[[int], uuid.UUID]) -> Callable[[int], Awaitable[object]]:
                async def call(worker: int) -> object:
                    return await llm.chat(org_of(worker), MESSAGES, model=MODEL, max_tokens=64)

                return call

            async with httpx.AsyncClient(base_url=url, limits=limits) as client:
                warm = min(CALLS, 200)
                await timed(warm, CONCURRENCY, lambda w: bare(w, client))
                await timed(warm, CONCURRENCY, metered(lambda w: orgs[w]))
                r = await timed(CALLS, CONCURRENCY, lambda w: bare(w, client))
                a = await timed(CALLS, CONCURRENCY, metered(lambda w: orgs[w]))
                b = await timed(CALLS, CONCURRENCY, metered(lambda w: orgs[0])) if ONE_ORG else 0
            await llm.aclose()
            print(f"LLM client, {CALLS} calls at concurrency {CONCURRENCY}, PostgreSQL")
            print(f"  (r) bare httpx to the gateway      {r:9.0f} calls/s")
            print(f"  (a) metered, an org per worker     {a:9.0f} calls/s   a/r = {a / r:.2f}")
            if ONE_ORG:
                print(f"  (b) metered, one org for all       {b:9.0f} calls/s   b/r = {b / r:.2f}")
            print("  goal: a/r >= 0.5")
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


if __name__ == "__main__":
    process = subprocess.Popen([sys.executable, "-c", GATEWAY], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        gateway_url = process.stdout.readline().strip()
        asyncio.run(main(gateway_url))
    finally:
        process.terminate()
        process.wait()

"""A separate process that races for a shared Redis rate limit (used by test_ratelimit.py).

    python ratelimit_worker.py REDIS_URL NAMESPACE KEY HITS PER_MINUTE PER_HOUR

Prints `ready` once connected, waits for a line on stdin (so that every worker starts at the
same moment), fires HITS concurrent hits and prints `{"allowed": N}`.
"""

from __future__ import annotations

import asyncio
import json
import sys

from saascore.metering.ratelimit import PlanRateLimits, RateLimiter


async def race(url: str, namespace: str, key: str, hits: int, limits: PlanRateLimits) -> int:
    async with RateLimiter(url, namespace=namespace) as limiter:
        await limiter.check(key, limits)  # connect before the start signal
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        results = await asyncio.gather(*(limiter.hit(key, limits) for _ in range(hits)))
    return sum(result.allowed for result in results)


def main(argv: list[str]) -> None:
    url, namespace, key, hits, per_minute, per_hour = argv
    limits = PlanRateLimits(per_minute=int(per_minute), per_hour=int(per_hour))
    allowed = asyncio.run(race(url, namespace, key, int(hits), limits))
    print(json.dumps({"allowed": allowed}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

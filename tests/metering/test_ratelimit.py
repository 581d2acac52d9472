"""Rate limits from the plan, on the in-memory storage and on Redis.

Every test gets its own key namespace (parallel runs and workers never share a window) and the
Redis keys of that namespace are deleted afterwards. Nothing waits for a window to pass: tests
use fresh keys, and `reset` where they need an empty window again.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio
from fastapi import Depends, FastAPI, Request
from redis.asyncio.connection import AbstractConnection

from saascore.api.errors import install_error_handlers
from saascore.kit.errors import ConfigurationError, RateLimiterUnavailable
from saascore.metering import ratelimit
from saascore.metering.ratelimit import (
    PlanRateLimits,
    RateLimiter,
    RateLimitResult,
    rate_limit_dependency,
)
from saascore.models import SubscriptionPlan
from tests.helpers import make_settings

STORAGES = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]
WORKER = Path(__file__).with_name("ratelimit_worker.py")


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(params=STORAGES)
def storage_uri(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def namespace() -> str:
    return f"test-ratelimit-{secrets.token_hex(6)}"


async def redis_keys(url: str, namespace: str) -> set[str]:
    client = redis.asyncio.from_url(url, decode_responses=True)
    try:
        return {key async for key in client.scan_iter(match=f"LIMITS:{namespace}/*")}
    finally:
        await client.aclose()


async def delete_redis_keys(url: str, namespace: str) -> None:
    keys = await redis_keys(url, namespace)
    if keys:
        client = redis.asyncio.from_url(url)
        try:
            await client.delete(*keys)
        finally:
            await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def redis_namespace(redis_url: str, namespace: str) -> AsyncIterator[str]:
    """A namespace whose Redis keys are deleted after the test."""
    try:
        yield namespace
    finally:
        await delete_redis_keys(redis_url, namespace)


@pytest_asyncio.fixture(loop_scope="session")
async def limiter(storage_uri: str, namespace: str) -> AsyncIterator[RateLimiter]:
    rate_limiter = RateLimiter(storage_uri, namespace=namespace)
    try:
        yield rate_limiter
    finally:
        await rate_limiter.close()
        if storage_uri.startswith("redis"):
            await delete_redis_keys(storage_uri, namespace)


def assert_refused(result: RateLimitResult, window: str, limit: int, max_wait: int) -> None:
    assert not result.allowed
    assert (result.window, result.limit, result.remaining) == (window, limit, 0)
    assert 0 < result.retry_after <= max_wait
    assert result.reset_at is not None
    assert result.reset_at == pytest.approx(time.time() + result.retry_after, abs=1.5)


# --- the plan's limits ---------------------------------------------------------------------------
class TestPlanRateLimits:
    def test_from_plan_reads_the_three_columns(self) -> None:
        plan = SubscriptionPlan(
            code="pro",
            name="Pro",
            requests_per_minute=50,
            requests_per_hour=2000,
            max_api_calls_per_day=None,
        )
        assert PlanRateLimits.from_plan(plan) == PlanRateLimits(50, 2000, None)

    def test_none_everywhere_is_unlimited(self) -> None:
        assert PlanRateLimits().is_unlimited
        assert not PlanRateLimits(per_day=0).is_unlimited

    def test_a_negative_limit_is_refused(self) -> None:
        with pytest.raises(ValueError, match="per hour"):
            PlanRateLimits(per_hour=-1)


class TestConfiguration:
    async def test_built_from_the_settings(self, storage_uri: str) -> None:
        limiter = RateLimiter.from_settings(make_settings(rate_limit_storage=storage_uri))
        try:
            assert (await limiter.check("k", PlanRateLimits(per_minute=1))).allowed
        finally:
            await limiter.close()

    async def test_an_unreachable_redis_raises_rate_limiter_unavailable(self) -> None:
        settings = make_settings(rate_limit_storage="redis://127.0.0.1:1/0")
        async with RateLimiter.from_settings(settings) as limiter:
            for call in (
                limiter.hit("k", PlanRateLimits(per_minute=1)),
                limiter.check("k", PlanRateLimits(per_minute=1)),
                limiter.reset("k"),
                limiter.ping(),
            ):
                with pytest.raises(RateLimiterUnavailable):
                    await call

    def test_an_unknown_storage_is_a_configuration_error(self) -> None:
        with pytest.raises(ConfigurationError, match="memcached"):
            RateLimiter("memcached://127.0.0.1:11211")

    async def test_bad_calls_are_refused(self) -> None:
        async with RateLimiter("memory://") as limiter:
            with pytest.raises(ValueError, match="cost"):
                await limiter.hit("k", PlanRateLimits(per_minute=5), cost=0)
            with pytest.raises(ValueError, match="key"):
                await limiter.hit("", PlanRateLimits(per_minute=5))


# --- windows -------------------------------------------------------------------------------------
class TestWindows:
    async def test_the_minute_window_refuses_exactly_at_the_limit(
        self, limiter: RateLimiter
    ) -> None:
        limits = PlanRateLimits(per_minute=5)
        for remaining in (4, 3, 2, 1, 0):
            result = await limiter.hit("user", limits)
            assert result.allowed
            assert (result.window, result.limit, result.remaining) == ("minute", 5, remaining)
            assert result.retry_after == 0
        assert_refused(await limiter.hit("user", limits), "minute", 5, 60)
        assert_refused(await limiter.hit("user", limits), "minute", 5, 60)

    async def test_the_hour_window(self, limiter: RateLimiter) -> None:
        limits = PlanRateLimits(per_hour=3)
        assert [(await limiter.hit("user", limits)).allowed for _ in range(3)] == [True] * 3
        refused = await limiter.hit("user", limits)
        assert_refused(refused, "hour", 3, 3600)
        assert refused.retry_after > 3500

    async def test_the_day_window(self, limiter: RateLimiter) -> None:
        limits = PlanRateLimits(per_day=2)
        assert [(await limiter.hit("user", limits)).allowed for _ in range(2)] == [True] * 2
        refused = await limiter.hit("user", limits)
        assert_refused(refused, "day", 2, 86400)
        assert refused.retry_after > 86000

    async def test_the_result_describes_the_window_with_fewest_left(
        self, limiter: RateLimiter
    ) -> None:
        result = await limiter.hit("user", PlanRateLimits(per_minute=10, per_hour=3, per_day=50))
        assert (result.window, result.limit, result.remaining) == ("hour", 3, 2)
        assert [(w.window, w.limit, w.remaining) for w in result.windows] == [
            ("minute", 10, 9),
            ("hour", 3, 2),
            ("day", 50, 49),
        ]

    async def test_a_refusal_consumes_nothing_from_other_windows(
        self, limiter: RateLimiter
    ) -> None:
        limits = PlanRateLimits(per_minute=2, per_hour=10, per_day=100)
        for _ in range(2):
            assert (await limiter.hit("user", limits)).allowed
        for _ in range(5):
            assert not (await limiter.hit("user", limits)).allowed
        state = await limiter.check("user", limits)
        assert [w.remaining for w in state.windows] == [0, 8, 98]

    async def test_a_refusal_by_a_longer_window_consumes_nothing_from_shorter_ones(
        self, limiter: RateLimiter
    ) -> None:
        limits = PlanRateLimits(per_minute=10, per_hour=2)
        for _ in range(2):
            assert (await limiter.hit("user", limits)).allowed
        for _ in range(5):
            assert_refused(await limiter.hit("user", limits), "hour", 2, 3600)
        state = await limiter.check("user", limits)
        assert [w.remaining for w in state.windows] == [8, 0]

    async def test_when_several_windows_refuse_retry_after_waits_for_the_last(
        self, limiter: RateLimiter
    ) -> None:
        limits = PlanRateLimits(per_minute=1, per_hour=1)
        assert (await limiter.hit("user", limits)).allowed
        refused = await limiter.hit("user", limits)
        assert_refused(refused, "hour", 1, 3600)
        assert refused.retry_after > 60

    async def test_a_zero_limit_refuses_everything(self, limiter: RateLimiter) -> None:
        assert_refused(await limiter.hit("user", PlanRateLimits(per_minute=0)), "minute", 0, 60)

    async def test_keys_are_independent(self, limiter: RateLimiter) -> None:
        limits = PlanRateLimits(per_minute=1)
        assert (await limiter.hit("alice", limits)).allowed
        assert not (await limiter.hit("alice", limits)).allowed
        assert (await limiter.hit("bob", limits)).allowed


class TestCost:
    async def test_a_cost_takes_that_many_and_is_refused_when_it_does_not_fit(
        self, limiter: RateLimiter
    ) -> None:
        limits = PlanRateLimits(per_minute=10)
        assert (await limiter.hit("user", limits, cost=4)).remaining == 6
        assert (await limiter.hit("user", limits, cost=4)).remaining == 2
        refused = await limiter.hit("user", limits, cost=3)
        assert not refused.allowed
        assert refused.remaining == 2  # the refusal took nothing
        assert (await limiter.hit("user", limits, cost=2)).remaining == 0
        assert not (await limiter.hit("user", limits)).allowed

    async def test_a_cost_above_the_limit_never_fits(self, limiter: RateLimiter) -> None:
        limits = PlanRateLimits(per_minute=10)
        assert not (await limiter.hit("user", limits, cost=11)).allowed
        assert (await limiter.check("user", limits)).remaining == 10

    async def test_a_cost_refused_by_one_window_takes_nothing_from_another(
        self, limiter: RateLimiter
    ) -> None:
        limits = PlanRateLimits(per_minute=5, per_hour=100)
        assert (await limiter.hit("user", limits, cost=4)).allowed
        assert not (await limiter.hit("user", limits, cost=2)).allowed
        state = await limiter.check("user", limits)
        assert [w.remaining for w in state.windows] == [1, 96]


class TestUnlimited:
    async def test_all_windows_unlimited_allows_without_a_policy(
        self, limiter: RateLimiter
    ) -> None:
        for _ in range(100):
            result = await limiter.hit("user", PlanRateLimits(), cost=1000)
            assert result.allowed
            assert result.unlimited
            assert (result.limit, result.remaining, result.reset_at, result.window) == (
                None,
                None,
                None,
                None,
            )
            assert result.retry_after == 0
            assert result.windows == ()
            assert result.http_headers() == {}

    async def test_unlimited_windows_are_skipped(self, limiter: RateLimiter) -> None:
        limits = PlanRateLimits(per_minute=None, per_hour=2, per_day=None)
        result = await limiter.hit("user", limits)
        assert [w.window for w in result.windows] == ["hour"]


class TestCheckAndReset:
    async def test_check_consumes_nothing(self, limiter: RateLimiter) -> None:
        limits = PlanRateLimits(per_minute=2)
        for _ in range(10):
            assert (await limiter.check("user", limits)).remaining == 2
        await limiter.hit("user", limits)
        await limiter.hit("user", limits)
        for _ in range(3):
            assert_refused(await limiter.check("user", limits), "minute", 2, 60)
        assert (await limiter.check("other", limits)).allowed

    async def test_reset_forgets_every_window_of_the_key(self, limiter: RateLimiter) -> None:
        limits = PlanRateLimits(per_minute=1, per_hour=1, per_day=1)
        assert (await limiter.hit("user", limits)).allowed
        assert (await limiter.hit("other", limits)).allowed
        await limiter.reset("user")
        assert [w.remaining for w in (await limiter.check("user", limits)).windows] == [1, 1, 1]
        assert not (await limiter.check("other", limits)).allowed

    async def test_a_plan_change_keeps_the_requests_already_counted(
        self, limiter: RateLimiter
    ) -> None:
        for _ in range(3):
            await limiter.hit("user", PlanRateLimits(per_minute=5))
        assert (await limiter.check("user", PlanRateLimits(per_minute=10))).remaining == 7
        assert not (await limiter.hit("user", PlanRateLimits(per_minute=2))).allowed

    @pytest.mark.redis
    async def test_redis_keys_are_namespaced_per_window_and_expire(
        self, redis_url: str, redis_namespace: str
    ) -> None:
        namespace = redis_namespace
        async with RateLimiter(redis_url, namespace=namespace) as limiter:
            await limiter.hit("org:1", PlanRateLimits(per_minute=5, per_hour=50))
            assert await redis_keys(redis_url, namespace) == {
                f"LIMITS:{namespace}/org:1/minute",
                f"LIMITS:{namespace}/org:1/hour",
            }
            client = redis.asyncio.from_url(redis_url)
            try:
                assert 0 < await client.ttl(f"LIMITS:{namespace}/org:1/minute") <= 60
            finally:
                await client.aclose()
            await limiter.reset("org:1")
            assert await redis_keys(redis_url, namespace) == set()


# --- concurrency ---------------------------------------------------------------------------------
class TestConcurrency:
    async def test_50_concurrent_hits_against_20_admit_exactly_20(
        self, limiter: RateLimiter
    ) -> None:
        limits = PlanRateLimits(per_minute=20)
        results = await asyncio.gather(*(limiter.hit("user", limits) for _ in range(50)))
        assert sum(r.allowed for r in results) == 20
        assert (await limiter.check("user", limits)).remaining == 0

    async def test_concurrent_refusals_take_nothing_from_other_windows(
        self, limiter: RateLimiter
    ) -> None:
        limits = PlanRateLimits(per_minute=20, per_hour=30, per_day=1000)
        results = await asyncio.gather(*(limiter.hit("user", limits) for _ in range(50)))
        assert sum(r.allowed for r in results) == 20
        state = await limiter.check("user", limits)
        assert [w.remaining for w in state.windows] == [0, 10, 980]

    async def test_random_costs_race_bank_style(self, limiter: RateLimiter) -> None:
        """64 racers with random costs: the admitted costs are exactly what every window
        counts, never above the limit, and each refusal really did not fit."""
        limits = PlanRateLimits(per_minute=60, per_hour=100)
        rng = random.Random(3)
        costs = [rng.randint(1, 5) for _ in range(64)]
        results = await asyncio.gather(*(limiter.hit("user", limits, c) for c in costs))
        admitted = sum(c for c, r in zip(costs, results, strict=True) if r.allowed)
        assert 60 - 5 < admitted <= 60
        state = await limiter.check("user", limits)
        assert [w.remaining for w in state.windows] == [60 - admitted, 100 - admitted]
        # Room only shrinks, so a refused cost exceeded even the final remainder.
        refused = [c for c, r in zip(costs, results, strict=True) if not r.allowed]
        assert refused
        assert all(c > 60 - admitted for c in refused)

    @pytest.mark.redis
    async def test_two_limiters_on_one_redis_race_like_two_processes(
        self, redis_url: str, redis_namespace: str
    ) -> None:
        """Two limiters share no lock: only Redis keeps them exact, in every window."""
        limits = PlanRateLimits(per_minute=20, per_hour=25)
        async with (
            RateLimiter(redis_url, namespace=redis_namespace) as first,
            RateLimiter(redis_url, namespace=redis_namespace) as second,
        ):
            for round_ in range(5):
                key = f"shared-{round_}"
                hits = [limiter.hit(key, limits) for _ in range(30) for limiter in (first, second)]
                results = await asyncio.gather(*hits)
                assert sum(r.allowed for r in results) == 20
                assert all(r.retry_after > 0 for r in results if not r.allowed)
                state = await first.check(key, limits)
                assert [w.remaining for w in state.windows] == [0, 5]

    @pytest.mark.redis
    async def test_two_processes_share_one_redis_limit(
        self, redis_url: str, redis_namespace: str
    ) -> None:
        namespace = redis_namespace
        per_minute, per_hour, hits = 20, 25, 30
        args = [redis_url, namespace, "shared", str(hits), str(per_minute), str(per_hour)]
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(2)
        ]
        try:
            for worker in workers:
                assert worker.stdout is not None
                line = await asyncio.wait_for(worker.stdout.readline(), timeout=30)
                assert line.strip() == b"ready"
            for worker in workers:  # both start at once
                assert worker.stdin is not None
                worker.stdin.write(b"go\n")
                await worker.stdin.drain()
            outputs = [
                await asyncio.wait_for(worker.communicate(), timeout=60) for worker in workers
            ]
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
        assert [w.returncode for w in workers] == [0, 0]
        allowed = [json.loads(stdout)["allowed"] for stdout, _ in outputs]
        assert sum(allowed) == per_minute
        async with RateLimiter(redis_url, namespace=namespace) as limiter:
            state = await limiter.check("shared", PlanRateLimits(per_minute, per_hour))
            # Every admitted request is counted in the hour window too, and nothing else: a
            # refused request took nothing from any window.
            assert [w.remaining for w in state.windows] == [0, per_hour - per_minute]


class FakeClock:
    """Stands in for the `time` module inside saascore.metering.ratelimit."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def time(self) -> float:
        return self.now


class TestTheWindowMoves:
    """On the memory storage, with the module's clock moved by hand (Redis keeps its own)."""

    @pytest.fixture
    def clock(self, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
        fake = FakeClock()
        monkeypatch.setattr(ratelimit, "time", fake)
        return fake

    async def test_a_request_leaves_the_window_after_it(self, clock: FakeClock) -> None:
        limits = PlanRateLimits(per_minute=2)
        async with RateLimiter("memory://") as limiter:
            assert (await limiter.hit("user", limits)).allowed
            clock.now += 20
            assert (await limiter.hit("user", limits)).allowed
            clock.now += 20
            refused = await limiter.hit("user", limits)
            assert (refused.allowed, refused.retry_after) == (False, 20)  # the first leaves
            clock.now += 20  # retry_after later, the first request has left: room for one
            assert (await limiter.hit("user", limits)).allowed
            assert not (await limiter.hit("user", limits)).allowed
            clock.now += 60
            assert (await limiter.check("user", limits)).remaining == 2

    async def test_idle_keys_are_swept_away(self, clock: FakeClock) -> None:
        async with RateLimiter("memory://") as limiter:
            storage = limiter._storage
            assert isinstance(storage, ratelimit._MemoryStorage)
            for n in range(100):
                await limiter.hit(f"address-{n}", PlanRateLimits(per_minute=5))
            await limiter.hit("daily", PlanRateLimits(per_day=5))
            assert len(storage._entries) == 101
            clock.now += 2 * storage.SWEEP_EVERY
            await limiter.hit("new", PlanRateLimits(per_minute=5))
            assert set(storage._entries) == {"saascore/daily/day", "saascore/new/minute"}


class TestSeveralKeys:
    async def test_hit_many_counts_under_every_key(self, limiter: RateLimiter) -> None:
        organization, credential = PlanRateLimits(per_minute=5), PlanRateLimits(per_minute=3)
        result = await limiter.hit_many({"org": organization, "key-1": credential})
        assert result.allowed
        assert (result.limit, result.remaining) == (3, 2)  # the tighter of the two
        assert [(w.key, w.window, w.remaining) for w in result.windows] == [
            ("org", "minute", 4),
            ("key-1", "minute", 2),
        ]

    async def test_a_refusal_by_one_key_takes_nothing_under_another(
        self, limiter: RateLimiter
    ) -> None:
        organization, credential = PlanRateLimits(per_minute=5), PlanRateLimits(per_minute=2)
        for _ in range(2):
            assert (await limiter.hit_many({"org": organization, "key-1": credential})).allowed
        for _ in range(3):
            refused = await limiter.hit_many({"org": organization, "key-1": credential})
            assert_refused(refused, "minute", 2, 60)
        assert (await limiter.check("org", organization)).remaining == 3
        wide = PlanRateLimits(per_minute=10)
        for remaining in (2, 1, 0):
            result = await limiter.hit_many({"org": organization, "key-2": wide})
            assert (result.allowed, result.remaining) == (True, remaining)
        assert_refused(
            await limiter.hit_many({"org": organization, "key-3": credential}), "minute", 5, 60
        )
        assert (await limiter.check("key-3", credential)).remaining == 2

    async def test_many_credentials_racing_share_the_organisation_limit_exactly(
        self, limiter: RateLimiter
    ) -> None:
        organization, credential = PlanRateLimits(per_minute=12), PlanRateLimits(per_minute=5)
        racers = [
            limiter.hit_many({"org": organization, f"key-{n % 4}": credential}) for n in range(40)
        ]
        results = await asyncio.gather(*racers)
        assert sum(r.allowed for r in results) == 12
        assert (await limiter.check("org", organization)).remaining == 0
        counted = [
            5 - (await limiter.check(f"key-{n}", credential)).windows[0].remaining for n in range(4)
        ]
        assert sum(counted) == 12
        assert all(count <= 5 for count in counted)


@pytest.mark.redis
class TestRedisRoundTrips:
    async def test_each_hit_or_check_is_one_round_trip(
        self, redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Counted at the connection: every command or pipeline sent is one round trip."""
        sent: list[bytes] = []
        original = AbstractConnection.send_packed_command

        async def counting(
            connection: AbstractConnection, command: Any, check_health: bool = True
        ) -> None:
            sent.append(command if isinstance(command, bytes) else b"".join(command))
            await original(connection, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
        limits = PlanRateLimits(per_minute=5, per_hour=50, per_day=500)
        async with RateLimiter(redis_url, namespace=redis_namespace) as limiter:
            await limiter.hit("warm-up", limits)  # connects and loads the script
            sent.clear()
            results = [await limiter.hit("user", limits) for _ in range(8)]
            assert [r.allowed for r in results] == [True] * 5 + [False] * 3
            await limiter.hit_many({"user": limits, "key": PlanRateLimits(per_minute=1)})
            await limiter.check("user", limits)
            assert len(sent) == 10
            assert all(b"EVALSHA" in command.upper() for command in sent)

    async def test_a_server_that_forgot_the_script_is_given_it_again(
        self, redis_url: str, redis_namespace: str
    ) -> None:
        async with RateLimiter(redis_url, namespace=redis_namespace) as limiter:
            assert (await limiter.hit("user", PlanRateLimits(per_minute=2))).remaining == 1
            client = redis.asyncio.from_url(redis_url)
            try:
                await client.script_flush()
            finally:
                await client.aclose()
            assert (await limiter.hit("user", PlanRateLimits(per_minute=2))).remaining == 0

    async def test_the_windows_follow_the_clock_of_redis(
        self, redis_url: str, redis_namespace: str
    ) -> None:
        """Entries carry Redis's `TIME`, so processes with skewed clocks agree."""
        async with RateLimiter(redis_url, namespace=redis_namespace) as limiter:
            await limiter.hit("user", PlanRateLimits(per_minute=5))
        client = redis.asyncio.from_url(redis_url)
        try:
            seconds, micros = await client.time()
            [entry] = await client.lrange(f"LIMITS:{redis_namespace}/user/minute", 0, -1)
        finally:
            await client.aclose()
        assert seconds + micros / 1e6 - 5 < float(entry) <= seconds + micros / 1e6


@pytest.mark.redis
async def test_memory_and_redis_decide_alike(redis_url: str, redis_namespace: str) -> None:
    """The same random sequence of hits, checks and resets on both storages: every answer is
    the same (nothing here waits for a window to pass)."""
    rng = random.Random(10)
    plans = [
        PlanRateLimits(per_minute=5, per_hour=8),
        PlanRateLimits(per_minute=3),
        PlanRateLimits(per_hour=6, per_day=7),
        PlanRateLimits(per_minute=0),
    ]
    async with (
        RateLimiter("memory://", namespace=redis_namespace) as memory,
        RateLimiter(redis_url, namespace=redis_namespace) as shared,
    ):
        for _ in range(300):
            keys = rng.sample(["a", "b", "c"], rng.randint(1, 2))
            limits = {key: rng.choice(plans) for key in keys}
            cost = rng.choice([1, 1, 1, 2, 4])
            operation = rng.choice(["hit", "hit", "hit", "check", "reset"])
            answers: list[Any] = []
            for limiter in (memory, shared):
                if operation == "reset":
                    await limiter.reset(keys[0])
                    answers.append(None)
                    continue
                if operation == "hit":
                    result = await limiter.hit_many(limits, cost)
                else:
                    result = await limiter.check(keys[0], limits[keys[0]], cost)
                answers.append(
                    (
                        result.allowed,
                        result.window,
                        result.limit,
                        [(w.key, w.window, w.remaining) for w in result.windows],
                    )
                )
            assert answers[0] == answers[1], (operation, limits, cost)


async def test_a_silent_redis_is_unavailable_after_the_timeout() -> None:
    """A server that accepts connections and never answers: refused, not waited on forever."""

    async def accept_and_say_nothing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with RateLimiter(f"redis://127.0.0.1:{port}/0", timeout=0.2) as limiter:
            with pytest.raises(RateLimiterUnavailable):
                await asyncio.wait_for(limiter.hit("k", PlanRateLimits(per_minute=1)), 30)
    finally:
        server.close()
        await server.wait_closed()


# --- seed 002 ------------------------------------------------------------------------------------
class TestCheckRateLimits:
    async def test_seed_shape_when_allowed(self, limiter: RateLimiter) -> None:
        can_proceed, rate_info = await limiter.check_rate_limits(
            "user_123", PlanRateLimits(per_minute=5, per_hour=50)
        )
        assert can_proceed
        assert "error" not in rate_info
        assert set(rate_info["rate_limits"]) == {"minute", "hour"}
        minute = rate_info["rate_limits"]["minute"]
        assert (minute["limit"], minute["remaining"]) == (5, 4)
        assert minute["reset_at"] == pytest.approx(time.time() + 60, abs=2)
        assert rate_info["rate_limits"]["hour"]["remaining"] == 49
        json.dumps(rate_info)  # plain data

    async def test_seed_shape_when_refused(self, limiter: RateLimiter) -> None:
        limits = PlanRateLimits(per_minute=1, per_hour=50)
        await limiter.check_rate_limits("user_123", limits)
        can_proceed, rate_info = await limiter.check_rate_limits("user_123", limits)
        assert not can_proceed
        assert "1 requests per minute" in rate_info["error"]
        assert rate_info["window"] == "minute"
        assert 0 < rate_info["retry_after"] <= 60
        assert rate_info["rate_limits"]["minute"]["remaining"] == 0
        assert rate_info["rate_limits"]["hour"]["remaining"] == 49

    async def test_without_consuming(self, limiter: RateLimiter) -> None:
        limits = PlanRateLimits(per_minute=1)
        for _ in range(3):
            can_proceed, _ = await limiter.check_rate_limits("user_123", limits, consume=False)
            assert can_proceed

    async def test_unlimited(self, limiter: RateLimiter) -> None:
        assert await limiter.check_rate_limits("user_123", PlanRateLimits()) == (
            True,
            {"allowed": True, "rate_limits": {}},
        )


# --- the FastAPI dependency ----------------------------------------------------------------------
PLANS = {
    "free": PlanRateLimits(per_minute=3, per_hour=50),
    "unlimited": PlanRateLimits(),
}


def client_key(request: Request) -> str:
    return request.headers.get("X-Client", "anonymous")


async def plan_limits(request: Request) -> PlanRateLimits:
    return PLANS[request.headers.get("X-Plan", "free")]


def limited_app(limiter: RateLimiter) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.state.limiter = limiter
    direct = rate_limit_dependency(limiter, client_key, plan_limits)
    from_state = rate_limit_dependency(
        lambda request: request.app.state.limiter, client_key, plan_limits, cost=2
    )

    @app.get("/v1/things", dependencies=[Depends(direct)])
    async def things() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/expensive", dependencies=[Depends(from_state)])
    async def expensive() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest_asyncio.fixture(loop_scope="session")
async def http(limiter: RateLimiter) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=limited_app(limiter), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


class TestDependency:
    async def test_allowed_responses_carry_the_ratelimit_headers(
        self, http: httpx.AsyncClient
    ) -> None:
        for remaining in ("2", "1", "0"):
            response = await http.get("/v1/things", headers={"X-Client": "c1"})
            assert response.status_code == 200
            assert response.json() == {"status": "ok"}
            assert response.headers["RateLimit-Limit"] == "3"
            assert response.headers["RateLimit-Remaining"] == remaining
            assert 0 < int(response.headers["RateLimit-Reset"]) <= 60
            assert "Retry-After" not in response.headers

    async def test_429_answers_the_envelope_and_the_headers(self, http: httpx.AsyncClient) -> None:
        for _ in range(3):
            assert (await http.get("/v1/things", headers={"X-Client": "c1"})).status_code == 200
        response = await http.get("/v1/things", headers={"X-Client": "c1"})
        assert response.status_code == 429
        body = response.json()
        assert set(body) == {"error"}
        error = body["error"]
        assert error["code"] == "rate_limited"
        assert "per minute" in error["message"]
        details = error["details"]
        assert (details["window"], details["limit"], details["remaining"]) == ("minute", 3, 0)
        retry_after = int(response.headers["Retry-After"])
        assert 0 < retry_after <= 60
        assert details["retry_after"] == retry_after
        assert response.headers["RateLimit-Limit"] == "3"
        assert response.headers["RateLimit-Remaining"] == "0"
        assert response.headers["RateLimit-Reset"] == str(retry_after)
        # Another client is not affected.
        assert (await http.get("/v1/things", headers={"X-Client": "c2"})).status_code == 200

    async def test_an_unlimited_plan_gets_no_policy_headers(self, http: httpx.AsyncClient) -> None:
        for _ in range(10):
            response = await http.get("/v1/things", headers={"X-Plan": "unlimited"})
            assert response.status_code == 200
            assert not any(h.lower().startswith("ratelimit") for h in response.headers)

    async def test_the_limiter_may_come_from_the_request_and_a_cost_applies(
        self, http: httpx.AsyncClient
    ) -> None:
        headers = {"X-Client": "c3"}
        response = await http.get("/v1/expensive", headers=headers)
        assert response.headers["RateLimit-Remaining"] == "1"
        assert (await http.get("/v1/expensive", headers=headers)).status_code == 429
        # The refused cost of 2 took nothing: one request of cost 1 still fits.
        response = await http.get("/v1/things", headers=headers)
        assert response.status_code == 200
        assert response.headers["RateLimit-Remaining"] == "0"

"""Request rate limits from the plan: per minute, per hour and per day, on the `limits` library.

    limiter = RateLimiter.from_settings(settings)        # memory:// or redis://...
    limits = PlanRateLimits.from_plan(plan)              # None in a window means unlimited
    result = await limiter.hit(f"org:{org_id}", limits)  # admit and count one request, or refuse

**Strategy: the moving window** (`limits.aio.strategies.MovingWindowRateLimiter`). It keeps the
timestamp of every admitted request and admits a new one only if fewer than `limit` fall in the
trailing window, so "5 per minute" means at most 5 in *any* 60 seconds, with no burst at a window
boundary (a fixed window allows 2x there) and no estimate (the sliding-window counter weights the
previous window as if its requests were spread evenly, so it can admit more or fewer than the
limit, and its own acquire may refuse a request that fits when it loses a race). Its `retry_after`
is exact too: the moment the oldest request in the window leaves it. The price is memory: one
timestamp per admitted request per window (in Redis a list per key and window, trimmed to the
limit), so a window of 10,000 requests a day holds up to 10,000 entries for each active key. That
suits per-minute and per-hour limits and moderate daily ones; large daily volumes are quotas, and
belong to the `api_calls` meter of the UsageService, whose counters are O(1).

**Atomicity.** Each window's acquire is atomic in the storage (one Lua script in Redis, a lock in
memory), so no window ever admits more than its limit, however many processes race. Across
windows `hit` reads every window first and consumes only when each has room for `cost`; a refusal
found in that read consumes nothing. Within one process the read-and-consume of a key is
serialised (a per-key asyncio lock), so on the memory storage a request is exactly all or nothing.
Between processes sharing Redis a request can still pass the read and then lose a window's acquire
to another process: it is refused, and the windows it had already taken keep that cost, so the
error is towards refusing early, never towards admitting more than a limit. Windows are taken
tightest first (fewest remaining), which makes that rare: with equal costs every racer takes the
same window first and a loser loses before it has taken anything; only when two windows' remaining
counts cross during the race can up to `cost` per window be over-counted. (Checking then hitting
without re-checking the hit would let requests through; hitting every window blindly would
over-count on every refusal. A single Lua script over all windows would be exact across processes
too, but would bypass `limits`' API and depend on its storage layout.)

Keys: a window's storage key is `<namespace>/<key>/<minute|hour|day>`, without the limit (which
`limits` puts in its own keys), so a plan change keeps the requests already counted and `reset(key)`
needs no plan.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self

import redis.asyncio
from fastapi import Depends, Request, Response
from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.limits import safe_string
from limits.storage import storage_from_string

from saascore.kit.errors import ConfigurationError, DomainError

if TYPE_CHECKING:
    from saascore.config import Settings
    from saascore.models.catalog import SubscriptionPlan

__all__ = [
    "PlanRateLimits",
    "RateLimitResult",
    "RateLimited",
    "RateLimiter",
    "WindowStatus",
    "rate_limit_dependency",
]

DEFAULT_NAMESPACE: Final = "saascore"


# --- the limits of a plan ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PlanRateLimits:
    """How many requests a key may make per minute, hour and day; None means unlimited."""

    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None

    def __post_init__(self) -> None:
        for name, value in self.by_window():
            if value is not None and value < 0:
                raise ValueError(f"rate limit per {name} must be >= 0 or None, got {value}")

    @classmethod
    def from_plan(cls, plan: SubscriptionPlan) -> PlanRateLimits:
        """The plan's `requests_per_minute`, `requests_per_hour` and `max_api_calls_per_day`."""
        return cls(
            per_minute=plan.requests_per_minute,
            per_hour=plan.requests_per_hour,
            per_day=plan.max_api_calls_per_day,
        )

    @property
    def is_unlimited(self) -> bool:
        return all(value is None for _, value in self.by_window())

    def by_window(self) -> tuple[tuple[str, int | None], ...]:
        return (("minute", self.per_minute), ("hour", self.per_hour), ("day", self.per_day))


# --- results -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WindowStatus:
    """One window of a key: its limit, what is left of it, and when its oldest request leaves."""

    window: str
    limit: int
    remaining: int
    #: Epoch seconds. For an empty window: when a request made now would leave it.
    reset_at: float

    def as_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "remaining": self.remaining, "reset_at": self.reset_at}


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    """The decision, described by its most constrained window.

    Refused: the refusing window that frees up last (`retry_after` > 0 seconds). Allowed: the
    window with the fewest requests left. With no limited window at all the request is allowed
    and `limit`, `remaining`, `reset_at` and `window` are None (no policy applies).
    """

    allowed: bool
    limit: int | None
    remaining: int | None
    reset_at: float | None
    retry_after: int
    window: str | None
    #: Every limited window, shortest first.
    windows: tuple[WindowStatus, ...] = ()

    @property
    def unlimited(self) -> bool:
        return self.window is None

    @property
    def message(self) -> str:
        if self.allowed:
            return "allowed"
        return (
            f"rate limit exceeded: {self.limit} requests per {self.window}; "
            f"retry in {self.retry_after} s"
        )

    def http_headers(self) -> dict[str, str]:
        """`RateLimit-Limit`, `-Remaining` and `-Reset` (delta seconds, IETF draft
        draft-ietf-httpapi-ratelimit-headers), plus `Retry-After` on a refusal. None when
        no limit applies."""
        if self.limit is None or self.remaining is None or self.reset_at is None:
            return {}
        reset_in = self.retry_after if not self.allowed else _seconds_until(self.reset_at)
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(reset_in),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers

    def as_info(self) -> dict[str, Any]:
        """Seed 002's `rate_info`: `rate_limits` per limited window (limit, remaining,
        reset_at), and on a refusal `error`, `window` and `retry_after`."""
        info: dict[str, Any] = {
            "allowed": self.allowed,
            "rate_limits": {status.window: status.as_dict() for status in self.windows},
        }
        if not self.allowed:
            info.update(error=self.message, window=self.window, retry_after=self.retry_after)
        return info


def _seconds_until(moment: float, now: float | None = None) -> int:
    return max(0, math.ceil(moment - (time.time() if now is None else now)))


_UNLIMITED: Final = RateLimitResult(
    allowed=True, limit=None, remaining=None, reset_at=None, retry_after=0, window=None
)


def _allowed(states: Sequence[WindowStatus]) -> RateLimitResult:
    # Fewest left first; on a tie, the window that frees up later constrains more.
    tightest = min(states, key=lambda s: (s.remaining, -s.reset_at))
    return RateLimitResult(
        allowed=True,
        limit=tightest.limit,
        remaining=tightest.remaining,
        reset_at=tightest.reset_at,
        retry_after=0,
        window=tightest.window,
        windows=tuple(states),
    )


def _refused(states: Sequence[WindowStatus], cost: int, lost: str | None = None) -> RateLimitResult:
    refusing = [s for s in states if s.remaining < cost or s.window == lost]
    # The request fits again only once every refusing window has room: wait for the last one.
    worst = max(refusing, key=lambda s: s.reset_at)
    return RateLimitResult(
        allowed=False,
        limit=worst.limit,
        remaining=worst.remaining,
        reset_at=worst.reset_at,
        retry_after=max(1, _seconds_until(worst.reset_at)),
        window=worst.window,
        windows=tuple(states),
    )


# --- the windows in `limits` ---------------------------------------------------------------------
class _StableKey(RateLimitItem):
    """A limit whose storage key leaves out the amount: `<namespace>/<key>/<granularity>`."""

    def key_for(self, *identifiers: bytes | str | int | float) -> str:
        return "/".join(
            [self.namespace, *(safe_string(i) for i in identifiers), self.GRANULARITY.name]
        )


class _PerMinute(_StableKey, RateLimitItemPerMinute):
    pass


class _PerHour(_StableKey, RateLimitItemPerHour):
    pass


class _PerDay(_StableKey, RateLimitItemPerDay):
    pass


_ITEMS: Final[dict[str, type[RateLimitItem]]] = {
    "minute": _PerMinute,
    "hour": _PerHour,
    "day": _PerDay,
}


# --- the limiter ---------------------------------------------------------------------------------
class RateLimiter:
    """Moving-window rate limits per key, in memory (`memory://`, one process) or in Redis
    (`redis://host:port/db`, shared by every process). See the module docstring for the
    strategy and what is atomic.

    Storage errors (Redis unreachable) raise `limits.errors.StorageError`.
    """

    def __init__(self, storage_uri: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        uri = storage_uri.strip().removeprefix("async+")
        scheme = uri.partition("://")[0]
        self._pool: redis.asyncio.ConnectionPool | None = None
        storage: object
        if scheme == "memory":
            storage = storage_from_string("async+memory://", wrap_exceptions=True)
        elif scheme in ("redis", "rediss"):
            # Our own pool, so that close() can release its connections. `connection_pool` is a
            # documented RedisStorage option; its type hint only lists scalar options.
            self._pool = redis.asyncio.ConnectionPool.from_url(uri)
            storage = storage_from_string(
                f"async+{uri}",
                implementation="redispy",
                wrap_exceptions=True,
                connection_pool=self._pool,  # type: ignore[arg-type]
            )
        else:
            raise ConfigurationError(
                f"rate-limit storage {storage_uri!r} is not supported; "
                "use memory:// or redis://host:port/db"
            )
        assert isinstance(storage, Storage)
        self._storage = storage
        self._strategy = MovingWindowRateLimiter(storage)
        self._namespace = namespace
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """The limiter on `settings.rate_limit_storage` (`SAASCORE_RATE_LIMIT_STORAGE`)."""
        return cls(settings.rate_limit_storage)

    async def hit(self, key: str, limits: PlanRateLimits, cost: int = 1) -> RateLimitResult:
        """Admit and count a request of `cost` against every limited window of `key`, or
        refuse it. A refusal found before consuming takes nothing from any window."""
        windows = self._windows(key, limits, cost)
        if not windows:
            return _UNLIMITED
        async with self._lock(key):
            before = await self._read(key, windows)
            if any(state.remaining < cost for state in before):
                return _refused(before, cost)
            # Tightest first (stable: shortest window first on a tie), so a racer that loses
            # normally loses before it has taken anything.
            order = sorted(range(len(windows)), key=lambda i: before[i].remaining)
            for i in order:
                name, item = windows[i]
                if not await self._strategy.hit(item, key, cost=cost):
                    # Another process took the room between our read and this acquire.
                    return _refused(await self._read(key, windows), cost, lost=name)
        return _allowed([replace(s, remaining=max(0, s.remaining - cost)) for s in before])

    async def check(self, key: str, limits: PlanRateLimits, cost: int = 1) -> RateLimitResult:
        """What `hit` would decide now, consuming nothing."""
        windows = self._windows(key, limits, cost)
        if not windows:
            return _UNLIMITED
        states = await self._read(key, windows)
        if any(state.remaining < cost for state in states):
            return _refused(states, cost)
        return _allowed(states)

    async def check_rate_limits(
        self, key: str, limits: PlanRateLimits, *, cost: int = 1, consume: bool = True
    ) -> tuple[bool, dict[str, Any]]:
        """Seed 002's `can_proceed, rate_info = check_rate_limits(...)`.

        Like the seed, a request that may proceed is counted (the seed counted it when it was
        logged); `consume=False` only looks. `rate_info` is `RateLimitResult.as_info()`.
        """
        result = await (self.hit if consume else self.check)(key, limits, cost)
        return result.allowed, result.as_info()

    async def reset(self, key: str) -> None:
        """Forget every window of `key`."""
        await self._settle_memory_expiry()
        # One after the other, with no await that yields in between on the memory storage.
        for item in _ITEMS.values():
            await self._strategy.clear(item(1, namespace=self._namespace), key)

    async def close(self) -> None:
        """Release the storage: Redis connections are closed, in-memory windows dropped."""
        if self._pool is not None:
            await self._pool.aclose()
        else:
            await self._settle_memory_expiry()
            await self._storage.reset()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- internals -------------------------------------------------------------------------------
    def _windows(
        self, key: str, limits: PlanRateLimits, cost: int
    ) -> list[tuple[str, RateLimitItem]]:
        if not key:
            raise ValueError("a rate-limit key must not be empty")
        if cost < 1:
            raise ValueError(f"cost must be >= 1, got {cost}")
        return [
            (name, _ITEMS[name](limit, namespace=self._namespace))
            for name, limit in limits.by_window()
            if limit is not None
        ]

    async def _settle_memory_expiry(self) -> None:
        """Let the memory storage's background expiry pass finish before keys are removed.

        That task (limits 5.8) snapshots the keys and yields between them; a key cleared
        meanwhile makes it fail with a KeyError ("Task exception was never retrieved")."""
        if isinstance(self._storage, MemoryStorage):
            while (task := self._storage.timer) is not None and not task.done():
                await asyncio.wait({task})

    def _lock(self, key: str) -> asyncio.Lock:
        # Weak values: a key's lock lives only while a request holds or awaits it.
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    async def _read(
        self, key: str, windows: Sequence[tuple[str, RateLimitItem]]
    ) -> list[WindowStatus]:
        stats = await asyncio.gather(
            *(self._strategy.get_window_stats(item, key) for _, item in windows)
        )
        now = time.time()
        states = []
        for (name, item), (reset_at, remaining) in zip(windows, stats, strict=True):
            if remaining >= item.amount:  # empty: a request made now would leave it then
                reset_at = now + item.get_expiry()
            states.append(
                WindowStatus(
                    window=name,
                    limit=item.amount,
                    remaining=max(0, remaining),
                    reset_at=reset_at,
                )
            )
        return states


# --- HTTP ----------------------------------------------------------------------------------------
class RateLimited(DomainError):
    """(429) A rate limit refuses the request; `headers` carry `Retry-After` and `RateLimit-*`."""

    code: ClassVar[str] = "rate_limited"
    status_code: ClassVar[int] = 429

    def __init__(self, result: RateLimitResult) -> None:
        super().__init__(
            result.message,
            window=result.window,
            limit=result.limit,
            remaining=result.remaining,
            retry_after=result.retry_after,
        )
        self.result = result
        self.headers: dict[str, str] = result.http_headers()


def rate_limit_dependency(
    limiter: RateLimiter | Callable[[Request], RateLimiter],
    key_func: Callable[..., str | Awaitable[str]],
    limits_func: Callable[..., PlanRateLimits | Awaitable[PlanRateLimits]],
    *,
    cost: int = 1,
) -> Callable[..., Awaitable[RateLimitResult]]:
    """A FastAPI dependency that counts each request against `limits_func`'s limits under
    `key_func`'s key, and raises `RateLimited` (429, code `rate_limited`) when refused.

    `key_func` and `limits_func` are themselves FastAPI dependencies (sync or async), so they
    may take the `Request` (annotated `request: Request`) or any other dependency, such as the
    principal once authentication exists. `limiter` is a `RateLimiter` or a function of the
    request returning one (e.g. from `request.app.state`). An allowed response carries the
    `RateLimit-*` headers, unless the endpoint returns a `Response` object itself.

        limited = rate_limit_dependency(limiter, client_key, plan_limits)
        @router.get("/v1/things", dependencies=[Depends(limited)])
    """
    if cost < 1:
        raise ValueError(f"cost must be >= 1, got {cost}")

    # Defaults rather than `Annotated[..., Depends(key_func)]`: with postponed annotations
    # FastAPI would look the closure's functions up in this module's globals.
    async def enforce_rate_limit(
        request: Request,
        response: Response,
        key: str = Depends(key_func),
        limits: PlanRateLimits = Depends(limits_func),  # noqa: B008
    ) -> RateLimitResult:
        active = limiter if isinstance(limiter, RateLimiter) else limiter(request)
        result = await active.hit(key, limits, cost)
        if not result.allowed:
            raise RateLimited(result)
        response.headers.update(result.http_headers())
        return result

    return enforce_rate_limit

"""Request rate limits from the plan: per minute, per hour and per day.

    limiter = RateLimiter.from_settings(settings)        # memory:// or redis://...
    limits = PlanRateLimits.from_plan(plan)              # None in a window means unlimited
    result = await limiter.hit(f"org:{org_id}", limits)  # admit and count one request, or refuse
    result = await limiter.hit_many({f"org:{org_id}": limits, f"api_key:{key_id}": per_key})

**Strategy: the moving window.** Every admitted request leaves one timestamp per unit of cost
in each of its windows, and a new request is admitted only if fewer than `limit - cost + 1` fall
in the trailing window, so "5 per minute" means at most 5 in *any* 60 seconds, with no burst at a
window boundary (a fixed window allows 2x there) and no estimate (a sliding-window counter
weights the previous window as if its requests were spread evenly, so it can admit more or fewer
than the limit). `retry_after` is exact too: the moment the oldest request in the window leaves
it. The price is memory: one timestamp per admitted request per window (a list per key and
window, trimmed to the limit), so a window of 10,000 requests a day holds up to 10,000 entries
for each active key. That suits per-minute and per-hour limits and moderate daily ones; large
daily volumes are quotas, and belong to the `api_calls` meter of the UsageService, whose
counters are O(1).

**Atomicity: one step per request.** `hit` reads every window of every key it is given and, only
if each has room for `cost`, takes `cost` from all of them, in one indivisible step: on Redis one
Lua script (one round trip, `EVALSHA`; Redis runs a script alone), in memory one synchronous
function (nothing else runs on the event loop meanwhile). A request is therefore all or nothing
across its windows and keys, and however many processes share one Redis, a window admits
exactly its limit: never more, and never fewer because a racer took part of a request it was
then refused. On Redis the script reads the clock of the server (`TIME`), so processes whose
clocks differ still agree on every window; times returned to the caller are converted to the
caller's clock.

Keys: a window's storage key is `LIMITS:<namespace>/<key>/<minute|hour|day>` on Redis (the layout
of the `limits` library that saascore used before, so counts survive an upgrade), without the
limit, so a plan change keeps the requests already counted and `reset(key)` needs no plan. The
keys of one `hit_many` must live on one Redis node (no Redis Cluster across slots).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, Self, TypeVar

from saascore.kit.errors import ConfigurationError, DomainError, RateLimiterUnavailable

if TYPE_CHECKING:
    # Imported where used: redis by the Redis storage only, FastAPI by the HTTP dependency only,
    # so that a limiter in memory (and the CLI, which builds one) loads neither.
    import redis.asyncio
    from fastapi import Request

    from saascore.config import Settings
    from saascore.models.catalog import SubscriptionPlan

__all__ = [
    "PlanRateLimits",
    "RateLimitResult",
    "RateLimited",
    "RateLimiter",
    "RateLimiterUnavailable",
    "WindowStatus",
    "rate_limit_dependency",
]

DEFAULT_NAMESPACE: Final = "saascore"

_T = TypeVar("_T")


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
    #: The key the window belongs to (`hit_many` counts a request under several keys).
    key: str = ""

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
    #: Every limited window, shortest first (key by key for `hit_many`).
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
        reset_at), and on a refusal `error`, `window` and `retry_after`. For one key (with
        `hit_many`, a window name of one key would hide the same name of another)."""
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


def _refused(states: Sequence[WindowStatus], cost: int) -> RateLimitResult:
    refusing = [s for s in states if s.remaining < cost]
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


# --- storage -------------------------------------------------------------------------------------
_EXPIRY: Final[dict[str, int]] = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True, slots=True)
class _Window:
    key: str
    name: str
    limit: int
    storage_key: str

    @property
    def expiry(self) -> int:
        return _EXPIRY[self.name]


@dataclass(frozen=True, slots=True)
class _Taken:
    """What one step saw: per window the requests in it and the oldest one's timestamp (None
    when empty), whether the request fit (and was counted, when consuming), and `now`, all in
    the storage's clock."""

    now: float
    fits: bool
    counts: tuple[int, ...]
    oldest: tuple[float | None, ...]


class _Storage(Protocol):
    kind: str
    #: What the storage raises when it cannot be reached (besides `OSError`, `TimeoutError`).
    errors: tuple[type[Exception], ...]

    async def take(self, windows: Sequence[_Window], cost: int, consume: bool) -> _Taken: ...

    async def clear(self, storage_keys: Sequence[str]) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class _MemoryStorage:
    """Windows in this process: per storage key, the admitted timestamps, oldest first.

    `take` never awaits, so it runs whole between two requests of the event loop. Keys whose
    newest entry has left the window are dropped by a sweep at most once a minute."""

    kind = "memory"
    errors: tuple[type[Exception], ...] = ()
    SWEEP_EVERY: ClassVar[float] = 60.0

    def __init__(self) -> None:
        self._entries: dict[str, list[float]] = {}
        self._expiry: dict[str, int] = {}
        self._next_sweep = time.time() + self.SWEEP_EVERY

    async def take(self, windows: Sequence[_Window], cost: int, consume: bool) -> _Taken:
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        counts: list[int] = []
        oldest: list[float | None] = []
        for window in windows:
            entries = self._entries.get(window.storage_key, [])
            # Only the newest `limit` entries count (the list may predate a lower limit).
            # In the window: newer than `expiry` ago (at `reset_at` exactly, an entry has left).
            first = bisect.bisect_right(
                entries, now - window.expiry, lo=max(0, len(entries) - window.limit)
            )
            counts.append(len(entries) - first)
            oldest.append(entries[first] if first < len(entries) else None)
        fits = all(w.limit - n >= cost for w, n in zip(windows, counts, strict=True))
        if fits and consume:
            for window in windows:
                entries = self._entries.setdefault(window.storage_key, [])
                entries.extend([now] * cost)
                if len(entries) > window.limit:
                    del entries[: len(entries) - window.limit]
                self._expiry[window.storage_key] = window.expiry
        return _Taken(now, fits, tuple(counts), tuple(oldest))

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_EVERY
        for key, entries in list(self._entries.items()):
            if not entries or entries[-1] < now - self._expiry.get(key, 0):
                del self._entries[key]
                self._expiry.pop(key, None)

    async def clear(self, storage_keys: Sequence[str]) -> None:
        for key in storage_keys:
            self._entries.pop(key, None)
            self._expiry.pop(key, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
        self._expiry.clear()


#: KEYS: one list per window, newest timestamp first. ARGV: cost, consume (1 or 0), then the
#: limit and the expiry of each window. Returns the server's time, 1 if the request fit (and
#: was counted when consuming), then per window the requests in it and the oldest one's
#: timestamp ('' when empty). Floats travel as strings: Redis truncates Lua numbers to integers.
_TAKE_SCRIPT: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local stamp = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local now = tonumber(stamp)
local cost = tonumber(ARGV[1])
local consume = ARGV[2] == '1'
local fits = true
local result = {stamp, 0}
for i, key in ipairs(KEYS) do
    local limit = tonumber(ARGV[1 + 2 * i])
    local expiry = tonumber(ARGV[2 + 2 * i])
    -- The entries in the window are a prefix of the newest `limit`: binary search its end.
    local low, high, last = 0, limit - 1, -1
    while low <= high do
        local middle = math.floor((low + high) / 2)
        local entry = redis.call('LINDEX', key, middle)
        if entry and tonumber(entry) > now - expiry then
            last = middle
            low = middle + 1
        else
            high = middle - 1
        end
    end
    local oldest = ''
    if last >= 0 then oldest = redis.call('LINDEX', key, last) end
    result[1 + 2 * i] = last + 1
    result[2 + 2 * i] = oldest
    if limit - (last + 1) < cost then fits = false end
end
if fits then
    result[2] = 1
    if consume then
        for i, key in ipairs(KEYS) do
            local limit = tonumber(ARGV[1 + 2 * i])
            local expiry = tonumber(ARGV[2 + 2 * i])
            local entries = {}
            for n = 1, cost do entries[n] = stamp end
            for n = 1, cost, 5000 do
                redis.call('LPUSH', key, unpack(entries, n, math.min(n + 4999, cost)))
            end
            redis.call('LTRIM', key, 0, limit - 1)
            redis.call('EXPIRE', key, expiry)
        end
    end
end
return result
"""


class _RedisStorage:
    """Windows in Redis, shared by every process: each step is one `EVALSHA` of `_TAKE_SCRIPT`
    (the script is loaded on first use, and again if the server forgot it)."""

    kind = "redis"
    PREFIX: ClassVar[str] = "LIMITS:"

    def __init__(self, uri: str, timeout: float) -> None:
        import redis.asyncio
        import redis.exceptions
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.errors: tuple[type[Exception], ...] = (redis.exceptions.RedisError,)
        # Our own pool, so that close() releases its connections. One immediate retry: a pooled
        # connection that a Redis restart broke is replaced at once; a Redis that is down or
        # silent answers within about twice `timeout`, never after a backoff.
        self._pool: redis.asyncio.ConnectionPool = redis.asyncio.ConnectionPool.from_url(
            uri,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._client: redis.asyncio.Redis = redis.asyncio.Redis(connection_pool=self._pool)
        self._script = self._client.register_script(_TAKE_SCRIPT)

    async def take(self, windows: Sequence[_Window], cost: int, consume: bool) -> _Taken:
        arguments: list[int] = [cost, int(consume)]
        for window in windows:
            arguments += [window.limit, window.expiry]
        keys = [self.PREFIX + window.storage_key for window in windows]
        reply = await self._script(keys=keys, args=arguments)
        counts = tuple(int(count) for count in reply[2::2])
        oldest = tuple(float(stamp) if stamp else None for stamp in reply[3::2])
        return _Taken(float(reply[0]), int(reply[1]) == 1, counts, oldest)

    async def clear(self, storage_keys: Sequence[str]) -> None:
        await self._client.delete(*(self.PREFIX + key for key in storage_keys))

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()
        await self._pool.aclose()


# --- the limiter ---------------------------------------------------------------------------------
class RateLimiter:
    """Moving-window rate limits per key, in memory (`memory://`, one process) or in Redis
    (`redis://host:port/db`, shared by every process). See the module docstring for the
    strategy and what is atomic.

    A storage that cannot be reached (Redis down, or silent for `timeout` seconds) raises
    `RateLimiterUnavailable`: the caller refuses the request rather than let it through.
    """

    def __init__(
        self, storage_uri: str, *, namespace: str = DEFAULT_NAMESPACE, timeout: float = 2.0
    ) -> None:
        uri = storage_uri.strip().removeprefix("async+")
        scheme = uri.partition("://")[0]
        self._storage: _Storage
        if scheme == "memory":
            self._storage = _MemoryStorage()
        elif scheme in ("redis", "rediss"):
            self._storage = _RedisStorage(uri, timeout)
        else:
            raise ConfigurationError(
                f"rate-limit storage {storage_uri!r} is not supported; "
                "use memory:// or redis://host:port/db"
            )
        self._namespace = namespace

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """The limiter on `settings.rate_limit_storage` (`SAASCORE_RATE_LIMIT_STORAGE`), with
        `settings.rate_limit_timeout_seconds` for each Redis call."""
        return cls(settings.rate_limit_storage, timeout=settings.rate_limit_timeout_seconds)

    @property
    def storage(self) -> str:
        """`memory` or `redis`."""
        return self._storage.kind

    async def hit(self, key: str, limits: PlanRateLimits, cost: int = 1) -> RateLimitResult:
        """Admit and count a request of `cost` against every limited window of `key`, or
        refuse it and count nothing."""
        return await self.hit_many({key: limits}, cost)

    async def hit_many(
        self, limits_by_key: Mapping[str, PlanRateLimits], cost: int = 1
    ) -> RateLimitResult:
        """Admit and count a request of `cost` under every key at once (say an organisation's
        plan limits and a per-key limit), or refuse it and count nothing under any key."""
        return await self._step(limits_by_key, cost, consume=True)

    async def check(self, key: str, limits: PlanRateLimits, cost: int = 1) -> RateLimitResult:
        """What `hit` would decide now, consuming nothing."""
        return await self._step({key: limits}, cost, consume=False)

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
        self._check_key(key)
        await self._call(self._storage.clear([self._storage_key(key, name) for name in _EXPIRY]))

    async def ping(self) -> None:
        """Raise `RateLimiterUnavailable` unless the storage answers (Redis: `PING`)."""
        await self._call(self._storage.ping())

    async def close(self) -> None:
        """Release the storage: Redis connections are closed, in-memory windows dropped."""
        await self._storage.close()

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
    async def _step(
        self, limits_by_key: Mapping[str, PlanRateLimits], cost: int, *, consume: bool
    ) -> RateLimitResult:
        if cost < 1:
            raise ValueError(f"cost must be >= 1, got {cost}")
        windows = [
            _Window(key, name, limit, self._storage_key(key, name))
            for key, limits in limits_by_key.items()
            if self._check_key(key)
            for name, limit in limits.by_window()
            if limit is not None
        ]
        if not windows:
            return _UNLIMITED
        taken = await self._call(self._storage.take(windows, cost, consume))
        # The storage's clock may not be ours (Redis): carry its durations over to our clock.
        now = time.time()
        states = [
            WindowStatus(
                window=window.name,
                limit=window.limit,
                remaining=max(0, window.limit - count),
                reset_at=now + window.expiry - (0.0 if oldest is None else taken.now - oldest),
                key=window.key,
            )
            for window, count, oldest in zip(windows, taken.counts, taken.oldest, strict=True)
        ]
        if not taken.fits:
            return _refused(states, cost)
        if consume:
            states = [replace(s, remaining=max(0, s.remaining - cost)) for s in states]
        return _allowed(states)

    @staticmethod
    def _check_key(key: str) -> bool:
        if not key:
            raise ValueError("a rate-limit key must not be empty")
        return True

    def _storage_key(self, key: str, window: str) -> str:
        return f"{self._namespace}/{key}/{window}"

    async def _call(self, step: Awaitable[_T]) -> _T:
        unavailable: tuple[type[Exception], ...] = (*self._storage.errors, OSError, TimeoutError)
        try:
            return await step
        except unavailable as exc:
            raise RateLimiterUnavailable(f"the rate-limit storage is unavailable: {exc}") from exc


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
    from fastapi import Depends, Request, Response

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

    # FastAPI reads the (postponed) annotations in this module's globals, where the classes
    # imported above are not: give it the classes themselves.
    enforce_rate_limit.__annotations__.update(request=Request, response=Response)
    return enforce_rate_limit

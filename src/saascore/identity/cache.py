"""A short-lived, in-process cache of authenticated principals (`SAASCORE_AUTH_CACHE_SECONDS`).

Off by default: each request then reads its credential's key, user, organisation and plan
(one statement). With a few seconds of cache, a busy key skips that read, at a price: a change
made by *another* process (a key revoked, a user demoted or disabled, an organisation suspended
or moved to another plan) takes effect there up to that many seconds later. Changes made through
this process's services clear the cache when they commit (an after-commit handler of the
event bus), and no entry outlives its token or key.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from saascore.identity.principal import Principal

__all__ = ["PrincipalCache"]

_MAX_ENTRIES = 10_000


class PrincipalCache:
    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._entries: dict[bytes, tuple[Principal, float]] = {}
        #: Bumped by every clear: a principal read before a clear is not kept after it.
        self.generation = 0

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    @staticmethod
    def key(credential: str) -> bytes:
        return hashlib.sha256(credential.encode()).digest()

    def get(self, key: bytes) -> Principal | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        principal, until = entry
        if self.clock() >= until:
            del self._entries[key]
            return None
        return principal

    def put(
        self,
        key: bytes,
        principal: Principal,
        valid_for: float | None = None,
        generation: int | None = None,
    ) -> None:
        """Keep `principal` for the cache's seconds, or less when its credential expires
        sooner (`valid_for`, in seconds); not at all if the cache was cleared since
        `generation` (read before the principal was)."""
        if not self.enabled or (generation is not None and generation != self.generation):
            return
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        seconds = self.seconds if valid_for is None else min(self.seconds, valid_for)
        if seconds > 0:
            self._entries[key] = (principal, self.clock() + seconds)

    def clear(self) -> None:
        """Forget every principal: something that decides what they may do has changed."""
        self._entries.clear()
        self.generation += 1

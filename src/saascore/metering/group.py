"""Group commit: concurrent `record` calls of one process share transactions.

One transaction per event caps a database at its commit rate, and a hot organisation at the
rate one counter row can be locked, updated and committed. Here calls wait in a queue and are
taken, up to `max_events` at a time, as one batch that is decided in arrival order and written
in one transaction (`batch.record_batch`). Each caller is answered once that transaction has
committed, so nothing is acknowledged that could still be lost. A batch of one goes through the
one-statement path instead.

Two batches may be in flight, so that one is decided in Python while the database writes the
other, but the next batch starts only once the previous one holds its counter locks. A batch
that shares a counter with the one before it therefore waits for that one's commit and decides
after it: limits stay exact, in arrival order. Refusals and conflicts are per event. What
`flush` raises reaches every caller of the batch; `UsageService` raises only when the database
is lost, and records the events of a batch that failed otherwise one by one.

One exception to arrival order: a batch that has to start over (PostgreSQL aborted it to break
a deadlock, or a copy of one of its events slipped in) releases its locks and decides again
after the batches that started meanwhile. Limits stay exact; only the order among those
batches changes.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from saascore.kit.db import is_timeout
from saascore.kit.errors import DatabaseUnavailable

__all__ = ["GroupCommit", "GroupCommits", "one_by_one"]

Item = TypeVar("Item")
Result = TypeVar("Result")
#: `flush(items, locked)` decides and commits a batch, calling `locked()` once it holds its
#: locks; it returns one result (or exception) per item.
Flush = Callable[[list[Item], Callable[[], None]], Awaitable[Sequence[Result | BaseException]]]


class GroupCommit(Generic[Item, Result]):
    """A queue of items flushed in batches, answering each caller after its batch commits."""

    def __init__(self, flush: Flush[Item, Result], *, max_events: int, depth: int = 2) -> None:
        if max_events < 1 or depth < 1:
            raise ValueError("a group commit needs max_events >= 1 and depth >= 1")
        self._flush = flush
        self._max_events = max_events
        self._depth = depth
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._arrived = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._waiting.append((item, future))
        self._arrived.set()
        if self._running is None:
            self._running = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while self._waiting or in_flight:
                # A caller cancelled while queued is dropped: it is answered with its
                # cancellation, so its item must not be written either.
                self._waiting = [entry for entry in self._waiting if not entry[1].done()]
                if self._waiting and len(in_flight) < self._depth:
                    batch = self._waiting[: self._max_events]
                    del self._waiting[: self._max_events]
                    locked: asyncio.Future[None] = loop.create_future()
                    task = loop.create_task(self._run(batch, locked))
                    in_flight.add(task)
                    # The next batch may start once this one holds its locks (or is done).
                    await asyncio.wait({task, locked}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                self._arrived.clear()
                arrival = loop.create_task(self._arrived.wait())
                done, _ = await asyncio.wait(
                    {*in_flight, arrival}, return_when=asyncio.FIRST_COMPLETED
                )
                arrival.cancel()
                in_flight -= done
        finally:  # empty unless this task was cancelled: then nobody would answer them
            for task in in_flight:
                task.cancel()
            for _, future in self._waiting:
                future.cancel()
            self._waiting.clear()
            self._running = None

    async def _run(
        self, batch: list[tuple[Item, asyncio.Future[Result]]], locked: asyncio.Future[None]
    ) -> None:
        def signal() -> None:
            if not locked.done():
                locked.set_result(None)

        try:
            outcomes = await self._flush([item for item, _ in batch], signal)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:  # the transaction failed: every caller learns it
            outcomes = [error] * len(batch)
        finally:
            signal()
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


class GroupCommits(Generic[Item, Result]):
    """A service's group commit, one per event loop (a queue's futures and task belong to
    the loop they were made in), made on first use."""

    def __init__(self, flush: Flush[Item, Result], *, max_events: int) -> None:
        self._flush = flush
        self._max_events = max_events
        self._groups: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, GroupCommit[Item, Result]
        ] = weakref.WeakKeyDictionary()

    def submit(self, item: Item) -> Awaitable[Result]:
        """`GroupCommit.submit` on the running loop's group commit."""
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = GroupCommit(self._flush, max_events=self._max_events)
            self._groups[loop] = group
        return group.submit(item)


async def one_by_one(
    items: Sequence[Item],
    run: Callable[[Item], Awaitable[Result]],
    key: Callable[[Item], Hashable],
) -> list[Result | Exception]:
    """`run` each of `items` in turn, as a failed batch's fallback: each answered by its own
    result or error. Once the database is lost (`DatabaseUnavailable`, but for a statement it
    gave up on: `is_timeout`), the item that met it and those not yet run are answered with
    that error; those before keep their answers, which may have committed. A statement that
    timed out answers the later items of the same `key` (their organisation, whose rows are
    held) with its error, untried: the fallback waits at most one timeout per such key."""
    answers: list[Result | Exception] = []
    stuck: dict[Hashable, DatabaseUnavailable] = {}
    for item in items:
        held = stuck.get(key(item))
        if held is not None:
            answers.append(held)
            continue
        try:
            answers.append(await run(item))
        except DatabaseUnavailable as error:
            if not is_timeout(error):
                return answers + [error] * (len(items) - len(answers))
            stuck[key(item)] = error
            answers.append(error)
        except Exception as error:
            answers.append(error)
    return answers

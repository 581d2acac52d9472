"""`GroupCommit` on its own: a queue, not a database.

The flush functions here record what they are given and answer from the items, so the tests can
check what callers get back, in which batches items were flushed, and when a batch may start.
"Let the loop run" (`settle`) yields to the event loop until nothing more can happen without the
test's next step; no test depends on wall-clock time.

The settings that switch group commit on and off end this module (they need no database).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import ValidationError

from saascore.core import Saascore
from saascore.kit.errors import DatabaseUnavailable
from saascore.metering.group import GroupCommit, one_by_one
from tests.helpers import make_settings


async def settle(rounds: int = 50) -> None:
    """Let every ready task run until the loop is idle (enough rounds for the queue's hand-offs)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def answer(item: int) -> int | BaseException:
    """The flush's answer for one item: negative items are refused with their own error."""
    return ValueError(f"refused {item}") if item < 0 else item * 10


@dataclass
class Recorder:
    """A flush that records every batch and answers each item (`answer`); it calls `locked()`
    at once and returns at once unless `gated`, when it waits for the test at both steps."""

    gated: bool = False
    fail_on: int | None = None
    batches: list[list[int]] = field(default_factory=list)
    finished: list[list[int]] = field(default_factory=list)
    lock_gates: list[asyncio.Event] = field(default_factory=list)
    done_gates: list[asyncio.Event] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    async def __call__(
        self, items: list[int], locked: Callable[[], None]
    ) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        lock_gate, done_gate = asyncio.Event(), asyncio.Event()
        self.lock_gates.append(lock_gate)
        self.done_gates.append(done_gate)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gated:
                await lock_gate.wait()
            locked()
            if self.gated:
                await done_gate.wait()
            if self.fail_on is not None and self.fail_on in items:
                raise RuntimeError(f"the transaction of {items} failed")
            return [answer(item) for item in items]
        finally:
            self.in_flight -= 1
            self.finished.append(list(items))


def submit_all(group: GroupCommit[int, int], items: Sequence[int]) -> list[asyncio.Task[int]]:
    """One task per item, all created in the same turn of the loop (so they queue together)."""
    return [asyncio.create_task(group.submit(item)) for item in items]


async def outcomes(tasks: Sequence[asyncio.Task[int]]) -> list[int | BaseException]:
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def release_all(flush: Recorder, tasks: Sequence[asyncio.Task[int]]) -> None:
    """Open every gate, of the batches in flight and of those they let start, until every
    caller is answered."""
    while not all(task.done() for task in tasks):
        for gate in (*flush.lock_gates, *flush.done_gates):
            gate.set()
        await settle()


class TestOrderAndSize:
    async def test_each_caller_gets_its_own_answer_and_batches_keep_arrival_order(self) -> None:
        flush = Recorder()
        group: GroupCommit[int, int] = GroupCommit(flush, max_events=3)

        results = await outcomes(submit_all(group, range(10)))

        assert results == [item * 10 for item in range(10)]
        # Everything was waiting when the first batch was taken: full batches, in order.
        assert flush.batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]

    async def test_arrivals_during_a_batch_join_later_batches_in_their_order(self) -> None:
        flush = Recorder(gated=True)
        group: GroupCommit[int, int] = GroupCommit(flush, max_events=2)
        first = submit_all(group, [0, 1, 2])
        await settle()
        assert flush.batches == [[0, 1]]  # [2] waits for the first batch's locks

        later = submit_all(group, [3, 4, 5, 6])
        await settle()
        flush.lock_gates[0].set()
        await settle()
        assert flush.batches == [[0, 1], [2, 3]]
        await release_all(flush, first + later)

        assert await outcomes(first + later) == [item * 10 for item in range(7)]
        assert flush.batches == [[0, 1], [2, 3], [4, 5], [6]]
        assert [item for batch in flush.batches for item in batch] == list(range(7))

    async def test_the_queue_starts_again_after_it_ran_dry(self) -> None:
        flush = Recorder()
        group: GroupCommit[int, int] = GroupCommit(flush, max_events=4)
        assert await outcomes(submit_all(group, [1, 2])) == [10, 20]
        await settle()  # the drain task has finished: nothing is waiting
        assert await outcomes(submit_all(group, [3, 4, 5])) == [30, 40, 50]
        assert flush.batches == [[1, 2], [3, 4, 5]]

    @pytest.mark.parametrize("max_events", [1, 2, 4, 256])
    async def test_no_batch_takes_more_than_max_events(self, max_events: int) -> None:
        flush = Recorder()
        group: GroupCommit[int, int] = GroupCommit(flush, max_events=max_events)

        results = await outcomes(submit_all(group, range(10)))

        assert results == [item * 10 for item in range(10)]
        assert all(1 <= len(batch) <= max_events for batch in flush.batches)
        assert len(flush.batches) == -(-10 // max_events)  # ceil: every batch was full but one
        assert [item for batch in flush.batches for item in batch] == list(range(10))


class TestFailures:
    async def test_a_failing_flush_fails_exactly_the_callers_of_its_batch(self) -> None:
        flush = Recorder(fail_on=4)
        group: GroupCommit[int, int] = GroupCommit(flush, max_events=3)

        results = await outcomes(submit_all(group, range(9)))

        assert flush.batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
        failed = results[3:6]
        assert all(isinstance(error, RuntimeError) for error in failed)
        assert {str(error) for error in failed} == {"the transaction of [3, 4, 5] failed"}
        assert results[:3] + results[6:] == [0, 10, 20, 60, 70, 80]
        # The queue goes on serving after a failed batch.
        assert await outcomes(submit_all(group, [9])) == [90]

    async def test_per_item_errors_reach_their_own_callers(self) -> None:
        flush = Recorder()
        group: GroupCommit[int, int] = GroupCommit(flush, max_events=4)
        items = [1, -2, 3, -4, -5, 6, 7, -8]

        results = await outcomes(submit_all(group, items))

        for item, result in zip(items, results, strict=True):
            if item < 0:
                assert isinstance(result, ValueError)
                assert str(result) == f"refused {item}"
            else:
                assert result == item * 10

    async def test_a_cancelled_caller_leaves_the_others_of_its_batch_answered(self) -> None:
        flush = Recorder(gated=True)
        group: GroupCommit[int, int] = GroupCommit(flush, max_events=4)
        tasks = submit_all(group, [0, 1, 2, 3])
        await settle()
        flush.lock_gates[0].set()
        await settle()
        assert flush.batches == [[0, 1, 2, 3]]

        tasks[1].cancel()
        await settle()
        assert tasks[1].cancelled()
        assert not any(task.done() for task in (tasks[0], tasks[2], tasks[3]))
        flush.done_gates[0].set()

        results = await outcomes(tasks)
        assert isinstance(results[1], asyncio.CancelledError)
        assert [results[0], results[2], results[3]] == [0, 20, 30]
        # and the queue still serves new callers
        follow = submit_all(group, [4])
        await settle()
        flush.lock_gates[1].set()
        flush.done_gates[1].set()
        assert await outcomes(follow) == [40]

    async def test_a_caller_cancelled_while_queued_leaves_the_others_answered(self) -> None:
        flush = Recorder(gated=True)
        group: GroupCommit[int, int] = GroupCommit(flush, max_events=2, depth=1)
        tasks = submit_all(group, [0, 1, 2, 3])
        await settle()
        assert flush.batches == [[0, 1]]
        tasks[2].cancel()  # still in the queue
        await settle()
        await release_all(flush, tasks)

        results = await outcomes(tasks)
        assert isinstance(results[2], asyncio.CancelledError)
        assert [results[0], results[1], results[3]] == [0, 10, 30]
        # Its item was never flushed: a caller told it was cancelled had nothing written.
        assert flush.batches == [[0, 1], [3]]


class GaveUp(Exception):
    """A driver's error for a statement the server gave up on (its `statement_timeout`)."""

    sqlstate = "57014"


def parity(item: int) -> int:
    """The key of `one_by_one`'s items here (as an organisation would be)."""
    return item % 2


class TestOneByOne:
    """`one_by_one`, a failed batch's fallback: each item answered on its own."""

    @staticmethod
    def run_failing(failures: dict[int, BaseException]) -> Callable[[int], Awaitable[int]]:
        async def run(item: int) -> int:
            if item in failures:
                raise failures[item]
            return item * 10

        return run

    async def test_each_item_gets_its_own_answer_or_error(self) -> None:
        refused = ValueError("refused")
        answers = await one_by_one([1, 2, 3], self.run_failing({2: refused}), key=parity)
        assert answers == [10, refused, 30]

    async def test_a_lost_database_answers_the_rest_and_keeps_what_was_done(self) -> None:
        lost = DatabaseUnavailable("connection refused")
        answers = await one_by_one([1, 2, 3, 4], self.run_failing({3: lost}), key=parity)
        # 1 and 2 were done (and may have committed): they keep their answers.
        assert answers == [10, 20, lost, lost]

    async def test_a_statement_timeout_fails_its_own_key_only(self) -> None:
        timed_out = DatabaseUnavailable("the statement timed out")
        timed_out.__cause__ = GaveUp()
        tried: list[int] = []
        run = self.run_failing({2: timed_out})

        async def recorded(item: int) -> int:
            tried.append(item)
            return await run(item)

        answers = await one_by_one([1, 2, 3, 4, 5], recorded, key=parity)
        # The even items' rows are held: 4 is answered with 2's timeout, untried (one wait
        # per key, not one per item); the odd ones go in.
        assert answers == [10, timed_out, 30, timed_out, 50]
        assert tried == [1, 2, 3, 5]


class TestFlow:
    @pytest.mark.parametrize("depth", [1, 2, 3])
    async def test_at_most_depth_batches_in_flight_each_after_the_previous_locked(
        self, depth: int
    ) -> None:
        flush = Recorder(gated=True)
        group: GroupCommit[int, int] = GroupCommit(flush, max_events=1, depth=depth)
        tasks = submit_all(group, range(6))
        await settle()
        assert flush.batches == [[0]]

        # Each batch starts only once the one before it holds its locks, up to `depth`.
        for started in range(1, depth):
            await settle()
            assert len(flush.batches) == started  # not before the previous one locked
            flush.lock_gates[started - 1].set()
            await settle()
            assert len(flush.batches) == started + 1
        flush.lock_gates[depth - 1].set()
        await settle()
        assert len(flush.batches) == depth  # all locked, but `depth` are in flight
        assert flush.in_flight == depth

        # A batch finishing makes room for exactly one more.
        flush.done_gates[0].set()
        await settle()
        assert len(flush.batches) == depth + 1
        assert tasks[0].done()
        assert not any(task.done() for task in tasks[1:])

        await release_all(flush, tasks)
        assert await outcomes(tasks) == [item * 10 for item in range(6)]
        assert flush.most_in_flight == depth
        assert flush.batches == [[item] for item in range(6)]

    async def test_a_batch_that_never_locks_holds_the_next_until_it_is_done(self) -> None:
        flush = Recorder(gated=True)
        group: GroupCommit[int, int] = GroupCommit(flush, max_events=2)
        tasks = submit_all(group, [0, 1, 2])
        await settle()
        assert flush.batches == [[0, 1]]
        flush.done_gates[0].set()  # returns without having called locked() first...
        await settle()
        assert flush.batches == [[0, 1]]  # ...but it is still waiting to lock
        flush.lock_gates[0].set()
        await settle()
        assert flush.batches == [[0, 1], [2]]
        flush.lock_gates[1].set()
        flush.done_gates[1].set()
        assert await outcomes(tasks) == [0, 10, 20]

    async def test_answers_come_only_after_the_flush_returned(self) -> None:
        flush = Recorder(gated=True)
        group: GroupCommit[int, int] = GroupCommit(flush, max_events=8)
        tasks = submit_all(group, [1, 2, 3])
        await settle()
        flush.lock_gates[0].set()  # locked: the batch is being written, not yet committed
        await settle()
        assert flush.finished == []
        assert not any(task.done() for task in tasks)

        flush.done_gates[0].set()
        await settle()
        assert flush.finished == [[1, 2, 3]]
        assert all(task.done() for task in tasks)
        assert await outcomes(tasks) == [10, 20, 30]


# --- the settings ------------------------------------------------------------------------------
class TestSettings:
    async def test_the_facade_passes_the_group_commit_settings_to_its_services(
        self, tmp_path: Path
    ) -> None:
        url = f"sqlite:///{tmp_path / 'facade.db'}"
        default = Saascore(make_settings(database_url=url, data_dir=tmp_path))
        assert (default.usage.group_commit, default.usage.group_commit_max_events) == (True, 256)
        configured = Saascore(
            make_settings(
                database_url=url,
                data_dir=tmp_path,
                group_commit=False,
                group_commit_max_events=17,
            )
        )
        assert (configured.usage.group_commit, configured.usage.group_commit_max_events) == (
            False,
            17,
        )
        assert (default.documents.group_commit, default.documents.group_commit_max_events) == (
            True,
            256,
        )
        assert (
            configured.documents.group_commit,
            configured.documents.group_commit_max_events,
        ) == (False, 17)
        for core in (default, configured):
            await core.close()

    def test_the_environment_sets_them(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SAASCORE_GROUP_COMMIT", "false")
        monkeypatch.setenv("SAASCORE_GROUP_COMMIT_MAX_EVENTS", "32")
        settings = make_settings()
        assert (settings.group_commit, settings.group_commit_max_events) == (False, 32)

    @pytest.mark.parametrize("value", [0, 10_001])
    def test_max_events_is_bounded(self, value: int) -> None:
        with pytest.raises(ValidationError):
            make_settings(group_commit_max_events=value)

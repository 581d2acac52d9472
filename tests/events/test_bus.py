"""The event bus: in-transaction handlers, the outbox and after-commit handlers share the fate
of the change that emitted them: nothing of a change that rolls back, exactly once of one that
commits, on both databases."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa

from saascore.audit import AuditService
from saascore.events import Event, EventBus
from saascore.events.bus import OUTBOX_CHANNEL, Wakeup
from saascore.events.catalog import ApiKeyRevoked, AuthLogout, CreditsLow, OperatorKeyRevoked
from saascore.kit.actors import Actor
from saascore.kit.db import Database
from saascore.models import AuditLog, OutboxEvent
from tests.factories import create_organization
from tests.helpers import only_postgresql, only_sqlite

pytestmark = pytest.mark.asyncio(loop_scope="session")

ACTOR = Actor("user", "someone")


class Recorder:
    """A bus wired as the facade wires it: the audit log in the transaction, a list after
    commit (standing in for the principal cache and the dispatcher's doorbell)."""

    def __init__(self, database: Database) -> None:
        self.bus = EventBus()
        self.bus.in_transaction(AuditService(database).handle)
        self.committed: list[Event] = []
        self.bus.after_commit(self.committed.append)


async def counts(database: Database, org_id: uuid.UUID) -> tuple[int, int]:
    """(audit entries, outbox rows) of the organisation, as committed."""
    async with database.session(readonly=True) as s:
        audit = await s.scalar(sa.select(sa.func.count()).where(AuditLog.organization_id == org_id))
        outbox = await s.scalar(
            sa.select(sa.func.count()).where(OutboxEvent.organization_id == org_id)
        )
    return int(audit or 0), int(outbox or 0)


async def new_org(database: Database) -> uuid.UUID:
    async with database.transaction() as s:
        return (await create_organization(s)).id


def revoked() -> ApiKeyRevoked:
    return ApiKeyRevoked(key_id=uuid.uuid4(), name="ingest", prefix="sk_live_ab12cd34")


class TestFate:
    async def test_a_commit_emits_exactly_once(self, scratch: Database) -> None:
        recorder, org = Recorder(scratch), await new_org(scratch)
        async with scratch.transaction() as s:
            emitted = await recorder.bus.emit(s, org, revoked(), actor=ACTOR, target_id="k1")
            assert recorder.committed == []  # not before the commit
        assert recorder.committed == [emitted]
        assert await counts(scratch, org) == (1, 1)
        async with scratch.session(readonly=True) as s:
            entry = (
                await s.scalars(sa.select(AuditLog).where(AuditLog.organization_id == org))
            ).one()
            row = (
                await s.scalars(sa.select(OutboxEvent).where(OutboxEvent.organization_id == org))
            ).one()
        assert (entry.action, entry.actor_type, entry.actor_id) == (
            "api_key.revoked",
            "user",
            "someone",
        )
        assert (entry.target_type, entry.target_id) == ("api_key", "k1")
        assert entry.details == emitted.data()
        assert (row.id, row.type) == (emitted.id, "api_key.revoked")
        assert row.body == {
            "type": "api_key.revoked",
            "timestamp": emitted.occurred_at.isoformat(),
            "data": emitted.data(),
        }

    async def test_a_rollback_emits_nothing(self, scratch: Database) -> None:
        recorder, org = Recorder(scratch), await new_org(scratch)

        async def failing_change() -> None:
            async with scratch.transaction() as s:
                await recorder.bus.emit(s, org, revoked(), actor=ACTOR)
                raise RuntimeError("the change fails after its event")

        with pytest.raises(RuntimeError):
            await failing_change()
        assert recorder.committed == []
        assert await counts(scratch, org) == (0, 0)
        # The session is gone; a later commit of another session runs only its own events.
        async with scratch.transaction() as s:
            kept = await recorder.bus.emit(s, org, revoked())
        assert recorder.committed == [kept]

    async def test_a_savepoint_that_rolls_back_takes_its_events_along(
        self, scratch: Database
    ) -> None:
        recorder, org = Recorder(scratch), await new_org(scratch)
        async with scratch.transaction() as s:
            outer = await recorder.bus.emit(s, org, revoked())

            async def failing_step() -> None:
                async with s.begin_nested():
                    await recorder.bus.emit(s, org, revoked())
                    raise RuntimeError("only the savepoint fails")

            with pytest.raises(RuntimeError):
                await failing_step()
            async with s.begin_nested():  # a savepoint released: its event stays
                inner = await recorder.bus.emit(s, org, revoked())
        assert recorder.committed == [outer, inner]
        assert await counts(scratch, org) == (2, 2)

    async def test_only_public_events_reach_the_outbox(self, scratch: Database) -> None:
        recorder, org = Recorder(scratch), await new_org(scratch)
        async with scratch.transaction() as s:
            await recorder.bus.emit(s, org, AuthLogout(), actor=ACTOR)  # audited, not public
            await recorder.bus.emit(s, org, CreditsLow(balance=1, threshold=5))  # public only
            await recorder.bus.emit(s, None, OperatorKeyRevoked(key_id=uuid.uuid4()))
        assert await counts(scratch, org) == (1, 1)
        assert [event.type for event in recorder.committed] == [
            "auth.logout",
            "credits.low",
            "operator_key.revoked",
        ]

    async def test_a_failing_after_commit_handler_does_not_undo_the_commit(
        self, scratch: Database
    ) -> None:
        recorder, org = Recorder(scratch), await new_org(scratch)

        def broken(_event: Event) -> None:
            raise RuntimeError("a handler bug")

        recorder.bus._after_commit.insert(0, broken)
        async with scratch.transaction() as s:
            emitted = await recorder.bus.emit(s, org, revoked())
        assert recorder.committed == [emitted]  # the next handler still ran
        assert await counts(scratch, org) == (1, 1)


class TestOnce:
    async def test_one_event_per_key_however_many_transactions_race(
        self, scratch: Database
    ) -> None:
        recorder, org = Recorder(scratch), await new_org(scratch)

        async def attempt() -> Event | None:
            async with scratch.transaction() as s:
                return await recorder.bus.emit_once(
                    s, org, CreditsLow(balance=1, threshold=5), key="credits.low:2026-12"
                )

        results = await asyncio.gather(*(attempt() for _ in range(8)))
        emitted = [result for result in results if result is not None]
        assert len(emitted) == 1
        assert recorder.committed == emitted
        assert await counts(scratch, org) == (0, 1)  # credits.low is not audited
        async with scratch.transaction() as s:  # another key is another event
            other = await recorder.bus.emit_once(
                s, org, CreditsLow(balance=1, threshold=5), key="credits.low:2027-01"
            )
        assert other is not None
        assert await counts(scratch, org) == (0, 2)

    async def test_a_rolled_back_attempt_leaves_the_key_free(self, scratch: Database) -> None:
        recorder, org = Recorder(scratch), await new_org(scratch)

        async def failing() -> None:
            async with scratch.transaction() as s:
                await recorder.bus.emit_once(s, org, CreditsLow(balance=1, threshold=5), key="k")
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            await failing()
        async with scratch.transaction() as s:
            again = await recorder.bus.emit_once(
                s, org, CreditsLow(balance=1, threshold=5), key="k"
            )
        assert again is not None
        assert recorder.committed == [again]


class TestOneWakeup:
    async def test_a_block_of_savepoints_publishes_all_and_wakes_once(
        self, scratch: Database
    ) -> None:
        org_id = await new_org(scratch)
        recorder = Recorder(scratch)
        heard: asyncio.Queue[str] = asyncio.Queue()
        async with scratch.engine.connect() as listening:
            if scratch.engine.dialect.name == "postgresql":
                raw = (await listening.get_raw_connection()).driver_connection
                assert raw is not None
                await raw.add_listener(OUTBOX_CHANNEL, lambda *args: heard.put_nowait(args[2]))
            async with scratch.transaction() as s, recorder.bus.one_wakeup(s):
                for n in range(3):
                    try:
                        async with s.begin_nested(), recorder.bus.deferred(s):
                            await recorder.bus.emit(s, org_id, revoked(), actor=ACTOR)
                            if n == 1:
                                raise RuntimeError("this one rolls back")
                    except RuntimeError:
                        pass
            assert await counts(scratch, org_id) == (2, 2)
            assert len(recorder.committed) == 2
            if scratch.engine.dialect.name == "postgresql":
                # NOTIFY is delivered at the commit: one wake-up for the block's events.
                assert await asyncio.wait_for(heard.get(), timeout=10) == OUTBOX_CHANNEL

    async def test_a_block_that_fails_publishes_nothing(self, scratch: Database) -> None:
        org_id = await new_org(scratch)
        recorder = Recorder(scratch)

        async def failing() -> None:
            async with scratch.transaction() as s, recorder.bus.one_wakeup(s):
                await recorder.bus.emit(s, org_id, revoked(), actor=ACTOR)
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            await failing()
        assert await counts(scratch, org_id) == (0, 0)
        assert recorder.committed == []


class TestNestedDeferred:
    async def test_the_outer_block_writes_all_but_a_rolled_back_inner_one(
        self, scratch: Database
    ) -> None:
        """The billing run's shape: one deferred block for the transaction, one nested block
        per organisation in its savepoint; the audit log's batch handler advances every
        chain at once, in emission order per organisation."""
        orgs = [await new_org(scratch) for _ in range(3)]
        audit = AuditService(scratch)
        bus = EventBus()
        bus.in_transaction(audit.handle, many=audit.handle_many)
        async with scratch.transaction() as s:  # a chain that already has an entry
            await bus.emit(s, orgs[0], revoked(), actor=ACTOR)
        async with scratch.transaction() as s, bus.deferred(s):
            for n, org_id in enumerate([*orgs, *orgs]):
                try:
                    async with s.begin_nested(), bus.deferred(s):
                        await bus.emit(s, org_id, revoked(), actor=ACTOR, target_id=n)
                        if n == 4:
                            raise RuntimeError("this one rolls back")
                except RuntimeError:
                    pass
        assert [await counts(scratch, org_id) for org_id in orgs] == [(3, 3), (1, 1), (2, 2)]
        async with scratch.session(readonly=True) as s:
            targets = (
                await s.execute(
                    sa.select(AuditLog.organization_id, AuditLog.seq, AuditLog.target_id)
                    .where(AuditLog.organization_id.in_(orgs))
                    .order_by(AuditLog.organization_id, AuditLog.seq)
                )
            ).all()
        by_org = {
            org_id: [(seq, target) for o, seq, target in targets if o == org_id] for org_id in orgs
        }
        assert by_org[orgs[0]] == [(1, None), (2, "0"), (3, "3")]
        assert by_org[orgs[1]] == [(1, "1")]
        assert by_org[orgs[2]] == [(1, "2"), (2, "5")]
        assert await audit.verify() == []


class _CountedWakeup(Wakeup):
    """A wake-up that counts what it sends, each send held until `sent_through` is set."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.sent = 0
        self.sent_through = asyncio.Event()

    async def _notify(self) -> None:
        self.sent += 1
        await self.sent_through.wait()


class TestWakeup:
    @only_postgresql
    async def test_a_wakeup_is_heard_after_it_is_owed(self, scratch: Database) -> None:
        wakeup = Wakeup(scratch)
        heard: asyncio.Queue[str] = asyncio.Queue()
        async with scratch.engine.connect() as listening:
            raw = (await listening.get_raw_connection()).driver_connection
            assert raw is not None
            await raw.add_listener(OUTBOX_CHANNEL, lambda *args: heard.put_nowait(args[2]))
            wakeup.owed()
            await wakeup.settle()
            assert await asyncio.wait_for(heard.get(), timeout=10) == OUTBOX_CHANNEL

    @only_postgresql
    async def test_commits_noted_while_one_is_sent_share_the_next(self, scratch: Database) -> None:
        wakeup = _CountedWakeup(scratch)
        wakeup.owed()
        await asyncio.sleep(0)  # the first is being sent
        assert wakeup.sent == 1
        for _ in range(20):
            wakeup.owed()
        wakeup.sent_through.set()
        await wakeup.settle()
        assert wakeup.sent == 2  # one more for the twenty noted meanwhile
        wakeup.owed()  # noted after the last was sent: sent again
        await wakeup.settle()
        assert wakeup.sent == 3

    @only_sqlite
    async def test_elsewhere_dispatchers_poll(self, scratch: Database) -> None:
        wakeup = _CountedWakeup(scratch)
        wakeup.owed()
        await wakeup.settle()
        assert wakeup.sent == 0

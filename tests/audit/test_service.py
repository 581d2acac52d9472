"""The audit log: appends form a hash chain per organisation, and `verify` finds tampering."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit import AuditService, ChainBreak, Origin, audited_bus, entry_hash
from saascore.events.catalog import ApiKeyRevoked
from saascore.kit.actors import Actor
from saascore.kit.db import Database
from saascore.models import AuditChainHead, AuditLog, OutboxEvent
from saascore.plans import PlanService
from saascore.tenancy import OrganizationService
from tests.factories import create_organization
from tests.helpers import only_postgresql

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def chain(session: AsyncSession, org_id: uuid.UUID) -> list[AuditLog]:
    rows = await session.scalars(
        sa.select(AuditLog)
        .where(AuditLog.organization_id == org_id)
        .order_by(AuditLog.seq)
        .execution_options(populate_existing=True)
    )
    return list(rows)


async def appended(
    database: Database, session: AsyncSession, count: int = 4
) -> tuple[AuditService, uuid.UUID]:
    """An organisation whose chain has `count` entries, and the service that wrote them."""
    organization = await create_organization(session)
    audit = AuditService(database)
    origin = Origin(ip_address="203.0.113.7", user_agent="tests", request_id="r1")
    for n in range(count):
        await audit.record(
            organization.id,
            f"test.step_{n}",
            actor=origin.actor("user", uuid.uuid4()),
            target_type="thing",
            target_id=str(n),
            details={"n": n, "note": "é"},
            session=session,
        )
    return audit, organization.id


async def tamper(session: AsyncSession, statement: str, **params: object) -> None:
    """Change the stored rows behind the service's back, as someone with SQL access would."""
    await session.execute(sa.text(statement), params)


class TestAppend:
    async def test_appends_form_an_intact_chain(
        self, database: Database, session: AsyncSession
    ) -> None:
        audit, org_id = await appended(database, session)
        entries = await chain(session, org_id)
        assert [entry.seq for entry in entries] == [1, 2, 3, 4]
        assert entries[0].prev_hash is None
        for before, after in itertools.pairwise(entries):
            assert after.prev_hash == before.hash
        assert all(entry.hash == entry_hash(entry) for entry in entries)
        head = await session.scalar(
            sa.select(AuditChainHead)
            .where(AuditChainHead.organization_id == org_id)
            .execution_options(populate_existing=True)
        )
        assert head is not None
        assert (head.seq, head.hash) == (4, entries[-1].hash)
        report = await audit.check(org_id, session=session)
        assert (report.chains, report.entries, report.breaks) == (1, 4, [])

    async def test_chains_are_per_organisation(
        self, database: Database, session: AsyncSession
    ) -> None:
        audit, first = await appended(database, session, 2)
        _, second = await appended(database, session, 3)
        assert [e.seq for e in await chain(session, first)] == [1, 2]
        assert [e.seq for e in await chain(session, second)] == [1, 2, 3]
        await tamper(
            session,
            "DELETE FROM audit_logs WHERE organization_id = :o",
            o=_uuid_param(session, second),
        )
        assert await audit.verify(first, session=session) == []
        assert await audit.verify(session=session) == [
            ChainBreak(second, 1, "the head is at 3, the chain ends at 0")
        ]


class TestVerifyFindsTampering:
    async def test_an_edited_entry(self, database: Database, session: AsyncSession) -> None:
        audit, org_id = await appended(database, session)
        await tamper(
            session,
            "UPDATE audit_logs SET action = 'test.innocent' WHERE organization_id = :o AND seq = 2",
            o=_uuid_param(session, org_id),
        )
        assert await audit.verify(org_id, session=session) == [
            ChainBreak(org_id, 2, "content does not match its hash")
        ]

    async def test_an_edited_entry_with_its_hash_recomputed(
        self, database: Database, session: AsyncSession
    ) -> None:
        audit, org_id = await appended(database, session)
        entry = (await chain(session, org_id))[1]
        entry.details = {"n": 99}
        entry.hash = entry_hash(entry)
        await session.flush()
        assert await audit.verify(org_id, session=session) == [
            ChainBreak(org_id, 3, "does not link to the entry before it")
        ]

    async def test_a_deleted_middle_entry(self, database: Database, session: AsyncSession) -> None:
        audit, org_id = await appended(database, session)
        await tamper(
            session,
            "DELETE FROM audit_logs WHERE organization_id = :o AND seq = 2",
            o=_uuid_param(session, org_id),
        )
        assert await audit.verify(org_id, session=session) == [
            ChainBreak(org_id, 2, "entry missing")
        ]

    async def test_a_deleted_newest_entry(self, database: Database, session: AsyncSession) -> None:
        audit, org_id = await appended(database, session)
        await tamper(
            session,
            "DELETE FROM audit_logs WHERE organization_id = :o AND seq = 4",
            o=_uuid_param(session, org_id),
        )
        assert await audit.verify(org_id, session=session) == [
            ChainBreak(org_id, 4, "the head is at 4, the chain ends at 3")
        ]

    async def test_a_reordered_pair(self, database: Database, session: AsyncSession) -> None:
        audit, org_id = await appended(database, session)
        o = _uuid_param(session, org_id)
        swap = "UPDATE audit_logs SET seq = :to WHERE organization_id = :o AND seq = :from_"
        await tamper(session, swap, o=o, from_=2, to=-1)
        await tamper(session, swap, o=o, from_=3, to=2)
        await tamper(session, swap, o=o, from_=-1, to=3)
        assert [e.action for e in await chain(session, org_id)][1:3] == [
            "test.step_2",
            "test.step_1",
        ]
        assert await audit.verify(org_id, session=session) == [
            ChainBreak(org_id, 2, "does not link to the entry before it")
        ]

    async def test_a_missing_head(self, database: Database, session: AsyncSession) -> None:
        audit, org_id = await appended(database, session)
        await tamper(
            session,
            "DELETE FROM audit_chain_heads WHERE organization_id = :o",
            o=_uuid_param(session, org_id),
        )
        assert await audit.verify(org_id, session=session) == [
            ChainBreak(org_id, 4, "the chain has no head")
        ]

    async def test_a_head_pointing_at_another_hash(
        self, database: Database, session: AsyncSession
    ) -> None:
        audit, org_id = await appended(database, session)
        await tamper(
            session,
            "UPDATE audit_chain_heads SET hash = :h WHERE organization_id = :o",
            h="0" * 64,
            o=_uuid_param(session, org_id),
        )
        assert await audit.verify(org_id, session=session) == [
            ChainBreak(org_id, 4, "the head's hash is not the last entry's")
        ]

    async def test_an_entry_slipped_in_ahead_of_the_chain(
        self, database: Database, session: AsyncSession
    ) -> None:
        audit, org_id = await appended(database, session)
        first = (await chain(session, org_id))[0]
        forged = AuditLog(
            organization_id=org_id,
            seq=0,
            actor_type="system",
            action="test.forged",
            request_data={},
            details={},
            prev_hash=None,
            created_at=first.created_at,
        )
        forged.hash = entry_hash(forged)
        session.add(forged)
        await session.flush()
        assert await audit.verify(org_id, session=session) == [
            ChainBreak(org_id, 0, "an entry outside the chain")
        ]


def _uuid_param(session: AsyncSession, value: uuid.UUID) -> object:
    """A UUID as the dialect stores it, for raw SQL (SQLite keeps 32 hex characters)."""
    return value if session.get_bind().dialect.name == "postgresql" else value.hex


class TestConcurrentAppends:
    async def test_racing_transactions_keep_one_contiguous_chain(
        self, race_database: Database
    ) -> None:
        organization = await OrganizationService(race_database, PlanService(race_database)).create(
            name="audit race"
        )
        audit = AuditService(race_database)
        workers = 24

        class Abandoned(Exception):
            pass

        async def worker(n: int) -> None:
            async with race_database.transaction() as s:
                await audit.record(organization.id, f"race.{n}.a", session=s)
                await asyncio.sleep(0)  # let the others queue on the head
                await audit.record(organization.id, f"race.{n}.b", session=s)
                if n % 4 == 0:  # rolled back: must leave no gap
                    raise Abandoned

        results = await asyncio.gather(*(worker(n) for n in range(workers)), return_exceptions=True)
        abandoned = [n for n, result in enumerate(results) if isinstance(result, Abandoned)]
        assert all(result is None or isinstance(result, Abandoned) for result in results)
        assert len(abandoned) == workers // 4

        async with race_database.session(readonly=True) as s:
            entries = await chain(s, organization.id)
        kept = 1 + 2 * (workers - len(abandoned))  # and the organisation's creation
        assert [entry.seq for entry in entries] == list(range(1, kept + 1))
        assert {entry.action for entry in entries} == {"organization.created"} | {
            f"race.{n}.{part}" for n in range(workers) if n not in abandoned for part in "ab"
        }
        report = await audit.check(organization.id)
        assert (report.chains, report.entries, report.breaks) == (1, kept, [])


def tricky(
    n: int, *, full: bool
) -> tuple[ApiKeyRevoked, Actor, str | None, dict[str, object] | None]:
    """An audited, public event (payload, actor, target, request data) whose entry has
    non-ASCII, quoted and escaped text and, unless `full`, its optional fields NULL."""
    payload = ApiKeyRevoked(key_id=uuid.uuid4(), name=f'clé "{n}" \\ \n 😀 \u2028', prefix="sk_é")
    if not full:
        return payload, Actor("system"), None, None
    actor = Actor("user", f"ü-{n}", uuid.uuid4(), "2001:db8::1", 'agent "ß" \\ 日本', "r\t1")
    return payload, actor, f"ключ-{n}", {"note": "naïve", "n": -0.0, "big": 1e308}


@only_postgresql
class TestOneStatementAppend:
    """On PostgreSQL, appending to a chain whose head exists is one statement that hashes in
    SQL: its hashes must be `entry_hash`'s, byte for byte, and hold under concurrency."""

    async def test_the_sql_hash_is_entry_hash(self, scratch: Database) -> None:
        audit = AuditService(scratch)
        bus = audited_bus(audit)
        async with scratch.transaction() as s:
            org_id = (await create_organization(s)).id
            await bus.emit(s, org_id, revoked())  # the chain's first entry makes its head
        statements: list[str] = []

        def seen(*args: object) -> None:
            statements.append(str(args[2]))

        sa.event.listen(scratch.engine.sync_engine, "before_cursor_execute", seen)
        try:
            async with scratch.transaction() as s:  # one entry, then three in one block
                for events in ([tricky(0, full=True)], [tricky(n, full=n != 2) for n in (1, 2, 3)]):
                    async with bus.deferred(s):
                        for payload, actor, target_id, request_data in events:
                            await bus.emit(
                                s,
                                org_id,
                                payload,
                                actor=actor,
                                target_id=target_id,
                                request_data=request_data,
                            )
        finally:
            sa.event.remove(scratch.engine.sync_engine, "before_cursor_execute", seen)
        # Each block: the chain's entries and the events' outbox rows in one statement.
        assert len(statements) == 2
        async with scratch.session(readonly=True) as s:
            entries = await chain(s, org_id)
            outbox = await s.scalar(
                sa.select(sa.func.count()).where(OutboxEvent.organization_id == org_id)
            )
        assert [entry.seq for entry in entries] == [1, 2, 3, 4, 5]
        for before, after in itertools.pairwise(entries):
            assert after.prev_hash == before.hash
        assert all(entry.hash == entry_hash(entry) for entry in entries)
        assert entries[2].actor_id == "ü-1"
        assert (entries[3].actor_id, entries[3].target_id, entries[3].user_agent) == (None,) * 3
        assert outbox == 5
        assert await audit.verify(org_id) == []

    async def test_32_racing_appends_keep_one_intact_chain(self, race_database: Database) -> None:
        """32 transactions append at once (as many at a time as the pool has connections),
        some two entries in one statement, some rolled back."""
        audit = AuditService(race_database)
        bus = audited_bus(audit)
        async with race_database.transaction() as s:
            org_id = (await create_organization(s)).id
            await bus.emit(s, org_id, revoked(), target_id="head")

        class Abandoned(Exception):
            pass

        async def worker(n: int) -> None:
            async with race_database.transaction() as s:
                async with bus.deferred(s):
                    for part in "ab" if n % 3 == 0 else "a":
                        await bus.emit(s, org_id, revoked(), target_id=f"{n}{part}")
                if n % 8 == 0:  # rolled back: must leave no gap
                    raise Abandoned

        results = await asyncio.gather(*(worker(n) for n in range(32)), return_exceptions=True)
        assert [r for r in results if r is not None and not isinstance(r, Abandoned)] == []
        kept = [n for n, result in enumerate(results) if result is None]
        targets = {f"{n}{part}" for n in kept for part in ("ab" if n % 3 == 0 else "a")}
        async with race_database.session(readonly=True) as s:
            entries = await chain(s, org_id)
            outbox = await s.scalar(
                sa.select(sa.func.count()).where(OutboxEvent.organization_id == org_id)
            )
        assert [entry.seq for entry in entries] == list(range(1, len(targets) + 2))
        assert {entry.target_id for entry in entries} == targets | {"head"}
        assert outbox == len(targets) + 1
        report = await audit.check(org_id)
        assert (report.chains, report.entries, report.breaks) == (1, len(targets) + 1, [])


def revoked() -> ApiKeyRevoked:
    return ApiKeyRevoked(key_id=uuid.uuid4(), name="ingest", prefix="sk_live_ab12cd34")

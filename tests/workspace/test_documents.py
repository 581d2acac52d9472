"""Folders and documents: the storage gauge stays equal to the documents under races,
folder moves cannot make cycles, recursive deletes free exactly what they delete, and
`verify_storage` finds and repairs a drift (audited)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import random
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService, audited_bus
from saascore.config import DatabaseBackend
from saascore.core import Saascore
from saascore.events.bus import OUTBOX_CHANNEL, Event
from saascore.kit.db import Database
from saascore.kit.errors import DatabaseUnavailable
from saascore.metering.accounts import usage_account
from saascore.metering.errors import LimitExceeded
from saascore.metering.service import UsageService
from saascore.models import (
    AuditChainHead,
    AuditLog,
    Document,
    Folder,
    OutboxEvent,
    PaymentProvider,
    UsageLimits,
)
from saascore.workspace.documents import DocumentService, Registered
from saascore.workspace.errors import (
    DocumentNotFound,
    FolderCycle,
    FolderNameTaken,
    FolderNotEmpty,
    FolderNotFound,
)
from tests.factories import create_organization, create_organization_row, create_plan
from tests.helpers import only_postgresql

WORKERS = 32


async def new_org(database: Database, storage_bytes: int | None = None) -> uuid.UUID:
    async with database.transaction() as session:
        organization = await create_organization(session, plan=await create_plan(session))
    if storage_bytes is not None:
        await UsageService(database).set_limit(organization.id, "storage_bytes", storage_bytes)
    return organization.id


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def register(
    documents: DocumentService, org_id: uuid.UUID, size: int, **kwargs: object
) -> Registered:
    return await documents.register(
        org_id,
        filename="a.pdf",
        size_bytes=size,
        file_hash=str(kwargs.pop("file_hash", sha(uuid.uuid4().hex))),
        **kwargs,  # type: ignore[arg-type]
    )


async def gauge(database: Database, org_id: uuid.UUID) -> tuple[int, int]:
    return await DocumentService(database).storage_used(org_id)


class TestRegistrationRace:
    async def test_concurrent_registrations_never_pass_the_limit(
        self, race_database: Database, backend: str
    ) -> None:
        limit = 10_000
        org_id = await new_org(race_database, storage_bytes=limit)
        documents = DocumentService(race_database)
        rng = random.Random(f"register-{backend}")
        sizes = [rng.randint(200, 800) for _ in range(WORKERS)]

        async def worker(size: int) -> int:
            try:
                await register(documents, org_id, size)
            except LimitExceeded:
                return 0
            return size

        accepted = await asyncio.gather(*(worker(size) for size in sizes))
        recorded, actual = await gauge(race_database, org_id)
        assert sum(accepted) <= limit
        assert recorded == actual == sum(accepted)
        assert any(size == 0 for size in accepted), "the limit refused nothing"
        # Each refusal was right: the one refused would not have fitted in what was left.
        refused = [s for s, a in zip(sizes, accepted, strict=True) if a == 0]
        assert all(recorded + size > limit for size in refused)

    async def test_a_random_mix_of_registrations_and_deletions_keeps_the_gauge(
        self, race_database: Database, backend: str
    ) -> None:
        org_id = await new_org(race_database, storage_bytes=50_000)
        documents = DocumentService(race_database)
        seeded = [(await register(documents, org_id, 500 + i)).document.id for i in range(16)]
        rng = random.Random(f"mix-{backend}")

        async def worker(n: int) -> None:
            if n % 2 and seeded:
                # A document a racing worker deleted first is not found: freed once.
                with contextlib.suppress(DocumentNotFound):
                    await documents.delete_document(org_id, seeded[n % len(seeded)])
            else:
                with contextlib.suppress(LimitExceeded):
                    await register(documents, org_id, rng.randint(1, 3_000))

        await asyncio.gather(*(worker(n) for n in range(WORKERS)))
        recorded, actual = await gauge(race_database, org_id)
        assert recorded == actual

    async def test_identical_content_racing_is_registered_once(
        self, race_database: Database
    ) -> None:
        org_id = await new_org(race_database, storage_bytes=1_000_000)
        documents = DocumentService(race_database)
        digest = sha("same")
        outcomes = await asyncio.gather(
            *(register(documents, org_id, 700, file_hash=digest) for _ in range(8))
        )
        assert sum(outcome.created for outcome in outcomes) == 1
        assert len({outcome.document.id for outcome in outcomes}) == 1
        assert await gauge(race_database, org_id) == (700, 700)


class TestDocuments:
    async def test_same_hash_in_another_folder_is_another_document(self, scratch: Database) -> None:
        org_id = await new_org(scratch)
        documents = DocumentService(scratch)
        folder = await documents.create_folder(org_id, "Inbox")
        first = await register(documents, org_id, 10, file_hash=sha("x"))
        again = await register(documents, org_id, 10, file_hash=sha("x").upper())
        elsewhere = await register(documents, org_id, 10, file_hash=sha("x"), folder_id=folder.id)
        assert first.created
        assert not again.created
        assert elsewhere.created
        assert again.document.id == first.document.id
        assert await gauge(scratch, org_id) == (20, 20)

    async def test_a_refused_registration_changes_nothing(self, scratch: Database) -> None:
        org_id = await new_org(scratch, storage_bytes=100)
        documents = DocumentService(scratch)
        await register(documents, org_id, 60)
        with pytest.raises(LimitExceeded):
            await register(documents, org_id, 41)
        assert await gauge(scratch, org_id) == (60, 60)
        assert len(await documents.list_documents(org_id)) == 1

    async def test_a_refusal_leaves_a_callers_session_as_it_was(self, scratch: Database) -> None:
        org_id = await new_org(scratch, storage_bytes=100)
        documents = DocumentService(scratch)
        async with scratch.transaction() as session:
            await register(documents, org_id, 60, session=session)
            with pytest.raises(LimitExceeded):
                await register(documents, org_id, 41, session=session)
            assert len(await documents.list_documents(org_id, session=session)) == 1
        assert await gauge(scratch, org_id) == (60, 60)

    async def test_an_empty_file_passes_a_limit_already_passed(self, scratch: Database) -> None:
        org_id = await new_org(scratch, storage_bytes=100)
        documents = DocumentService(scratch)
        await register(documents, org_id, 80)
        await UsageService(scratch).set_limit(org_id, "storage_bytes", 50)
        assert (await register(documents, org_id, 0)).created
        with pytest.raises(LimitExceeded):
            await register(documents, org_id, 1)
        assert await gauge(scratch, org_id) == (80, 80)

    async def test_an_organisation_without_a_usage_limits_row(self, scratch: Database) -> None:
        async with scratch.transaction() as session:
            org_id, _ = await create_organization_row(session)
        documents = DocumentService(scratch)
        assert (await register(documents, org_id, 10)).created
        assert await gauge(scratch, org_id) == (10, 10)

    @pytest.mark.parametrize("digest", ["", "g" * 64, "a" * 63, "a" * 65])
    async def test_a_bad_hash_is_refused(self, scratch: Database, digest: str) -> None:
        org_id = await new_org(scratch)
        with pytest.raises(Exception, match="file_hash"):
            await register(DocumentService(scratch), org_id, 1, file_hash=digest)

    @pytest.mark.parametrize("size", [-1, 2**63, "10", True, 10.0])
    async def test_a_bad_size_is_refused(self, scratch: Database, size: int) -> None:
        org_id = await new_org(scratch)
        with pytest.raises(Exception, match="size_bytes"):
            await register(DocumentService(scratch), org_id, size)


class TestWhatARegistrationWrites:
    """A registration on its own (on PostgreSQL one statement, on SQLite a session) writes
    what a session's does: the row, the gauge, the `document.created` audit entry on an
    intact chain, and the outbox row, or nothing at all."""

    async def test_the_document_its_audit_entry_and_its_outbox_row(self, scratch: Database) -> None:
        org_id = await new_org(scratch, storage_bytes=10_000)
        audit = AuditService(scratch)
        documents = DocumentService(scratch, audit=audit)
        assert documents._in_one_statement() is (scratch.backend is DatabaseBackend.POSTGRESQL)
        # The first entry of the organisation's chain, and one after it.
        first = await register(documents, org_id, 100, file_hash=sha("first"))
        registered = await register(
            documents, org_id, 200, file_hash=sha("second"), metadata={"pages": 3}
        )
        stored = await documents.get_document(org_id, registered.document.id)
        for column in sa.inspect(Document).columns:
            key = sa.inspect(Document).get_property_by_column(column).key
            assert getattr(registered.document, key) == getattr(stored, key), key
        assert sa.inspect(registered.document).detached
        assert await gauge(scratch, org_id) == (300, 300)
        entries = await audit.list(org_id, action="document.created")
        assert [entry.target_id for entry in entries] == [
            str(registered.document.id),
            str(first.document.id),
        ]
        assert entries[0].details == {
            "document_id": str(registered.document.id),
            "folder_id": None,
            "filename": "a.pdf",
            "size_bytes": 200,
            "file_hash": sha("second"),
        }
        assert await audit.verify(org_id) == []
        async with scratch.session(readonly=True) as session:
            bodies = (
                await session.scalars(
                    sa.select(OutboxEvent.body)
                    .where(OutboxEvent.organization_id == org_id)
                    .order_by(OutboxEvent.id)
                )
            ).all()
        assert [body["type"] for body in bodies] == ["document.created"] * 2
        assert bodies[1]["data"] == entries[0].details

    @only_postgresql
    async def test_dispatchers_are_woken_after_the_commit(self, scratch: Database) -> None:
        org_id = await new_org(scratch)
        documents = DocumentService(scratch)
        heard: asyncio.Queue[str] = asyncio.Queue()
        async with scratch.engine.connect() as listening:
            raw = (await listening.get_raw_connection()).driver_connection
            assert raw is not None
            await raw.add_listener(OUTBOX_CHANNEL, lambda *args: heard.put_nowait(args[2]))
            await register(documents, org_id, 10)
            await documents.settle()
            assert await asyncio.wait_for(heard.get(), timeout=10) == OUTBOX_CHANNEL

    async def test_a_refusal_writes_no_entry_and_no_outbox_row(self, scratch: Database) -> None:
        org_id = await new_org(scratch, storage_bytes=100)
        audit = AuditService(scratch)
        documents = DocumentService(scratch, audit=audit)
        await register(documents, org_id, 60)
        with pytest.raises(LimitExceeded) as refused:
            await register(documents, org_id, 41)
        assert (refused.value.used, refused.value.limit, refused.value.requested) == (60, 100, 41)
        assert len(await audit.list(org_id, action="document.created")) == 1
        async with scratch.session(readonly=True) as session:
            outbox = await session.scalar(
                sa.select(sa.func.count())
                .select_from(OutboxEvent)
                .where(
                    OutboxEvent.organization_id == org_id, OutboxEvent.type == "document.created"
                )
            )
        assert outbox == 1
        assert await audit.verify(org_id) == []

    async def test_a_folder_that_is_not_there(self, scratch: Database) -> None:
        org_id = await new_org(scratch)
        other = await new_org(scratch)
        documents = DocumentService(scratch)
        elsewhere = await documents.create_folder(other, "Theirs")
        for folder_id in (uuid.uuid4(), elsewhere.id):
            with pytest.raises(FolderNotFound):
                await register(documents, org_id, 10, folder_id=folder_id)
        assert await gauge(scratch, org_id) == (0, 0)

    async def test_a_refusal_into_a_folder_not_there_says_the_folder(
        self, scratch: Database
    ) -> None:
        org_id = await new_org(scratch, storage_bytes=100)
        other = await new_org(scratch)
        documents = DocumentService(scratch)
        await register(documents, org_id, 60)
        elsewhere = await documents.create_folder(other, "Theirs")
        for folder_id in (uuid.uuid4(), elsewhere.id):
            with pytest.raises(FolderNotFound):
                await register(documents, org_id, 50, folder_id=folder_id)
        assert await gauge(scratch, org_id) == (60, 60)

    async def test_another_in_transaction_handler_still_runs(self, scratch: Database) -> None:
        org_id = await new_org(scratch)
        audit = AuditService(scratch)
        bus = audited_bus(audit)
        seen: list[str] = []

        async def handler(session: AsyncSession, event: Event) -> None:
            seen.append(event.type)

        bus.in_transaction(handler)
        documents = DocumentService(scratch, events=bus, audit=audit)
        assert not documents._in_one_statement()
        await register(documents, org_id, 10)
        assert seen == ["document.created"]
        assert len(await audit.list(org_id, action="document.created")) == 1


class TestBatches:
    """Registrations that arrive together share a transaction on PostgreSQL (group commit):
    decided in arrival order, each answered as it would be on its own; what a batch cannot
    answer (content there already, a folder that is not, a chain with no head yet), each
    registration answers on its own. On SQLite the same calls run one by one, with the same
    answers."""

    @staticmethod
    def batches(documents: DocumentService) -> list[int]:
        """The sizes of the batches `documents` tries from now on."""
        sizes: list[int] = []
        batch = documents._register_batch

        async def spy(items: list, locked: Callable[[], None]) -> list:  # type: ignore[type-arg]
            sizes.append(len(items))
            return await batch(items, locked)

        documents._register_batch = spy  # type: ignore[method-assign]
        return sizes

    @staticmethod
    async def outbox_types(database: Database, org_id: uuid.UUID) -> list[str]:
        async with database.session(readonly=True) as session:
            return list(
                (
                    await session.scalars(
                        sa.select(OutboxEvent.type)
                        .where(OutboxEvent.organization_id == org_id)
                        .order_by(OutboxEvent.id)
                    )
                ).all()
            )

    @only_postgresql
    async def test_a_batch_decides_in_arrival_order(self, scratch: Database) -> None:
        first, second = await new_org(scratch, 2_500), await new_org(scratch, 1_000)
        audit = AuditService(scratch)
        documents = DocumentService(scratch, audit=audit)
        batches = self.batches(documents)
        # One after another: 1000 in; 2000 over (1000 of 2500 used); 1500 in (2500); 1 over;
        # an empty file in at the limit; and the second organisation's own 900 and 200.
        calls = [(first, 1_000), (first, 2_000), (second, 900), (first, 1_500), (first, 1)]
        calls += [(second, 200), (first, 0)]
        outcomes = await asyncio.gather(
            *(register(documents, org_id, size) for org_id, size in calls), return_exceptions=True
        )
        assert batches == [len(calls)]
        refused = {n: o for n, o in enumerate(outcomes) if isinstance(o, LimitExceeded)}
        assert {n: (o.used, o.limit, o.requested) for n, o in refused.items()} == {
            1: (1_000, 2_500, 2_000),
            4: (2_500, 2_500, 1),
            5: (900, 1_000, 200),
        }
        registered = [o for o in outcomes if isinstance(o, Registered)]
        assert len(registered) == len(calls) - len(refused)
        assert await gauge(scratch, first) == (2_500, 2_500)
        assert await gauge(scratch, second) == (900, 900)
        # Each organisation's entries, in arrival order, on an intact chain; an outbox row
        # each.
        for org_id in (first, second):
            mine = [o.document for o in registered if o.document.organization_id == org_id]
            entries = await audit.list(org_id, action="document.created")
            assert [entry.target_id for entry in reversed(entries)] == [str(d.id) for d in mine]
            assert [entry.seq for entry in entries] == sorted(
                (entry.seq for entry in entries), reverse=True
            )
            assert await self.outbox_types(scratch, org_id) == ["document.created"] * len(mine)
            assert await audit.verify(org_id) == []
        # Each document as stored is the one its caller was given.
        for outcome in registered:
            stored = await documents.get_document(
                outcome.document.organization_id, outcome.document.id
            )
            assert (stored.size_bytes, stored.created_at) == (
                outcome.document.size_bytes,
                outcome.document.created_at,
            )

    async def test_content_already_there(self, scratch: Database, backend: str) -> None:
        org_id = await new_org(scratch, 10_000)
        audit = AuditService(scratch)
        documents = DocumentService(scratch, audit=audit)
        batches = self.batches(documents)
        there = await register(documents, org_id, 100, file_hash=sha("there"))
        outcomes = await asyncio.gather(
            register(documents, org_id, 200, file_hash=sha("new")),
            register(documents, org_id, 100, file_hash=sha("there")),
            register(documents, org_id, 300, file_hash=sha("twice")),
            register(documents, org_id, 300, file_hash=sha("twice")),
        )
        assert batches == ([4] if backend == "postgresql" else [])
        assert [o.created for o in outcomes[:2]] == [True, False]
        assert outcomes[1].document.id == there.document.id
        # Of the same content twice, one registers it (the first on PostgreSQL; on SQLite
        # whichever writes first) and the other is given that document.
        assert sorted(o.created for o in outcomes[2:]) == [False, True]
        assert outcomes[3].document.id == outcomes[2].document.id
        assert await gauge(scratch, org_id) == (600, 600)
        assert len(await audit.list(org_id, action="document.created")) == 3
        assert await audit.verify(org_id) == []

    async def test_a_folder_that_is_not_there(self, scratch: Database) -> None:
        org_id = await new_org(scratch, 10_000)
        documents = DocumentService(scratch)
        folder = await documents.create_folder(org_id, "Here")
        outcomes = await asyncio.gather(
            register(documents, org_id, 10, folder_id=uuid.uuid4()),
            register(documents, org_id, 20),
            register(documents, org_id, 30, folder_id=folder.id),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], FolderNotFound)
        assert [o.created for o in outcomes[1:]] == [True, True]  # type: ignore[union-attr]
        assert await gauge(scratch, org_id) == (50, 50)

    async def test_a_refusal_into_a_folder_not_there_says_the_folder(
        self, scratch: Database
    ) -> None:
        org_id = await new_org(scratch, 100)
        documents = DocumentService(scratch)
        outcomes = await asyncio.gather(
            register(documents, org_id, 60),
            register(documents, org_id, 50, folder_id=uuid.uuid4()),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], Registered)
        assert isinstance(outcomes[1], FolderNotFound)
        assert await gauge(scratch, org_id) == (60, 60)

    async def test_a_chain_with_no_head_yet(self, scratch: Database) -> None:
        org_id, other = await new_org(scratch, 10_000), await new_org(scratch, 10_000)
        async with scratch.transaction() as session:
            for table in (AuditLog, AuditChainHead):
                await session.execute(sa.delete(table).where(table.organization_id == org_id))
        audit = AuditService(scratch)
        documents = DocumentService(scratch, audit=audit)
        outcomes = await asyncio.gather(
            register(documents, org_id, 10),
            register(documents, other, 20),
            register(documents, org_id, 30),
        )
        assert [o.created for o in outcomes] == [True, True, True]
        assert await gauge(scratch, org_id) == (40, 40)
        assert [entry.seq for entry in await audit.list(org_id)] == [2, 1]
        assert await audit.verify() == []

    @only_postgresql
    async def test_one_stuck_organisation_leaves_the_others_registered(
        self, scratch: Database
    ) -> None:
        """Another transaction holds one organisation's gauge past the statement timeout: its
        registration fails (503), and those of others in the same batch go in, as they
        would on their own."""
        database = Database(scratch.settings.model_copy(update={"db_statement_timeout": 0.5}))
        try:
            stuck, free = await new_org(database, 10_000), await new_org(database, 10_000)
            documents = DocumentService(database)
            batches = self.batches(documents)
            async with database.engine.connect() as holder:
                await holder.begin()
                await holder.execute(
                    sa.select(UsageLimits.organization_id)
                    .where(UsageLimits.organization_id == stuck)
                    .with_for_update()
                )
                outcomes = await asyncio.gather(
                    register(documents, stuck, 10),
                    register(documents, free, 20),
                    register(documents, free, 30),
                    return_exceptions=True,
                )
                await holder.rollback()
            assert batches == [3]
            assert isinstance(outcomes[0], DatabaseUnavailable)
            assert [o.created for o in outcomes[1:]] == [True, True]  # type: ignore[union-attr]
            assert await gauge(database, free) == (50, 50)
            assert await gauge(database, stuck) == (0, 0)
        finally:
            await database.dispose()

    @only_postgresql
    @pytest.mark.parametrize("holder", ["delete", "rename", "link"])
    @pytest.mark.parametrize("path", ["session", "statement", "batch"])
    async def test_registrations_and_other_lockers_wait_rather_than_deadlock(
        self, scratch: Database, path: str, holder: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Another transaction takes two of the rows a registration locks, one before the
        registrations start and one after they wait: a recursive folder delete (the folder
        FOR UPDATE, then the gauge), a folder's rename (the gauge, then the folder), a
        provider's customer being linked (the organisation, then the gauge, as the Lemon
        Squeezy intake does before granting credits). Registrations into the folder and
        beside it, in a session, as one statement and as a batch, take theirs in an order
        that lets the holder's second lock be granted: nobody deadlocks."""
        org_id = await new_org(scratch, 10_000)
        documents = DocumentService(scratch, group_commit=path == "batch")
        folder = await documents.create_folder(org_id, "Held")
        core = Saascore(scratch.settings)

        async def register_by_path(size: int, **kwargs: object) -> Registered:
            if path != "session":
                return await register(documents, org_id, size, **kwargs)
            async with scratch.transaction() as session:
                return await register(documents, org_id, size, session=session, **kwargs)

        async def first(side: AsyncSession) -> None:
            if holder == "delete":
                await side.execute(
                    sa.select(Folder.id).where(Folder.id == folder.id).with_for_update()
                )
            elif holder == "rename":
                await usage_account(side, org_id)
            else:
                await core.provider_billing.link_customer(
                    org_id, PaymentProvider.STRIPE, f"cus_{uuid.uuid4().hex}", session=side
                )

        async def second(side: AsyncSession) -> None:
            if holder == "rename":
                await documents.update_folder(org_id, folder.id, name="Renamed", session=side)
            else:
                await usage_account(side, org_id)

        try:
            async with scratch.session() as side:
                await first(side)
                registering = asyncio.gather(
                    register_by_path(10, folder_id=folder.id),
                    register_by_path(20),
                    return_exceptions=True,
                )
                await asyncio.sleep(0.3)  # the registrations reach their locks
                await second(side)
                await side.rollback()
                outcomes = await registering
        finally:
            await core.close()
        assert [o.created for o in outcomes] == [True, True]  # type: ignore[union-attr]
        assert await gauge(scratch, org_id) == (30, 30)
        # Nor was a batch undone by a deadlock and done again one by one.
        assert not [r for r in caplog.records if r.name == "saascore.workspace.documents"]

    @only_postgresql
    async def test_a_caller_cancelled_while_queued_registers_nothing(
        self, scratch: Database
    ) -> None:
        org_id = await new_org(scratch, 10_000)
        documents = DocumentService(scratch)
        tasks = [asyncio.create_task(register(documents, org_id, 10)) for _ in range(4)]
        await asyncio.sleep(0)  # all four queued, no batch formed yet
        tasks[3].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(outcomes[3], asyncio.CancelledError)
        assert all(isinstance(o, Registered) for o in outcomes[:3])
        assert await gauge(scratch, org_id) == (30, 30)

    async def test_the_same_content_from_two_processes_at_once(
        self, race_database: Database
    ) -> None:
        """Copies of one file, among other files, from two services at once: their batches
        and their single registrations lock in one order, so none fails; the copies make one
        document."""
        org_id = await new_org(race_database, storage_bytes=1_000_000)
        services = [DocumentService(race_database) for _ in range(2)]
        same = sha("one file")
        calls = [(n % 2, same if n % 3 else sha(f"file {n}")) for n in range(WORKERS)]
        outcomes = await asyncio.gather(
            *(register(services[s], org_id, 100, file_hash=digest) for s, digest in calls)
        )
        copies = [o for o, (_, digest) in zip(outcomes, calls, strict=True) if digest == same]
        assert sum(copy.created for copy in copies) == 1
        assert len({copy.document.id for copy in copies}) == 1
        others = [o for o, (_, digest) in zip(outcomes, calls, strict=True) if digest != same]
        assert all(other.created for other in others)
        assert await gauge(race_database, org_id) == (100 * (1 + len(others)),) * 2

    async def test_two_processes_batching_and_deleting_keep_every_invariant(
        self, race_database: Database, backend: str
    ) -> None:
        """Two services (two processes' group commits) register into three organisations at
        once while a third deletes: every gauge equals its documents and stays within its
        limit, and every chain is intact, with an entry and an outbox row per change."""
        limit = 12_000
        orgs = [await new_org(race_database, storage_bytes=limit) for _ in range(3)]
        audit = AuditService(race_database)
        services = [DocumentService(race_database, audit=audit) for _ in range(3)]
        rng = random.Random(f"two-processes-{backend}")
        sizes = [rng.randint(100, 900) for _ in range(2 * WORKERS)]
        kept: list[tuple[uuid.UUID, uuid.UUID]] = []

        async def registering(n: int) -> None:
            org_id = orgs[n % len(orgs)]
            with contextlib.suppress(LimitExceeded):
                outcome = await register(services[n % 2], org_id, sizes[n])
                kept.append((org_id, outcome.document.id))

        async def deleting() -> int:
            deleted = 0
            for _ in range(1_000):  # while the registrations go on
                if deleted == WORKERS // 2:
                    break
                if not kept:
                    await asyncio.sleep(0.005)
                    continue
                org_id, document_id = kept.pop(rng.randrange(len(kept)))
                await services[2].delete_document(org_id, document_id)
                deleted += 1
            return deleted

        *_, deletions = await asyncio.gather(
            *(registering(n) for n in range(2 * WORKERS)), deleting()
        )
        assert deletions > 0
        for org_id in orgs:
            recorded, actual = await gauge(race_database, org_id)
            assert recorded == actual <= limit
            created = len(await audit.list(org_id, action="document.created", limit=1_000))
            deleted = len(await audit.list(org_id, action="document.deleted", limit=1_000))
            async with race_database.session(readonly=True) as session:
                count = await session.scalar(
                    sa.select(sa.func.count())
                    .select_from(Document)
                    .where(Document.organization_id == org_id)
                )
            assert created - deleted == count
            assert collections.Counter(
                await self.outbox_types(race_database, org_id)
            ) == collections.Counter({"document.created": created, "document.deleted": deleted})
            assert await audit.verify(org_id) == []


class TestFolders:
    async def test_paths_names_and_moves(self, scratch: Database) -> None:
        org_id = await new_org(scratch)
        documents = DocumentService(scratch)
        a = await documents.create_folder(org_id, "A")
        b = await documents.create_folder(org_id, "B", parent_id=a.id)
        c = await documents.create_folder(org_id, "C", parent_id=b.id)
        assert c.path == "/A/B/C"
        with pytest.raises(FolderNameTaken):
            await documents.create_folder(org_id, "B", parent_id=a.id)
        await documents.create_folder(org_id, "b", parent_id=a.id)  # case counts
        moved = await documents.update_folder(org_id, b.id, move=True, parent_id=None)
        assert moved.path == "/B"
        assert (await documents.get_folder(org_id, c.id)).path == "/B/C"
        await documents.update_folder(org_id, b.id, name="Bee")
        assert (await documents.get_folder(org_id, c.id)).path == "/Bee/C"

    async def test_moves_that_make_a_cycle_are_refused(self, scratch: Database) -> None:
        org_id = await new_org(scratch)
        documents = DocumentService(scratch)
        a = await documents.create_folder(org_id, "A")
        b = await documents.create_folder(org_id, "B", parent_id=a.id)
        c = await documents.create_folder(org_id, "C", parent_id=b.id)
        for target in (a.id, b.id, c.id):
            with pytest.raises(FolderCycle):
                await documents.update_folder(org_id, a.id, move=True, parent_id=target)
        assert (await documents.get_folder(org_id, a.id)).parent_id is None

    async def test_racing_opposite_moves_make_no_cycle(self, race_database: Database) -> None:
        org_id = await new_org(race_database)
        documents = DocumentService(race_database)
        a = await documents.create_folder(org_id, "A")
        b = await documents.create_folder(org_id, "B")
        outcomes = await asyncio.gather(
            documents.update_folder(org_id, a.id, move=True, parent_id=b.id),
            documents.update_folder(org_id, b.id, move=True, parent_id=a.id),
            return_exceptions=True,
        )
        assert sum(isinstance(outcome, FolderCycle) for outcome in outcomes) == 1

    async def test_recursive_delete_frees_exactly_the_deleted_sizes(
        self, scratch: Database
    ) -> None:
        org_id = await new_org(scratch, storage_bytes=1_000_000)
        documents = DocumentService(scratch)
        top = await documents.create_folder(org_id, "top")
        sub = await documents.create_folder(org_id, "sub", parent_id=top.id)
        other = await documents.create_folder(org_id, "other")
        for size, folder in [(100, top), (250, sub), (33, sub), (7, other)]:
            await register(documents, org_id, size, folder_id=folder.id)
        await register(documents, org_id, 1_000)
        with pytest.raises(FolderNotEmpty):
            await documents.delete_folder(org_id, top.id)
        deleted = await documents.delete_folder(org_id, top.id, recursive=True)
        assert (deleted.folders, deleted.documents, deleted.freed_bytes) == (2, 3, 383)
        assert await gauge(scratch, org_id) == (1_007, 1_007)
        await documents.delete_folder(org_id, (await documents.create_folder(org_id, "e")).id)


class TestVerify:
    async def test_verify_finds_a_drift_and_fix_repairs_it_with_an_audit_entry(
        self, scratch: Database
    ) -> None:
        org_id = await new_org(scratch)
        documents = DocumentService(scratch)
        await register(documents, org_id, 1_234)
        async with scratch.transaction() as session:
            await session.execute(
                sa.update(UsageLimits)
                .where(UsageLimits.organization_id == org_id)
                .values(storage_used_bytes=99)
            )
        drifts = await documents.verify_storage(org_id=org_id)
        assert [(d.recorded_bytes, d.actual_bytes) for d in drifts] == [(99, 1_234)]
        repaired = await documents.verify_storage(org_id=org_id, fix=True)
        assert [d.repaired for d in repaired] == [True]
        assert await gauge(scratch, org_id) == (1_234, 1_234)
        assert await documents.verify_storage(org_id=org_id) == []
        async with scratch.session(readonly=True) as session:
            actions = (
                await session.scalars(
                    sa.select(AuditLog.action).where(AuditLog.organization_id == org_id)
                )
            ).all()
        assert "storage.repaired" in actions
        assert "document.created" in actions

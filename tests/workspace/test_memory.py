"""Memory: key-value entries (expiry, prefix listing, upsert races, hostile values) and
conversation summaries.

Single-step tests run in the rolled-back `session`; the races commit into `race_database`.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.db import Database
from saascore.models import ConversationSummary, MemoryEntry
from saascore.workspace.errors import (
    ConversationNotFound,
    InvalidConversation,
    InvalidMemoryEntry,
    MemoryEntryNotFound,
)
from saascore.workspace.memory import MAX_VALUE_BYTES, MAX_VALUE_DEPTH, MemoryService
from tests.factories import create_organization, create_user
from tests.helpers import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def memory(database: Database, clock: Clock) -> MemoryService:
    return MemoryService(database, clock=clock)


async def keys(
    memory: MemoryService, org_id: uuid.UUID, ns: str, s: AsyncSession, **kw: object
) -> list[str]:
    return [e.key for e in await memory.list(org_id, ns, session=s, **kw)]  # type: ignore[arg-type]


class TestEntries:
    async def test_put_get_replace_delete(
        self, memory: MemoryService, session: AsyncSession
    ) -> None:
        org = await create_organization(session)
        first = await memory.put(org.id, "agent", "name", {"v": 1}, session=session)
        again = await memory.put(org.id, "agent", "name", {"v": 2}, session=session)
        assert first.id == again.id
        got = await memory.get(org.id, "agent", "name", session=session)
        assert (got.value, got.expires_at) == ({"v": 2}, None)
        await memory.delete(org.id, "agent", "name", session=session)
        with pytest.raises(MemoryEntryNotFound):
            await memory.get(org.id, "agent", "name", session=session)
        with pytest.raises(MemoryEntryNotFound):
            await memory.delete(org.id, "agent", "name", session=session)

    async def test_an_expired_entry_is_never_returned(
        self, memory: MemoryService, session: AsyncSession, clock: Clock
    ) -> None:
        org = await create_organization(session)
        await memory.put(org.id, "ns", "short", {"a": 1}, ttl_seconds=60, session=session)
        await memory.put(org.id, "ns", "long", {"a": 2}, ttl_seconds=3600, session=session)
        await memory.put(org.id, "ns", "forever", {"a": 3}, session=session)
        assert await keys(memory, org.id, "ns", session) == ["forever", "long", "short"]
        clock.advance(seconds=60)  # the moment it expires: gone
        with pytest.raises(MemoryEntryNotFound):
            await memory.get(org.id, "ns", "short", session=session)
        assert await keys(memory, org.id, "ns", session) == ["forever", "long"]
        with pytest.raises(MemoryEntryNotFound):
            await memory.delete(org.id, "ns", "short", session=session)
        # `long` expires next, and stays a row until swept.
        clock.advance(hours=1)
        assert await keys(memory, org.id, "ns", session) == ["forever"]
        assert await memory.sweep(org_id=org.id, session=session) == 1
        stored = await session.scalars(
            sa.select(MemoryEntry.key).where(MemoryEntry.organization_id == org.id)
        )
        assert stored.all() == ["forever"]

    async def test_putting_an_expired_key_again_makes_it_live(
        self, memory: MemoryService, session: AsyncSession, clock: Clock
    ) -> None:
        org = await create_organization(session)
        await memory.put(org.id, "ns", "k", {"old": True}, ttl_seconds=1, session=session)
        clock.advance(seconds=2)
        await memory.put(org.id, "ns", "k", {"new": True}, session=session)
        assert (await memory.get(org.id, "ns", "k", session=session)).value == {"new": True}

    async def test_prefix_listing_escapes_like_wildcards_and_is_exact(
        self, memory: MemoryService, session: AsyncSession
    ) -> None:
        org = await create_organization(session)
        for key in ["a%b", "a%bc", "axb", "a_b", "aXb", "A%b", "a\\b", "a\\%b", "b"]:
            await memory.put(org.id, "ns", key, {}, session=session)
        assert await keys(memory, org.id, "ns", session, prefix="a%") == ["a%b", "a%bc"]
        assert await keys(memory, org.id, "ns", session, prefix="a_") == ["a_b"]
        assert await keys(memory, org.id, "ns", session, prefix="a\\") == ["a\\%b", "a\\b"]
        assert await keys(memory, org.id, "ns", session, prefix="A") == ["A%b"]
        assert await keys(memory, org.id, "ns", session, prefix="zz") == []

    async def test_listing_pages_by_key_and_stays_in_its_namespace_and_tenant(
        self, memory: MemoryService, session: AsyncSession
    ) -> None:
        org, other = await create_organization(session), await create_organization(session)
        for i in range(5):
            await memory.put(org.id, "ns", f"k{i}", {"i": i}, session=session)
        await memory.put(org.id, "other-ns", "k9", {}, session=session)
        await memory.put(other.id, "ns", "k8", {}, session=session)
        page = await keys(memory, org.id, "ns", session, limit=2)
        assert page == ["k0", "k1"]
        assert await keys(memory, org.id, "ns", session, limit=10, after="k1") == ["k2", "k3", "k4"]
        with pytest.raises(MemoryEntryNotFound):
            await memory.get(other.id, "ns", "k0", session=session)

    @pytest.mark.parametrize(
        ("namespace", "key", "value", "options"),
        [
            ("", "k", {}, {}),
            ("ns", "", {}, {}),
            (" ", "k", {}, {}),
            ("ns", "  ", {}, {}),
            ("ns", "x" * 256, {}, {}),
            ("ns", "a\x1bb", {}, {}),
            ("ns", "k", [1, 2], {}),
            ("ns", "k", {"x": float("nan")}, {}),
            ("ns", "k", {"x": float("inf")}, {}),
            ("ns", "k", {"x": "y" * MAX_VALUE_BYTES}, {}),
            ("ns", "k", {}, {"ttl_seconds": 0}),
            ("ns", "k", {}, {"ttl_seconds": -5}),
            ("ns", "k", {}, {"ttl_seconds": float("nan")}),
            ("ns", "k", {}, {"ttl_seconds": 10**12}),
        ],
    )
    async def test_bad_input_is_refused_and_writes_nothing(
        self,
        memory: MemoryService,
        session: AsyncSession,
        namespace: str,
        key: str,
        value: object,
        options: dict[str, float],
    ) -> None:
        org = await create_organization(session)
        with pytest.raises(InvalidMemoryEntry):
            await memory.put(org.id, namespace, key, value, session=session, **options)  # type: ignore[arg-type]
        count = await session.scalar(
            sa.select(sa.func.count()).where(MemoryEntry.organization_id == org.id)
        )
        assert count == 0

    async def test_a_deep_value_is_refused(
        self, memory: MemoryService, session: AsyncSession
    ) -> None:
        org = await create_organization(session)
        deep: dict[str, object] = {}
        node = deep
        for _ in range(MAX_VALUE_DEPTH):
            child: dict[str, object] = {}
            node["x"] = child
            node = child
        with pytest.raises(InvalidMemoryEntry):
            await memory.put(org.id, "ns", "k", deep, session=session)
        ok: dict[str, object] = {}
        node = ok
        for _ in range(MAX_VALUE_DEPTH - 1):
            child = {}
            node["x"] = child
            node = child
        await memory.put(org.id, "ns", "k", ok, session=session)
        very_deep: list[object] = []
        cursor = very_deep
        for _ in range(100_000):  # not a recursion: no RecursionError either
            inner: list[object] = []
            cursor.append(inner)
            cursor = inner
        with pytest.raises(InvalidMemoryEntry):
            await memory.put(org.id, "ns", "k", {"x": very_deep}, session=session)


class TestRaces:
    async def test_concurrent_puts_of_one_key_leave_one_row(self, race_database: Database) -> None:
        memory = MemoryService(race_database)
        async with race_database.transaction() as s:
            org_id = (await create_organization(s)).id
        results = await asyncio.gather(
            *(memory.put(org_id, "ns", "hot", {"writer": i}) for i in range(16)),
            return_exceptions=True,
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        async with race_database.session(readonly=True) as s:
            rows = (
                await s.execute(
                    sa.select(MemoryEntry.id, MemoryEntry.value).where(
                        MemoryEntry.organization_id == org_id
                    )
                )
            ).all()
        assert len(rows) == 1
        assert rows[0].value in [{"writer": i} for i in range(16)]
        assert {r.id for r in results if not isinstance(r, BaseException)} == {rows[0].id}

    async def test_concurrent_summary_upserts_of_one_conversation_leave_one_row(
        self, race_database: Database
    ) -> None:
        memory = MemoryService(race_database)
        async with race_database.transaction() as s:
            org = await create_organization(s)
            user_id = (await create_user(s, org)).id
            org_id = org.id
        for user in (user_id, None):
            results = await asyncio.gather(
                *(
                    memory.upsert_summary(org_id, "conv", f"v{i}", user_id=user, message_count=i)
                    for i in range(16)
                ),
                return_exceptions=True,
            )
            assert [r for r in results if isinstance(r, BaseException)] == []
        async with race_database.session(readonly=True) as s:
            count = await s.scalar(
                sa.select(sa.func.count()).where(ConversationSummary.organization_id == org_id)
            )
        assert count == 2


class TestConversations:
    async def test_upsert_get_list_delete(
        self, memory: MemoryService, session: AsyncSession
    ) -> None:
        org = await create_organization(session)
        user = await create_user(session, org)
        first = await memory.upsert_summary(
            org.id,
            "c1",
            "talked",
            user_id=user.id,
            key_topics=["a"],
            message_count=2,
            session=session,
        )
        second = await memory.upsert_summary(
            org.id,
            "c1",
            "talked more",
            user_id=user.id,
            key_topics=["a", "b"],
            message_count=5,
            session=session,
        )
        assert first.id == second.id
        other = await memory.upsert_summary(org.id, "c2", "x", user_id=user.id, session=session)
        got = await memory.get_summary(org.id, first.id, session=session)
        assert (got.summary, got.key_topics, got.message_count) == ("talked more", ["a", "b"], 5)
        listed = await memory.list_summaries(org.id, user_id=user.id, session=session)
        assert [s.id for s in listed] == [other.id, first.id]
        assert [
            s.id for s in await memory.list_summaries(org.id, session_id="c2", session=session)
        ] == [other.id]
        await memory.delete_summary(org.id, first.id, session=session)
        with pytest.raises(ConversationNotFound):
            await memory.get_summary(org.id, first.id, session=session)

    async def test_another_tenants_summary_is_not_found(
        self, memory: MemoryService, session: AsyncSession
    ) -> None:
        org, other = await create_organization(session), await create_organization(session)
        mine = await memory.upsert_summary(org.id, "c", "secret", session=session)
        with pytest.raises(ConversationNotFound):
            await memory.get_summary(other.id, mine.id, session=session)
        with pytest.raises(ConversationNotFound):
            await memory.delete_summary(other.id, mine.id, session=session)
        assert await memory.list_summaries(other.id, session=session) == []

    @pytest.mark.parametrize(
        "options",
        [
            {"session_id": ""},
            {"session_id": " "},
            {"agent": " "},
            {"key_topics": [" "]},
            {"summary": "x" * 100_001},
            {"message_count": -1},
            {"message_count": 2**63},
            {"key_topics": ["\x00"]},
        ],
    )
    async def test_bad_input_is_refused(
        self, memory: MemoryService, session: AsyncSession, options: dict[str, object]
    ) -> None:
        org = await create_organization(session)
        values: dict[str, object] = {"session_id": "c", "summary": "s", **options}
        with pytest.raises(InvalidConversation):
            await memory.upsert_summary(org.id, session=session, **values)  # type: ignore[arg-type]

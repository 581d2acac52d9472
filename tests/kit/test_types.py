"""Column types that behave the same on PostgreSQL and SQLite, and time-ordered ids."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.ids import new_id
from saascore.kit.time import utcnow
from saascore.models import ApiKey, MemoryEntry
from tests.factories import create_api_key, create_memory_entry, create_organization
from tests.helpers import only_postgresql, only_sqlite

KOLKATA = timezone(timedelta(hours=5, minutes=30))


async def _expires_at(session: AsyncSession, entry_id: uuid.UUID) -> datetime | None:
    # A Core select returns what the database holds, not the identity map's object.
    value: datetime | None = await session.scalar(
        sa.select(MemoryEntry.expires_at).where(MemoryEntry.id == entry_id)
    )
    return value


class TestUTCDateTime:
    async def test_reads_back_aware_utc(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        moment = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
        entry = await create_memory_entry(session, org, expires_at=moment)
        value = await _expires_at(session, entry.id)
        assert value == moment
        assert value is not None
        assert value.tzinfo is UTC

    async def test_converts_other_zones_to_utc(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        local = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=KOLKATA)
        entry = await create_memory_entry(session, org, expires_at=local)
        value = await _expires_at(session, entry.id)
        assert value is not None
        assert value.tzinfo is UTC
        assert value == local  # the same instant...
        assert (value.day, value.hour, value.minute) == (1, 21, 34)  # ...as UTC wall time

    @only_sqlite
    async def test_sqlite_stores_utc_wall_time(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        entry = await create_memory_entry(
            session, org, expires_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=KOLKATA)
        )
        raw = await session.scalar(
            sa.text("SELECT expires_at FROM memory_entries WHERE id = :id").bindparams(
                sa.bindparam("id", entry.id, type_=sa.Uuid())
            )
        )
        assert str(raw).startswith("2030-01-01 21:34:05")

    @only_postgresql
    async def test_postgres_session_time_zone_does_not_matter(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        moment = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
        entry = await create_memory_entry(session, org, expires_at=moment)
        await session.execute(sa.text("SET LOCAL TIME ZONE 'Asia/Kolkata'"))
        shown = await session.scalar(
            sa.text("SELECT expires_at::text FROM memory_entries WHERE id = :id"),
            {"id": entry.id},
        )
        assert shown == "2030-06-01 17:30:00+05:30"  # the server did switch zones
        value = await _expires_at(session, entry.id)
        assert value == moment
        assert value is not None
        assert value.tzinfo is UTC

    async def test_server_default_now_is_aware_utc(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        before = utcnow()
        key = await create_api_key(session, org)  # created_at comes from the database
        created = await session.scalar(sa.select(ApiKey.created_at).where(ApiKey.id == key.id))
        assert created is not None
        assert created.tzinfo is UTC
        # The database's clock, read back as UTC: not hours off in either direction.
        assert abs(created - before) < timedelta(minutes=5)

    async def test_refuses_naive_datetimes(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        naive = datetime(2030, 1, 2, 3, 4, 5)  # noqa: DTZ001 - the point of the test
        with pytest.raises(sa.exc.StatementError, match="naive datetime"):
            async with session.begin_nested():
                await session.execute(
                    sa.insert(MemoryEntry).values(
                        organization_id=org.id, namespace="n", key="k", value={}, expires_at=naive
                    )
                )
        with pytest.raises(sa.exc.StatementError, match="naive datetime"):
            async with session.begin_nested():
                await create_memory_entry(session, org, expires_at=naive)
        stored = await session.scalar(
            sa.select(sa.func.count(MemoryEntry.id)).where(MemoryEntry.organization_id == org.id)
        )
        assert stored == 0

    async def test_none_stays_none(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        entry = await create_memory_entry(session, org, expires_at=None)
        assert await _expires_at(session, entry.id) is None


class TestJSON:
    VALUE: dict[str, Any] = {
        "text": "héllo ✓ مرحبا",
        "int": 42,
        "big": 2**53 + 1,
        "float": 1.5,
        "bool": True,
        "null": None,
        "list": [1, "two", None, False, {"three": 3}],
        "nested": {"a": {"b": {"c": []}}},
        "empty": {},
    }

    async def test_round_trips(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        entry = await create_memory_entry(session, org, value=self.VALUE)
        key = await create_api_key(session, org, scopes=["usage:write", "usage:read"])
        value = await session.scalar(sa.select(MemoryEntry.value).where(MemoryEntry.id == entry.id))
        scopes = await session.scalar(sa.select(ApiKey.scopes).where(ApiKey.id == key.id))
        assert value == self.VALUE
        assert scopes == ["usage:write", "usage:read"]

    async def test_is_jsonb_on_postgres_and_text_on_sqlite(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        entry = await create_memory_entry(session, org, value={"a": 1})
        dialect = session.get_bind().dialect.name
        function = "pg_typeof" if dialect == "postgresql" else "typeof"
        stored_as = await session.scalar(
            sa.select(sa.cast(getattr(sa.func, function)(MemoryEntry.value), sa.Text)).where(
                MemoryEntry.id == entry.id
            )
        )
        assert stored_as == ("jsonb" if dialect == "postgresql" else "text")


class TestUUIDv7:
    def test_version_and_embedded_time(self) -> None:
        before = int(time.time() * 1000)
        value = new_id()
        after = int(time.time() * 1000)
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert before <= value.int >> 80 <= after  # 48 bits of Unix milliseconds

    def test_ids_increase(self) -> None:
        ids = [new_id() for _ in range(10_000)]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)

    async def test_database_orders_them_by_creation(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        keys = [f"k{i:03d}" for i in range(50)]
        for key in keys:
            await create_memory_entry(session, org, key=key)
        stored = await session.scalars(
            sa.select(MemoryEntry.key)
            .where(MemoryEntry.organization_id == org.id)
            .order_by(MemoryEntry.id)
        )
        assert list(stored) == keys

"""The audit chain hashes the canonical JSON text it stores: numbers that JSONB would rewrite
(`-0.0`, `1e308`, `1.10`), deep nesting and non-ASCII text verify intact on both databases,
a one-byte change to any stored field is found, and chains written before the texts were
stored still verify after the migration (0006)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit import AuditService, ChainBreak, Origin
from saascore.kit.db import Database
from saascore.migrations import migrate
from saascore.models import AuditLog
from tests.factories import create_organization, create_organization_row
from tests.http import tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: Values whose JSON text a JSONB column does not give back as it was written.
AWKWARD: dict[str, Any] = {
    "big": 1e20,
    "negative_zero": -0.0,
    "one_point_ten": json.loads("1.10"),
    "huge": 1e308,
    "long": json.loads("12345678901234567890.5"),
    "integer": 2**70,
    "text": "Grüße, 東京 ✓ \u2028",
    "deep": json.loads("[" * 100 + "]" * 100),
}


async def recorded(database: Database, session: AsyncSession) -> tuple[AuditService, uuid.UUID]:
    organization = await create_organization(session)
    audit = AuditService(database)
    origin = Origin(ip_address="203.0.113.7", user_agent="tests ü", request_id="r1")
    for n in range(3):
        await audit.record(
            organization.id,
            f"test.awkward_{n}",
            actor=origin.actor("user", uuid.uuid4()),
            target_type="thing",
            target_id=str(n),
            details={**AWKWARD, "n": n},
            request_data={"body": AWKWARD},
            processing_job_id=uuid.uuid4(),
            session=session,
        )
    return audit, organization.id


def _param(session: AsyncSession, value: uuid.UUID) -> object:
    return value if session.get_bind().dialect.name == "postgresql" else value.hex


class TestCanonicalText:
    async def test_awkward_numbers_deep_nesting_and_non_ascii_verify_intact(
        self, database: Database, session: AsyncSession
    ) -> None:
        audit, org_id = await recorded(database, session)
        assert await audit.verify(org_id, session=session) == []
        entry = (
            await session.scalars(
                sa.select(AuditLog)
                .where(AuditLog.organization_id == org_id, AuditLog.seq == 1)
                .execution_options(populate_existing=True)
            )
        ).one()
        assert entry.details == {**AWKWARD, "n": 0}
        assert '"negative_zero":-0.0' in entry.details_text
        assert '"huge":1e+308' in entry.details_text

    @pytest.mark.parametrize(
        ("column", "change"),
        [
            ("details", "details || ' '"),  # the same JSON value, one byte more
            ("details", "replace(details, '1e+20', '1e+21')"),
            ("details", "replace(details, 'Grüße', 'Grüsse')"),
            ("request_data", "replace(request_data, '-0.0', '0.0')"),
            ("action", "action || 'x'"),
            ("actor_type", "'system'"),
            ("actor_id", "actor_id || '0'"),
            ("target_type", "'thinG'"),
            ("target_id", "'9'"),
            ("ip_address", "'203.0.113.8'"),
            ("user_agent", "'tests u'"),
            ("request_id", "'r2'"),
            # Another first digit, whatever it was (a hash starts with 0 one time in 16).
            ("hash", "CASE WHEN substr(hash, 1, 1) = '0' THEN '1' ELSE '0' END || substr(hash, 2)"),
            ("user_id", None),
            ("processing_job_id", None),
            ("created_at", None),
        ],
    )
    async def test_a_one_byte_change_to_a_stored_field_is_found(
        self, database: Database, session: AsyncSession, column: str, change: str | None
    ) -> None:
        audit, org_id = await recorded(database, session)
        entry = (
            await session.scalars(
                sa.select(AuditLog).where(AuditLog.organization_id == org_id, AuditLog.seq == 2)
            )
        ).one()
        params: dict[str, object] = {"o": _param(session, org_id)}
        if change is None:  # a value of another type: change it through a parameter
            change = ":v"
            if column == "created_at":
                params["v"] = entry.created_at.replace(microsecond=entry.created_at.microsecond ^ 1)
                if session.get_bind().dialect.name == "sqlite":
                    params["v"] = params["v"].astimezone(UTC).replace(tzinfo=None)  # type: ignore[attr-defined]
            else:
                old: uuid.UUID | None = getattr(entry, column)
                params["v"] = _param(session, uuid.UUID(int=old.int ^ 1) if old else uuid.uuid4())
        await session.execute(
            sa.text(
                f"UPDATE audit_logs SET {column} = {change} WHERE organization_id = :o AND seq = 2"
            ),
            params,
        )
        breaks = await audit.verify(org_id, session=session)
        assert breaks in (
            [ChainBreak(org_id, 2, "content does not match its hash")],
            [ChainBreak(org_id, 3, "does not link to the entry before it")],  # the hash itself
        )


class TestOrganizationSettingsOverHttp:
    async def test_settings_jsonb_would_rewrite_leave_the_chain_intact(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        org = await tenant(api, scratch)
        for settings in (
            '{"settings": {"x": -0.0}}',
            '{"settings": {"x": 1e308}}',
            '{"settings": {"x": 12345678901234567890.5, "y": 1.10}}',
        ):
            response = await api.patch(
                "/v1/organization",
                content=settings,
                headers={**org.headers, "Content-Type": "application/json"},
            )
            assert response.status_code == 200, response.text
        assert await AuditService(scratch).verify(org.organization_id) == []


def _old_hash(row: dict[str, Any], details: Any, request_data: Any) -> str:
    """How entries were hashed before 0006: their JSON values inside the array."""
    content = [
        str(row["organization_id"]),
        row["seq"],
        "user",
        "u1",
        None,
        row["action"],
        None,
        None,
        None,
        None,
        None,
        None,
        request_data,
        details,
        row["created_at"].isoformat(timespec="microseconds"),
        row["prev_hash"],
    ]
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


class TestMigration:
    async def test_chains_written_before_0006_still_verify(self, empty_database: Database) -> None:
        database = empty_database
        await migrate.upgrade(database, "0004")
        postgres = database.engine.dialect.name == "postgresql"
        json_type = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
        logs = sa.table(
            "audit_logs",
            sa.column("organization_id", sa.Uuid()),
            sa.column("id", sa.Uuid()),
            sa.column("seq", sa.BigInteger()),
            sa.column("actor_type", sa.String()),
            sa.column("actor_id", sa.String()),
            sa.column("action", sa.String()),
            sa.column("request_data", json_type),
            sa.column("details", json_type),
            sa.column("prev_hash", sa.String()),
            sa.column("hash", sa.String()),
            sa.column("created_at", sa.DateTime(timezone=True)),
        )
        values = [
            {"a": 1, "b": [1.5, "é", None, True]},
            {"text": "東京", "nested": {"z": {"y": [1, 2, {"x": 0.25}]}}},
            {},
        ]
        async with database.transaction() as session:  # organisations as at 0004
            org_id, _ = await create_organization_row(session)
        async with database.engine.begin() as connection:
            prev: str | None = None
            for seq, details in enumerate(values, start=1):
                row: dict[str, Any] = {
                    "organization_id": org_id,
                    "id": uuid.uuid4(),
                    "seq": seq,
                    "actor_type": "user",
                    "actor_id": "u1",
                    "action": f"old.{seq}",
                    "prev_hash": prev,
                    "created_at": datetime(2026, 1, seq, 12, 0, 0, 123456, tzinfo=UTC),
                }
                request_data = {"seq": seq}
                row["hash"] = prev = _old_hash(row, details, request_data)
                await connection.execute(
                    logs.insert().values(**row, details=details, request_data=request_data)
                )
            await connection.execute(
                sa.text(
                    "INSERT INTO audit_chain_heads (organization_id, id, seq, hash)"
                    " VALUES (:o, :i, :s, :h)"
                ),
                {
                    "o": org_id if postgres else org_id.hex,
                    "i": uuid.uuid4() if postgres else uuid.uuid4().hex,
                    "s": len(values),
                    "h": prev,
                },
            )
        await migrate.upgrade(database)
        audit = AuditService(database)
        assert await audit.verify(org_id) == []
        rows = await audit.list(org_id)
        assert [row.details for row in reversed(rows)] == values
        assert await migrate.check(database) == []

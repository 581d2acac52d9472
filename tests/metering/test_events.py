"""Metering's events: `usage.threshold_reached` goes to the outbox in the transaction that
crosses 80 % or 100 % (once per threshold and period, whichever path records), and
`usage.limit_exceeded` is told once per metric and period however many events a hard limit
refuses; both on SQLite and PostgreSQL, through every recording path."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from saascore.events.catalog import UsageThresholdReached
from saascore.kit.db import Database
from saascore.metering import LimitExceeded, UsageEventIn, UsageService
from saascore.models import OutboxEvent
from tests.factories import create_organization, create_plan

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def org_with_limit(database: Database, tokens: int) -> uuid.UUID:
    async with database.transaction() as s:
        plan = await create_plan(s, monthly_token_limit=tokens)
        return (await create_organization(s, plan=plan)).id


async def told(database: Database, org_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    async with database.session(readonly=True) as s:
        rows = (
            await s.scalars(
                sa.select(OutboxEvent)
                .where(OutboxEvent.organization_id == org_id)
                .order_by(OutboxEvent.occurred_at, OutboxEvent.id)
            )
        ).all()
    return [(row.type, row.body["data"]) for row in rows]


def month_start() -> str:
    now = datetime.now(UTC)
    return f"{now.year:04d}-{now.month:02d}-01T00:00:00Z"


@pytest.mark.parametrize("path", ["record", "record_many", "session"])
async def test_each_threshold_is_told_once_in_its_transaction(scratch: Database, path: str) -> None:
    usage = UsageService(scratch, group_commit=False)
    org = await org_with_limit(scratch, 100)

    async def record(quantity: int, key: str) -> None:
        if path == "record":
            await usage.record(org, "tokens", quantity, idempotency_key=key)
        elif path == "record_many":
            [outcome] = await usage.record_many(
                [UsageEventIn(metric="tokens", quantity=quantity, idempotency_key=key)],
                org_id=org,
            )
            assert outcome.status in ("accepted", "duplicate"), outcome
        else:
            async with scratch.transaction() as s:
                await usage.record(org, "tokens", quantity, idempotency_key=key, session=s)

    await record(79, "a")
    assert await told(scratch, org) == []
    await record(2, "b")  # 81: crosses 80 %
    await record(2, "b")  # a retry crosses nothing
    await record(1, "c")  # 82
    await record(18, "d")  # 100: crosses 100 %
    expected = [
        UsageThresholdReached(
            metric="tokens",
            period_start=datetime.fromisoformat(month_start()),
            threshold_percent=percent,
            limit=100,
            used=used,
        ).model_dump(mode="json")
        for percent, used in ((80, 81), (100, 100))
    ]
    assert await told(scratch, org) == [
        ("usage.threshold_reached", expected[0]),
        ("usage.threshold_reached", expected[1]),
    ]


async def test_a_threshold_crossed_in_a_rolled_back_transaction_is_not_told(
    scratch: Database,
) -> None:
    usage = UsageService(scratch, group_commit=False)
    org = await org_with_limit(scratch, 100)

    async def crossing_then_failure() -> None:
        async with scratch.transaction() as s:
            await usage.record(org, "tokens", 90, idempotency_key="x", session=s)
            raise RuntimeError("the caller's work fails")

    with pytest.raises(RuntimeError):
        await crossing_then_failure()
    assert await told(scratch, org) == []


async def test_a_refused_limit_is_told_once_per_period(scratch: Database) -> None:
    usage = UsageService(scratch, group_commit=False)
    org = await org_with_limit(scratch, 10)
    await usage.record(org, "tokens", 10, idempotency_key="fill")
    for attempt in range(3):
        with pytest.raises(LimitExceeded):
            await usage.record(org, "tokens", 5, idempotency_key=f"over-{attempt}")
    outcomes = await usage.record_many(
        [UsageEventIn(metric="tokens", quantity=3, idempotency_key="over-batch")], org_id=org
    )
    assert [outcome.status for outcome in outcomes] == ["refused"]
    # Another process (a service that has told nothing yet) does not tell it again either.
    other = UsageService(scratch, group_commit=False)
    with pytest.raises(LimitExceeded):
        await other.record(org, "tokens", 1, idempotency_key="over-elsewhere")

    events = await told(scratch, org)
    assert [kind for kind, _ in events] == [
        "usage.threshold_reached",
        "usage.threshold_reached",
        "usage.limit_exceeded",
    ]
    assert events[2][1] == {
        "metric": "tokens",
        "period_start": month_start(),
        "limit": 10,
        "used": 10,
        "requested": 5,
    }

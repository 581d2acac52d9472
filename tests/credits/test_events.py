"""The ledger's events: `credits.granted`, `credits.expired` and `credits.low` (once per fall
below the organisation's threshold), each in the outbox with the change that caused it; the
threshold is set over HTTP by billing writers only."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.models import OutboxEvent
from tests.credits.ledger import Clock
from tests.http import api_app, serving, tenant

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def published(database: Database, org_id: uuid.UUID) -> list[tuple[str, dict[str, object]]]:
    async with database.session(readonly=True) as s:
        rows = (
            await s.scalars(
                sa.select(OutboxEvent)
                .where(OutboxEvent.organization_id == org_id)
                .order_by(OutboxEvent.id)
            )
        ).all()
    return [(row.type, row.body["data"]) for row in rows]


async def test_low_balance_is_told_once_per_fall_and_expiry_is_told(scratch: Database) -> None:
    application, core = api_app(scratch)
    async with serving(application, core) as api:
        org = await tenant(api, scratch)
        low = await api.put(
            "/v1/credits/low-threshold", json={"threshold": 100}, headers=org.headers
        )
        assert low.status_code == 200, low.text
        assert (await api.get("/v1/credits", headers=org.headers)).json()["low_threshold"] == 100
    clock = Clock()
    core.credits.clock = clock
    await core.credits.grant(org.organization_id, 150, idempotency_key="g1")
    await core.credits.consume(org.organization_id, 40)  # 110: above
    await core.credits.consume(org.organization_id, 20)  # 90: falls below, told
    await core.credits.consume(org.organization_id, 10)  # 80: still below, not told again
    await core.credits.grant(
        org.organization_id, 500, expires_at=clock() + timedelta(days=1)
    )  # 580
    await core.credits.consume(org.organization_id, 490)  # 90: a second fall, told again
    clock.advance(timedelta(days=2))
    await core.credits.expire(org.organization_id)  # the unused 500-grant's remainder lapses

    (registered, granted), *events = await published(scratch, org.organization_id)
    assert (registered, granted["source"]) == ("credits.granted", "plan")  # at registration
    assert [kind for kind, _ in events] == [
        "credits.granted",
        "credits.low",
        "credits.granted",
        "credits.low",
        "credits.expired",
    ]
    assert events[1][1] == {"balance": 90, "threshold": 100}
    assert events[3][1] == {"balance": 90, "threshold": 100}
    assert events[4][1]["amount"] == 10  # the expiring grant is drawn first: 10 of it lapse
    entries = await core.audit.list(org.organization_id, action="credits.low_threshold_changed")
    assert [entry.details for entry in entries] == [{"from": None, "to": 100}]


async def test_the_threshold_takes_billing_write_and_a_valid_number(scratch: Database) -> None:
    application, core = api_app(scratch)
    async with serving(application, core) as api:
        org = await tenant(api, scratch)
        _, raw = await core.api_keys.create(
            org.organization_id, name="reader", scopes=["billing:read"]
        )
        refused = await api.put(
            "/v1/credits/low-threshold", json={"threshold": 5}, headers={"X-API-Key": raw}
        )
        assert refused.status_code == 403
        for bad in (0, -1, 2**63, "many", 1.5):
            response = await api.put(
                "/v1/credits/low-threshold", json={"threshold": bad}, headers=org.headers
            )
            assert response.status_code == 422, (bad, response.text)
        cleared = await api.put(
            "/v1/credits/low-threshold", json={"threshold": None}, headers=org.headers
        )
        assert cleared.json() == {"threshold": None}
    assert (await core.credits.account(org.organization_id)).low_threshold is None
    assert await core.audit.list(org.organization_id, action="credits.low_threshold_changed") == []

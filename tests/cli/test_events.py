"""One change, three paths: a credit grant from the library, the CLI and the HTTP API writes
the same audit entry and the same outbox event, once each; a refused grant writes neither."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from saascore import Saascore
from saascore.kit.actors import Actor
from saascore.kit.db import Database
from saascore.models import AuditLog, OutboxEvent
from saascore.plans import read_catalog
from tests.cli.runner import Cli
from tests.http import api_app, serving

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def grants(database: Database, org_id: uuid.UUID) -> tuple[list[AuditLog], list[OutboxEvent]]:
    async with database.session(readonly=True) as s:
        audit = (
            await s.scalars(
                sa.select(AuditLog)
                .where(AuditLog.organization_id == org_id, AuditLog.action == "credits.granted")
                .order_by(AuditLog.seq)
            )
        ).all()
        outbox = (
            await s.scalars(
                sa.select(OutboxEvent)
                .where(OutboxEvent.organization_id == org_id, OutboxEvent.type == "credits.granted")
                .order_by(OutboxEvent.id)
            )
        ).all()
    return list(audit), list(outbox)


async def test_a_credit_grant_emits_the_same_event_from_every_path(
    migrated_cli: Cli, empty_database: Database
) -> None:
    core = Saascore(empty_database.settings, database=empty_database)
    await core.plans.load_catalog(read_catalog())
    org = await core.orgs.create(name="Acme", external_id="acme")

    # The library.
    await core.credits.grant(org.id, 10, idempotency_key="lib", actor=Actor("script", "s1"))
    # The CLI, twice with one key: granted once.
    for _ in range(2):
        migrated_cli("credits", "grant", "acme", "20", "--key", "cli").ok()
    # The HTTP API, twice with one key: 201 then 200.
    application, http_core = api_app(empty_database)
    async with serving(application, http_core) as client:
        _, raw = await http_core.api_keys.create_operator_key(name="ops")
        statuses = []
        for _ in range(2):
            response = await client.post(
                f"/v1/admin/organizations/{org.id}/credits/grants",
                json={"amount": 30, "idempotency_key": "http"},
                headers={"X-API-Key": raw},
            )
            statuses.append(response.status_code)
    assert statuses == [201, 200]

    (plan, *audit), (plan_event, *outbox) = await grants(empty_database, org.id)
    # The free plan's 10 credits, granted (by saascore) when the organisation was created.
    assert (plan.details["source"], plan.details["amount"], plan.actor_type) == (
        "plan",
        10,
        "system",
    )
    assert plan_event.body["data"] == plan.details
    assert [entry.details["amount"] for entry in audit] == [10, 20, 30]
    assert [entry.actor_type for entry in audit] == ["script", "cli", "operator"]
    assert [entry.details["idempotency_key"] for entry in audit] == ["lib", "cli", "http"]
    assert len({frozenset(entry.details) for entry in audit}) == 1  # one shape
    assert [row.body["data"] for row in outbox] == [entry.details for entry in audit]
    # On top of the free plan's 10 credits, granted when the organisation was created.
    assert [entry.details["balance"] for entry in audit] == [20, 40, 70]


async def test_refused_grants_emit_nothing(migrated_cli: Cli, empty_database: Database) -> None:
    core = Saascore(empty_database.settings, database=empty_database)
    await core.plans.load_catalog(read_catalog())
    org = await core.orgs.create(name="Acme", external_id="acme")
    await core.credits.grant(org.id, 5, idempotency_key="k")

    # The same key with another amount, from each path.
    with pytest.raises(Exception, match="idempotency"):
        await core.credits.grant(org.id, 6, idempotency_key="k")
    refused = migrated_cli("credits", "grant", "acme", "7", "--key", "k")
    assert refused.returncode != 0
    application, http_core = api_app(empty_database)
    async with serving(application, http_core) as client:
        _, raw = await http_core.api_keys.create_operator_key(name="ops")
        response = await client.post(
            f"/v1/admin/organizations/{org.id}/credits/grants",
            json={"amount": 8, "idempotency_key": "k"},
            headers={"X-API-Key": raw},
        )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"

    # A grant inside a unit of work that rolls back.
    async def failing_unit() -> None:
        async with empty_database.transaction() as s:
            await core.credits.grant(org.id, 9, session=s)
            raise RuntimeError("the caller's work fails after the grant")

    with pytest.raises(RuntimeError):
        await failing_unit()

    audit, outbox = await grants(empty_database, org.id)
    assert (len(audit), len(outbox)) == (2, 2)  # the plan's grant at creation, and the one
    assert await core.credits.balance(org.id) == 10 + 5  # the free plan's, and the one grant

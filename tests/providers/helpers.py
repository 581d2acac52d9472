"""Mock-shaped provider events for the webhook tests, and what they left in the database."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.models import (
    Invoice,
    Payment,
    PlanPrice,
    Subscription,
    SubscriptionPlan,
    WebhookEvent,
)
from saascore.providers.mock import plan_price_id

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WEBHOOK = "/v1/webhooks/mock"


def at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


async def mock_price(database: Database, plan: str, cycle: str = "monthly") -> str:
    """The mock's price id of the plan's USD price for `cycle`."""
    async with database.session(readonly=True) as s:
        row_id = await s.scalar(
            sa.select(PlanPrice.id)
            .join(SubscriptionPlan, SubscriptionPlan.id == PlanPrice.plan_id)
            .where(
                SubscriptionPlan.code == plan,
                PlanPrice.billing_cycle == cycle,
                PlanPrice.currency == "USD",
            )
        )
    assert row_id is not None
    return plan_price_id(row_id)


def subscription_event(
    event_id: str,
    *,
    minute: int,
    subscription: str,
    customer: str,
    price: str,
    org: uuid.UUID | None = None,
    status: str = "active",
    kind: str = "subscription_updated",
    cancel_at_period_end: bool = False,
) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": kind,
        "occurred_at": at(minute),
        "organization_id": str(org) if org else None,
        "customer_id": customer,
        "subscription": {
            "id": subscription,
            "customer_id": customer,
            "status": status,
            "price_id": price,
            "current_period_start": T0.isoformat(),
            "current_period_end": (T0 + timedelta(days=31)).isoformat(),
            "cancel_at_period_end": cancel_at_period_end,
            "organization_id": str(org) if org else None,
            "updated_at": at(minute),
        },
    }


def payment_event(
    event_id: str,
    *,
    minute: int,
    subscription: str,
    customer: str,
    payment: str,
    amount: int,
    failed: bool = False,
) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "payment_failed" if failed else "payment_succeeded",
        "occurred_at": at(minute),
        "customer_id": customer,
        "payment": {
            "id": payment,
            "amount": amount,
            "currency": "USD",
            "customer_id": customer,
            "subscription_id": subscription,
            "period_start": T0.isoformat(),
            "period_end": (T0 + timedelta(days=31)).isoformat(),
            "failure_reason": "card declined" if failed else None,
        },
    }


async def send(client: httpx.AsyncClient, body: dict[str, Any] | bytes) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(WEBHOOK, content=content, headers={"content-type": "application/json"})


async def subscriptions_of(database: Database, org_id: uuid.UUID) -> list[Subscription]:
    async with database.session(readonly=True) as s:
        return list(
            await s.scalars(
                sa.select(Subscription)
                .where(Subscription.organization_id == org_id)
                .order_by(Subscription.id)
            )
        )


async def payments_of(database: Database, org_id: uuid.UUID) -> list[Payment]:
    async with database.session(readonly=True) as s:
        return list(
            await s.scalars(
                sa.select(Payment).where(Payment.organization_id == org_id).order_by(Payment.id)
            )
        )


async def invoices_of(database: Database, org_id: uuid.UUID) -> list[Invoice]:
    async with database.session(readonly=True) as s:
        return list(
            await s.scalars(
                sa.select(Invoice).where(Invoice.organization_id == org_id).order_by(Invoice.id)
            )
        )


async def stored_event(database: Database, event_id: str) -> WebhookEvent | None:
    async with database.session(readonly=True) as s:
        return await s.scalar(sa.select(WebhookEvent).where(WebhookEvent.event_id == event_id))


async def count_events(database: Database) -> int:
    async with database.session(readonly=True) as s:
        return int(await s.scalar(sa.select(sa.func.count()).select_from(WebhookEvent)) or 0)

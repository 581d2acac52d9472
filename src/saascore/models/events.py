"""Events that leave the process: the transactional outbox and webhooks to tenants.

`outbox_events` is written in the transaction of the change an event reports, so an event is
published if and only if that change committed. The dispatcher fans each outbox event out to
the organisation's `webhook_endpoints` that want its type (one `webhook_deliveries` row per
endpoint) and sends each delivery until it succeeds or gives up, logging every try in
`webhook_attempts`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from saascore.kit.types import str_enum
from saascore.models.base import Base, TenantMixin, TimestampMixin, non_negative, tenant_fk

__all__ = ["DeliveryStatus", "OutboxEvent", "WebhookAttempt", "WebhookDelivery", "WebhookEndpoint"]


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class OutboxEvent(TenantMixin, Base):
    """An event to publish; `id` is the event's id and the `webhook-id` its deliveries carry."""

    __tablename__ = "outbox_events"

    type: Mapped[str] = mapped_column(sa.String(100))
    #: What is sent: `{"type", "timestamp", "data"}` (Standard Webhooks).
    body: Mapped[dict[str, Any]]
    occurred_at: Mapped[datetime]
    #: When the dispatcher made its deliveries; None until then.
    dispatched_at: Mapped[datetime | None]
    #: Set for an event published at most once per organisation and key (a limit refused
    #: in a period is told once, however many requests it refuses).
    dedupe_key: Mapped[str | None] = mapped_column(sa.String(255))

    __table_args__ = (
        sa.UniqueConstraint("organization_id", "dedupe_key"),
        sa.Index(
            "ix_outbox_events_undispatched",
            "occurred_at",
            postgresql_where=sa.text("dispatched_at IS NULL"),
            sqlite_where=sa.text("dispatched_at IS NULL"),
        ),
    )


class WebhookEndpoint(TenantMixin, TimestampMixin, Base):
    """Where an organisation wants its events sent, and the secret they are signed with."""

    __tablename__ = "webhook_endpoints"

    url: Mapped[str] = mapped_column(sa.String(2048))
    description: Mapped[str | None] = mapped_column(sa.String(500))
    #: The event types wanted; empty for every type.
    event_types: Mapped[list[str]] = mapped_column(default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(sa.String(500))
    #: `whsec_` and base64: kept in clear because signing needs it (as Stripe and Svix do).
    secret: Mapped[str] = mapped_column(sa.String(100))
    #: The secret before the last rotation, still signing beside the new one until it expires.
    previous_secret: Mapped[str | None] = mapped_column(sa.String(100))
    previous_secret_expires_at: Mapped[datetime | None]
    #: The first failure since the last success; an endpoint failing for 3 days is disabled.
    failing_since: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]


class WebhookDelivery(TenantMixin, Base):
    """One event for one endpoint: sent until it succeeds or its retries run out."""

    __tablename__ = "webhook_deliveries"

    endpoint_id: Mapped[uuid.UUID]
    event_id: Mapped[uuid.UUID]
    event_type: Mapped[str] = mapped_column(sa.String(100))
    status: Mapped[DeliveryStatus] = mapped_column(
        str_enum(DeliveryStatus, "status"), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    #: A dispatcher sending it holds it until then; past it (the dispatcher died), another
    #: may send it again: at least once, never lost.
    lease_until: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.String(1000))
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())
    completed_at: Mapped[datetime | None]

    __table_args__ = (
        tenant_fk("endpoint_id", "webhook_endpoints", ondelete="CASCADE"),
        tenant_fk("event_id", "outbox_events", ondelete="CASCADE"),
        sa.Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        ),
        sa.Index(
            "ix_webhook_deliveries_organization_id_endpoint_id",
            "organization_id",
            "endpoint_id",
            "id",
        ),
        *non_negative("attempts"),
    )


class WebhookAttempt(TenantMixin, Base):
    """One try at sending a delivery: what came back, how long it took, what went wrong."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[uuid.UUID]
    endpoint_id: Mapped[uuid.UUID]
    number: Mapped[int]
    status_code: Mapped[int | None]
    duration_ms: Mapped[int]
    error: Mapped[str | None] = mapped_column(sa.String(1000))
    response_body: Mapped[str | None] = mapped_column(sa.String(1000))
    attempted_at: Mapped[datetime]

    __table_args__ = (
        tenant_fk("delivery_id", "webhook_deliveries", ondelete="CASCADE"),
        sa.Index(
            "ix_webhook_attempts_organization_id_delivery_id", "organization_id", "delivery_id"
        ),
    )

"""Request and response bodies of `/v1/webhook-endpoints`."""

from __future__ import annotations

import builtins
import inspect
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from saascore.events.bus import EventPayload
from saascore.events.service import DeliveryRecord
from saascore.kit.inputs import StrictBool
from saascore.kit.validation import Label
from saascore.models import DeliveryStatus

__all__ = [
    "EventTypeOut",
    "WebhookAttemptOut",
    "WebhookDeliveryOut",
    "WebhookEndpointCreate",
    "WebhookEndpointOut",
    "WebhookEndpointUpdate",
    "WebhookEndpointWithSecret",
    "WebhookTestSent",
]

_URL = Field(
    description="Where events are POSTed: https, a public host (at most 2048 characters)",
    examples=["https://hooks.example.com/saascore"],
)
_EVENT_TYPES_DOC = (
    "The event types to send (see `GET /v1/webhook-endpoints/event-types`); empty for all"
)


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = _URL
    event_types: list[str] = Field(
        default_factory=list,
        description=_EVENT_TYPES_DOC,
        examples=[["credits.low", "usage.threshold_reached"]],
    )
    description: Label | None = Field(
        description="A note to recognise the endpoint by",
        default=None,
        max_length=500,
        examples=["billing alerts"],
    )


class WebhookEndpointUpdate(BaseModel):
    """The fields to change; those left out stay as they are (`description: null` clears the
    description). `enabled: true` re-enables a disabled endpoint; `enabled: false` disables it
    exactly as `POST .../disable` does."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, description=_URL.description)
    event_types: list[str] | None = Field(default=None, description=_EVENT_TYPES_DOC)
    description: Label | None = Field(
        description="A note to recognise the endpoint by", default=None, max_length=500
    )
    enabled: StrictBool | None = Field(
        default=None,
        description=(
            "False stops deliveries; true enables it again (and clears its failure record)"
        ),
    )


class WebhookEndpointOut(BaseModel):
    """A webhook endpoint, without its signing secret (shown only at creation and rotation)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="The endpoint's id")
    url: str = Field(
        description="Where events are POSTed", examples=["https://hooks.example.com/saascore"]
    )
    description: str | None = Field(default=None, description="A note to recognise the endpoint by")
    event_types: list[str] = Field(description="The types sent; empty for all")
    enabled: bool = Field(description="Whether events are delivered to it")
    disabled_reason: str | None = Field(
        default=None,
        description="Why it was disabled: after failing too long, or by an admin",
        examples=["failing for 3 days", "disabled by an admin"],
    )
    failing_since: datetime | None = Field(
        default=None, description="The first failure since the last success"
    )
    last_success_at: datetime | None = Field(
        default=None, description="When a delivery last succeeded"
    )
    previous_secret_expires_at: datetime | None = Field(
        default=None,
        description="Until then, the secret before the last rotation still signs beside the "
        "current one",
    )
    created_at: datetime = Field(description="When it was created")
    updated_at: datetime = Field(description="When it last changed")


class WebhookEndpointWithSecret(WebhookEndpointOut):
    """The endpoint and its signing secret: keep it now, it is not shown again."""

    secret: str = Field(
        description="For `standardwebhooks.Webhook(secret)`: `whsec_` and base64",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class WebhookTestSent(BaseModel):
    """The test event was emitted: it is delivered like any other, with this `webhook-id`."""

    event_id: uuid.UUID = Field(description="The test event's id: the `webhook-id` of its delivery")


class WebhookAttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int = Field(description="The attempt's number, from 1", examples=[1])
    status_code: int | None = Field(
        default=None, description="null: no response (timeout, refused)", examples=[500]
    )
    duration_ms: int = Field(
        description="How long the endpoint took to answer, in milliseconds", examples=[182]
    )
    error: str | None = Field(
        description="Why the attempt failed; null when it succeeded",
        default=None,
        examples=["HTTP 500"],
    )
    response_body: str | None = Field(
        default=None, description="The first 1000 characters of the response"
    )
    attempted_at: datetime = Field(description="When it was made")


class WebhookDeliveryOut(BaseModel):
    """One event for one endpoint, and every attempt at sending it (oldest first)."""

    id: uuid.UUID = Field(description="The delivery's id")
    event_id: uuid.UUID = Field(description="The `webhook-id` every attempt carries")
    event_type: str = Field(description="The event type delivered", examples=["credits.low"])
    status: DeliveryStatus = Field(
        description=(
            "`pending` (tried again at `next_attempt_at`), `succeeded` or `failed` (gave up)"
        )
    )
    next_attempt_at: datetime | None = Field(
        default=None, description="When it is tried next; null when finished"
    )
    last_status_code: int | None = Field(
        default=None, description="The HTTP status of the last attempt"
    )
    last_error: str | None = Field(default=None, description="Why the last attempt failed")
    created_at: datetime = Field(description="When the event was queued for the endpoint")
    completed_at: datetime | None = Field(default=None, description="When it succeeded or gave up")
    attempts: list[WebhookAttemptOut] = Field(description="Each attempt, oldest first")

    @classmethod
    def of(cls, record: DeliveryRecord) -> WebhookDeliveryOut:
        d = record.delivery
        return cls(
            id=d.id,
            event_id=d.event_id,
            event_type=d.event_type,
            status=d.status,
            next_attempt_at=d.next_attempt_at,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
            completed_at=d.completed_at,
            attempts=[WebhookAttemptOut.model_validate(a) for a in record.attempts],
        )


class EventTypeOut(BaseModel):
    """An event type an endpoint may subscribe to, and the JSON schema of its `data`."""

    model_config = ConfigDict(populate_by_name=True)

    type: str = Field(description="The event type", examples=["credits.low"])
    description: str = Field(description="When it is sent")
    json_schema: dict[str, Any] = Field(alias="schema", description="The JSON schema of its `data`")

    @classmethod
    def of(cls, name: str, payload: builtins.type[EventPayload]) -> EventTypeOut:
        return cls(
            type=name,
            description=describe(payload),
            json_schema=payload.model_json_schema(by_alias=True),
        )


def describe(payload: type[EventPayload]) -> str:
    """The first paragraph of the payload class's docstring."""
    doc = inspect.cleandoc(payload.__doc__ or "")
    return " ".join(doc.split("\n\n", 1)[0].split())

"""Request and response bodies of the payment-provider routes."""

from __future__ import annotations

import uuid
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saascore.models import WebhookEvent, WebhookOutcome
from saascore.models.catalog import BillingCycle
from saascore.providers.webhooks import WebhookReceipt

__all__ = [
    "CheckoutCreate",
    "CheckoutOut",
    "MockCheckoutConfirmed",
    "PortalOut",
    "ProviderCancel",
    "ProviderPlanChange",
    "WebhookAck",
    "WebhookEventOut",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckoutCreate(_Body):
    """A checkout for a plan at a cycle, or for a credit pack: one of `plan` and `pack`."""

    plan: str | None = Field(
        default=None, min_length=1, max_length=50, description="The plan's code", examples=["pro"]
    )
    cycle: BillingCycle = Field(
        default=BillingCycle.MONTHLY, description="The billing cycle of the plan"
    )
    pack: str | None = Field(
        default=None,
        min_length=1,
        max_length=50,
        description="A credit pack's code, instead of a plan",
        examples=["credits-1000"],
    )

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.plan is None) == (self.pack is None):
            raise ValueError("give a plan (with its cycle) or a pack")
        return self


class CheckoutOut(BaseModel):
    """A checkout started at the provider: send the customer to `url`."""

    id: str = Field(description="The provider's checkout id", examples=["mock_cs_0193..."])
    url: str = Field(description="Where the customer pays")
    provider: str = Field(description="The provider: mock, stripe or lemonsqueezy")


class PortalOut(BaseModel):
    """A customer-portal session."""

    url: str = Field(description="Where the customer manages their billing")


class ProviderCancel(_Body):
    """A cancellation, at the period's end (the default) or now."""

    at_period_end: bool = Field(
        default=True, description="End at the current period's end (true) or now (false)"
    )


class ProviderPlanChange(_Body):
    """A move to another plan, at the same cycle."""

    plan: str = Field(min_length=1, max_length=50, description="The plan's code", examples=["pro"])


class WebhookAck(BaseModel):
    """A provider's webhook, received: stored and applied once."""

    received: bool = Field(default=True, description="Always true: the event is stored")
    id: uuid.UUID | None = Field(description="The stored event's id")
    outcome: WebhookOutcome = Field(description="processed, or ignored (with the reason)")
    duplicate: bool = Field(description="A copy of an event already stored: not applied again")
    reason: str | None = Field(default=None, description="Why it was ignored, if it was")

    @classmethod
    def of(cls, receipt: WebhookReceipt) -> WebhookAck:
        return cls(
            id=receipt.id,
            outcome=receipt.outcome,
            duplicate=receipt.duplicate,
            reason=receipt.reason,
        )


class MockCheckoutConfirmed(BaseModel):
    """The mock checkout, paid: the events a provider would have sent, as applied."""

    checkout_id: str = Field(description="The mock checkout's id")
    organization_id: uuid.UUID = Field(description="The organisation that checked out")
    events: list[WebhookAck] = Field(description="Each event, as the webhook intake took it")
    redirect_url: str = Field(description="Where a provider would send the customer now")


class WebhookEventOut(BaseModel):
    """A stored provider webhook event."""

    id: uuid.UUID
    provider: str
    event_id: str
    event_type: str
    organization_id: uuid.UUID | None
    outcome: WebhookOutcome
    error: str | None
    attempts: int

    @classmethod
    def of(cls, row: WebhookEvent) -> WebhookEventOut:
        return cls(
            id=row.id,
            provider=row.provider.value,
            event_id=row.event_id,
            event_type=row.event_type,
            organization_id=row.organization_id,
            outcome=row.outcome,
            error=row.error,
            attempts=row.attempts,
        )

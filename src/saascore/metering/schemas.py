"""Usage events as they arrive from outside (the HTTP API, `saascore usage import`)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from saascore.metering.service import UsageEventIn

__all__ = ["UsageEventPayload"]


class UsageEventPayload(BaseModel):
    """One usage event. `id` is the client's idempotency key: resending it records nothing
    new. `cached_tokens` is the part of `input_tokens` the provider served from its cache."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(min_length=1, max_length=255, description="Idempotency key of the event")
    metric: str = Field(min_length=1, max_length=100)
    quantity: int = Field(ge=0)
    organization_id: uuid.UUID | None = Field(
        default=None, description="Only for imports: the API takes it from the caller"
    )
    occurred_at: AwareDatetime | None = None
    user_id: uuid.UUID | None = None
    feature: str | None = Field(default=None, max_length=100)
    model: str | None = Field(default=None, max_length=255)
    provider: str | None = Field(default=None, max_length=50)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    properties: dict[str, Any] = Field(default_factory=dict)

    def to_event(self) -> UsageEventIn:
        return UsageEventIn(
            metric=self.metric,
            quantity=self.quantity,
            idempotency_key=self.id,
            organization_id=self.organization_id,
            occurred_at=self.occurred_at,
            user_id=self.user_id,
            feature=self.feature,
            model=self.model,
            provider=self.provider,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_tokens=self.cached_tokens,
            properties=self.properties,
        )

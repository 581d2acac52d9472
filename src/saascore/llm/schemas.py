"""Request and response bodies of `POST /v1/llm/chat`."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

__all__ = ["ChatIn", "ChatMessageIn", "ChatOut"]


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"] = Field(description="Who speaks")
    content: str = Field(max_length=1_000_000, description="What is said")


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=255, description="The model", examples=["gpt-4o"])
    messages: list[ChatMessageIn] = Field(
        min_length=1, max_length=1000, description="The conversation so far"
    )
    max_tokens: StrictInt = Field(
        default=1024, ge=1, le=1_000_000, description="The most tokens to generate"
    )
    call_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Your id of the call: a call id is spent once (409 on reuse)",
    )
    feature: str | None = Field(
        default=None, max_length=100, description="The feature the call is for (in usage)"
    )


class ChatOut(BaseModel):
    """The answer and what it was metered as."""

    call_id: str = Field(description="The call's id")
    model: str = Field(description="The model")
    content: str = Field(description="The answer")
    input_tokens: int = Field(description="Prompt tokens the gateway reported")
    output_tokens: int = Field(description="Tokens generated")
    cached_tokens: int = Field(description="Prompt tokens served from the provider's cache")
    reserved_tokens: int = Field(description="Tokens held against the limit before the call")
    cost_micros: int = Field(description="The call's cost in micro-units (0: unpriced model)")
    event_id: uuid.UUID | None = Field(default=None, description="The usage event recorded")

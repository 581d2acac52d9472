"""Response bodies of `/v1/audit-logs`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AuditEntryOut"]


class AuditEntryOut(BaseModel):
    """One entry of the organisation's audit trail."""

    model_config = ConfigDict(from_attributes=True)

    #: The entry's place in the organisation's chain: 1, 2, 3, ...
    seq: int = Field(
        description="The entry's position in the organisation's chain, from 1", examples=[42]
    )
    action: str = Field(
        description="What happened: an event type or an action name", examples=["api_key.created"]
    )
    #: `user`, `api_key`, `operator`, `anonymous`, `cli` or `system`.
    actor_type: str = Field(
        description="Who did it: `user`, `api_key`, `operator` or `system`", examples=["user"]
    )
    actor_id: str | None = Field(
        description="The actor's id", examples=["0193a1c2-7f00-7d3e-9a51-0c7b5d2e8f14"]
    )
    user_id: uuid.UUID | None = Field(
        description="The user behind the actor, if any",
        examples=["0193a1c2-7f00-7d3e-9a51-0c7b5d2e8f14"],
    )
    target_type: str | None = Field(description="The kind of object acted on", examples=["api_key"])
    target_id: str | None = Field(
        description="The id of the object acted on",
        examples=["0193a1c3-0a10-7b6e-8c21-5f3e9d0a1b22"],
    )
    ip_address: str | None = Field(
        description="The client address of the request", examples=["203.0.113.7"]
    )
    user_agent: str | None = Field(
        description="The request's User-Agent", examples=["python-httpx/0.28.1"]
    )
    request_id: str | None = Field(
        description="The request's X-Request-ID, to find it in the logs",
        examples=["4f1c2a9e8b7d4c3a9e0f1b2c3d4e5f60"],
    )
    details: dict[str, Any] = Field(
        description="What changed (the event's payload)",
        examples=[
            {"name": "ingest worker", "prefix": "sk_live_Xk2f9QzA", "scopes": ["usage:write"]}
        ],
    )
    created_at: datetime = Field(description="When it happened")
    #: SHA-256 of the entry and `prev_hash`: editing, removing or reordering entries shows.
    hash: str = Field(
        description="SHA-256 over the entry and the previous entry's hash",
        examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    )
    prev_hash: str | None = Field(
        description="The previous entry's hash; null for the first",
        examples=["60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"],
    )

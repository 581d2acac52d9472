"""Request and response bodies of the workspace routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

__all__ = [
    "ConversationSummaryOut",
    "ConversationSummaryPut",
    "MemoryEntryOut",
    "MemoryEntryPut",
    "RagFolderCreate",
    "RagFolderOut",
    "RagStoreCreate",
    "RagStoreOut",
]


# --- memory, conversations and RAG stores ------------------------------------------------------
class _MemoryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemoryEntryPut(_MemoryBody):
    value: dict[str, Any] = Field(
        description="A JSON object: at most 64 KiB as compact JSON, nesting at most 32 deep",
        examples=[{"tone": "formal", "language": "en"}],
    )
    ttl_seconds: float | None = Field(
        default=None,
        gt=0,
        le=10 * 365 * 86_400,
        description="Expire this many seconds from now (null: never, unless `expires_at`)",
        examples=[3600],
    )
    expires_at: datetime | None = Field(
        default=None, description="Expire at this moment (with a time zone; null: never)"
    )


class MemoryEntryOut(BaseModel):
    """A live memory entry (an expired entry is never answered)."""

    model_config = ConfigDict(from_attributes=True)

    namespace: str = Field(description="The entry's namespace", examples=["agent:support"])
    key: str = Field(description="The key, unique in its namespace", examples=["user:42:prefs"])
    value: dict[str, Any] = Field(description="The stored JSON object")
    user_id: uuid.UUID | None = Field(default=None, description="The user who last put it")
    expires_at: datetime | None = Field(default=None, description="null: never expires")
    created_at: datetime = Field(description="When the entry was first put")
    updated_at: datetime = Field(description="When the entry was last put")


class ConversationSummaryPut(_MemoryBody):
    session_id: str = Field(
        min_length=1,
        max_length=255,
        description="The conversation, as the agent names it; one summary per user and session",
        examples=["chat-2025-03-10-01"],
    )
    summary: str = Field(
        max_length=100_000,
        description="The rolling summary of the conversation",
        examples=["The user is migrating invoices from CSV."],
    )
    agent: str | None = Field(
        default=None, min_length=1, max_length=100, description="The agent that wrote it"
    )
    key_topics: list[str] = Field(
        default_factory=list, max_length=100, description="Topics of the conversation"
    )
    message_count: StrictInt = Field(
        default=0, ge=0, le=2**31 - 1, description="Messages summarised so far"
    )


class ConversationSummaryOut(BaseModel):
    """An agent's long-term memory of one conversation."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="The summary's id")
    user_id: uuid.UUID | None = Field(
        default=None, description="The user the conversation is with (null: none)"
    )
    session_id: str = Field(description="The conversation")
    agent: str | None = Field(default=None, description="The agent that wrote it")
    summary: str = Field(description="The rolling summary")
    key_topics: list[str] = Field(description="Topics of the conversation")
    message_count: int = Field(description="Messages summarised so far")
    created_at: datetime = Field(description="When it was first written")
    updated_at: datetime = Field(description="When it was last written")


class RagStoreCreate(_MemoryBody):
    provider: str = Field(
        min_length=1,
        max_length=50,
        description="The provider holding the store: lower-case letters, digits, `_.-`",
        examples=["google"],
    )
    provider_store_id: str = Field(
        min_length=1,
        max_length=255,
        description="The store's id at the provider",
        examples=["fileSearchStores/acme-docs-1a2b"],
    )
    display_name: str | None = Field(
        default=None, min_length=1, max_length=255, description="A name to show"
    )


class RagStoreOut(BaseModel):
    """The organisation's retrieval store at a model provider (one per organisation)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="The store's id")
    provider: str = Field(description="The provider holding the store", examples=["google"])
    provider_store_id: str = Field(description="The store's id at the provider")
    display_name: str | None = Field(default=None, description="A name to show")
    document_count: int = Field(description="Documents in the store")
    size_bytes: int = Field(description="Bytes in the store")
    created_at: datetime = Field(description="When it was registered")


class RagFolderCreate(_MemoryBody):
    folder_name: str = Field(
        min_length=1, max_length=255, description="The folder's name", examples=["Contracts"]
    )
    parent_id: uuid.UUID | None = Field(
        default=None, description="The RAG folder it is in (null: the top level)"
    )
    folder_id: uuid.UUID | None = Field(
        default=None, description="The workspace folder it mirrors, if any"
    )


class RagFolderOut(BaseModel):
    """A folder inside the organisation's RAG store."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="The folder's id")
    store_id: uuid.UUID = Field(description="The store it belongs to")
    folder_name: str = Field(description="The folder's name")
    parent_id: uuid.UUID | None = Field(default=None, description="The folder it is in")
    folder_id: uuid.UUID | None = Field(default=None, description="The workspace folder it mirrors")
    created_at: datetime = Field(description="When it was made")

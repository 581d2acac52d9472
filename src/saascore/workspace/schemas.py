"""Request and response bodies of the workspace's endpoints.

Integers in request bodies are `StrictInt` (`kit.inputs`): a JSON integer only, so that `"10"`
and `true` are refused (422), as the OpenAPI document's `integer` says."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from saascore.kit.inputs import INT64_MAX, StrictInt
from saascore.kit.validation import Instant, JSONObject, Label, Note
from saascore.models import (
    Document,
    DocumentGeneration,
    DocumentStatus,
    Folder,
    GenerationType,
    JobStatus,
    ProcessingJob,
    UserPreference,
)

__all__ = [
    "ConversationSummaryOut",
    "ConversationSummaryPut",
    "DocumentCreate",
    "DocumentOut",
    "DocumentParsed",
    "FolderCreate",
    "FolderDeleted",
    "FolderOut",
    "FolderUpdate",
    "GenerationCreate",
    "GenerationOut",
    "JobCreate",
    "JobFail",
    "JobOut",
    "JobSucceed",
    "MemoryEntryOut",
    "MemoryEntryPut",
    "PreferencesIn",
    "PreferencesOut",
    "RagFolderCreate",
    "RagFolderOut",
    "RagStoreCreate",
    "RagStoreOut",
]

_STRICT = ConfigDict(extra="forbid")
_HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


# --- folders -------------------------------------------------------------------------------------
class FolderCreate(BaseModel):
    model_config = _STRICT
    name: Label = Field(
        min_length=1,
        max_length=255,
        description="Unique among its siblings",
        examples=["Reports"],
    )
    parent_id: uuid.UUID | None = Field(default=None, description="The parent; null: the root")
    description: Note | None = Field(
        description="What the folder is for", default=None, max_length=10_000
    )


class FolderUpdate(BaseModel):
    """Give `name` to rename; give `parent_id` (null for the root) to move."""

    model_config = _STRICT
    name: Label | None = Field(
        description="The folder's name",
        default=None,
        min_length=1,
        max_length=255,
        examples=["Archive"],
    )
    parent_id: uuid.UUID | None = Field(
        default=None,
        description="Where to move it (null: the root); absent: stay",
    )
    description: Note | None = Field(
        description="What the folder is for", default=None, max_length=10_000
    )


class FolderOut(BaseModel):
    id: uuid.UUID = Field(description="The folder's id")
    name: str = Field(description="The folder's name", examples=["Reports"])
    parent_id: uuid.UUID | None = Field(description="Its parent; null: the root")
    path: str = Field(description="Its names from the root", examples=["/Reports/2026"])
    description: str | None = Field(description="What the folder is for")
    created_at: datetime = Field(description="When it was made")
    updated_at: datetime = Field(description="When it last changed")

    @classmethod
    def of(cls, folder: Folder) -> FolderOut:
        return cls(
            id=folder.id,
            name=folder.name,
            parent_id=folder.parent_id,
            path=folder.path or f"/{folder.name}",
            description=folder.description,
            created_at=folder.created_at,
            updated_at=folder.updated_at,
        )


class FolderDeleted(BaseModel):
    folders: int = Field(description="Folders deleted (the folder and those below)")
    documents: int = Field(description="Documents deleted with them")
    freed_bytes: int = Field(description="Storage freed, in bytes")


# --- documents -----------------------------------------------------------------------------------
class DocumentCreate(BaseModel):
    """A file already in object storage, to register (and count against the storage limit)."""

    model_config = _STRICT
    filename: Label = Field(
        description="The file name shown", min_length=1, max_length=512, examples=["report.pdf"]
    )
    size_bytes: StrictInt = Field(
        ge=0, le=INT64_MAX, description="Its size in bytes", examples=[48213]
    )
    file_hash: str = Field(
        min_length=64,
        max_length=64,
        description="SHA-256 of the content, hex",
        examples=[_HASH],
    )
    folder_id: uuid.UUID | None = Field(default=None, description="Its folder; null: the root")
    content_type: Label | None = Field(
        description="The MIME type", default=None, max_length=255, examples=["application/pdf"]
    )
    storage_uri: Label | None = Field(
        description="Where the bytes are in object storage",
        default=None,
        max_length=4096,
        examples=["gs://acme-docs/report.pdf"],
    )
    original_filename: Label | None = Field(
        description="The name it was uploaded with", default=None, max_length=512
    )
    metadata: JSONObject | None = Field(default=None, description="Your own JSON object")


class DocumentParsed(BaseModel):
    model_config = _STRICT
    parsed_path: Label = Field(
        description="Where the parsed text is",
        min_length=1,
        max_length=4096,
        examples=["gs://acme-docs/report.md"],
    )
    parsed_at: Instant | None = Field(default=None, description="When; now by default")


class DocumentOut(BaseModel):
    id: uuid.UUID = Field(description="The document's id")
    folder_id: uuid.UUID | None = Field(description="Folder id")
    filename: str = Field(description="The file name shown", examples=["report.pdf"])
    original_filename: str | None = Field(description="The name it was uploaded with")
    content_type: str | None = Field(description="The MIME type")
    size_bytes: int = Field(description="Size bytes")
    file_hash: str | None = Field(description="SHA-256 of the content, in hex")
    storage_uri: str | None = Field(description="Where the bytes are in object storage")
    status: DocumentStatus = Field(description="The status")
    parsed_path: str | None = Field(description="Where the parsed text is")
    parsed_at: datetime | None = Field(description="Parsed at")
    metadata: dict[str, Any] = Field(description="Metadata")
    created_at: datetime = Field(description="When it was made")

    @classmethod
    def of(cls, document: Document) -> DocumentOut:
        return cls(
            id=document.id,
            folder_id=document.folder_id,
            filename=document.filename,
            original_filename=document.original_filename,
            content_type=document.content_type,
            size_bytes=document.size_bytes,
            file_hash=document.file_hash,
            storage_uri=document.storage_uri,
            status=document.status,
            parsed_path=document.parsed_path,
            parsed_at=document.parsed_at,
            metadata=document.metadata_,
            created_at=document.created_at,
        )


# --- jobs ----------------------------------------------------------------------------------------
class JobCreate(BaseModel):
    model_config = _STRICT
    document_id: uuid.UUID = Field(description="The document to process")
    job_type: Label = Field(
        description="The kind of processing", min_length=1, max_length=100, examples=["parse"]
    )
    options: JSONObject = Field(
        default_factory=dict,
        description="Part of the cache key",
        examples=[{"ocr": True}],
    )
    model: Label | None = Field(
        description="The model used", default=None, max_length=100, examples=["gemini-2.5-flash"]
    )


class JobSucceed(BaseModel):
    model_config = _STRICT
    result: JSONObject = Field(description="The result (JSON object)", examples=[{"pages": 12}])
    input_tokens: StrictInt = Field(description="Tokens read", default=0, ge=0, le=INT64_MAX)
    output_tokens: StrictInt = Field(description="Tokens written", default=0, ge=0, le=INT64_MAX)
    model: Label | None = Field(description="The model used", default=None, max_length=100)


class JobFail(BaseModel):
    model_config = _STRICT
    error: Note = Field(
        description="What went wrong",
        min_length=1,
        max_length=10_000,
        examples=["the PDF is encrypted"],
    )


class JobOut(BaseModel):
    id: uuid.UUID = Field(description="The job's id")
    document_id: uuid.UUID | None = Field(description="The document")
    job_type: str = Field(description="The kind of processing", examples=["parse"])
    cache_key: str | None = Field(description="SHA-256 of content hash, type and options")
    status: JobStatus = Field(description="The status")
    model: str | None = Field(description="The model used")
    options: dict[str, Any] = Field(description="Options, part of the cache key")
    result: dict[str, Any] | None = Field(description="The result (JSON object)")
    error_message: str | None = Field(description="Why it failed")
    input_tokens: int = Field(description="Tokens read")
    output_tokens: int = Field(description="Tokens written")
    cache_hit: bool = Field(
        default=False,
        description="On a submission: answered from a succeeded job's result",
    )
    created_at: datetime = Field(description="When it was made")
    started_at: datetime | None = Field(description="When it started running")
    completed_at: datetime | None = Field(description="When it finished")

    @classmethod
    def of(cls, job: ProcessingJob, *, cache_hit: bool = False) -> JobOut:
        return cls(
            id=job.id,
            document_id=job.document_id,
            job_type=job.job_type,
            cache_key=job.cache_key,
            status=job.status,
            model=job.model,
            options=job.options,
            result=job.result,
            error_message=job.error_message,
            input_tokens=job.input_tokens,
            output_tokens=job.output_tokens,
            cache_hit=cache_hit,
            created_at=job.created_at,
            started_at=job.started_at,
            completed_at=job.completed_at,
        )


# --- generations ---------------------------------------------------------------------------------
class GenerationCreate(BaseModel):
    """Get or create: the stored generation for the document, type and options, or this one."""

    model_config = _STRICT
    document_id: uuid.UUID = Field(description="The document")
    generation_type: GenerationType = Field(
        description="summary, faq, questions, extraction or other", examples=["summary"]
    )
    options: JSONObject = Field(
        description="Options, part of the cache key",
        default_factory=dict,
        examples=[{"length": "short"}],
    )
    content: JSONObject = Field(
        description="The generated content (JSON object)", examples=[{"text": "A short summary."}]
    )
    model: Label | None = Field(description="The model used", default=None, max_length=100)
    input_tokens: StrictInt = Field(description="Tokens read", default=0, ge=0, le=INT64_MAX)
    output_tokens: StrictInt = Field(description="Tokens written", default=0, ge=0, le=INT64_MAX)


class GenerationOut(BaseModel):
    id: uuid.UUID = Field(description="The generation's id")
    document_id: uuid.UUID = Field(description="The document")
    generation_type: GenerationType = Field(
        description="summary, faq, questions, extraction or other"
    )
    cache_key: str = Field(description="Cache key")
    content: dict[str, Any] = Field(description="The generated content (JSON object)")
    model: str | None = Field(description="The model used")
    options: dict[str, Any] = Field(description="Options, part of the cache key")
    input_tokens: int = Field(description="Tokens read")
    output_tokens: int = Field(description="Tokens written")
    created_at: datetime = Field(description="When it was made")

    @classmethod
    def of(cls, generation: DocumentGeneration) -> GenerationOut:
        return cls(
            id=generation.id,
            document_id=generation.document_id,
            generation_type=generation.generation_type,
            cache_key=generation.cache_key,
            content=generation.content,
            model=generation.model,
            options=generation.options,
            input_tokens=generation.input_tokens,
            output_tokens=generation.output_tokens,
            created_at=generation.created_at,
        )


class PreferencesIn(BaseModel):
    model_config = _STRICT
    default_model: Label | None = Field(
        description="The model to generate with",
        default=None,
        max_length=100,
        examples=["gpt-4o-mini"],
    )
    language: Label | None = Field(
        description="The language to generate in",
        default=None,
        min_length=1,
        max_length=16,
        examples=["en"],
    )
    preferences: JSONObject = Field(
        description="Other settings (JSON object)",
        default_factory=dict,
        examples=[{"tone": "plain"}],
    )


class PreferencesOut(BaseModel):
    default_model: str | None = Field(description="The model to generate with")
    language: str | None = Field(description="The language to generate in")
    preferences: dict[str, Any] = Field(description="Other settings (JSON object)")

    @classmethod
    def of(cls, preference: UserPreference | None) -> PreferencesOut:
        if preference is None:
            return cls(default_model=None, language=None, preferences={})
        return cls(
            default_model=preference.default_model,
            language=preference.language,
            preferences=preference.preferences,
        )


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

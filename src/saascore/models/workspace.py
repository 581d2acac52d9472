"""The document and AI workspace of seed 000: folders, documents, processing, memory, RAG."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from saascore.kit.types import str_enum
from saascore.models.base import Base, TenantMixin, TimestampMixin, non_negative, tenant_fk

__all__ = [
    "ACTIVE_JOB_STATUSES",
    "ConversationSummary",
    "Document",
    "DocumentFolder",
    "DocumentGeneration",
    "DocumentStatus",
    "FileSearchStore",
    "Folder",
    "GenerationType",
    "JobStatus",
    "MemoryEntry",
    "ProcessingJob",
    "UserPreference",
]


class DocumentStatus(StrEnum):
    UPLOADED = "uploaded"
    PROCESSING = "processing"
    PROCESSED = "processed"
    FAILED = "failed"
    DELETED = "deleted"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


#: The statuses of a job that is still to finish: at most one per cache key.
ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class GenerationType(StrEnum):
    SUMMARY = "summary"
    FAQ = "faq"
    QUESTIONS = "questions"
    EXTRACTION = "extraction"
    OTHER = "other"


class Folder(TenantMixin, TimestampMixin, Base):
    """A folder of documents; folders nest, and deleting one deletes what it holds."""

    __tablename__ = "folders"

    name: Mapped[str] = mapped_column(sa.String(255))
    parent_id: Mapped[uuid.UUID | None]
    path: Mapped[str | None] = mapped_column(sa.Text)
    description: Mapped[str | None] = mapped_column(sa.Text)
    created_by: Mapped[uuid.UUID | None]

    __table_args__ = (
        tenant_fk("parent_id", "folders", ondelete="CASCADE"),
        sa.Index("ix_folders_organization_id_parent_id", "organization_id", "parent_id"),
        # Names are unique among siblings (compared exactly: "Reports" and "reports" differ).
        sa.Index(
            "uq_folders_sibling_name",
            "organization_id",
            "parent_id",
            "name",
            unique=True,
            postgresql_where=sa.text("parent_id IS NOT NULL"),
            sqlite_where=sa.text("parent_id IS NOT NULL"),
        ),
        sa.Index(
            "uq_folders_root_name",
            "organization_id",
            "name",
            unique=True,
            postgresql_where=sa.text("parent_id IS NULL"),
            sqlite_where=sa.text("parent_id IS NULL"),
        ),
    )


class Document(TenantMixin, TimestampMixin, Base):
    """A document's metadata; the bytes live in object storage at `storage_uri`."""

    __tablename__ = "documents"

    folder_id: Mapped[uuid.UUID | None]
    filename: Mapped[str] = mapped_column(sa.String(512))
    original_filename: Mapped[str | None] = mapped_column(sa.String(512))
    content_type: Mapped[str | None] = mapped_column(sa.String(255))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: SHA-256 of the content, to find duplicates and reuse processing results.
    file_hash: Mapped[str | None] = mapped_column(sa.String(64))
    storage_uri: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[DocumentStatus] = mapped_column(
        str_enum(DocumentStatus, "status"), default=DocumentStatus.UPLOADED
    )
    parsed_path: Mapped[str | None] = mapped_column(sa.Text)
    parsed_at: Mapped[datetime | None]
    uploaded_by: Mapped[uuid.UUID | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    deleted_at: Mapped[datetime | None]

    __table_args__ = (
        tenant_fk("folder_id", "folders", ondelete="CASCADE"),
        *non_negative("size_bytes"),
        sa.Index("ix_documents_organization_id_folder_id", "organization_id", "folder_id"),
        sa.Index("ix_documents_organization_id_file_hash", "organization_id", "file_hash"),
        # The same content is registered once per folder (and once at the root).
        sa.Index(
            "uq_documents_folder_file_hash",
            "organization_id",
            "folder_id",
            "file_hash",
            unique=True,
            postgresql_where=sa.text("folder_id IS NOT NULL AND file_hash IS NOT NULL"),
            sqlite_where=sa.text("folder_id IS NOT NULL AND file_hash IS NOT NULL"),
        ),
        sa.Index(
            "uq_documents_root_file_hash",
            "organization_id",
            "file_hash",
            unique=True,
            postgresql_where=sa.text("folder_id IS NULL AND file_hash IS NOT NULL"),
            sqlite_where=sa.text("folder_id IS NULL AND file_hash IS NOT NULL"),
        ),
    )


class ProcessingJob(TenantMixin, TimestampMixin, Base):
    """A processing task on a document; `cache_key` lets an identical request reuse a result."""

    __tablename__ = "processing_jobs"

    document_id: Mapped[uuid.UUID | None]
    job_type: Mapped[str] = mapped_column(sa.String(100))
    cache_key: Mapped[str | None] = mapped_column(sa.String(255))
    status: Mapped[JobStatus] = mapped_column(
        str_enum(JobStatus, "status"), default=JobStatus.QUEUED
    )
    model: Mapped[str | None] = mapped_column(sa.String(255))
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column()
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    input_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_by: Mapped[uuid.UUID | None]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]

    __table_args__ = (
        tenant_fk("document_id", "documents", ondelete="CASCADE"),
        *non_negative("input_tokens", "output_tokens"),
        sa.Index("ix_processing_jobs_organization_id_cache_key", "organization_id", "cache_key"),
        sa.Index(
            "ix_processing_jobs_organization_id_document_id", "organization_id", "document_id"
        ),
        sa.Index("ix_processing_jobs_organization_id_status", "organization_id", "status"),
        # One queued or running job per cache key, however many identical submissions race.
        sa.Index(
            "uq_processing_jobs_active_cache_key",
            "organization_id",
            "cache_key",
            unique=True,
            postgresql_where=sa.text("status IN ('queued', 'running')"),
            sqlite_where=sa.text("status IN ('queued', 'running')"),
        ),
    )


class DocumentGeneration(TenantMixin, TimestampMixin, Base):
    """Generated content cached per document (summaries, FAQs, questions)."""

    __tablename__ = "document_generations"

    document_id: Mapped[uuid.UUID]
    generation_type: Mapped[GenerationType] = mapped_column(
        str_enum(GenerationType, "generation_type")
    )
    #: Hash of the document content and generation options: same key, same content.
    cache_key: Mapped[str] = mapped_column(sa.String(255))
    content: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model: Mapped[str | None] = mapped_column(sa.String(255))
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    input_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_by: Mapped[uuid.UUID | None]

    __table_args__ = (
        tenant_fk("document_id", "documents", ondelete="CASCADE"),
        sa.UniqueConstraint(
            "organization_id",
            "document_id",
            "generation_type",
            "cache_key",
            name="uq_document_generations_cache_key",
        ),
        *non_negative("input_tokens", "output_tokens"),
    )


class UserPreference(TenantMixin, TimestampMixin, Base):
    """A user's generation settings (default model, language, tone), one row per user."""

    __tablename__ = "user_preferences"

    user_id: Mapped[uuid.UUID]
    default_model: Mapped[str | None] = mapped_column(sa.String(255))
    language: Mapped[str | None] = mapped_column(sa.String(16))
    preferences: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (
        tenant_fk("user_id", "users", ondelete="CASCADE"),
        sa.UniqueConstraint("organization_id", "user_id"),
    )


class ConversationSummary(TenantMixin, TimestampMixin, Base):
    """Long-term memory of an agent conversation: a rolling summary and its topics."""

    __tablename__ = "conversation_summaries"

    user_id: Mapped[uuid.UUID | None]
    session_id: Mapped[str] = mapped_column(sa.String(255))
    agent: Mapped[str | None] = mapped_column(sa.String(100))
    summary: Mapped[str] = mapped_column(sa.Text)
    key_topics: Mapped[list[str]] = mapped_column(default=list)
    message_count: Mapped[int] = mapped_column(default=0)

    __table_args__ = (
        tenant_fk("user_id", "users", ondelete="CASCADE"),
        *non_negative("message_count"),
        sa.Index(
            "ix_conversation_summaries_org_user_session", "organization_id", "user_id", "session_id"
        ),
    )


class MemoryEntry(TenantMixin, TimestampMixin, Base):
    """A namespaced key-value entry, optionally expiring."""

    __tablename__ = "memory_entries"

    namespace: Mapped[str] = mapped_column(sa.String(255))
    key: Mapped[str] = mapped_column(sa.String(255))
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    user_id: Mapped[uuid.UUID | None]
    expires_at: Mapped[datetime | None]

    __table_args__ = (
        sa.UniqueConstraint("organization_id", "namespace", "key"),
        sa.Index("ix_memory_entries_expires_at", "expires_at"),
    )


class FileSearchStore(TenantMixin, TimestampMixin, Base):
    """The organisation's retrieval store at the model provider (Gemini File Search); one each."""

    __tablename__ = "file_search_stores"

    provider: Mapped[str] = mapped_column(sa.String(50), default="google")
    #: The provider's store id (seed 000 `gemini_store_id`).
    provider_store_id: Mapped[str] = mapped_column(sa.String(255))
    display_name: Mapped[str | None] = mapped_column(sa.String(255))
    document_count: Mapped[int] = mapped_column(default=0)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)

    __table_args__ = (
        sa.UniqueConstraint("organization_id"),
        *non_negative("document_count", "size_bytes"),
    )


class DocumentFolder(TenantMixin, TimestampMixin, Base):
    """A folder inside a retrieval store; nests like `folders`."""

    __tablename__ = "document_folders"

    store_id: Mapped[uuid.UUID]
    folder_name: Mapped[str] = mapped_column(sa.String(255))
    parent_id: Mapped[uuid.UUID | None]
    #: The workspace folder this mirrors, if any.
    folder_id: Mapped[uuid.UUID | None]

    __table_args__ = (
        tenant_fk("store_id", "file_search_stores", ondelete="CASCADE"),
        tenant_fk("parent_id", "document_folders", ondelete="CASCADE"),
        tenant_fk("folder_id", "folders", ondelete="CASCADE"),
        sa.Index("ix_document_folders_organization_id_store_id", "organization_id", "store_id"),
        sa.Index("ix_document_folders_organization_id_parent_id", "organization_id", "parent_id"),
        sa.Index("ix_document_folders_organization_id_folder_id", "organization_id", "folder_id"),
    )

"""The audit trail, hash-chained per organisation so that tampering is detectable."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from saascore.kit.validation import canonical_json
from saascore.models.base import Base, TenantMixin

__all__ = ["AuditChainHead", "AuditLog"]


class AuditLog(TenantMixin, Base):
    """One audited action. Append-only.

    `seq` numbers an organisation's entries 1, 2, 3, ... and `hash` covers the entry and the
    previous entry's hash, so an edited, deleted or reordered entry breaks the chain. Actor and
    target ids are plain values, not foreign keys: the trail outlives what it describes.
    """

    __tablename__ = "audit_logs"

    seq: Mapped[int] = mapped_column(sa.BigInteger)
    actor_type: Mapped[str] = mapped_column(sa.String(32))
    actor_id: Mapped[str | None] = mapped_column(sa.String(255))
    user_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(sa.String(100))
    target_type: Mapped[str | None] = mapped_column(sa.String(100))
    target_id: Mapped[str | None] = mapped_column(sa.String(255))
    #: The AI processing job the entry is about (seed 000's optional link).
    processing_job_id: Mapped[uuid.UUID | None]
    ip_address: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))
    request_id: Mapped[str | None] = mapped_column(sa.String(64))
    #: `request_data` and `details` as the canonical JSON text that `hash` covers, byte for
    #: byte (`saascore.kit.validation.canonical_json`): a JSONB column would rewrite numbers
    #: (`-0.0`, `1e308`, `1.10`) and break the hash of an untampered entry.
    request_data_text: Mapped[str] = mapped_column("request_data", sa.Text, default="{}")
    details_text: Mapped[str] = mapped_column("details", sa.Text, default="{}")
    prev_hash: Mapped[str | None] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]

    @property
    def request_data(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.request_data_text)
        return value

    @request_data.setter
    def request_data(self, value: dict[str, Any]) -> None:
        self.request_data_text = canonical_json(value)

    @property
    def details(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.details_text)
        return value

    @details.setter
    def details(self, value: dict[str, Any]) -> None:
        self.details_text = canonical_json(value)

    __table_args__ = (
        sa.UniqueConstraint("organization_id", "seq"),
        sa.Index("ix_audit_logs_organization_id_created_at", "organization_id", "created_at"),
        sa.Index("ix_audit_logs_organization_id_action", "organization_id", "action"),
        sa.Index(
            "ix_audit_logs_organization_id_processing_job_id",
            "organization_id",
            "processing_job_id",
        ),
    )


class AuditChainHead(TenantMixin, Base):
    """The newest link of an organisation's chain: its `seq` and `hash`. One per organisation.

    Appending locks this row, which serialises an organisation's entries, and verification
    compares the chain's end with it, so deleting the newest entries is detected too.
    """

    __tablename__ = "audit_chain_heads"

    seq: Mapped[int] = mapped_column(sa.BigInteger)
    hash: Mapped[str | None] = mapped_column(sa.String(64))

    __table_args__ = (sa.UniqueConstraint("organization_id"),)

"""Credentials: API keys, refresh tokens and the operators' keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from saascore.kit.types import str_enum
from saascore.models.base import Base, GlobalMixin, TenantMixin, tenant_fk

__all__ = ["ApiKey", "ApiKeyEnvironment", "OperatorKey", "RefreshToken"]


class ApiKeyEnvironment(StrEnum):
    LIVE = "live"
    TEST = "test"


class ApiKey(TenantMixin, Base):
    """An API key. Only its SHA-256 is stored; the raw key is shown once, at creation."""

    __tablename__ = "api_keys"

    #: The user the key acts for; None for an organisation-level (service) key.
    user_id: Mapped[uuid.UUID | None]
    name: Mapped[str] = mapped_column(sa.String(255))
    #: The visible start of the key (`sk_live_ab12cd34`), to recognise it in lists.
    key_prefix: Mapped[str] = mapped_column(sa.String(32))
    key_hash: Mapped[str] = mapped_column(sa.String(64))
    environment: Mapped[ApiKeyEnvironment] = mapped_column(
        str_enum(ApiKeyEnvironment, "environment"), default=ApiKeyEnvironment.LIVE
    )
    scopes: Mapped[list[str]] = mapped_column(default=list)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    created_by: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())

    __table_args__ = (
        tenant_fk("user_id", "users", ondelete="CASCADE"),
        # Keys are looked up by hash before the organisation is known; a SHA-256 of 32 random
        # bytes does not collide, so this index need not be unique (and stays distributable).
        sa.Index("ix_api_keys_key_hash", "key_hash"),
        sa.Index("ix_api_keys_organization_id_user_id", "organization_id", "user_id"),
    )


class RefreshToken(TenantMixin, Base):
    """A refresh token. Rotated on every use; reusing a rotated one revokes its family."""

    __tablename__ = "refresh_tokens"

    user_id: Mapped[uuid.UUID]
    family_id: Mapped[uuid.UUID]
    token_hash: Mapped[str] = mapped_column(sa.String(64))
    issued_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    replaced_by_id: Mapped[uuid.UUID | None]
    ip_address: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))

    __table_args__ = (
        tenant_fk("user_id", "users", ondelete="CASCADE"),
        sa.Index("ix_refresh_tokens_token_hash", "token_hash"),
        sa.Index("ix_refresh_tokens_organization_id_family_id", "organization_id", "family_id"),
        sa.Index("ix_refresh_tokens_organization_id_user_id", "organization_id", "user_id"),
    )


class OperatorKey(GlobalMixin, Base):
    """A key of the platform's own staff, for `/v1/admin/...`. Global: an operator belongs to
    no organisation. Stored, like tenant keys, as a SHA-256 with a visible prefix."""

    __tablename__ = "operator_keys"

    name: Mapped[str] = mapped_column(sa.String(255))
    key_prefix: Mapped[str] = mapped_column(sa.String(32))
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())

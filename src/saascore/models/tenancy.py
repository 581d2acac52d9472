"""Organisations (the tenants) and their users."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from saascore.kit.ids import new_id
from saascore.kit.types import str_enum
from saascore.models.base import Base, TenantMixin, TimestampMixin
from saascore.models.enums import PaymentProvider, SubscriptionStatus

if TYPE_CHECKING:
    from saascore.models.catalog import SubscriptionPlan

__all__ = ["Organization", "OrganizationStatus", "SubscriptionStatus", "User", "UserRole"]


class OrganizationStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETED = "deleted"


class UserRole(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


class Organization(TimestampMixin, Base):
    """The tenant. Every tenant table references it and is deleted with it."""

    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(255))
    slug: Mapped[str] = mapped_column(sa.String(100), unique=True)
    domain: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    #: The organisation's id on the platform that provisions it (seed 004 `provision_user`).
    external_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    plan_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("subscription_plans.id", ondelete="RESTRICT"), index=True
    )
    status: Mapped[OrganizationStatus] = mapped_column(
        str_enum(OrganizationStatus, "status"), default=OrganizationStatus.ACTIVE
    )
    subscription_status: Mapped[SubscriptionStatus] = mapped_column(
        str_enum(SubscriptionStatus, "subscription_status"), default=SubscriptionStatus.ACTIVE
    )
    billing_email: Mapped[str | None] = mapped_column(sa.String(320))
    #: ISO 3166 country and a locale for invoices and e-mails (invoices carry localized notes).
    country: Mapped[str | None] = mapped_column(sa.String(2))
    locale: Mapped[str] = mapped_column(sa.String(16), default="en")
    currency: Mapped[str] = mapped_column(sa.String(3), default="USD")
    #: The tax rate of its invoices, in basis points (1500 = 15 %): its country's default
    #: (`kit/tax_rates.toml`) or set by an operator, as `tax_rate_source` says.
    #: The database's default only (no Python default), so that an INSERT leaves the column
    #: out unless it is set: organisations are written the same way at earlier revisions.
    #: Read it from a fresh SELECT (`locked_organization`), not from a just-inserted object.
    tax_rate_bps: Mapped[int] = mapped_column(server_default=sa.text("0"))
    #: "country" (follows the country when it changes) or "operator" (kept). Like
    #: `tax_rate_bps`, a database default only.
    tax_rate_source: Mapped[str] = mapped_column(sa.String(16), server_default=sa.text("'country'"))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: The organisation as a customer of its payment provider (seed 004's Stripe customer id),
    #: kept from the first checkout so later ones reuse it.
    billing_provider: Mapped[PaymentProvider | None] = mapped_column(
        str_enum(PaymentProvider, "billing_provider")
    )
    provider_customer_id: Mapped[str | None] = mapped_column(sa.String(255))
    suspended_at: Mapped[datetime | None]

    plan: Mapped[SubscriptionPlan] = relationship(lazy="raise")

    __table_args__ = (
        sa.CheckConstraint("length(currency) = 3", name="currency_iso"),
        sa.CheckConstraint("tax_rate_bps BETWEEN 0 AND 100000", name="tax_rate_bps_range"),
        sa.CheckConstraint(
            "tax_rate_source IN ('country', 'operator')", name="tax_rate_source_known"
        ),
        sa.UniqueConstraint("billing_provider", "provider_customer_id"),
    )


class User(TenantMixin, TimestampMixin, Base):
    """A person in one organisation. The same e-mail may belong to several organisations."""

    __tablename__ = "users"

    email: Mapped[str] = mapped_column(sa.String(320))
    full_name: Mapped[str | None] = mapped_column(sa.String(255))
    role: Mapped[UserRole] = mapped_column(str_enum(UserRole, "role"), default=UserRole.MEMBER)
    #: argon2id (or a legacy bcrypt hash, re-hashed at the next login); None for SSO-only users.
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    is_active: Mapped[bool] = mapped_column(default=True)
    email_verified_at: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]
    #: Access tokens issued at or before this instant are refused: set by logout, refresh-token
    #: reuse, a password change and deactivation, which end the user's tokens at once.
    tokens_valid_after: Mapped[datetime | None]
    #: The user's id on the platform that provisions it (seed 004: platform user and store ids).
    external_platform: Mapped[str | None] = mapped_column(sa.String(50))
    external_id: Mapped[str | None] = mapped_column(sa.String(255))
    external_store_id: Mapped[str | None] = mapped_column(sa.String(255))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (
        sa.UniqueConstraint("organization_id", "email"),
        sa.UniqueConstraint("organization_id", "external_platform", "external_id"),
        sa.Index("ix_users_email", "email"),
    )

"""Prepaid credits as a ledger: grants, the append-only transactions, and per-grant draws."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from saascore.kit.types import str_enum
from saascore.models.base import Base, TenantMixin, non_negative, tenant_fk

__all__ = [
    "CreditAllocation",
    "CreditGrant",
    "CreditSource",
    "CreditTransaction",
    "CreditTransactionType",
]


class CreditSource(StrEnum):
    PLAN = "plan"
    PURCHASE = "purchase"
    PROMOTION = "promotion"
    REFUND = "refund"
    MANUAL = "manual"


class CreditTransactionType(StrEnum):
    GRANT = "grant"
    CONSUME = "consume"
    EXPIRE = "expire"
    REFUND = "refund"
    ADJUST = "adjust"


class CreditGrant(TenantMixin, Base):
    """A block of credits. Consumption draws from grants by priority, then earliest expiry."""

    __tablename__ = "credit_grants"

    amount: Mapped[int] = mapped_column(sa.BigInteger)
    remaining: Mapped[int] = mapped_column(sa.BigInteger)
    priority: Mapped[int] = mapped_column(default=0)
    source: Mapped[CreditSource] = mapped_column(str_enum(CreditSource, "source"))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    payment_id: Mapped[uuid.UUID | None]
    description: Mapped[str | None] = mapped_column(sa.Text)
    effective_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())
    expires_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())

    __table_args__ = (
        sa.UniqueConstraint("organization_id", "idempotency_key"),
        tenant_fk("payment_id", "payments"),
        *non_negative("amount", "remaining"),
        sa.CheckConstraint("remaining <= amount", name="remaining_within_amount"),
        sa.Index(
            "ix_credit_grants_drawable", "organization_id", "priority", "expires_at", "remaining"
        ),
        sa.Index("ix_credit_grants_organization_id_expires_at", "organization_id", "expires_at"),
        sa.Index("ix_credit_grants_organization_id_payment_id", "organization_id", "payment_id"),
    )


class CreditTransaction(TenantMixin, Base):
    """One change to an organisation's credits. Append-only: never updated or deleted.

    `amount` is signed (a grant adds, a consumption subtracts) and `balance_after` is the
    balance once it applied, so the ledger can be replayed and checked.
    """

    __tablename__ = "credit_transactions"

    type: Mapped[CreditTransactionType] = mapped_column(str_enum(CreditTransactionType, "type"))
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    balance_after: Mapped[int] = mapped_column(sa.BigInteger)
    grant_id: Mapped[uuid.UUID | None]
    #: The transaction this one answers: the consumption a refund gives back.
    related_transaction_id: Mapped[uuid.UUID | None]
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    payload_hash: Mapped[str | None] = mapped_column(sa.String(64))
    reference: Mapped[str | None] = mapped_column(sa.String(255))
    description: Mapped[str | None] = mapped_column(sa.Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())

    #: Never loaded: it tells the unit of work that grants are inserted before the
    #: transactions that name them, so both may go in one flush (the billing run's refills).
    grant: Mapped[CreditGrant | None] = relationship(lazy="raise")

    __table_args__ = (
        sa.UniqueConstraint("organization_id", "idempotency_key"),
        tenant_fk("grant_id", "credit_grants"),
        tenant_fk("related_transaction_id", "credit_transactions"),
        *non_negative("balance_after"),
        sa.Index(
            "ix_credit_transactions_organization_id_created_at", "organization_id", "created_at"
        ),
        sa.Index("ix_credit_transactions_organization_id_grant_id", "organization_id", "grant_id"),
        sa.Index("ix_credit_transactions_related", "organization_id", "related_transaction_id"),
    )


class CreditAllocation(TenantMixin, Base):
    """How much of one transaction landed on one grant (a consumption may draw on several).

    For every grant, `amount - remaining` equals the sum of its consume and expire allocations
    less its refunds.
    """

    __tablename__ = "credit_allocations"

    transaction_id: Mapped[uuid.UUID]
    grant_id: Mapped[uuid.UUID]
    #: Credits taken from the grant (negative when a refund puts them back).
    amount: Mapped[int] = mapped_column(sa.BigInteger)

    __table_args__ = (
        tenant_fk("transaction_id", "credit_transactions", ondelete="CASCADE"),
        tenant_fk("grant_id", "credit_grants", ondelete="CASCADE"),
        sa.Index("ix_credit_allocations_organization_id_grant_id", "organization_id", "grant_id"),
        sa.Index(
            "ix_credit_allocations_organization_id_transaction_id",
            "organization_id",
            "transaction_id",
        ),
    )

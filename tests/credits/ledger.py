"""Plain helpers for the credit tests: a controllable clock, and the ledger read straight from
the database (column selects, never the session's identity map)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from saascore.models import CreditAllocation, CreditGrant, CreditTransaction, UsageLimits
from tests.helpers import CLOCK_START, Clock

__all__ = [
    "START",
    "Clock",
    "GrantRow",
    "TransactionRow",
    "allocations",
    "assert_running_balance",
    "grants",
    "ledger",
    "remaining",
    "row_counts",
    "totals",
]

START = CLOCK_START

Reader = AsyncSession | AsyncConnection


@dataclass(frozen=True)
class GrantRow:
    id: uuid.UUID
    amount: int
    remaining: int
    priority: int
    source: str
    expires_at: datetime | None
    expired_at: datetime | None


@dataclass(frozen=True)
class TransactionRow:
    id: uuid.UUID
    type: str
    amount: int
    balance_after: int
    grant_id: uuid.UUID | None
    related_transaction_id: uuid.UUID | None
    idempotency_key: str | None


async def grants(db: Reader, org_id: uuid.UUID) -> list[GrantRow]:
    """The organisation's grants, oldest first."""
    rows = await db.execute(
        sa.select(
            CreditGrant.id,
            CreditGrant.amount,
            CreditGrant.remaining,
            CreditGrant.priority,
            CreditGrant.source,
            CreditGrant.expires_at,
            CreditGrant.expired_at,
        )
        .where(CreditGrant.organization_id == org_id)
        .order_by(CreditGrant.id)
    )
    return [GrantRow(*row) for row in rows]


async def remaining(db: Reader, org_id: uuid.UUID) -> dict[uuid.UUID, int]:
    """What each grant still holds, by grant id."""
    return {grant.id: grant.remaining for grant in await grants(db, org_id)}


async def ledger(db: Reader, org_id: uuid.UUID) -> list[TransactionRow]:
    """The organisation's transactions in the order they were applied (UUIDv7 ids)."""
    rows = await db.execute(
        sa.select(
            CreditTransaction.id,
            CreditTransaction.type,
            CreditTransaction.amount,
            CreditTransaction.balance_after,
            CreditTransaction.grant_id,
            CreditTransaction.related_transaction_id,
            CreditTransaction.idempotency_key,
        )
        .where(CreditTransaction.organization_id == org_id)
        .order_by(CreditTransaction.id)
    )
    return [TransactionRow(*row) for row in rows]


async def allocations(
    db: Reader, org_id: uuid.UUID, transaction_id: uuid.UUID
) -> list[tuple[uuid.UUID, int]]:
    """(grant id, credits taken) of one transaction, in the order they were written."""
    rows = await db.execute(
        sa.select(CreditAllocation.grant_id, CreditAllocation.amount)
        .where(
            CreditAllocation.organization_id == org_id,
            CreditAllocation.transaction_id == transaction_id,
        )
        .order_by(CreditAllocation.id)
    )
    return [(grant_id, int(amount)) for grant_id, amount in rows]


async def row_counts(db: Reader, org_id: uuid.UUID) -> dict[str, int]:
    """How many grants, transactions and allocations the organisation has."""
    counts: dict[str, int] = {}
    for model in (CreditGrant, CreditTransaction, CreditAllocation):
        query = sa.select(sa.func.count()).where(model.organization_id == org_id)
        counts[model.__tablename__] = int(await db.scalar(query) or 0)
    return counts


async def totals(db: Reader, org_id: uuid.UUID) -> dict[str, Any]:
    """The cached balance and running totals of the organisation's `usage_limits` row."""
    row = (
        await db.execute(
            sa.select(
                UsageLimits.credit_balance,
                UsageLimits.credits_granted_total,
                UsageLimits.credits_consumed_total,
                UsageLimits.credits_expired_total,
                UsageLimits.last_credit_refill_at,
                UsageLimits.next_credit_refill_at,
            ).where(UsageLimits.organization_id == org_id)
        )
    ).one()
    return dict(row._mapping)


def assert_running_balance(transactions: list[TransactionRow], start: int = 0) -> int:
    """Each transaction's `balance_after` is the balance before it plus its amount, and never
    negative. Returns the last balance."""
    balance = start
    for transaction in transactions:
        balance += transaction.amount
        assert transaction.balance_after == balance, (transaction, balance)
        assert balance >= 0, transaction
    return balance

"""Response bodies of `/v1/credits`."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from saascore.credits.service import CreditAccount
from saascore.kit.inputs import PRIORITY_MAX, PRIORITY_MIN, StrictInt
from saascore.kit.validation import Instant, Label
from saascore.metering.schemas import PLAIN_TEXT
from saascore.models import CreditSource, CreditTransactionType
from saascore.plans.catalog import INT64

__all__ = [
    "CreditConsume",
    "CreditGrantCreate",
    "CreditGrantOut",
    "CreditTransactionOut",
    "CreditsResponse",
    "LowThreshold",
]


class CreditGrantOut(BaseModel):
    """A block of credits that still holds some. Consumption draws on grants by `priority`
    (lower first), then earliest expiry, then age."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="The grant's id")
    amount: int = Field(description="Credits granted", examples=[1000])
    remaining: int = Field(description="Credits left in the grant", examples=[640])
    priority: int = Field(
        description=("Grants with a lower priority are drawn first (then the soonest to expire)"),
        examples=[0],
    )
    source: CreditSource = Field(
        description=("Where the credits came from: `plan`, `purchase`, `promotion`, `manual`, ...")
    )
    description: str | None = Field(
        description="A note on the grant", default=None, examples=["plan credits for 2025-03"]
    )
    effective_at: datetime = Field(description="When the credits became usable")
    expires_at: datetime | None = Field(default=None, description="null: never expires")
    created_at: datetime = Field(description="When the grant was made")


class CreditsResponse(BaseModel):
    """The organisation's credit balance and the grants it is made of, in draw order."""

    balance: int = Field(description="Credits available now", examples=[640])
    low_threshold: int | None = Field(
        description="`credits.low` is sent when the balance falls below this (null: never)",
        examples=[100],
    )
    grants: list[CreditGrantOut] = Field(
        description="The grants with credits left, in the order they are drawn"
    )

    @classmethod
    def of(cls, account: CreditAccount) -> CreditsResponse:
        return cls(
            balance=account.balance,
            low_threshold=account.low_threshold,
            grants=[CreditGrantOut.model_validate(grant) for grant in account.grants],
        )


class CreditTransactionOut(BaseModel):
    """One change to the credits, as the ledger records it: `amount` is signed (a grant
    adds, a consumption or an expiry subtracts) and `balance_after` is the balance it left."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID = Field(description="The transaction's id")
    type: CreditTransactionType = Field(
        description="`grant`, `consume`, `expire`, `refund` or `adjust`"
    )
    amount: int = Field(
        description="The change of the balance: positive adds, negative draws", examples=[-360]
    )
    balance_after: int = Field(
        description="The balance once the transaction counted", examples=[640]
    )
    grant_id: uuid.UUID | None = Field(default=None, description="The grant it made or drew on")
    related_transaction_id: uuid.UUID | None = Field(
        default=None, description="The consumption a refund gives back"
    )
    reference: str | None = Field(
        description="The caller's reference, such as the job the credits paid for",
        default=None,
        examples=["job-4417"],
    )
    description: str | None = Field(
        description="A note on the transaction", default=None, examples=[None]
    )
    created_at: datetime = Field(description="When it happened")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreditGrantCreate(_Body):
    amount: StrictInt = Field(description="Credits to grant", ge=1, le=INT64, examples=[5_000])
    idempotency_key: str = Field(
        min_length=1,
        max_length=255,
        description="Retrying with the same key returns the first grant and grants nothing",
        examples=["goodwill-2025-03-ticket-812"],
    )
    source: CreditSource = Field(
        description="Where the credits come from",
        default=CreditSource.MANUAL,
        examples=[CreditSource.PROMOTION],
    )
    priority: StrictInt = Field(
        default=0,
        ge=PRIORITY_MIN,
        le=PRIORITY_MAX,
        description="Lower is drawn first",
        examples=[0],
    )
    expires_at: Instant | None = Field(
        description="When unused credits expire; null: never", default=None, examples=[None]
    )
    description: Label | None = Field(
        description="A note kept with the grant",
        default=None,
        max_length=1000,
        examples=["goodwill credits"],
    )


class CreditConsume(_Body):
    """Credits to draw from your organisation's balance, once per `idempotency_key`."""

    amount: StrictInt = Field(ge=1, le=INT64, description="Credits to draw", examples=[30])
    idempotency_key: str = Field(
        min_length=1,
        max_length=255,
        pattern=PLAIN_TEXT,
        description="Retrying with the same key answers the first consumption and draws nothing",
        examples=["job-4417"],
    )
    reference: Label | None = Field(
        default=None,
        max_length=255,
        pattern=PLAIN_TEXT,
        description="Your own reference for the ledger (a job, a request)",
        examples=["job-4417"],
    )
    description: Label | None = Field(
        description="A note kept with the transaction",
        default=None,
        max_length=1000,
        pattern=PLAIN_TEXT,
        examples=["PDF summary"],
    )


class LowThreshold(_Body):
    threshold: StrictInt | None = Field(
        ge=1, le=INT64, description="null: never send `credits.low`", examples=[100]
    )

"""Prepaid credits as a ledger: grants drawn in order, append-only transactions, verification."""

from saascore.credits.errors import CreditTransactionNotFound, InsufficientCredits, NotRefundable
from saascore.credits.service import (
    Consumed,
    CreditAccount,
    CreditService,
    LedgerProblem,
    Refill,
)

__all__ = [
    "Consumed",
    "CreditAccount",
    "CreditService",
    "CreditTransactionNotFound",
    "InsufficientCredits",
    "LedgerProblem",
    "NotRefundable",
    "Refill",
]

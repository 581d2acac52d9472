"""Prepaid credits as a ledger: grants drawn in order, append-only transactions, verification."""

from saascore.credits.errors import CreditTransactionNotFound, InsufficientCredits, NotRefundable
from saascore.credits.service import CreditAccount, CreditService, LedgerProblem

__all__ = [
    "CreditAccount",
    "CreditService",
    "CreditTransactionNotFound",
    "InsufficientCredits",
    "LedgerProblem",
    "NotRefundable",
]

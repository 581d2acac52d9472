"""The credit ledger's refusals."""

from __future__ import annotations

from typing import ClassVar

from saascore.kit.errors import DomainError, InvalidInput, NotFound

__all__ = [
    "BalanceOverflow",
    "CreditTransactionNotFound",
    "InsufficientCredits",
    "NotRefundable",
]


class InsufficientCredits(DomainError):
    """The balance is short of the amount asked for; nothing was consumed."""

    code: ClassVar[str] = "insufficient_credits"
    status_code: ClassVar[int] = 402

    def __init__(self, balance: int, requested: int) -> None:
        super().__init__(
            f"{requested} credits requested but the balance is {balance}",
            balance=balance,
            requested=requested,
        )
        self.balance = balance
        self.requested = requested


class CreditTransactionNotFound(NotFound):
    """No credit transaction with this id in the organisation."""

    code = "credit_transaction_not_found"


class NotRefundable(InvalidInput):
    """Only a consumption can be refunded, and only up to what remains of it."""

    code = "not_refundable"
    stateful = True


class BalanceOverflow(InvalidInput):
    """(422) The credits would take the balance past the largest amount stored; nothing was
    granted."""

    code = "credit_balance_overflow"
    stateful = True

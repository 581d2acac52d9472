"""The metering's refusals."""

from __future__ import annotations

from typing import ClassVar

from saascore.kit.errors import Conflict, DomainError, InvalidInput, NotFound

__all__ = [
    "LimitExceeded",
    "ReservationNotFound",
    "ReservationNotHeld",
    "StorageUnderflow",
    "UnknownMetric",
]


class LimitExceeded(DomainError):
    """A hard limit refuses the quantity; nothing was recorded."""

    code: ClassVar[str] = "limit_exceeded"
    status_code: ClassVar[int] = 402

    def __init__(self, metric: str, limit: int, used: int, requested: int) -> None:
        super().__init__(
            f"{metric}: {requested} requested, {used} of {limit} used",
            metric=metric,
            limit=limit,
            used=used,
            requested=requested,
        )
        self.metric = metric
        self.limit = limit
        self.used = used
        self.requested = requested


class UnknownMetric(InvalidInput):
    code = "unknown_metric"


class ReservationNotFound(NotFound):
    code = "reservation_not_found"


class ReservationNotHeld(Conflict):
    """The reservation was already settled, released or has expired."""

    code = "reservation_not_held"


class StorageUnderflow(InvalidInput):
    """Freeing more bytes than are in use."""

    code = "storage_underflow"

"""The metering's refusals."""

from __future__ import annotations

from typing import ClassVar

from saascore.kit.errors import Conflict, DomainError, InvalidInput, NotFound

__all__ = [
    "CounterOverflow",
    "LimitExceeded",
    "PeriodClosed",
    "ReservationNotFound",
    "ReservationNotHeld",
    "StorageUnderflow",
    "UnknownMetric",
    "UnknownUser",
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
    """The metric is not one of the catalog's meters."""

    code = "unknown_metric"
    stateful = True


class ReservationNotFound(NotFound):
    """No reservation with this id in the caller's organisation."""

    code = "reservation_not_found"


class ReservationNotHeld(Conflict):
    """The reservation was already settled, released or has expired."""

    code = "reservation_not_held"


class StorageUnderflow(InvalidInput):
    """Freeing more bytes than are in use."""

    code = "storage_underflow"
    stateful = True


class CounterOverflow(InvalidInput):
    """A counter, a reservation, a day's total or a cost would pass what its column holds
    (a BIGINT); nothing was recorded, and the counter stays usable for what fits."""

    code = "counter_overflow"
    stateful = True


class PeriodClosed(InvalidInput):
    """The event's `occurred_at` lies outside the window a tenant may record into: from the
    start of the meter's current period to a few minutes ahead. Backfill is for operators."""

    code = "period_closed"
    stateful = True


class UnknownUser(InvalidInput):
    """The event names a `user_id` that is not a user of its organisation."""

    code = "unknown_user"
    stateful = True

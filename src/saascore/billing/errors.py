"""Billing's refusals.

DomainError
├── NotFound
│   └── SubscriptionNotFound    (404) the organisation has no subscription
├── AlreadyExists
│   └── SubscriptionExists      (409) the organisation already has a live subscription
├── Conflict
│   ├── InvalidTransition       (409) the subscription's status may not go where it was asked
│   └── PeriodEnded             (409) too late: the period the request is about has ended
└── InvalidInput
    ├── PlanPriceMissing        (422) the plan has no price for that cycle and currency
    ├── NaiveDatetime           (422) a timestamp without a time zone
    ├── PeriodOutOfRange        (422) a period or trial before its anchor or past 9999-12-31
    └── OutsidePeriod           (422) a moment outside the period it is prorated in
"""

from __future__ import annotations

from saascore.kit.errors import AlreadyExists, Conflict, InvalidInput, NotFound

__all__ = [
    "InvalidTransition",
    "NaiveDatetime",
    "OutsidePeriod",
    "PeriodEnded",
    "PeriodOutOfRange",
    "PlanPriceMissing",
    "SubscriptionExists",
    "SubscriptionNotFound",
]


class InvalidTransition(Conflict):
    """(409) The subscription's status may not change to the one asked for; nothing changed."""

    code = "invalid_transition"

    def __init__(self, current: str, target: str, trigger: str | None = None) -> None:
        how = f" on {trigger!r}" if trigger is not None else ""
        super().__init__(
            f"a subscription cannot go from {current} to {target}{how}",
            current=current,
            target=target,
            **({"trigger": trigger} if trigger is not None else {}),
        )
        self.current = current
        self.target = target
        self.trigger = trigger


class NaiveDatetime(InvalidInput):
    """(422) A timestamp has no time zone; billing computes only with aware UTC times."""

    code = "naive_datetime"


class PeriodOutOfRange(InvalidInput):
    """(422) The period (or trial) would start before its anchor or end after 9999-12-31."""

    code = "period_out_of_range"


class OutsidePeriod(InvalidInput):
    """(422) The moment of a plan change lies outside the period being prorated."""

    code = "outside_period"


class SubscriptionNotFound(NotFound):
    """(404) The organisation has no subscription (or is not the caller's)."""

    code = "subscription_not_found"


class SubscriptionExists(AlreadyExists):
    """(409) The organisation already has a live subscription: one at a time."""

    code = "subscription_exists"


class PeriodEnded(Conflict):
    """(409) The period the request is about has ended (a resume after the period's end)."""

    code = "period_ended"


class PlanPriceMissing(InvalidInput):
    """(422) The plan has no active price for that billing cycle and currency."""

    code = "plan_price_missing"

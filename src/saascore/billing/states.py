"""The subscription state machine: one table of every allowed change of status.

`TRANSITIONS` maps each status to the statuses it may go to, each with the triggers that take
it there. Everything not in the table is refused by `check_transition` with
`InvalidTransition` (409, `invalid_transition`). docs/billing.md shows the table as the diagram
`mermaid_diagram()` draws, and a test keeps the two equal.

The table's statuses are issue 12's seven: incomplete, trialing, active, past_due, suspended,
canceled and expired. `SubscriptionStatus` also has three of Stripe's names, kept so that rows
mirrored from a provider or imported from seeds 002 and 003 load. saascore itself never enters
them, because it has a status of its own for each: `unpaid` (Stripe's retries exhausted) is
saascore's `suspended`, `incomplete_expired` is `expired`, and pausing is not a feature. A row
already in one of them may still leave it the way Stripe's meaning allows: `unpaid` when it is
paid or canceled, `paused` when it is resumed or canceled; `incomplete_expired` is final.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final, TypeAlias

from saascore.billing.errors import InvalidTransition
from saascore.models.enums import SubscriptionStatus

__all__ = [
    "FINAL_STATUSES",
    "INITIAL_STATUSES",
    "TRANSITIONS",
    "Trigger",
    "allowed_targets",
    "check_transition",
    "mermaid_diagram",
]

S = SubscriptionStatus


class Trigger(StrEnum):
    """What makes a subscription change status; the value is the label in the diagram."""

    FIRST_PAYMENT_SUCCEEDS = "first payment succeeds"
    FIRST_PAYMENT_WINDOW_CLOSES = "first payment window closes"
    TRIAL_ENDS_PAID = "trial ends, paid"
    TRIAL_ENDS_PAYMENT_FAILS = "trial ends, payment fails"
    RENEWAL = "renewal"
    PAYMENT_FAILS = "payment fails"
    PAYMENT_SUCCEEDS = "payment succeeds"
    GRACE_PERIOD_OVER = "grace period over"
    PERIOD_ENDS_UNPAID = "period ends unpaid"
    CANCEL_NOW = "cancel now"
    PERIOD_END_AFTER_CANCEL = "period end after cancel"
    RESUME = "resume"


T = Trigger

#: The statuses a subscription is created in: with a trial, paid (or free), or awaiting its
#: first payment.
INITIAL_STATUSES: Final = frozenset({S.TRIALING, S.ACTIVE, S.INCOMPLETE})

Table: TypeAlias = Mapping[SubscriptionStatus, Mapping[SubscriptionStatus, tuple[Trigger, ...]]]

#: status -> {status it may go to: the triggers that take it there}. The one table.
TRANSITIONS: Final[Table] = MappingProxyType(
    {
        S.INCOMPLETE: MappingProxyType(
            {
                S.ACTIVE: (T.FIRST_PAYMENT_SUCCEEDS,),
                S.EXPIRED: (T.FIRST_PAYMENT_WINDOW_CLOSES,),
                S.CANCELED: (T.CANCEL_NOW,),
            }
        ),
        S.TRIALING: MappingProxyType(
            {
                S.ACTIVE: (T.TRIAL_ENDS_PAID,),
                S.PAST_DUE: (T.TRIAL_ENDS_PAYMENT_FAILS,),
                S.CANCELED: (T.CANCEL_NOW, T.PERIOD_END_AFTER_CANCEL),
            }
        ),
        S.ACTIVE: MappingProxyType(
            {
                # The next period opens: the status stays, the period moves on.
                S.ACTIVE: (T.RENEWAL,),
                S.PAST_DUE: (T.PAYMENT_FAILS,),
                S.CANCELED: (T.CANCEL_NOW, T.PERIOD_END_AFTER_CANCEL),
            }
        ),
        S.PAST_DUE: MappingProxyType(
            {
                S.ACTIVE: (T.PAYMENT_SUCCEEDS,),
                S.SUSPENDED: (T.GRACE_PERIOD_OVER,),
                S.CANCELED: (T.CANCEL_NOW, T.PERIOD_END_AFTER_CANCEL),
            }
        ),
        S.SUSPENDED: MappingProxyType(
            {
                S.ACTIVE: (T.PAYMENT_SUCCEEDS,),
                S.EXPIRED: (T.PERIOD_ENDS_UNPAID,),
                S.CANCELED: (T.CANCEL_NOW,),
            }
        ),
        S.CANCELED: MappingProxyType({}),
        S.EXPIRED: MappingProxyType({}),
        # Stripe's names, never entered by saascore (see the module's docstring).
        S.UNPAID: MappingProxyType({S.ACTIVE: (T.PAYMENT_SUCCEEDS,), S.CANCELED: (T.CANCEL_NOW,)}),
        S.PAUSED: MappingProxyType({S.ACTIVE: (T.RESUME,), S.CANCELED: (T.CANCEL_NOW,)}),
        S.INCOMPLETE_EXPIRED: MappingProxyType({}),
    }
)

#: The statuses nothing leaves: the subscription is over.
FINAL_STATUSES: Final = frozenset(status for status, targets in TRANSITIONS.items() if not targets)


def allowed_targets(current: SubscriptionStatus) -> frozenset[SubscriptionStatus]:
    """The statuses a subscription in `current` may go to."""
    return frozenset(TRANSITIONS[SubscriptionStatus(current)])


def check_transition(
    current: SubscriptionStatus, target: SubscriptionStatus, trigger: Trigger | None = None
) -> tuple[Trigger, ...]:
    """The triggers that take `current` to `target`, or `InvalidTransition` when the table has
    no such change (or, given a `trigger`, not by that trigger)."""
    current, target = SubscriptionStatus(current), SubscriptionStatus(target)
    triggers = TRANSITIONS[current].get(target, ())
    if not triggers or (trigger is not None and trigger not in triggers):
        raise InvalidTransition(current.value, target.value, trigger and trigger.value)
    return triggers


def mermaid_diagram() -> str:
    """The table as a Mermaid `stateDiagram-v2`, in the table's order (docs/billing.md)."""
    lines = ["stateDiagram-v2"]
    lines += [f"    [*] --> {status.value}" for status in S if status in INITIAL_STATUSES]
    for current, targets in TRANSITIONS.items():
        for target, triggers in targets.items():
            label = " or ".join(trigger.value for trigger in triggers)
            lines.append(f"    {current.value} --> {target.value}: {label}")
    lines += [f"    {status.value} --> [*]" for status in S if status in FINAL_STATUSES]
    return "\n".join(lines) + "\n"

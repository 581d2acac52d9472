"""Billing: subscriptions and their states, billing periods, proration (issue 12)."""

from saascore.billing.errors import (
    InvalidTransition,
    NaiveDatetime,
    OutsidePeriod,
    PeriodOutOfRange,
)
from saascore.billing.periods import (
    CYCLE_MONTHS,
    Period,
    add_months,
    period,
    period_containing,
    period_end,
    period_start,
    trial_end,
)
from saascore.billing.proration import Proration, prorate, prorate_change, unused_seconds
from saascore.billing.states import (
    FINAL_STATUSES,
    INITIAL_STATUSES,
    TRANSITIONS,
    Trigger,
    allowed_targets,
    check_transition,
    mermaid_diagram,
)

__all__ = [
    "CYCLE_MONTHS",
    "FINAL_STATUSES",
    "INITIAL_STATUSES",
    "TRANSITIONS",
    "InvalidTransition",
    "NaiveDatetime",
    "OutsidePeriod",
    "Period",
    "PeriodOutOfRange",
    "Proration",
    "Trigger",
    "add_months",
    "allowed_targets",
    "check_transition",
    "mermaid_diagram",
    "period",
    "period_containing",
    "period_end",
    "period_start",
    "prorate",
    "prorate_change",
    "trial_end",
    "unused_seconds",
]

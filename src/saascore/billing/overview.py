"""The billing overview (seed 004's `get_billing_overview`) and the upcoming invoice's preview
(docs/billing.md, "Overview").

The **upcoming invoice** is what the billing run will issue next for the organisation's
subscription, computed the way the run computes it and written nowhere:

- an active subscription: at its period's end, the next period's invoice, whose lines are
  `renewal_lines` (the plan's fee in advance, the usage above the included amounts of the
  period that is ending, in arrears);
- a trialing one: at its trial's end, the plan's fee from that end to its period's end;
- in both cases after the proration lines already waiting on the subscription's upcoming
  draft, with the subscription's coupon, at the organisation's tax rate, the totals set by
  `preview_in` (`recompute_totals`, the one path).

A subscription canceling at its period's end, or past due, renews into nothing: it has no
upcoming invoice, nor has a free plan with nothing waiting. Usage is counted by the run's
rule: a counter belongs to the period in which it closes, so the overview's usage is what the
next invoice bills, so far.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from saascore.billing.errors import NoUpcomingInvoice, SubscriptionNotFound
from saascore.billing.invoices import preview_in
from saascore.billing.payments import PaymentService
from saascore.billing.periods import Period, period_containing
from saascore.billing.renewal import plan_line, renewal_lines
from saascore.billing.subscriptions import SubscriptionService, upcoming_invoice
from saascore.credits.service import CreditService
from saascore.kit.db import Database
from saascore.kit.time import utcnow
from saascore.metering.limits import LimitRules
from saascore.models import LIVE_SUBSCRIPTION_STATUSES as LIVE
from saascore.models import (
    Invoice,
    Meter,
    Organization,
    Payment,
    PlanLimit,
    ResetPeriod,
    Subscription,
    SubscriptionPlan,
    SubscriptionStatus,
    UsageCounter,
)
from saascore.tenancy.errors import OrganizationNotFound

__all__ = ["RECENT_PAYMENTS", "BillingOverview", "BillingOverviewService", "MeterUsage"]

#: How many of the latest payments the overview lists.
RECENT_PAYMENTS: Final = 5


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One meter of the plan in the usage period: what was used, the plan's included amount
    (None: unlimited) and the units above it (per counter, as the run bills them)."""

    metric: str
    used: int
    included: int | None
    over: int
    #: What `included` is per: the meter's reset period (`day` for API calls: each day's
    #: excess counts in `over`, while `used` is the whole period's); None for a metric
    #: without a meter.
    included_per: ResetPeriod | None = None


@dataclass(frozen=True, slots=True)
class BillingOverview:
    """Everything the overview shows, read in one transaction."""

    organization: Organization
    plan: SubscriptionPlan
    #: The live subscription, else the last that ended; None when there never was one.
    subscription: Subscription | None
    #: The period the usage is counted in (the subscription's current one when it is live).
    usage_period: tuple[datetime, datetime] | None
    usage: list[MeterUsage]
    credit_balance: int
    #: The preview (never stored); None when the run would issue nothing next.
    upcoming_invoice: Invoice | None
    recent_payments: Sequence[Payment]


class BillingOverviewService:
    """`core.billing`: reads only. Each method runs in one read transaction (or the caller's)."""

    def __init__(
        self,
        database: Database,
        subscriptions: SubscriptionService,
        credits: CreditService,
        payments: PaymentService,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.subscriptions = subscriptions
        self.credits = credits
        self.payments = payments
        self.clock = clock

    async def upcoming(self, org_id: uuid.UUID, *, session: AsyncSession | None = None) -> Invoice:
        """The preview of the next invoice of the organisation's live subscription (module
        docstring): 404 `subscription_not_found` without a live one, 404
        `no_upcoming_invoice` when the run would issue nothing next. Nothing is written."""
        async with self.database.scope(session, readonly=True) as s:
            subscription = await _live(s, org_id)
            if subscription is None:
                raise SubscriptionNotFound(
                    f"organisation {org_id} has no live subscription", organization=str(org_id)
                )
            preview, reason = await _preview(s, subscription)
            if preview is None:
                raise NoUpcomingInvoice(
                    f"the subscription has no upcoming invoice: {reason}",
                    subscription=str(subscription.id),
                    reason=reason,
                )
            return preview

    async def overview(
        self, org_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> BillingOverview:
        """The organisation's plan, subscription, usage in the current period against the
        plan's included amounts, credit balance, upcoming invoice and latest payments."""
        async with self.database.scope(session, readonly=True) as s:
            organization = await s.scalar(
                sa.select(Organization)
                .where(Organization.id == org_id)
                .execution_options(populate_existing=True)
            )
            if organization is None:
                raise OrganizationNotFound(f"no organisation {org_id}", organization=str(org_id))
            try:
                subscription: Subscription | None = await self.subscriptions.get(org_id, session=s)
            except SubscriptionNotFound:
                subscription = None
            live = subscription if subscription and subscription.status in LIVE else None
            plan_id = live.plan_id if live is not None else organization.plan_id
            plan = await s.get_one(SubscriptionPlan, plan_id)
            upcoming = (await _preview(s, live))[0] if live is not None else None
            period, usage = await _usage(s, org_id, plan, live, self.clock())
            return BillingOverview(
                organization=organization,
                plan=plan,
                subscription=subscription,
                usage_period=period,
                usage=usage,
                credit_balance=await self.credits.balance(org_id, session=s),
                upcoming_invoice=upcoming,
                recent_payments=await self.payments.list(org_id, limit=RECENT_PAYMENTS, session=s),
            )


async def _live(s: AsyncSession, org_id: uuid.UUID) -> Subscription | None:
    query = (
        sa.select(Subscription)
        .where(Subscription.organization_id == org_id, Subscription.status.in_(LIVE))
        .options(joinedload(Subscription.plan))
        .order_by(Subscription.id.desc())
        .limit(1)
    )
    return (await s.scalars(query)).one_or_none()


async def _preview(s: AsyncSession, subscription: Subscription) -> tuple[Invoice | None, str]:
    """The run's next invoice for `subscription` (see `renew_due` and `_issue` in
    billing/renewal.py), or None and why there is none."""
    S = SubscriptionStatus
    if subscription.cancel_at_period_end:
        return None, "it ends at its period's end"
    if subscription.status is S.TRIALING and subscription.trial_end is not None:
        period = period_containing(
            subscription.started_at, subscription.billing_cycle, subscription.trial_end
        )
        fee = plan_line(subscription, period, since=subscription.trial_end)
        lines = [fee] if fee is not None else []
    elif subscription.status is S.ACTIVE:
        period = period_containing(
            subscription.started_at,
            subscription.billing_cycle,
            subscription.current_period_end,
        )
        lines = await renewal_lines(s, subscription, period)
    else:
        return None, f"it is {subscription.status.value}"
    draft = await upcoming_invoice(s, subscription)
    if not lines and (draft is None or not draft.lines):
        return None, "nothing to bill"
    preview = await preview_in(
        s,
        subscription.organization_id,
        subscription.currency,
        lines,
        base=draft,
        subscription_id=subscription.id,
        period=period,
    )
    return preview, ""


async def _usage(
    s: AsyncSession,
    org_id: uuid.UUID,
    plan: SubscriptionPlan,
    live: Subscription | None,
    now: datetime,
) -> tuple[tuple[datetime, datetime] | None, list[MeterUsage]]:
    """Per meter the plan limits (its `plan_limits` rows, and its seed 000 columns for the
    meters without one: the plan's part of `LimitRules`, the rule `GET /v1/usage` answers
    with), the usage of the period: with a live subscription the counters closing in its
    current period (the run's rule), else the counters open now."""
    rows = (
        await s.scalars(
            sa.select(PlanLimit).where(PlanLimit.plan_id == plan.id).order_by(PlanLimit.metric)
        )
    ).all()
    rules = LimitRules.of(
        None,
        {row.metric: (row.limit_value, row.is_hard) for row in rows},
        monthly_token_limit=plan.monthly_token_limit,
        max_storage_mb=plan.max_storage_mb,
        max_api_calls_per_day=plan.max_api_calls_per_day,
    )
    metrics = sorted(
        set(rules.plan_limits)
        | {metric for metric, value in rules.plan_columns.items() if value is not None}
    )
    included = {metric: rules.limit(metric).value for metric in metrics}
    query = sa.select(UsageCounter.metric, UsageCounter.used).where(
        UsageCounter.organization_id == org_id, UsageCounter.metric.in_(metrics)
    )
    period: tuple[datetime, datetime] | None = None
    if live is not None:
        current = Period(0, live.current_period_start, live.current_period_end)
        period = (current.start, current.end)
        query = query.where(
            UsageCounter.period_end > current.start, UsageCounter.period_end <= current.end
        )
    else:
        query = query.where(
            UsageCounter.period_start <= now,
            sa.or_(UsageCounter.period_end.is_(None), UsageCounter.period_end > now),
        )
    meters = sa.select(Meter.code, Meter.reset_period).where(Meter.code.in_(metrics))
    # (A Result has `keys()`, so `dict(result)` would take it for a mapping.)
    found = await s.execute(meters)
    resets: dict[str, ResetPeriod] = {code: reset for code, reset in found}  # noqa: C416
    used: dict[str, int] = {}
    over: dict[str, int] = {}
    for metric, amount in await s.execute(query):
        used[metric] = used.get(metric, 0) + int(amount)
        limit = included.get(metric)
        if limit is not None:
            over[metric] = over.get(metric, 0) + max(int(amount) - limit, 0)
    return period, [
        MeterUsage(
            metric=metric,
            used=used.get(metric, 0),
            included=included[metric],
            over=over.get(metric, 0),
            included_per=resets.get(metric),
        )
        for metric in metrics
    ]

"""Renewals: what a subscription's period invoice holds, and opening its next period.

Invoices are billed **in advance** for the plan and **in arrears** for usage: the invoice of
a period holds the plan's fee for that period and, per meter, the usage above the plan's
included amount in the period that just ended. `renewal_lines` computes those lines and writes
nothing (the upcoming-invoice preview uses it too).

Usage is read from the usage counters: a counter is billed by the period in which it
**closes** (its `period_end`), so each closed counter is billed exactly once and a counter
still counting is never billed early. The included amount applies per counter (a monthly
limit to each month's counter), and the overage of a meter is priced by the plan's
`plan_limits.overage_prices` in the subscription's currency, per `overage_per` units, rounded
half up once per line. A meter without a price in that currency, or an unlimited one, bills
nothing.

`renew_due` is one organisation's renewal step of the billing run, in the caller's
transaction: the subscription row is locked and re-checked, so two runs at once renew it once.
A payment provider's subscription (one with `provider_subscription_id`) is not renewed here:
the provider renews and bills it, and its webhooks move the period and pay saascore's
invoice (`billing.provider_sync`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from saascore.billing.invoices import InvoiceService, LineItem, LineKind, draft_in
from saascore.billing.periods import Period, period_containing
from saascore.billing.states import Trigger, check_transition
from saascore.billing.subscriptions import subscription_payload, upcoming_invoice
from saascore.credits.service import CreditService, RefillPrefetch
from saascore.events.bus import EventBus
from saascore.events.catalog import SubscriptionRenewed, SubscriptionTrialWillEnd
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.money import Money, divide_half_up, prorate
from saascore.models import (
    CouponRedemption,
    Invoice,
    InvoiceStatus,
    Organization,
    PlanLimit,
    Subscription,
    SubscriptionStatus,
    UsageCounter,
)

__all__ = [
    "MAX_PERIODS_PER_RUN",
    "TRIAL_NOTICE",
    "TRIAL_NOTICE_SENT",
    "Prefetched",
    "Renewal",
    "plan_line",
    "prefetch",
    "renew_due",
    "renewal_lines",
    "usage_lines",
]

S = SubscriptionStatus

#: How long before a trial's end `subscription.trial_will_end` is sent.
TRIAL_NOTICE: Final = timedelta(days=3)
#: Set in `Subscription.metadata` to the trial's end once its notice was sent, so it is once.
TRIAL_NOTICE_SENT: Final = "trial_will_end_sent_for"
#: The most periods one run opens for one subscription (a run that was not run for long).
MAX_PERIODS_PER_RUN: Final = 120


@dataclass
class Renewal:
    """What `renew_due` did for one organisation."""

    renewed: int = 0
    trials_ended: int = 0
    trial_will_end: int = 0
    invoices: list[uuid.UUID] = field(default_factory=list)
    credits_refilled: int = 0


@dataclass
class Prefetched:
    """What the renewals of a group of organisations read, loaded set-wise in their
    transaction after their subscriptions were locked (`prefetch`): a few queries for the
    group instead of five for each organisation. Valid for that transaction only, and only
    while nothing else changed these organisations' subscriptions in it."""

    #: The organisations loaded: the others read for themselves.
    organizations: set[uuid.UUID] = field(default_factory=set)
    #: Each organisation's live (active or trialing) subscription, locked, with its plan.
    subscriptions: dict[uuid.UUID, Subscription] = field(default_factory=dict)
    #: Each plan's limits (by metric).
    limits: dict[uuid.UUID, list[PlanLimit]] = field(default_factory=dict)
    #: Each organisation's counters closing by the run's moment: (metric, used, period_end).
    counters: dict[uuid.UUID, list[tuple[str, int, datetime]]] = field(default_factory=dict)
    #: The organisations themselves (held so the session keeps them).
    loaded: list[Organization] = field(default_factory=list)
    #: The drafts of these subscriptions, by (subscription id, period_start), lines loaded.
    drafts: dict[tuple[uuid.UUID, datetime], Invoice] = field(default_factory=dict)
    #: What the first period refill of each due subscription reads (`prefetch_refills`).
    refills: RefillPrefetch | None = None
    #: Those of the subscriptions that have a coupon redemption: only their invoices look
    #: for one to attach (`recompute_totals`).
    with_coupons: set[uuid.UUID] = field(default_factory=set)


async def prefetch(s: AsyncSession, org_ids: list[uuid.UUID], at: datetime) -> Prefetched:
    """Lock and load, set-wise, what `renew_due` reads for `org_ids` (see `Prefetched`); the
    organisations are loaded too, so reading one by id needs no query."""
    found = Prefetched(organizations=set(org_ids))
    subscriptions = (
        await s.scalars(
            sa.select(Subscription)
            .where(
                Subscription.organization_id.in_(org_ids),
                Subscription.status.in_((S.ACTIVE, S.TRIALING)),
                # A payment provider's subscription is renewed and billed by the provider.
                Subscription.provider_subscription_id.is_(None),
            )
            .options(joinedload(Subscription.plan))
            .order_by(Subscription.id)
            .with_for_update(of=Subscription)
            .execution_options(populate_existing=True)
        )
    ).all()
    for subscription in subscriptions:
        found.subscriptions.setdefault(subscription.organization_id, subscription)
    # Kept by the session (its identity map): `s.get(Organization, id)` needs no query.
    found.loaded = list(
        (
            await s.scalars(
                sa.select(Organization)
                .where(Organization.id.in_(org_ids))
                .execution_options(populate_existing=True)
            )
        ).all()
    )
    live = list(found.subscriptions.values())
    if not live:
        return found
    plan_ids = {subscription.plan_id for subscription in live}
    for limit in await s.scalars(
        sa.select(PlanLimit).where(PlanLimit.plan_id.in_(plan_ids)).order_by(PlanLimit.metric)
    ):
        found.limits.setdefault(limit.plan_id, []).append(limit)
    since = min(subscription.current_period_start for subscription in live)
    rows = await s.execute(
        sa.select(
            UsageCounter.organization_id,
            UsageCounter.metric,
            UsageCounter.used,
            UsageCounter.period_end,
        ).where(
            UsageCounter.organization_id.in_(list(found.subscriptions)),
            UsageCounter.period_end > since,
            UsageCounter.period_end <= at,
        )
    )
    for org_id, metric, used, period_end in rows:
        if period_end is None:  # never: the query bounds it
            continue
        found.counters.setdefault(org_id, []).append((metric, int(used), period_end))
    drafts = (
        await s.scalars(
            sa.select(Invoice)
            .where(
                Invoice.organization_id.in_(list(found.subscriptions)),
                Invoice.subscription_id.in_([subscription.id for subscription in live]),
                Invoice.status == InvoiceStatus.DRAFT,
            )
            .options(selectinload(Invoice.lines))
            .order_by(Invoice.id)
        )
    ).all()
    for draft in drafts:
        if draft.subscription_id is not None and draft.period_start is not None:
            found.drafts.setdefault((draft.subscription_id, draft.period_start), draft)
    found.with_coupons = set(
        await s.scalars(
            sa.select(CouponRedemption.subscription_id)
            .where(
                CouponRedemption.organization_id.in_(list(found.subscriptions)),
                CouponRedemption.subscription_id.in_([subscription.id for subscription in live]),
            )
            .distinct()
        )
    )
    return found


def _previous(subscription: Subscription, period: Period) -> Period | None:
    if period.start <= subscription.started_at:
        return None
    return period_containing(
        subscription.started_at,
        subscription.billing_cycle,
        period.start - timedelta(microseconds=1),
    )


def plan_line(
    subscription: Subscription, period: Period, *, since: datetime | None = None
) -> LineItem | None:
    """The plan's fee for `period` (None for a free plan); from `since` on, prorated to the
    second (the first paid period after a trial)."""
    unit = Money(subscription.unit_amount, subscription.currency)
    if unit.minor == 0:
        return None
    plan = subscription.plan
    description = (
        f"{plan.name} ({subscription.billing_cycle.value}), "
        f"{period.start:%Y-%m-%d} to {period.end:%Y-%m-%d}"
    )
    metadata = {"plan": plan.code, "subscription_id": str(subscription.id)}
    if since is not None and since > period.start:
        used = (period.end - since) // timedelta(seconds=1)
        amount = prorate(unit * subscription.quantity, used, period.seconds)
        return LineItem(
            f"{description} (from {since:%Y-%m-%d})",
            amount,
            1,
            since,
            period.end,
            kind=LineKind.PLAN,
            metadata={**metadata, "seconds": used, "period_seconds": period.seconds},
        )
    return LineItem(
        description,
        unit,
        subscription.quantity,
        period.start,
        period.end,
        kind=LineKind.PLAN,
        metadata=metadata,
    )


async def usage_lines(
    s: AsyncSession,
    subscription: Subscription,
    ended: Period,
    *,
    prefetched: Prefetched | None = None,
) -> list[LineItem]:
    """Per meter with an overage price in the subscription's currency, the usage above the
    plan's included amount in the counters that closed in `ended` (module docstring)."""
    if prefetched is not None:
        limits: Sequence[PlanLimit] = prefetched.limits.get(subscription.plan_id, [])
    else:
        limits = (
            await s.scalars(
                sa.select(PlanLimit)
                .where(PlanLimit.plan_id == subscription.plan_id)
                .order_by(PlanLimit.metric)
            )
        ).all()
    priced = {
        limit.metric: limit
        for limit in limits
        if limit.limit_value is not None
        and limit.limit_value >= 0
        and subscription.currency in (limit.overage_prices or {})
    }
    if not priced:
        return []
    counters: Sequence[tuple[str, int]]
    if prefetched is not None:
        counters = [
            (metric, used)
            for metric, used, period_end in prefetched.counters.get(
                subscription.organization_id, []
            )
            if metric in priced and ended.start < period_end <= ended.end
        ]
    else:
        counters = [
            (metric, int(used))
            for metric, used in await s.execute(
                sa.select(UsageCounter.metric, UsageCounter.used).where(
                    UsageCounter.organization_id == subscription.organization_id,
                    UsageCounter.metric.in_(list(priced)),
                    UsageCounter.period_end > ended.start,
                    UsageCounter.period_end <= ended.end,
                )
            )
        ]
    over: dict[str, int] = {}
    for metric, used in counters:
        included = priced[metric].limit_value or 0
        over[metric] = over.get(metric, 0) + max(int(used) - included, 0)
    lines: list[LineItem] = []
    for metric in sorted(over):
        units = over[metric]
        limit = priced[metric]
        price = int(limit.overage_prices[subscription.currency])
        per = limit.overage_per
        # Within int64 by Money's checks: a sum this large is refused, never wrapped.
        amount = Money(divide_half_up(price * units, per), subscription.currency)
        if units == 0 or amount.minor == 0:
            continue
        per_text = f" per {per}" if per != 1 else " each"
        lines.append(
            LineItem(
                f"{metric}: {units} above {limit.limit_value} included, "
                f"at {Money(price, subscription.currency)}{per_text}",
                amount,
                1,
                ended.start,
                ended.end,
                metric=metric,
                kind=LineKind.USAGE,
                metadata={
                    "units": units,
                    "included": limit.limit_value,
                    "price": price,
                    "per": per,
                    "subscription_id": str(subscription.id),
                },
            )
        )
    return lines


async def renewal_lines(
    s: AsyncSession,
    subscription: Subscription,
    period: Period,
    *,
    prefetched: Prefetched | None = None,
) -> list[LineItem]:
    """The lines of the invoice that opens `period`: the plan's fee for it (billed in advance)
    and the usage lines of the period before it (billed in arrears). Reads only; the
    subscription's plan must be loaded."""
    lines: list[LineItem] = []
    fee = plan_line(subscription, period)
    if fee is not None:
        lines.append(fee)
    ended = _previous(subscription, period)
    if ended is not None:
        lines.extend(await usage_lines(s, subscription, ended, prefetched=prefetched))
    return lines


async def _locked_subscription(s: AsyncSession, org_id: uuid.UUID) -> Subscription | None:
    query = (
        sa.select(Subscription)
        .where(
            Subscription.organization_id == org_id,
            Subscription.status.in_((S.ACTIVE, S.TRIALING)),
            Subscription.provider_subscription_id.is_(None),
        )
        .options(joinedload(Subscription.plan))
        .with_for_update(of=Subscription)
        .execution_options(populate_existing=True)
        .limit(1)
    )
    return (await s.scalars(query)).one_or_none()


async def _issue(
    s: AsyncSession,
    invoices: InvoiceService,
    subscription: Subscription,
    period: Period,
    lines: list[LineItem],
    actor: Actor,
    prefetched: Prefetched | None = None,
) -> Invoice | None:
    """The period's invoice, finalised: the upcoming draft (its proration lines) with `lines`
    added, or a new draft of `lines`. None when there is nothing to bill (a free plan)."""
    org_id = subscription.organization_id
    if prefetched is not None:
        draft = prefetched.drafts.get((subscription.id, subscription.current_period_end))
    else:
        draft = await upcoming_invoice(s, subscription)
    if draft is None:
        if not lines:
            return None
        if prefetched is None:
            draft = await invoices.create_draft(
                org_id,
                subscription.currency,
                lines,
                subscription_id=subscription.id,
                period=period,
                session=s,
            )
            # Created in this transaction: nobody else can hold or change it.
            return await invoices.finalize_locked(s, draft, actor=actor)
        # The organisation, its locked subscription and whether that has a coupon were read
        # in this transaction (`prefetch`); the draft took the organisation's tax rate. It is
        # finalised before it is written: one INSERT of an open invoice.
        attach = subscription.id in prefetched.with_coupons
        draft = await draft_in(
            s,
            org_id,
            subscription.currency,
            lines,
            period=period,
            organization=await s.get(Organization, org_id),
            subscription=subscription,
            attach=attach,
            flush=False,
        )
        # Without a coupon, the draft's totals are final as `draft_in` computed them.
        return await invoices.finalize_locked(
            s,
            draft,
            actor=actor,
            tax_rate_bps=draft.tax_rate_bps,
            attach=attach,
            computed=not attach,
        )
    draft.period_start, draft.period_end = period.start, period.end
    for line in lines:
        draft = await invoices.add_line(org_id, draft.id, line, session=s)
    if not draft.lines:
        return None
    if draft.total < 0:
        # Credits above the charges stay on the draft (never an invoice owing a negative
        # amount); an operator settles them.
        return None
    return await invoices.finalize(org_id, draft.id, actor=actor, session=s)


async def renew_due(
    s: AsyncSession,
    org_id: uuid.UUID,
    at: datetime,
    *,
    invoices: InvoiceService,
    credits: CreditService,
    events: EventBus,
    actor: Actor = SYSTEM,
    prefetched: Prefetched | None = None,
) -> Renewal:
    """One organisation's renewals due at `at`, in `s` (the caller's transaction).

    - A trial that ended by `at` goes `active` (`trial ends, paid`) and is invoiced from its
      end to its period's end (prorated to the second), once.
    - A trial ending within `TRIAL_NOTICE` gets `subscription.trial_will_end`, once.
    - An active subscription whose period ended by `at` opens its next period (repeatedly,
      when the run lagged), is invoiced for it (`_issue`) and gets its plan credits for it.

    `invoices` should have its clock at `at` (the issue date); `credits` gets its clock set
    to each new period's start, so the refill is that period's. With `prefetched` (the
    billing run's set-wise path) nothing is flushed here: the invoice, the new period and
    the refill are written by the session's next flush, with those of the other
    organisations of the transaction (`BillingRun`)."""
    done = Renewal()
    if prefetched is not None and org_id not in prefetched.organizations:
        prefetched = None
    if prefetched is not None:
        subscription = prefetched.subscriptions.get(org_id)
    else:
        subscription = await _locked_subscription(s, org_id)
    if subscription is None or subscription.cancel_at_period_end:
        return done
    organization = await s.get(Organization, org_id)
    if subscription.status is S.TRIALING and subscription.trial_end is not None:
        trial_end = subscription.trial_end
        if trial_end <= at:
            check_transition(subscription.status, S.ACTIVE, Trigger.TRIAL_ENDS_PAID)
            paid = period_containing(subscription.started_at, subscription.billing_cycle, trial_end)
            fee = plan_line(subscription, paid, since=trial_end)
            # The draft keyed on the old period's end holds any proration: carry it over.
            invoice = await _issue(
                s, invoices, subscription, paid, [fee] if fee else [], actor, prefetched
            )
            subscription.status = S.ACTIVE
            subscription.current_period_start, subscription.current_period_end = (
                paid.start,
                paid.end,
            )
            subscription.next_billing_at = paid.end
            subscription.updated_at = at
            if organization is not None:
                organization.subscription_status = S.ACTIVE
            if prefetched is None:  # else written with its transaction's others
                await s.flush()
            done.trials_ended += 1
            if invoice is not None:
                done.invoices.append(invoice.id)
            await events.emit(
                s,
                org_id,
                subscription_payload(
                    SubscriptionRenewed,
                    subscription,
                    invoice_id=invoice.id if invoice else None,
                    trial_ended=True,
                ),
                actor=actor,
                target_id=subscription.id,
            )
        elif trial_end - TRIAL_NOTICE <= at and (
            subscription.metadata_.get(TRIAL_NOTICE_SENT) != trial_end.isoformat()
        ):
            subscription.metadata_ = {
                **subscription.metadata_,
                TRIAL_NOTICE_SENT: trial_end.isoformat(),
            }
            if prefetched is None:
                await s.flush()
            await events.emit(
                s,
                org_id,
                subscription_payload(SubscriptionTrialWillEnd, subscription),
                actor=actor,
                target_id=subscription.id,
            )
            done.trial_will_end += 1
    for _ in range(MAX_PERIODS_PER_RUN):
        if subscription.current_period_end > at:
            break
        following = period_containing(
            subscription.started_at, subscription.billing_cycle, subscription.current_period_end
        )
        invoice = None
        if subscription.status is S.ACTIVE:
            lines = await renewal_lines(s, subscription, following, prefetched=prefetched)
            invoice = await _issue(s, invoices, subscription, following, lines, actor, prefetched)
        subscription.current_period_start = following.start
        subscription.current_period_end = following.end
        subscription.next_billing_at = following.end
        subscription.updated_at = at
        if prefetched is None:
            await s.flush()
        credits.clock = _fixed(following.start)
        refill = await credits.refill_once(
            org_id,
            actor=actor,
            session=s,
            prefetched=prefetched.refills if prefetched is not None else None,
        )
        done.credits_refilled += 1 if refill.granted else 0
        if subscription.status is not S.ACTIVE:
            continue  # a trial's periods roll without an invoice
        done.renewed += 1
        if invoice is not None:
            done.invoices.append(invoice.id)
        await events.emit(
            s,
            org_id,
            subscription_payload(
                SubscriptionRenewed, subscription, invoice_id=invoice.id if invoice else None
            ),
            actor=actor,
            target_id=subscription.id,
        )
    return done


def _fixed(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment

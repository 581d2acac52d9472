"""Subscriptions: creating one, changing its plan, canceling and resuming it, ending it.

An organisation has at most one live subscription (the database's partial unique index), and
its plan and `subscription_status` follow that subscription. Every change of status goes
through `check_transition`, and every change emits its event (`subscription.created`,
`.updated`, `.canceled`, `.expired`) in the caller's unit of work: the audit entry and the
tenant's webhooks follow from it. A plan change of the organisation takes tenancy's path
(`OrganizationService.change_plan`), so `plan.changed` and the plan's credits follow too.

Plan changes: an upgrade (a higher price per period) applies at once, and its proration (a
credit for the old price's unused time and a charge of the new price for the same time, to the
second) goes on the subscription's **upcoming invoice**: the draft `Invoice` with its
`subscription_id` and `period_start` = the next period's start, created when missing. Its lines
carry `metadata["kind"] == "proration"`; the credit is a negative line. A downgrade (a lower
price) waits for the period's end: it is kept in the subscription's `metadata` under
`scheduled_change` until `end_due` applies it.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Final, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, joinedload
from sqlalchemy.orm.attributes import set_committed_value

from saascore.audit.service import (
    APPEND_TYPES,
    AuditService,
    append_to_head_sql,
    audited_bus,
)
from saascore.billing.errors import (
    InvalidTransition,
    OutsidePeriod,
    PeriodEnded,
    PeriodOutOfRange,
    PlanPriceMissing,
    SubscriptionExists,
    SubscriptionNotFound,
)
from saascore.billing.invoices import LineKind, draft_in, recompute_totals
from saascore.billing.periods import Period, as_utc, period_containing, trial_end
from saascore.billing.proration import Proration, prorate_change
from saascore.billing.states import FINAL_STATUSES, Trigger, check_transition
from saascore.events.bus import EventBus, EventPayload
from saascore.events.catalog import (
    SubscriptionCanceled,
    SubscriptionCreated,
    SubscriptionExpired,
    SubscriptionUpdated,
)
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database, asyncpg_form, driver_in
from saascore.kit.sql import violates
from saascore.kit.time import utcnow
from saascore.models import (
    LIVE_SUBSCRIPTION_STATUSES,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Organization,
    PaymentProvider,
    Subscription,
    SubscriptionPlan,
    SubscriptionStatus,
)
from saascore.models.catalog import BillingCycle, PlanPrice
from saascore.plans.service import PlanService
from saascore.tenancy.errors import OrganizationNotFound
from saascore.tenancy.service import OrganizationService, locked_organization

__all__ = [
    "MAX_TRIAL_DAYS",
    "DueResult",
    "ProviderApplied",
    "ProviderState",
    "SubscriptionService",
    "check_in_period",
    "subscription_payload",
    "upcoming_invoice",
]

S = SubscriptionStatus
P = TypeVar("P", bound=EventPayload)

#: The longest trial an operator may give.
MAX_TRIAL_DAYS: Final = 730
#: Statuses whose plan may change: a suspended subscription pays first.
_CHANGEABLE: Final = frozenset({S.TRIALING, S.ACTIVE, S.PAST_DUE})
#: The key of a scheduled downgrade in `Subscription.metadata`.
SCHEDULED: Final = "scheduled_change"
#: Set in `Subscription.metadata` once an ended subscription has returned its organisation to
#: the default plan, so that `end_due` does it once.
RETURNED: Final = "returned_to_default_at"


@dataclass(frozen=True)
class DueResult:
    """What `end_due` did for one organisation."""

    subscription: Subscription | None
    #: "canceled", "expired", "downgraded", "returned_to_default": in the order done.
    actions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProviderState:
    """A payment provider's subscription in billing's words: a full snapshot that
    `SubscriptionService.apply_provider_state` brings saascore's subscription to."""

    provider: PaymentProvider
    subscription_id: str
    plan: str
    cycle: BillingCycle
    status: SubscriptionStatus
    current_period_start: datetime
    current_period_end: datetime
    customer_id: str | None = None
    price_id: str | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    trial_end: datetime | None = None
    #: The provider's own time of the snapshot. None for a change saascore made at the
    #: provider itself: it is applied, and the provider's next snapshot is never older.
    provider_time: datetime | None = None


@dataclass(frozen=True)
class ProviderApplied:
    """What `apply_provider_state` did: `applied` False, with the `reason`, when the snapshot
    changed nothing because it was older than the subscription or the subscription ended.
    `subscription` is None when there is none, or when it was not loaded (`loaded=False`)."""

    subscription: Subscription | None
    applied: bool
    reason: str | None = None


def _price(plan: SubscriptionPlan, cycle: BillingCycle, currency: str) -> PlanPrice:
    for price in plan.prices:
        if price.is_active and price.billing_cycle == cycle and price.currency == currency:
            return price
    raise PlanPriceMissing(
        f"the {plan.code} plan has no {cycle.value} price in {currency}",
        plan=plan.code,
        billing_cycle=cycle.value,
        currency=currency,
    )


def _current_period(subscription: Subscription) -> Period:
    return Period(0, subscription.current_period_start, subscription.current_period_end)


def _next_period(subscription: Subscription) -> Period:
    return period_containing(
        subscription.started_at, subscription.billing_cycle, subscription.current_period_end
    )


async def upcoming_invoice(
    session: AsyncSession, subscription: Subscription, *, create: bool = False
) -> Invoice | None:
    """The subscription's upcoming invoice: its draft whose `period_start` is the next
    period's start (created, empty, with `create=True` when missing), lines loaded."""
    query = (
        sa.select(Invoice)
        .where(
            Invoice.organization_id == subscription.organization_id,
            Invoice.subscription_id == subscription.id,
            Invoice.status == InvoiceStatus.DRAFT,
            Invoice.period_start == subscription.current_period_end,
        )
        .options(joinedload(Invoice.lines))
        .order_by(Invoice.id)
        .limit(1)
    )
    invoice = (await session.scalars(query)).unique().one_or_none()
    if invoice is None and create:
        invoice = await draft_in(
            session,
            subscription.organization_id,
            subscription.currency,
            subscription_id=subscription.id,
            period=_next_period(subscription),
        )
    return invoice


def paid_end(subscription: Subscription) -> datetime:
    """Where a cancellation at the period's end takes effect: the current period's end, or
    the trial's end when the subscription is trialing (nothing was paid beyond it)."""
    end = subscription.current_period_end
    if subscription.status is S.TRIALING and subscription.trial_end is not None:
        return min(subscription.trial_end, end)
    return end


def check_in_period(subscription: Subscription, at: datetime) -> None:
    """Refuse (`OutsidePeriod`) an `at` given to a plan change, a cancellation or a
    resumption outside the subscription's current period: before the period's start or the
    subscription's own start, or after the period's end (both ends included). An operation
    acts inside the period it changes; without an `at` it acts now."""
    start = max(subscription.current_period_start, subscription.started_at)
    end = subscription.current_period_end
    if not start <= at <= end:
        raise OutsidePeriod(
            f"{at.isoformat()} is outside the subscription's current period, from "
            f"{start.isoformat()} to {end.isoformat()}",
            at=at.isoformat(),
            period_start=start.isoformat(),
            period_end=end.isoformat(),
        )


class SubscriptionService:
    """`core.subscriptions`: every method takes the organisation's id, an optional `at`
    (aware; now by default), an `actor` and an optional `session` (the caller's unit of work)."""

    def __init__(
        self,
        database: Database,
        plans: PlanService,
        orgs: OrganizationService,
        events: EventBus | None = None,
        *,
        audit: AuditService | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.plans = plans
        self.orgs = orgs
        if events is None:
            audit = audit or AuditService(database)
            events = audited_bus(audit)
        self.events = events
        #: The audit log the bus writes to, if known: a provider's snapshot then writes its
        #: change, audit entry and outbox row in one statement (`_write_snapshot`).
        self.audit = audit
        self.clock = clock

    # --- reading ---------------------------------------------------------------------------
    async def get(self, org_id: uuid.UUID, *, session: AsyncSession | None = None) -> Subscription:
        """The organisation's subscription: the live one, else the latest that ended
        (`SubscriptionNotFound` when it never had one). Its plan is loaded."""
        async with self.database.scope(session, readonly=True) as s:
            return await self._current(s, org_id, lock=False)

    async def _current(self, s: AsyncSession, org_id: uuid.UUID, *, lock: bool) -> Subscription:
        live = sa.case((Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES), 0), else_=1)
        query = (
            sa.select(Subscription)
            .where(Subscription.organization_id == org_id)
            .order_by(live, Subscription.id.desc())
            .limit(1)
            .options(joinedload(Subscription.plan))
            .execution_options(populate_existing=True)
        )
        if lock:
            query = query.with_for_update(of=Subscription)
        subscription = (await s.scalars(query)).one_or_none()
        if subscription is None:
            raise SubscriptionNotFound(
                f"organisation {org_id} has no subscription", organization=str(org_id)
            )
        return subscription

    # --- creating --------------------------------------------------------------------------
    async def create(
        self,
        org_id: uuid.UUID,
        plan: str,
        cycle: BillingCycle | str = BillingCycle.MONTHLY,
        *,
        trial_days: int | None = None,
        at: datetime | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Subscription:
        """Subscribe the organisation to `plan` (a code) for `cycle`, from `at`.

        The price is the plan's for the cycle in the organisation's currency
        (`PlanPriceMissing` without one). With a trial (`trial_days`, the plan's by default) it
        starts `trialing`, else `active`; its periods are anchored at `at`. A second live
        subscription is refused with `SubscriptionExists`."""
        cycle = BillingCycle(cycle)
        start = as_utc(at if at is not None else self.clock(), "at")
        async with self.database.scope(session) as s:
            organization = await locked_organization(s, org_id, with_plan=True)
            plan_row = await self.plans.get_by_code(plan, session=s)
            price = _price(plan_row, cycle, organization.currency)
            days = plan_row.trial_days if trial_days is None else trial_days
            if not 0 <= days <= MAX_TRIAL_DAYS:
                raise PeriodOutOfRange(
                    f"a trial lasts 0 to {MAX_TRIAL_DAYS} days, not {days}", trial_days=days
                )
            live = await s.scalar(
                sa.select(Subscription.id).where(
                    Subscription.organization_id == org_id,
                    Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES),
                )
            )
            if live is not None:
                raise _exists(org_id, live)
            status = S.TRIALING if days > 0 else S.ACTIVE
            first = period_containing(start, cycle, start)
            subscription = Subscription(
                organization_id=org_id,
                plan_id=plan_row.id,
                status=status,
                billing_cycle=cycle,
                currency=price.currency,
                unit_amount=price.amount,
                quantity=1,
                started_at=start,
                current_period_start=first.start,
                current_period_end=first.end,
                next_billing_at=first.end,
                trial_start=start if days else None,
                trial_end=trial_end(start, days) if days else None,
                provider_price_id=price.stripe_price_id,
                metadata_={},
            )
            try:
                async with s.begin_nested():
                    s.add(subscription)
                    await s.flush()
            except IntegrityError as error:
                if violates(error, "subscriptions", "organization_id"):
                    raise _exists(org_id, None) from None
                raise
            set_committed_value(subscription, "plan", plan_row)
            organization.subscription_status = status
            await self.events.emit(
                s,
                org_id,
                subscription_payload(SubscriptionCreated, subscription),
                actor=actor,
                target_id=subscription.id,
            )
            await self._follow_plan(s, organization, plan_row, actor)
        return subscription

    # --- canceling and resuming ------------------------------------------------------------
    async def cancel(
        self,
        org_id: uuid.UUID,
        *,
        at_period_end: bool = True,
        at: datetime | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Subscription:
        """Cancel at the period's end (the default: `cancel_at_period_end`, the status stays
        until `end_due`) or now (`canceled` at once). Either way the organisation keeps its
        plan until the end of what was paid: the current period's end. During a trial nothing
        was paid: canceled now it ends now, at the period's end it ends at the trial's end
        (`paid_end`), never later. An `at` outside the current period is `OutsidePeriod`."""
        moment = as_utc(at if at is not None else self.clock(), "at")
        async with self.database.scope(session) as s:
            subscription = await self._current(s, org_id, lock=True)
            if at_period_end:
                check_transition(subscription.status, S.CANCELED, Trigger.PERIOD_END_AFTER_CANCEL)
                if at is not None:
                    check_in_period(subscription, moment)
                if not subscription.cancel_at_period_end:
                    subscription.cancel_at_period_end = True
                    subscription.canceled_at = moment
                    subscription.ends_at = paid_end(subscription)
                    await self._updated(
                        s,
                        subscription,
                        {"cancel_at_period_end": {"from": False, "to": True}},
                        actor,
                    )
                return subscription
            check_transition(subscription.status, S.CANCELED, Trigger.CANCEL_NOW)
            if at is not None:
                check_in_period(subscription, moment)
            paid_until = (
                moment
                if subscription.status in (S.TRIALING, S.INCOMPLETE)
                else max(moment, subscription.current_period_end)
            )
            await self._end(s, subscription, S.CANCELED, moment, paid_until, actor)
        return subscription

    async def resume(
        self,
        org_id: uuid.UUID,
        *,
        at: datetime | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Subscription:
        """Withdraw a cancellation at the period's end, before that end (`PeriodEnded` after
        it). A subscription that ended is refused (`invalid_transition`); one that was not
        canceling is left as it is. An `at` outside the current period is `OutsidePeriod`."""
        moment = as_utc(at if at is not None else self.clock(), "at")
        async with self.database.scope(session) as s:
            subscription = await self._current(s, org_id, lock=True)
            if subscription.status in FINAL_STATUSES:
                raise InvalidTransition(subscription.status.value, S.ACTIVE.value, "resume")
            if subscription.cancel_at_period_end and moment >= paid_end(subscription):
                raise PeriodEnded(
                    "the period ended: the cancellation took effect; subscribe again",
                    current_period_end=subscription.current_period_end.isoformat(),
                )
            if at is not None:
                check_in_period(subscription, moment)
            if subscription.cancel_at_period_end:
                subscription.cancel_at_period_end = False
                subscription.canceled_at = None
                subscription.ends_at = None
                await self._updated(
                    s, subscription, {"cancel_at_period_end": {"from": True, "to": False}}, actor
                )
        return subscription

    # --- changing the plan -----------------------------------------------------------------
    async def change_plan(
        self,
        org_id: uuid.UUID,
        plan: str,
        *,
        at: datetime | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Subscription:
        """Move the subscription to `plan` (a code), at the same cycle and currency.

        An upgrade (a higher price per period), or any change during a trial, applies at once;
        outside a trial its proration goes on the upcoming invoice (see the module). A
        downgrade is scheduled for the period's end. Changing to the plan the subscription is
        on withdraws a scheduled downgrade. An `at` outside the current period is
        `OutsidePeriod`, whichever the change."""
        moment = as_utc(at if at is not None else self.clock(), "at")
        async with self.database.scope(session) as s:
            subscription = await self._current(s, org_id, lock=True)
            if subscription.status not in _CHANGEABLE:
                raise InvalidTransition(
                    subscription.status.value, subscription.status.value, "plan change"
                )
            if at is not None:
                check_in_period(subscription, moment)
            new = await self.plans.get_by_code(plan, session=s)
            price = _price(new, subscription.billing_cycle, subscription.currency)
            old = subscription.plan
            scheduled = subscription.metadata_.get(SCHEDULED)
            if new.id == old.id:
                if scheduled is not None:
                    subscription.metadata_ = _without(subscription.metadata_, SCHEDULED)
                    await self._updated(
                        s,
                        subscription,
                        {"scheduled_plan": {"from": scheduled["plan"], "to": None}},
                        actor,
                    )
                return subscription
            trialing = subscription.status is S.TRIALING
            if price.amount < subscription.unit_amount and not trialing:
                subscription.metadata_ = {
                    **subscription.metadata_,
                    SCHEDULED: {
                        "plan": new.code,
                        "unit_amount": price.amount,
                        "at": subscription.current_period_end.isoformat(),
                    },
                }
                await self._updated(
                    s,
                    subscription,
                    {"scheduled_plan": {"from": scheduled and scheduled["plan"], "to": new.code}},
                    actor,
                )
                return subscription
            if not trialing:
                proration = prorate_change(
                    _current_period(subscription), moment, subscription.unit_amount, price.amount
                )
                await self._record_proration(s, subscription, old, new, moment, proration)
            changes = {
                "plan": {"from": old.code, "to": new.code},
                "unit_amount": {"from": subscription.unit_amount, "to": price.amount},
            }
            subscription.plan_id = new.id
            subscription.unit_amount = price.amount
            subscription.provider_price_id = price.stripe_price_id
            if scheduled is not None:
                subscription.metadata_ = _without(subscription.metadata_, SCHEDULED)
            set_committed_value(subscription, "plan", new)
            await self._updated(s, subscription, changes, actor)
            organization = await locked_organization(s, org_id, with_plan=True)
            await self._follow_plan(s, organization, new, actor)
        return subscription

    async def _record_proration(
        self,
        s: AsyncSession,
        subscription: Subscription,
        old: SubscriptionPlan,
        new: SubscriptionPlan,
        moment: datetime,
        proration: Proration,
    ) -> None:
        lines = [
            (f"Unused time on {old.name}", -proration.credit, "credit", old.code),
            (f"Remaining time on {new.name}", proration.charge, "charge", new.code),
        ]
        lines = [line for line in lines if line[1] != 0]
        if not lines:
            return
        invoice = await upcoming_invoice(s, subscription, create=True)
        assert invoice is not None
        position = max((line.position for line in invoice.lines), default=-1)
        for description, amount, kind, code in lines:
            position += 1
            invoice.lines.append(
                InvoiceLine(
                    organization_id=subscription.organization_id,
                    invoice_id=invoice.id,
                    position=position,
                    description=f"{description} from {moment.isoformat()}",
                    quantity=1,
                    unit_amount=amount,
                    amount=amount,
                    period_start=moment,
                    period_end=subscription.current_period_end,
                    metadata_={
                        "kind": LineKind.PRORATION.value,
                        "proration": kind,
                        "plan": code,
                        "subscription_id": str(subscription.id),
                        "unused_seconds": proration.unused_seconds,
                        "period_seconds": proration.period_seconds,
                    },
                )
            )
        await recompute_totals(s, invoice)
        await s.flush()

    # --- provider-driven changes -------------------------------------------------------------
    async def provider_subscription(
        self,
        org_id: uuid.UUID,
        provider: PaymentProvider,
        subscription_id: str,
        *,
        session: AsyncSession | None = None,
    ) -> Subscription | None:
        """The organisation's subscription mirrored from `provider`'s `subscription_id`."""
        async with self.database.scope(session, readonly=True) as s:
            return await _by_provider_id(s, org_id, provider, subscription_id, lock=False)

    async def apply_provider_state(
        self,
        org_id: uuid.UUID,
        state: ProviderState,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
        loaded: bool = True,
    ) -> ProviderApplied:
        """Bring the organisation's subscription mirrored from the provider to `state`.

        The provider bills, so its word is taken as it is: no proration, no status table; the
        subscription is found by the provider's id, or made (a live subscription of
        saascore's own is canceled now: the provider's replaces it). A snapshot older than
        the last one applied (`provider_updated_at`) changes nothing, nor does one of a
        subscription that already ended. An ended snapshot ends it and returns the
        organisation to the default plan at once (the provider ends it when it runs out).
        Emits `subscription.created`, `.updated` or `.canceled`; the organisation follows
        the plan (`plan.changed`).

        With `loaded` false the answer may carry no subscription: a caller that needs only
        the outcome (the webhook intake) lets the usual snapshot be applied on PostgreSQL
        without loading it (`_apply_snapshot`)."""
        moment = self.clock()
        async with self.database.scope(session) as s:
            if not loaded and _dialect(s) == "postgresql" and _untouched(s):
                done = await self._apply_snapshot(s, org_id, state, moment, actor)
                if done is not None:
                    return done
            organization, subscription = await _locked_with_provider_subscription(
                s, org_id, state.provider, state.subscription_id
            )
            if (
                subscription is not None
                and state.provider_time is not None
                and subscription.provider_updated_at is not None
                and state.provider_time < subscription.provider_updated_at
            ):
                return ProviderApplied(subscription, False, "older than the subscription")
            ended = state.status in FINAL_STATUSES
            if subscription is None:
                if ended:
                    return ProviderApplied(None, False, "ended before saascore knew it")
                subscription = await self._create_from_provider(
                    s, organization, state, moment, actor
                )
                return ProviderApplied(subscription, True)
            if subscription.status in FINAL_STATUSES:
                return ProviderApplied(subscription, False, "the subscription has ended")
            if state.provider_time is not None:
                subscription.provider_updated_at = state.provider_time
            if ended:
                end = state.canceled_at or moment
                await self._end(s, subscription, SubscriptionStatus(state.status), end, end, actor)
                default = await self.plans.get_by_code(
                    self.database.settings.default_plan, session=s
                )
                subscription.metadata_ = {**subscription.metadata_, RETURNED: moment.isoformat()}
                await s.flush()
                organization = await locked_organization(s, org_id, with_plan=True)
                await self._follow_plan(s, organization, default, actor)
                return ProviderApplied(subscription, True)
            changes: dict[str, Any] = {}
            new_plan = subscription.plan
            if state.plan != subscription.plan.code:
                new_plan = await self.plans.get_by_code(state.plan, session=s)
                price = _price(new_plan, state.cycle, subscription.currency)
                changes["plan"] = {"from": subscription.plan.code, "to": new_plan.code}
                changes["unit_amount"] = {"from": subscription.unit_amount, "to": price.amount}
                subscription.plan_id = new_plan.id
                subscription.unit_amount = price.amount
                subscription.billing_cycle = state.cycle
                set_committed_value(subscription, "plan", new_plan)
            values, more = snapshot_changes(subscription, state, moment)
            changes |= more
            for column, value in values.items():
                setattr(subscription, column, value)
            if "status" in more:
                organization.subscription_status = subscription.status
            if not changes:
                await s.flush()
                return ProviderApplied(subscription, True)
            await self._updated(s, subscription, changes, actor)
            if "plan" in changes:
                await self._follow_plan(s, organization, new_plan, actor)
            return ProviderApplied(subscription, True)

    async def _apply_snapshot(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        state: ProviderState,
        moment: datetime,
        actor: Actor,
    ) -> ProviderApplied | None:
        """`apply_provider_state` for the usual snapshot, without the ORM: a live
        subscription the provider still bills on the same plan, the snapshot not older.
        The rows are locked and read as columns (`_snapshot_lock`), and the changes written
        with one UPDATE each; the event is emitted as the ORM path emits it. None, having
        changed nothing, for any other snapshot (the ORM path then applies it; the locks it
        takes again are held already)."""
        keys = {
            "org_id": org_id,
            "provider": state.provider,
            "subscription_id": state.subscription_id,
        }
        # Once the transaction has begun, its statements go to asyncpg on the session's own
        # connection, without SQLAlchemy's work per statement.
        driver = await driver_in(s)
        if driver is not None:
            sql, names = _snapshot_lock_for_asyncpg()
            found = await driver.fetchrow(sql, *(keys[name] for name in names))
        else:
            found = (await s.execute(_snapshot_lock(), keys)).mappings().one_or_none()
        row = None if found is None else _snapshot_columns(found)
        if (
            row is None
            or row.id is None
            or row.status in FINAL_STATUSES
            or state.status in FINAL_STATUSES
            or state.plan != row.plan_code
            or (
                state.provider_time is not None
                and row.provider_updated_at is not None
                and state.provider_time < row.provider_updated_at
            )
        ):
            return None
        values, changes = snapshot_changes(row, state, moment)
        if changes:
            values["updated_at"] = self.clock()
            payload = _subscription_payload(
                SubscriptionUpdated,
                SimpleNamespace(**{**vars(row), **values}),
                row.plan_code,
                changes=changes,
            )
            if await self._write_snapshot(s, driver, org_id, row.id, values, payload, actor):
                return ProviderApplied(None, True)
        table = cast(sa.Table, Subscription.__table__)
        if values:
            await s.execute(
                sa.update(table)
                .where(table.c.organization_id == org_id, table.c.id == row.id)
                .values(values)
            )
        if "status" in changes:
            organizations = cast(sa.Table, Organization.__table__)
            await s.execute(
                sa.update(organizations)
                .where(organizations.c.id == org_id)
                .values(subscription_status=state.status)
            )
        if changes:
            await self.events.emit(s, org_id, payload, actor=actor, target_id=row.id)
        return ProviderApplied(None, True)

    async def _write_snapshot(
        self,
        s: AsyncSession,
        driver: Any | None,
        org_id: uuid.UUID,
        subscription_id: uuid.UUID,
        values: dict[str, Any],
        payload: SubscriptionUpdated,
        actor: Actor,
    ) -> bool:
        """`_apply_snapshot`'s change with its event in one statement (`_snapshot_write`):
        the subscription's columns `values`, the organisation's status if it changes, and
        the `subscription.updated` audit entry and outbox row, where the bus allows a
        statement to stand for `emit`; on `driver` (`driver_in`) if given. False, having
        written nothing, where it does not or the organisation's chain has no head yet."""
        audit = self.audit
        if audit is None or not self.events.written_by_statement(s, audit.handle):
            return False
        event = self.events.event(org_id, payload, actor=actor, target_id=subscription_id)
        parameters = audit.append_parameters(event, notify=self.events.wake_with_rows(s))
        parameters |= {f"s_{column}": value for column, value in values.items()}
        parameters |= {"s_organization_id": org_id, "s_id": subscription_id}
        columns, status = tuple(values), "status" in values
        if driver is not None:
            sql, names = _snapshot_write_for_asyncpg(columns, status)
            changed, seq = await driver.fetchrow(sql, *(parameters[name] for name in names))
        else:
            changed, seq = (await s.execute(_snapshot_write(columns, status), parameters)).one()
        if not changed:
            return False
        assert seq is not None
        self.events.emitted_by_statement(s, event)
        return True

    async def _create_from_provider(
        self,
        s: AsyncSession,
        organization: Organization,
        state: ProviderState,
        moment: datetime,
        actor: Actor,
    ) -> Subscription:
        plan_row = await self.plans.get_by_code(state.plan, session=s)
        price = _price(plan_row, state.cycle, organization.currency)
        live = (
            await s.scalars(
                sa.select(Subscription)
                .where(
                    Subscription.organization_id == organization.id,
                    Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES),
                )
                .options(joinedload(Subscription.plan))
                .with_for_update(of=Subscription)
            )
        ).one_or_none()
        if live is not None:
            await self._end(s, live, S.CANCELED, moment, moment, actor)
        start, end = as_utc(state.current_period_start), as_utc(state.current_period_end)
        subscription = Subscription(
            organization_id=organization.id,
            plan_id=plan_row.id,
            status=SubscriptionStatus(state.status),
            billing_cycle=state.cycle,
            currency=price.currency,
            unit_amount=price.amount,
            quantity=1,
            started_at=start,
            current_period_start=start,
            current_period_end=end,
            next_billing_at=end,
            trial_start=start if state.trial_end is not None else None,
            trial_end=state.trial_end,
            cancel_at_period_end=state.cancel_at_period_end,
            canceled_at=(state.canceled_at or moment) if state.cancel_at_period_end else None,
            ends_at=end if state.cancel_at_period_end else None,
            provider=state.provider,
            provider_subscription_id=state.subscription_id,
            provider_customer_id=state.customer_id,
            provider_price_id=state.price_id,
            provider_updated_at=state.provider_time,
            metadata_={},
        )
        s.add(subscription)
        await s.flush()
        set_committed_value(subscription, "plan", plan_row)
        organization.subscription_status = subscription.status
        await self.events.emit(
            s,
            organization.id,
            subscription_payload(SubscriptionCreated, subscription),
            actor=actor,
            target_id=subscription.id,
        )
        await self._follow_plan(s, organization, plan_row, actor)
        return subscription

    # --- payment-driven moves ---------------------------------------------------------------
    async def transition(
        self,
        org_id: uuid.UUID,
        target: SubscriptionStatus,
        trigger: Trigger,
        *,
        when: Collection[SubscriptionStatus],
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Subscription | None:
        """Move the organisation's subscription to `target` by `trigger` (along the table)
        when its status is one of `when`, with the organisation's `subscription_status`,
        emitting `subscription.updated`. None, changing nothing, when it has no subscription
        or is in another status: dunning and payments call it again and again."""
        async with self.database.scope(session) as s:
            try:
                subscription = await self._current(s, org_id, lock=True)
            except SubscriptionNotFound:
                return None
            current = subscription.status
            if current not in when:
                return None
            check_transition(current, target, trigger)
            subscription.status = SubscriptionStatus(target)
            organization = await locked_organization(s, org_id)
            organization.subscription_status = subscription.status
            await self._updated(
                s,
                subscription,
                {"status": {"from": current.value, "to": subscription.status.value}},
                actor,
            )
        return subscription

    # --- ending ----------------------------------------------------------------------------
    async def end_due(
        self,
        org_id: uuid.UUID,
        *,
        at: datetime | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> DueResult:
        """Do what is due at `at` for the organisation's subscription (the billing run's
        step for one organisation; running it again changes nothing):

        - at the period's end, a cancellation at the period's end takes effect (`canceled`),
          a suspended subscription expires unpaid (`expired`), and a scheduled downgrade
          applies (the next period's opening is the renewal's);
        - once what was paid has run out (`ends_at`), an ended subscription returns the
          organisation to the default plan."""
        moment = as_utc(at if at is not None else self.clock(), "at")
        actions: list[str] = []
        async with self.database.scope(session) as s:
            try:
                subscription = await self._current(s, org_id, lock=True)
            except SubscriptionNotFound:
                return DueResult(None, actions)
            end = (
                paid_end(subscription)
                if subscription.cancel_at_period_end
                else subscription.current_period_end
            )
            period_over = moment >= end
            if subscription.status not in FINAL_STATUSES and period_over:
                if subscription.cancel_at_period_end:
                    check_transition(
                        subscription.status, S.CANCELED, Trigger.PERIOD_END_AFTER_CANCEL
                    )
                    await self._end(s, subscription, S.CANCELED, end, end, actor)
                    actions.append("canceled")
                elif subscription.status is S.SUSPENDED:
                    check_transition(subscription.status, S.EXPIRED, Trigger.PERIOD_ENDS_UNPAID)
                    await self._end(s, subscription, S.EXPIRED, end, end, actor)
                    actions.append("expired")
                elif SCHEDULED in subscription.metadata_:
                    await self._apply_scheduled(s, subscription, actor)
                    actions.append("downgraded")
            if (
                subscription.status in FINAL_STATUSES
                and RETURNED not in subscription.metadata_
                and subscription.ends_at is not None
                and moment >= subscription.ends_at
            ):
                organization = await locked_organization(s, org_id, with_plan=True)
                default = await self.plans.get_by_code(
                    self.database.settings.default_plan, session=s
                )
                subscription.metadata_ = {**subscription.metadata_, RETURNED: moment.isoformat()}
                await s.flush()
                await self._follow_plan(s, organization, default, actor)
                actions.append("returned_to_default")
        return DueResult(subscription, actions)

    async def _apply_scheduled(
        self, s: AsyncSession, subscription: Subscription, actor: Actor
    ) -> None:
        scheduled = subscription.metadata_[SCHEDULED]
        new = await self.plans.get_by_code(scheduled["plan"], session=s)
        price = _price(new, subscription.billing_cycle, subscription.currency)
        changes = {
            "plan": {"from": subscription.plan.code, "to": new.code},
            "unit_amount": {"from": subscription.unit_amount, "to": price.amount},
            "scheduled_plan": {"from": new.code, "to": None},
        }
        subscription.plan_id = new.id
        subscription.unit_amount = price.amount
        subscription.provider_price_id = price.stripe_price_id
        subscription.metadata_ = _without(subscription.metadata_, SCHEDULED)
        set_committed_value(subscription, "plan", new)
        await self._updated(s, subscription, changes, actor)
        organization = await locked_organization(s, subscription.organization_id, with_plan=True)
        await self._follow_plan(s, organization, new, actor)

    async def _end(
        self,
        s: AsyncSession,
        subscription: Subscription,
        status: SubscriptionStatus,
        moment: datetime,
        paid_until: datetime,
        actor: Actor,
    ) -> None:
        subscription.status = status
        subscription.ended_at = moment
        subscription.ends_at = paid_until
        subscription.next_billing_at = None
        if status is S.CANCELED and subscription.canceled_at is None:
            subscription.canceled_at = moment
        subscription.updated_at = self.clock()
        if SCHEDULED in subscription.metadata_:
            subscription.metadata_ = _without(subscription.metadata_, SCHEDULED)
        await s.flush()
        organization = await locked_organization(s, subscription.organization_id)
        organization.subscription_status = status
        await s.flush()
        payload: SubscriptionCanceled | SubscriptionExpired
        if status is S.CANCELED:
            payload = subscription_payload(SubscriptionCanceled, subscription, ends_at=paid_until)
        else:
            payload = subscription_payload(SubscriptionExpired, subscription)
        await self.events.emit(
            s, subscription.organization_id, payload, actor=actor, target_id=subscription.id
        )

    # --- paying ----------------------------------------------------------------------------
    async def reactivate_paid(
        self, org_id: uuid.UUID, *, actor: Actor = SYSTEM, session: AsyncSession | None = None
    ) -> Subscription | None:
        """The organisation has paid what was overdue: a `past_due` or `suspended` live
        subscription goes back to `active` (`payment succeeds`, `subscription.updated`), and
        an organisation suspended with it is resumed. Answers the subscription it reactivated,
        else None (none, or nothing to do). `PaymentService` calls it when an invoice is paid
        and no other invoice of the organisation is past due."""
        async with self.database.scope(session) as s:
            try:
                subscription = await self._current(s, org_id, lock=True)
            except SubscriptionNotFound:
                return None
            previous = subscription.status
            if previous not in (S.PAST_DUE, S.SUSPENDED, S.UNPAID):
                return None
            check_transition(previous, S.ACTIVE, Trigger.PAYMENT_SUCCEEDS)
            subscription.status = S.ACTIVE
            organization = await locked_organization(s, org_id)
            organization.subscription_status = S.ACTIVE
            await self._updated(
                s, subscription, {"status": {"from": previous.value, "to": S.ACTIVE.value}}, actor
            )
            if previous is not S.PAST_DUE:
                await self.orgs.resume(org_id, reason="invoices paid", actor=actor, session=s)
            return subscription

    # --- shared ----------------------------------------------------------------------------
    async def _updated(
        self, s: AsyncSession, subscription: Subscription, changes: dict[str, Any], actor: Actor
    ) -> None:
        subscription.updated_at = self.clock()
        await s.flush()
        await self.events.emit(
            s,
            subscription.organization_id,
            subscription_payload(SubscriptionUpdated, subscription, changes=changes),
            actor=actor,
            target_id=subscription.id,
        )

    async def _follow_plan(
        self, s: AsyncSession, organization: Organization, plan: SubscriptionPlan, actor: Actor
    ) -> None:
        """Tenancy's plan change: `plan.changed`, and the new plan's credits."""
        if organization.plan_id != plan.id:
            await self.orgs.change_plan(organization.id, plan.code, actor=actor, session=s)


async def _by_provider_id(
    s: AsyncSession,
    org_id: uuid.UUID,
    provider: PaymentProvider,
    subscription_id: str,
    *,
    lock: bool,
) -> Subscription | None:
    query = (
        sa.select(Subscription)
        .where(
            Subscription.organization_id == org_id,
            Subscription.provider == provider,
            Subscription.provider_subscription_id == subscription_id,
        )
        .options(joinedload(Subscription.plan))
        .execution_options(populate_existing=True)
    )
    if lock:
        query = query.with_for_update(of=Subscription)
    return (await s.scalars(query)).one_or_none()


async def _locked_with_provider_subscription(
    s: AsyncSession, org_id: uuid.UUID, provider: PaymentProvider, subscription_id: str
) -> tuple[Organization, Subscription | None]:
    """The organisation and its subscription mirrored from the provider's
    `subscription_id`, both locked in that order (`locked_organization`'s first), the
    subscription's plan loaded (not the organisation's: a snapshot reads only its plan id,
    and a plan change loads it afresh). On PostgreSQL in one statement (`_locking_both`), as
    a provider's webhook asks it of every event."""
    if _dialect(s) != "postgresql":
        organization = await locked_organization(s, org_id)
        subscription = await _by_provider_id(s, org_id, provider, subscription_id, lock=True)
        return organization, subscription
    found = (
        await s.execute(
            _locking_both(),
            {"org_id": org_id, "provider": provider, "subscription_id": subscription_id},
        )
    ).one_or_none()
    if found is None:
        raise OrganizationNotFound(f"no organisation {org_id}", organization=str(org_id))
    organization, subscription = found
    return organization, subscription


@functools.cache
def _locking_both() -> sa.Select[Organization, Subscription]:
    """`_locked_with_provider_subscription`'s statement, built once: building it (aliases of
    subqueries) costs more than running it. The subscription's row is locked in a LATERAL
    subquery, run for the organisation once its row is locked: a lock cannot be taken on
    the nullable side of an outer join."""
    locked_org = (
        sa.select(Organization)
        .where(Organization.id == sa.bindparam("org_id"))
        .with_for_update(key_share=True, of=Organization)
        .subquery("organization")
    )
    organization = aliased(Organization, locked_org)
    locked_subscription = (
        sa.select(Subscription)
        .where(
            Subscription.organization_id == organization.id,
            Subscription.provider == sa.bindparam("provider"),
            Subscription.provider_subscription_id == sa.bindparam("subscription_id"),
        )
        .with_for_update(of=Subscription)
        .lateral("subscription")
    )
    subscription = aliased(Subscription, locked_subscription)
    return (
        sa.select(organization, subscription)
        .select_from(organization)
        .outerjoin(subscription, sa.true())
        .options(joinedload(subscription.plan))
        .execution_options(populate_existing=True)
    )


def snapshot_changes(
    current: Any, state: ProviderState, moment: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a provider's snapshot changes in a subscription on the same plan that it does
    not end (`current`: the subscription, or its columns by name): the columns to set, and
    the changes its `subscription.updated` event names (none for the provider's own fields
    alone: its time, price, customer and trial end)."""
    values: dict[str, Any] = {}
    changes: dict[str, Any] = {}
    if state.provider_time is not None:
        values["provider_updated_at"] = state.provider_time
    if state.price_id is not None:
        values["provider_price_id"] = state.price_id
    if state.customer_id is not None:
        values["provider_customer_id"] = state.customer_id
    if current.status != state.status:
        changes["status"] = {"from": current.status.value, "to": state.status.value}
        values["status"] = SubscriptionStatus(state.status)
    start, end = as_utc(state.current_period_start), as_utc(state.current_period_end)
    if (current.current_period_start, current.current_period_end) != (start, end):
        changes["current_period_end"] = {
            "from": current.current_period_end.isoformat(),
            "to": end.isoformat(),
        }
        values["current_period_start"], values["current_period_end"] = start, end
        values["next_billing_at"] = end
    if current.cancel_at_period_end != state.cancel_at_period_end:
        changes["cancel_at_period_end"] = {
            "from": current.cancel_at_period_end,
            "to": state.cancel_at_period_end,
        }
        values["cancel_at_period_end"] = state.cancel_at_period_end
        values["canceled_at"] = (
            (state.canceled_at or moment) if state.cancel_at_period_end else None
        )
        values["ends_at"] = end if state.cancel_at_period_end else None
    if state.trial_end != current.trial_end and state.trial_end is not None:
        values["trial_end"] = state.trial_end
    return values, changes


@functools.lru_cache(maxsize=64)
def _snapshot_write(columns: tuple[str, ...], status: bool) -> sa.TextClause:
    """`SubscriptionService._write_snapshot`'s statement for a change of `columns` (and of
    the organisation's `status`), built once per such set: `changed` updates the
    subscription (`:s_<column>`) only if the organisation's chain has a head, so that the
    audit log's CTEs (`append_to_head_sql`) then append its entry; `followed` gives the
    organisation the subscription's status. The subscription's row is locked already, and
    the head last, as everywhere."""
    table = cast(sa.Table, Subscription.__table__)
    assignments = ", ".join(f"{column} = :s_{column}" for column in columns)
    followed = ""
    if status:
        followed = """
followed AS (
  UPDATE organizations SET subscription_status = :s_status
  WHERE id = :s_organization_id AND EXISTS (SELECT FROM changed)
  RETURNING id
),"""
    sql = f"""\
WITH RECURSIVE
changed AS (
  UPDATE subscriptions SET {assignments}
  WHERE organization_id = :s_organization_id AND id = :s_id
    AND EXISTS (SELECT FROM audit_chain_heads WHERE organization_id = :s_organization_id)
  RETURNING id
),{followed}
{append_to_head_sql("EXISTS (SELECT FROM changed)")}
SELECT (SELECT count(*) FROM changed), (SELECT seq FROM advanced)"""  # noqa: S608
    types = [sa.bindparam(f"s_{column}", type_=table.c[column].type) for column in columns]
    return sa.text(sql).bindparams(
        *APPEND_TYPES,
        *types,
        sa.bindparam("s_organization_id", type_=table.c.organization_id.type),
        sa.bindparam("s_id", type_=table.c.id.type),
    )


@functools.lru_cache(maxsize=64)
def _snapshot_write_for_asyncpg(
    columns: tuple[str, ...], status: bool
) -> tuple[str, tuple[str, ...]]:
    return asyncpg_form(_snapshot_write(columns, status))


@functools.cache
def _snapshot_lock_for_asyncpg() -> tuple[str, tuple[str, ...]]:
    return asyncpg_form(_snapshot_lock())


def _snapshot_columns(record: Mapping[str, Any]) -> SimpleNamespace:
    """A row of `_snapshot_lock`, read by asyncpg or by SQLAlchemy, as attributes by its
    columns' names, its enumerations as such (asyncpg reads them as text)."""
    columns = dict(record)
    if columns["id"] is not None:
        columns["status"] = SubscriptionStatus(columns["status"])
        columns["billing_cycle"] = BillingCycle(columns["billing_cycle"])
    return SimpleNamespace(**columns)


def _dialect(s: AsyncSession) -> str:
    return s.get_bind().dialect.name


def _untouched(s: AsyncSession) -> bool:
    """Whether the session holds no object (loaded, new or deleted): a statement that
    changes rows behind the ORM's back then leaves no object stale."""
    sync = s.sync_session
    return not sync.identity_map and not sync.new and not sync.deleted


@functools.cache
def _snapshot_lock() -> sa.Select[Any]:
    """`SubscriptionService._apply_snapshot`'s statement, built once: the organisation
    locked as `_locking_both` locks it, then its subscription mirrored from the provider's
    id (NULL columns when there is none), as columns, with its plan's code."""
    organization = Organization.__table__
    subscriptions = Subscription.__table__
    plans = SubscriptionPlan.__table__
    locked_org = (
        sa.select(organization.c.id)
        .where(organization.c.id == sa.bindparam("org_id"))
        .with_for_update(key_share=True)
        .subquery("organization")
    )
    locked_subscription = (
        sa.select(subscriptions)
        .where(
            subscriptions.c.organization_id == locked_org.c.id,
            subscriptions.c.provider == sa.bindparam("provider"),
            subscriptions.c.provider_subscription_id == sa.bindparam("subscription_id"),
        )
        .with_for_update()
        .lateral("subscription")
    )
    return (
        sa.select(locked_subscription, plans.c.code.label("plan_code"))
        .select_from(locked_org)
        .outerjoin(locked_subscription, sa.true())
        .outerjoin(plans, plans.c.id == locked_subscription.c.plan_id)
    )


def _exists(org_id: uuid.UUID, live: uuid.UUID | None) -> SubscriptionExists:
    details: dict[str, str] = {"organization": str(org_id)}
    if live is not None:
        details["subscription"] = str(live)
    return SubscriptionExists(
        f"organisation {org_id} already has a live subscription: cancel it or change its plan",
        **details,
    )


def _without(metadata: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in metadata.items() if name != key}


def subscription_payload(kind: type[P], subscription: Subscription, **extra: Any) -> P:
    """The `subscription.*` event `kind` of `subscription`, with `extra` fields: the one
    place these payloads are built (subscriptions, the billing run, dunning)."""
    return _subscription_payload(kind, subscription, subscription.plan.code, **extra)


def _subscription_payload(kind: type[P], subscription: Any, plan: str, **extra: Any) -> P:
    """`subscription_payload` of a subscription or of its columns (attributes by the
    columns' names), and its plan's code."""
    return kind.model_validate(
        {
            "subscription_id": subscription.id,
            "plan": plan,
            "status": subscription.status.value,
            "billing_cycle": subscription.billing_cycle.value,
            "currency": subscription.currency,
            "unit_amount": subscription.unit_amount,
            "current_period_start": subscription.current_period_start,
            "current_period_end": subscription.current_period_end,
            "cancel_at_period_end": subscription.cancel_at_period_end,
            "trial_end": subscription.trial_end,
            **extra,
        }
    )

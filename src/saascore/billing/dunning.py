"""Dunning: what an unpaid invoice does to its organisation (docs/billing.md, "Dunning").

For one organisation at a moment `at` (the billing run's step, or `core.dunning.run` alone):

- every open invoice with something due whose due date is before `at`'s day is **overdue**
  (computed, never a status: `is_overdue`; one owing nothing never is). The first step that
  sees it so emits `invoice.overdue` and writes the moment into the invoice's `metadata`
  (`overdue_at`), in the same transaction and under the invoice's row lock, so that the
  event goes out once even when two runs race;
- the organisation's subscription, if `active`, goes `past_due` (`payment fails`);
- once an overdue invoice's due date is more than `SAASCORE_DUNNING_GRACE_DAYS` days before
  `at`'s day, the subscription, if `past_due` (or still `active`), goes `suspended` (`grace
  period over`) and the organisation is suspended with the reason "unpaid invoice <number>".
  That happens once per invoice (`metadata["dunning_suspended_at"]`): an operator who resumes
  the organisation by hand is not overruled by the next run.

Paying the invoice is what undoes this, in the payment's transaction (payments, not here).
Locks are taken invoice, then subscription, then organisation: the order of a payment.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.billing.invoices import issued_fields, overdue_clause
from saascore.billing.periods import as_utc
from saascore.billing.states import Trigger
from saascore.billing.subscriptions import SubscriptionService
from saascore.config import Settings
from saascore.events.bus import EventBus
from saascore.events.catalog import InvoiceOverdue
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.time import utcnow
from saascore.models import Invoice, OrganizationStatus, SubscriptionStatus
from saascore.tenancy.service import OrganizationService

__all__ = [
    "OVERDUE_MARK",
    "SUSPENDED_MARK",
    "DunningService",
    "dunning_step",
]

S = SubscriptionStatus

#: Set in an invoice's `metadata` when `invoice.overdue` was emitted for it: once per invoice.
OVERDUE_MARK: Final = "overdue_at"
#: Set in an invoice's `metadata` when its grace period ended in a suspension: once per invoice.
SUSPENDED_MARK: Final = "dunning_suspended_at"


@dataclass(frozen=True, slots=True)
class DunningService:
    """`core.dunning`: marks overdue invoices, makes subscriptions past due and suspends
    organisations whose grace period is over (module docstring)."""

    database: Database
    settings: Settings
    subscriptions: SubscriptionService
    orgs: OrganizationService
    events: EventBus
    clock: Callable[[], datetime] = utcnow

    async def run(
        self,
        org_id: uuid.UUID,
        at: datetime | None = None,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> list[str]:
        """Dun the organisation at `at` (now by default) in one transaction (the caller's,
        given `session`). Returns what was done, in order: "overdue <number>",
        "past_due", "suspended", "organization_suspended"; empty when nothing was due, as on
        a second run."""
        moment = as_utc(at if at is not None else self.clock(), "at")
        async with self.database.scope(session) as s:
            return await self._step(s, org_id, moment, actor)

    async def _step(
        self, s: AsyncSession, org_id: uuid.UUID, at: datetime, actor: Actor
    ) -> list[str]:
        today = at.date()
        grace_ends_before = today - timedelta(days=self.settings.dunning_grace_days)
        late = await _overdue_invoices(s, org_id, today)
        if not late:
            return []
        actions: list[str] = []
        for invoice in late:
            if OVERDUE_MARK in invoice.metadata_:
                continue
            invoice.metadata_ = {**invoice.metadata_, OVERDUE_MARK: at.isoformat()}
            await s.flush()
            assert invoice.number is not None  # an open invoice was issued
            await self.events.emit(
                s,
                org_id,
                InvoiceOverdue(**issued_fields(invoice), due_date=_due(invoice)),
                actor=actor,
                target_id=invoice.id,
            )
            actions.append(f"overdue {invoice.number}")
        moved = await self.subscriptions.transition(
            org_id, S.PAST_DUE, Trigger.PAYMENT_FAILS, when={S.ACTIVE}, actor=actor, session=s
        )
        if moved is not None:
            actions.append("past_due")
        expired = [
            invoice
            for invoice in late
            if _due(invoice) < grace_ends_before and SUSPENDED_MARK not in invoice.metadata_
        ]
        if not expired:
            return actions
        suspended = await self.subscriptions.transition(
            org_id,
            S.SUSPENDED,
            Trigger.GRACE_PERIOD_OVER,
            when={S.PAST_DUE},
            actor=actor,
            session=s,
        )
        if suspended is not None:
            actions.append("suspended")
        first = expired[0]
        for invoice in expired:
            invoice.metadata_ = {**invoice.metadata_, SUSPENDED_MARK: at.isoformat()}
        await s.flush()
        organization = await self.orgs.get(org_id, session=s)
        if organization.status is OrganizationStatus.ACTIVE:
            await self.orgs.suspend(
                org_id, reason=f"unpaid invoice {first.number}", actor=actor, session=s
            )
            actions.append("organization_suspended")
        return actions


async def dunning_step(
    dunning: DunningService, org_id: uuid.UUID, at: datetime, session: AsyncSession
) -> list[str]:
    """The billing run's dunning step for one organisation, in the run's transaction
    `session` (`DunningService.run`)."""
    return await dunning.run(org_id, at, session=session)


async def _overdue_invoices(s: AsyncSession, org_id: uuid.UUID, today: date) -> list[Invoice]:
    """The organisation's open invoices owing something and due before `today`, oldest due
    first, their rows locked (and re-read: a racing run's marks are seen once it commits)."""
    query = (
        sa.select(Invoice)
        .where(Invoice.organization_id == org_id, overdue_clause(today))
        .order_by(Invoice.due_date, Invoice.id)
        .with_for_update(of=Invoice)
        .execution_options(populate_existing=True)
    )
    return list((await s.scalars(query)).all())


def _due(invoice: Invoice) -> date:
    assert invoice.due_date is not None  # selected by its due date
    return invoice.due_date

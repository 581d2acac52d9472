"""The billing run: what is due at a moment, done once, organisation by organisation.

`BillingRun.run(at)` walks the organisations in batches (by id). For each batch, every step
names the organisations it has work for with one query (`BillingStep.candidates`); those
organisations are then done `TRANSACTION_SIZE` to a transaction, as if each were inside a
**savepoint of its own**, in which the steps run in order:

1. `end_due` (`SubscriptionService.end_due`): cancellations at the period's end, suspended
   subscriptions expiring, scheduled downgrades, returning ended ones to the default plan;
2. `renew` (`renewal.renew_due`): trials ending (and their three-day notice), renewals with
   their invoice and the period's credits;
3. `expire_credits`: lapsed credit grants written off;
4. `dunning` (`DunningService`): unpaid invoices past due marked overdue once, their
   subscription past due, and after the grace period suspended with its organisation.

A step is an object with a `name`, `candidates` and `apply`, and optionally `prepare(s,
organizations, context)`, called once per transaction after its subscriptions are locked with
the organisations for which it is the first step (an earlier one may change what it would
read), to load set-wise what `apply` reads.
An organisation that fails rolls back to its savepoint alone and is counted in `errors`; the
run goes on. The savepoints cost two statements an organisation, so a transaction first does
all its organisations in one savepoint; only when one of them fails is that rolled back and
each done again in a savepoint of its own (`BillingRun._one_by_one`), from what the steps'
`prepare` reads again: the same outcome, with the statements of a failure's transaction paid
twice and those of every other transaction saved. One commit per transaction, not per
organisation, is what makes the run fast: every finalisation takes the platform's
invoice-number series lock until the commit (gapless numbers), so finalisations are
serialised whatever the parallelism, and the lock is best held for one commit per hundred
invoices. Nor do the renewals write one by one: the savepoint that holds them all writes
their invoices, lines, new periods and refills when it ends, a few multi-row statements for
the whole transaction (`renewal.renew_due`).

Every step re-checks under its row locks, so a second run at the same `at` does nothing and
two runs at once do each thing once. A dry run does the same work in transactions that are
rolled back: it reports what would happen and writes nothing.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService, audited_bus
from saascore.billing.dunning import DunningService, dunning_step
from saascore.billing.invoices import InvoiceService, overdue_clause
from saascore.billing.periods import as_utc
from saascore.billing.renewal import TRIAL_NOTICE, Prefetched, prefetch, renew_due
from saascore.billing.subscriptions import RETURNED, SCHEDULED, SubscriptionService
from saascore.config import Settings
from saascore.credits.service import CreditService
from saascore.events.bus import EventBus
from saascore.kit.db import Database, is_timeout
from saascore.kit.time import utcnow
from saascore.models import (
    CreditGrant,
    Invoice,
    Organization,
    OrganizationStatus,
    Subscription,
    SubscriptionStatus,
)
from saascore.plans.service import PlanService
from saascore.tenancy.service import OrganizationService

__all__ = [
    "ACTIONS",
    "BATCH_SIZE",
    "DEFAULT_STEPS",
    "TRANSACTION_SIZE",
    "BillingRun",
    "BillingStep",
    "BillingSummary",
    "DunningStep",
    "EndDueStep",
    "ExpireCreditsStep",
    "RenewStep",
    "StepContext",
]

S = SubscriptionStatus

#: Organisations read per batch.
BATCH_SIZE: Final = 500
#: Organisations per transaction (each in a savepoint): large enough to pay the commit and the
#: number series lock rarely, small enough that a second run waits well within the statement
#: timeout for the locks this one holds.
TRANSACTION_SIZE: Final = 100
#: Tries of a transaction that timed out waiting for another run's locks (SQLite's write lock
#: is not fair: a run committing transaction after transaction can starve another's BEGIN).
TRANSACTION_ATTEMPTS: Final = 5
#: The counts a summary always shows, in this order.
ACTIONS: Final = (
    "renewed",
    "trials_ended",
    "trial_will_end",
    "invoices_issued",
    "credits_refilled",
    "canceled",
    "expired",
    "downgraded",
    "returned_to_default",
    "credits_expired",
    "invoices_overdue",
    "past_due",
    "suspended",
    "organization_suspended",
    "errors",
)


@dataclass
class BillingSummary:
    """What a run did (or, dry, would do): counts per action, and the failures."""

    at: datetime
    dry_run: bool
    organizations: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    #: (organisation id, error) for each organisation whose transaction failed.
    failures: list[tuple[uuid.UUID, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "at": self.at.isoformat(),
            "dry_run": self.dry_run,
            "organizations": self.organizations,
            **{action: self.counts.get(action, 0) for action in ACTIONS},
            "failures": [
                {"organization": str(org), "error": error} for org, error in self.failures
            ],
        }


@dataclass
class StepContext:
    """The services a step uses, with their clocks at the run's moment."""

    at: datetime
    subscriptions: SubscriptionService
    invoices: InvoiceService
    credits: CreditService
    events: EventBus
    dunning: DunningService
    #: What `RenewStep.prepare` loaded for the transaction's organisations.
    prefetched: Prefetched | None = None


class BillingStep(Protocol):
    """One per-organisation step of the run."""

    name: str

    async def candidates(
        self, s: AsyncSession, at: datetime, organizations: Sequence[uuid.UUID]
    ) -> set[uuid.UUID]:
        """Which of `organizations` this step may have work for (one query; a superset is
        fine: `apply` re-checks under its locks)."""
        ...

    async def apply(
        self, s: AsyncSession, org_id: uuid.UUID, context: StepContext, counts: Counter[str]
    ) -> None:
        """Do the step for one organisation in `s`, adding what it did to `counts`."""
        ...


class EndDueStep:
    name = "end_due"

    async def candidates(
        self, s: AsyncSession, at: datetime, organizations: Sequence[uuid.UUID]
    ) -> set[uuid.UUID]:
        live_due = sa.and_(
            Subscription.status.not_in((S.CANCELED, S.EXPIRED)),
            Subscription.current_period_end <= at,
            sa.or_(
                Subscription.cancel_at_period_end.is_(True),
                Subscription.status == S.SUSPENDED,
                # As text: SQLite's JSON value of a missing key is 'null', never NULL.
                Subscription.metadata_[SCHEDULED].as_string().isnot(None),
            ),
        )
        ended = sa.and_(
            Subscription.status.in_((S.CANCELED, S.EXPIRED)),
            Subscription.ends_at <= at,
            Subscription.metadata_[RETURNED].as_string().is_(None),
        )
        rows = await s.scalars(
            sa.select(Subscription.organization_id)
            .where(
                Subscription.organization_id.in_(organizations),
                sa.or_(live_due, ended),
            )
            .distinct()
        )
        return set(rows)

    async def apply(
        self, s: AsyncSession, org_id: uuid.UUID, context: StepContext, counts: Counter[str]
    ) -> None:
        result = await context.subscriptions.end_due(org_id, at=context.at, session=s)
        counts.update(result.actions)


class RenewStep:
    name = "renew"

    async def prepare(
        self, s: AsyncSession, organizations: Sequence[uuid.UUID], context: StepContext
    ) -> None:
        """Load, set-wise, what the renewals of `organizations` read (`renewal.prefetch`),
        and what their first period refills read (`CreditService.prefetch_refills`): a
        renewal opens the period starting at its current one's end."""
        found = await prefetch(s, list(organizations), context.at)
        found.refills = await context.credits.prefetch_refills(
            s,
            {
                org_id: subscription.current_period_end
                for org_id, subscription in found.subscriptions.items()
                if subscription.current_period_end <= context.at
                and not subscription.cancel_at_period_end
            },
        )
        context.prefetched = found

    async def candidates(
        self, s: AsyncSession, at: datetime, organizations: Sequence[uuid.UUID]
    ) -> set[uuid.UUID]:
        rows = await s.scalars(
            sa.select(Subscription.organization_id).where(
                Subscription.organization_id.in_(organizations),
                Subscription.status.in_((S.ACTIVE, S.TRIALING)),
                Subscription.cancel_at_period_end.is_(False),
                Subscription.provider_subscription_id.is_(None),
                sa.or_(
                    Subscription.current_period_end <= at,
                    sa.and_(
                        Subscription.status == S.TRIALING,
                        Subscription.trial_end <= at + TRIAL_NOTICE,
                    ),
                ),
            )
        )
        return set(rows)

    async def apply(
        self, s: AsyncSession, org_id: uuid.UUID, context: StepContext, counts: Counter[str]
    ) -> None:
        done = await renew_due(
            s,
            org_id,
            context.at,
            invoices=context.invoices,
            credits=context.credits,
            events=context.events,
            prefetched=context.prefetched,
        )
        counts["renewed"] += done.renewed
        counts["trials_ended"] += done.trials_ended
        counts["trial_will_end"] += done.trial_will_end
        counts["invoices_issued"] += len(done.invoices)
        counts["credits_refilled"] += done.credits_refilled


class ExpireCreditsStep:
    name = "expire_credits"

    async def candidates(
        self, s: AsyncSession, at: datetime, organizations: Sequence[uuid.UUID]
    ) -> set[uuid.UUID]:
        rows = await s.scalars(
            sa.select(CreditGrant.organization_id)
            .where(
                CreditGrant.organization_id.in_(organizations),
                CreditGrant.remaining > 0,
                CreditGrant.expires_at <= at,
            )
            .distinct()
        )
        return set(rows)

    async def apply(
        self, s: AsyncSession, org_id: uuid.UUID, context: StepContext, counts: Counter[str]
    ) -> None:
        context.credits.clock = lambda: context.at
        expired = await context.credits.expire(org_id, session=s)
        counts["credits_expired"] += len(expired)


class DunningStep:
    name = "dunning"

    async def candidates(
        self, s: AsyncSession, at: datetime, organizations: Sequence[uuid.UUID]
    ) -> set[uuid.UUID]:
        rows = await s.scalars(
            sa.select(Invoice.organization_id)
            .where(Invoice.organization_id.in_(organizations), overdue_clause(at.date()))
            .distinct()
        )
        return set(rows)

    async def apply(
        self, s: AsyncSession, org_id: uuid.UUID, context: StepContext, counts: Counter[str]
    ) -> None:
        for action in await dunning_step(context.dunning, org_id, context.at, s):
            # "overdue <number>", "past_due", "suspended", "organization_suspended"
            counts["invoices_overdue" if action.startswith("overdue ") else action] += 1


#: The steps of a run, in order.
DEFAULT_STEPS: Final[tuple[BillingStep, ...]] = (
    EndDueStep(),
    RenewStep(),
    ExpireCreditsStep(),
    DunningStep(),
)


class _DryRun(Exception):
    """Raised to roll an organisation's transaction back in a dry run."""


Progress = Callable[[int, int], None]


class BillingRun:
    """`core.billing_run`: the billing run (module docstring)."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        plans: PlanService,
        orgs: OrganizationService,
        events: EventBus | None = None,
        *,
        steps: Sequence[BillingStep] = DEFAULT_STEPS,
        batch_size: int = BATCH_SIZE,
        transaction_size: int = TRANSACTION_SIZE,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.settings = settings
        self.plans = plans
        self.orgs = orgs
        self.events = events if events is not None else audited_bus(AuditService(database))
        self.steps = list(steps)
        self.batch_size = batch_size
        self.transaction_size = transaction_size
        self.clock = clock

    def _context(self, at: datetime) -> StepContext:
        def fixed() -> datetime:
            return at

        subscriptions = SubscriptionService(
            self.database, self.plans, self.orgs, self.events, clock=fixed
        )
        return StepContext(
            at=at,
            subscriptions=subscriptions,
            invoices=InvoiceService(self.database, self.settings, self.events, clock=fixed),
            credits=CreditService(self.database, self.events, clock=fixed),
            events=self.events,
            dunning=DunningService(
                self.database, self.settings, subscriptions, self.orgs, self.events, clock=fixed
            ),
        )

    async def count(self) -> int:
        """How many organisations a run walks (those not deleted)."""
        async with self.database.session(readonly=True) as s:
            return int(
                await s.scalar(
                    sa.select(sa.func.count())
                    .select_from(Organization)
                    .where(Organization.status != OrganizationStatus.DELETED)
                )
                or 0
            )

    async def run(
        self,
        at: datetime | None = None,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        organizations: Sequence[uuid.UUID] | None = None,
    ) -> BillingSummary:
        """Do (or, with `dry_run`, only report) what is due at `at` (now by default) for
        every organisation (or only `organizations`). `progress(done, total)` is called after
        each batch."""
        moment = as_utc(at if at is not None else self.clock(), "at")
        summary = BillingSummary(at=moment, dry_run=dry_run)
        total = await self.count() if progress is not None else 0
        after: uuid.UUID | None = None
        while True:
            query = (
                sa.select(Organization.id)
                .where(Organization.status != OrganizationStatus.DELETED)
                .order_by(Organization.id)
                .limit(self.batch_size)
            )
            if after is not None:
                query = query.where(Organization.id > after)
            if organizations is not None:
                query = query.where(Organization.id.in_(list(organizations)))
            async with self.database.session(readonly=True) as s:
                batch = list((await s.scalars(query)).all())
                if not batch:
                    break
                todo: dict[uuid.UUID, list[BillingStep]] = {}
                for step in self.steps:
                    for org_id in await step.candidates(s, moment, batch):
                        todo.setdefault(org_id, []).append(step)
            ordered = sorted(todo)
            for start in range(0, len(ordered), self.transaction_size):
                chunk = {
                    org_id: todo[org_id]
                    for org_id in ordered[start : start + self.transaction_size]
                }
                await self._transaction(chunk, moment, dry_run, summary)
            summary.organizations += len(batch)
            after = batch[-1]
            if progress is not None:
                progress(summary.organizations, max(total, summary.organizations))
        return summary

    async def _transaction(
        self,
        todo: dict[uuid.UUID, list[BillingStep]],
        at: datetime,
        dry_run: bool,
        summary: BillingSummary,
    ) -> None:
        """The organisations of `todo` in one transaction, as if each were inside a savepoint
        of its own (module docstring).

        A failing organisation rolls back to its savepoint alone; the others commit together,
        so the commit, and the invoice-number series lock (held from the first finalisation
        to the commit), are paid once per transaction rather than once per organisation.
        The subscriptions are locked first, all at once in id order: a transaction holding
        the series never then waits for a subscription another run holds (no deadlock)."""
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                done, failures = await self._attempt(todo, at, dry_run)
            except Exception as error:  # the commit failed: nothing of the transaction happened
                if is_timeout(error) and attempt < TRANSACTION_ATTEMPTS:
                    continue  # another run held the locks too long: try again, it is all undone
                summary.counts["errors"] += len(todo)
                summary.failures.extend(
                    (org_id, f"{type(error).__name__}: {error}") for org_id in todo
                )
                return
            break
        summary.counts.update(done)
        summary.counts["errors"] += len(failures)
        summary.failures.extend(failures)

    async def _attempt(
        self, todo: dict[uuid.UUID, list[BillingStep]], at: datetime, dry_run: bool
    ) -> tuple[Counter[str], list[tuple[uuid.UUID, str]]]:
        context = self._context(at)
        done: Counter[str] = Counter()
        failures: list[tuple[uuid.UUID, str]] = []
        try:
            async with (
                self.database.transaction() as s,
                self.events.one_wakeup(s),
                self.events.deferred(s),
                context.invoices.numbers_at_end(s),
            ):
                await s.execute(
                    sa.select(Subscription.id)
                    .where(Subscription.organization_id.in_(list(todo)))
                    .order_by(Subscription.id)
                    .with_for_update()
                )
                await self._prepare(s, todo, context)
                try:
                    # The common case, every organisation done: one savepoint for them all.
                    together: Counter[str] = Counter()
                    async with s.begin_nested(), self.events.deferred(s):
                        for org_id, steps in todo.items():
                            for step in steps:
                                await step.apply(s, org_id, context, together)
                    done.update(together)
                except Exception:
                    # One failed: all of it is undone, and each goes in a savepoint of its
                    # own, from what is read again, so that the failure stays its own.
                    await self._prepare(s, todo, context)
                    await self._one_by_one(s, todo, context, done, failures)
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        return done, failures

    async def _prepare(
        self, s: AsyncSession, todo: dict[uuid.UUID, list[BillingStep]], context: StepContext
    ) -> None:
        """Each step's `prepare`, for the organisations where it runs first (an earlier step
        may change what it would load)."""
        for step in self.steps:
            prepare = getattr(step, "prepare", None)
            if prepare is not None:
                first = [org for org, steps in todo.items() if steps[0] is step]
                if first:
                    await prepare(s, first, context)

    async def _one_by_one(
        self,
        s: AsyncSession,
        todo: dict[uuid.UUID, list[BillingStep]],
        context: StepContext,
        done: Counter[str],
        failures: list[tuple[uuid.UUID, str]],
    ) -> None:
        """The organisations of `todo`, each in a savepoint of its own: one that fails rolls
        back alone and is added to `failures`."""
        for org_id, steps in todo.items():
            counts: Counter[str] = Counter()
            try:
                async with s.begin_nested(), self.events.deferred(s):
                    for step in steps:
                        await step.apply(s, org_id, context, counts)
            except Exception as error:  # one organisation's failure never stops the run
                failures.append((org_id, f"{type(error).__name__}: {error}"))
                continue
            done.update(counts)

"""The credit ledger: grants, consumption, expiry, refunds, adjustments and plan refills.

Every change to an organisation's credits happens under a lock on its `usage_limits` row
(`SELECT ... FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` serializes writers), so
operations on one organisation apply one at a time in full, whatever races: the balance never
goes negative and the ledger always adds up. Each change appends one `credit_transactions` row
with the balance after it, and `credit_allocations` rows saying which grants it drew on.

Grants are drawn in order of `priority` (lower first), then earliest expiry (grants that never
expire last), then age. A grant past its `expires_at` stops counting at once, and is written off
with an `expire` transaction by the next operation on its organisation or by `expire()`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService, audited_bus
from saascore.credits.errors import (
    BalanceOverflow,
    CreditTransactionNotFound,
    InsufficientCredits,
    NotRefundable,
)
from saascore.events.bus import EventBus
from saascore.events.catalog import (
    CreditLowThresholdChanged,
    CreditsExpired,
    CreditsGranted,
    CreditsLow,
)
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.errors import IdempotencyConflict, InvalidInput, NotFound
from saascore.kit.idempotency import payload_hash
from saascore.kit.ids import new_id
from saascore.kit.inputs import INT64_MAX
from saascore.kit.time import month_start, next_month_start, utcnow
from saascore.kit.validation import checked_instant, checked_text
from saascore.metering.accounts import usage_account
from saascore.models import (
    CreditAllocation,
    CreditGrant,
    CreditSource,
    CreditTransaction,
    CreditTransactionType,
    Organization,
    OrganizationStatus,
    SubscriptionPlan,
    UsageLimits,
)

__all__ = [
    "Consumed",
    "CreditAccount",
    "CreditService",
    "Granted",
    "LedgerProblem",
    "Refill",
    "RefillPrefetch",
]


#: The longest idempotency key or reference: the columns' length, and the API's limit.
_MAX_KEY = 255

_DRAW_ORDER = (
    CreditGrant.priority.asc(),
    CreditGrant.expires_at.asc().nulls_last(),
    CreditGrant.created_at.asc(),
    CreditGrant.id.asc(),
)


@dataclass(frozen=True)
class CreditAccount:
    """An organisation's balance and the grants it is made of."""

    organization_id: uuid.UUID
    balance: int
    grants: Sequence[CreditGrant]
    #: `credits.low` is sent when the balance falls below this (None: never).
    low_threshold: int | None = None


@dataclass(frozen=True)
class Granted:
    """A grant's transaction, and whether it is an earlier one that its key replayed."""

    transaction: CreditTransaction
    replayed: bool


@dataclass(frozen=True)
class Consumed:
    """A consumption's transaction, and whether it is an earlier one that its key replayed."""

    transaction: CreditTransaction
    replayed: bool


@dataclass(frozen=True)
class Refill:
    """What `refill_once` did for one organisation."""

    organization_id: uuid.UUID
    #: Credits this call granted; 0 when the month's plan credits were already granted.
    granted: int
    #: The grant it made, or else the month's latest plan grant (None: the plan grants none).
    transaction: CreditTransaction | None


@dataclass
class RefillPrefetch:
    """What the month's refills of a group of organisations read, loaded set-wise in their
    transaction (`CreditService.prefetch_refills`): four queries for the group instead of four
    for each organisation. Each entry serves one `refill_once` of its month and is then
    dropped, so a second refill (another month, or after a grant in the same transaction)
    reads for itself; an organisation with nothing left to grant is left out and reads for
    itself too (it answers with the month's latest grant)."""

    #: Per organisation: its locked account, the month (start) the entry is for, the plan's
    #: allowance and rollover, what the month's plan grants already add up to, and whether
    #: it may hold grants lapsed by then (to expire first, as `refill_once` does).
    entries: dict[uuid.UUID, tuple[UsageLimits, datetime, int, bool, int, bool]]


@dataclass(frozen=True)
class LedgerProblem:
    """A difference `verify()` found between the cached balance, the ledger and the grants."""

    organization_id: uuid.UUID
    message: str


class CreditService:
    def __init__(
        self,
        database: Database,
        events: EventBus | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.events = events if events is not None else audited_bus(AuditService(database))
        self.clock = clock

    # --- changes -------------------------------------------------------------------------------
    async def grant(
        self,
        org_id: uuid.UUID,
        amount: int,
        *,
        source: CreditSource = CreditSource.MANUAL,
        priority: int = 0,
        expires_at: datetime | None = None,
        idempotency_key: str | None = None,
        description: str | None = None,
        payment_id: uuid.UUID | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> CreditTransaction:
        """Add `amount` credits as a new grant (`grant_once`, answering the transaction)."""
        granted = await self.grant_once(
            org_id,
            amount,
            source=source,
            priority=priority,
            expires_at=expires_at,
            idempotency_key=idempotency_key,
            description=description,
            payment_id=payment_id,
            actor=actor,
            session=session,
        )
        return granted.transaction

    async def grant_once(
        self,
        org_id: uuid.UUID,
        amount: int,
        *,
        source: CreditSource = CreditSource.MANUAL,
        priority: int = 0,
        expires_at: datetime | None = None,
        idempotency_key: str | None = None,
        description: str | None = None,
        payment_id: uuid.UUID | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Granted:
        """Add `amount` credits as a new grant, emitting `credits.granted`.

        Idempotent on `idempotency_key`: a retry, even racing the first call, answers the first
        transaction with `replayed` set and grants and emits nothing; the same key with
        different values raises `IdempotencyConflict`."""
        _positive(amount)
        _key(idempotency_key)
        _texts(description=description)
        if expires_at is not None:
            checked_instant(expires_at, field="expires_at")
        if expires_at is not None and expires_at <= self.clock():
            raise InvalidInput("the grant would expire before it starts", field="expires_at")
        request = {
            "op": "grant",
            "amount": amount,
            "source": source,
            "priority": priority,
            "expires_at": expires_at,
            "description": description,
            "payment_id": payment_id,
        }
        async with self.database.scope(session) as s:
            account = await usage_account(s, org_id)
            if (replay := await self._replay(s, org_id, idempotency_key, request)) is not None:
                return Granted(replay, replayed=True)
            _room(account, amount)
            now = self.clock()
            await self._expire_lapsed(s, account, now)
            grant = await self._new_grant(
                s,
                org_id,
                amount,
                source=source,
                priority=priority,
                expires_at=expires_at,
                idempotency_key=idempotency_key,
                description=description,
                payment_id=payment_id,
                now=now,
            )
            account.credits_granted_total += amount
            transaction = await self._append(
                s,
                account,
                CreditTransactionType.GRANT,
                amount,
                now,
                grant_id=grant.id,
                idempotency_key=idempotency_key,
                request=request,
                description=description,
            )
            await self.events.emit(
                s,
                org_id,
                CreditsGranted(
                    transaction_id=transaction.id,
                    grant_id=grant.id,
                    amount=amount,
                    source=CreditSource(source).value,
                    idempotency_key=idempotency_key,
                    expires_at=expires_at,
                    balance=account.credit_balance,
                ),
                actor=actor,
                target_id=transaction.id,
            )
            return Granted(transaction, replayed=False)

    async def consume(
        self,
        org_id: uuid.UUID,
        amount: int,
        *,
        idempotency_key: str | None = None,
        reference: str | None = None,
        description: str | None = None,
        session: AsyncSession | None = None,
    ) -> CreditTransaction:
        """Take `amount` credits (`consume_once`, answering the transaction)."""
        consumed = await self.consume_once(
            org_id,
            amount,
            idempotency_key=idempotency_key,
            reference=reference,
            description=description,
            session=session,
        )
        return consumed.transaction

    async def consume_once(
        self,
        org_id: uuid.UUID,
        amount: int,
        *,
        idempotency_key: str | None = None,
        reference: str | None = None,
        description: str | None = None,
        session: AsyncSession | None = None,
    ) -> Consumed:
        """Take `amount` credits, drawing on grants in draw order.

        Raises `InsufficientCredits(balance, requested)` and consumes nothing when the balance
        is short. Idempotent on `idempotency_key`: a retry, even racing the first call, answers
        the first transaction with `replayed` set; the same key with a different amount or
        reference raises `IdempotencyConflict`.
        """
        _positive(amount)
        _key(idempotency_key)
        if reference is not None and len(reference) > _MAX_KEY:
            raise InvalidInput(f"a reference has at most {_MAX_KEY} characters", field="reference")
        _texts(reference=reference, description=description)
        request = {"op": "consume", "amount": amount, "reference": reference}
        async with self.database.scope(session) as s:
            account = await usage_account(s, org_id)
            if (replay := await self._replay(s, org_id, idempotency_key, request)) is not None:
                return Consumed(replay, replayed=True)
            now = self.clock()
            await self._expire_lapsed(s, account, now)
            draws = await self._draw(s, account, amount, now)
            account.credits_consumed_total += amount
            transaction = await self._append(
                s,
                account,
                CreditTransactionType.CONSUME,
                -amount,
                now,
                allocations=draws,
                idempotency_key=idempotency_key,
                request=request,
                reference=reference,
                description=description,
            )
            return Consumed(transaction, replayed=False)

    async def adjust(
        self,
        org_id: uuid.UUID,
        amount: int,
        *,
        reason: str,
        idempotency_key: str | None = None,
        session: AsyncSession | None = None,
    ) -> CreditTransaction:
        """Correct the balance by a signed amount: a positive one is a new manual grant, a
        negative one draws like a consumption (and cannot take the balance below zero)."""
        if amount == 0:
            raise InvalidInput("an adjustment needs a non-zero amount", field="amount")
        _key(idempotency_key)
        _texts(reason=reason)
        request = {"op": "adjust", "amount": amount, "reason": reason}
        async with self.database.scope(session) as s:
            account = await usage_account(s, org_id)
            if (replay := await self._replay(s, org_id, idempotency_key, request)) is not None:
                return replay
            now = self.clock()
            await self._expire_lapsed(s, account, now)
            if amount > 0:
                _room(account, amount)
                grant = await self._new_grant(
                    s, org_id, amount, source=CreditSource.MANUAL, description=reason, now=now
                )
                account.credits_granted_total += amount
                return await self._append(
                    s,
                    account,
                    CreditTransactionType.ADJUST,
                    amount,
                    now,
                    grant_id=grant.id,
                    idempotency_key=idempotency_key,
                    request=request,
                    description=reason,
                )
            draws = await self._draw(s, account, -amount, now)
            account.credits_consumed_total += -amount
            return await self._append(
                s,
                account,
                CreditTransactionType.ADJUST,
                amount,
                now,
                allocations=draws,
                idempotency_key=idempotency_key,
                request=request,
                description=reason,
            )

    async def refund(
        self,
        org_id: uuid.UUID,
        transaction_id: uuid.UUID,
        amount: int | None = None,
        *,
        idempotency_key: str | None = None,
        description: str | None = None,
        session: AsyncSession | None = None,
    ) -> CreditTransaction:
        """Give back all (or `amount`) of a consumption, to the grants it drew on, latest first.

        A share whose grant has lapsed meanwhile comes back as a new `refund` grant that does
        not expire, so a refund is never lost to an expiry.
        """
        if amount is not None:
            _positive(amount)
        _key(idempotency_key)
        _texts(description=description)
        request = {"op": "refund", "transaction_id": transaction_id, "amount": amount}
        async with self.database.scope(session) as s:
            account = await usage_account(s, org_id)
            if (replay := await self._replay(s, org_id, idempotency_key, request)) is not None:
                return replay
            now = self.clock()
            await self._expire_lapsed(s, account, now)
            original = await s.get(CreditTransaction, (org_id, transaction_id))
            if original is None:
                raise CreditTransactionNotFound(
                    f"no credit transaction {transaction_id}", transaction_id=str(transaction_id)
                )
            if original.type is not CreditTransactionType.CONSUME:
                raise NotRefundable(
                    f"only a consumption can be refunded, not a {original.type.value}",
                    transaction_id=str(transaction_id),
                )
            shares, refundable = await self._refundable_shares(s, original, now)
            wanted = refundable if amount is None else amount
            if wanted == 0 or wanted > refundable:
                raise NotRefundable(
                    f"{wanted} credits cannot be refunded: {refundable} of the consumption remain",
                    refundable=refundable,
                    requested=wanted,
                )
            _room(account, wanted, granted=False)
            allocations: list[tuple[uuid.UUID, int]] = []
            left = wanted
            for grant, share in reversed(shares):
                give = min(left, share)
                if give == 0:
                    break
                left -= give
                if _lapsed(grant, now):
                    await self._new_grant(
                        s,
                        org_id,
                        give,
                        source=CreditSource.REFUND,
                        description=description,
                        now=now,
                    )
                else:
                    grant.remaining += give
                    allocations.append((grant.id, -give))
            account.credits_consumed_total -= wanted
            return await self._append(
                s,
                account,
                CreditTransactionType.REFUND,
                wanted,
                now,
                allocations=allocations,
                related_transaction_id=original.id,
                idempotency_key=idempotency_key,
                request=request,
                description=description,
            )

    async def expire(
        self,
        org_id: uuid.UUID | None = None,
        *,
        session: AsyncSession | None = None,
    ) -> list[CreditTransaction]:
        """Write off every grant past its expiry (of one organisation, or of all)."""
        now = self.clock()
        async with self.database.scope(session) as s:
            if org_id is not None:
                organizations: Sequence[uuid.UUID] = [org_id]
            else:
                organizations = (
                    await s.scalars(
                        sa.select(CreditGrant.organization_id)
                        .where(CreditGrant.remaining > 0, CreditGrant.expires_at <= now)
                        .distinct()
                        .order_by(CreditGrant.organization_id)  # one lock order for all callers
                    )
                ).all()
            expired: list[CreditTransaction] = []
            for organization_id in organizations:
                account = await usage_account(s, organization_id)
                expired.extend(await self._expire_lapsed(s, account, now))
            return expired

    async def refill(
        self, org_id: uuid.UUID, *, actor: Actor = SYSTEM, session: AsyncSession | None = None
    ) -> CreditTransaction | None:
        """`refill_once`, answering the period's latest plan grant (None if there is none)."""
        return (await self.refill_once(org_id, actor=actor, session=session)).transaction

    async def refill_once(
        self,
        org_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
        prefetched: RefillPrefetch | None = None,
    ) -> Refill:
        """Bring the month's plan credits up to the plan's `credits_per_period`.

        The rule, for creation, plan changes and the period refill alike: in each calendar
        month (UTC) the organisation's plan grants add up to the allowance of the richest plan
        it was on during the month, never more. So the first call of a month grants the
        allowance (key `refill:YYYY-MM`); after an upgrade, the next call grants the
        difference (key `refill:YYYY-MM:<allowance>`); a downgrade takes nothing back (what
        was granted stays, spent or not), and the next month grants the new plan's allowance.
        Without rollover, the month's plan grants expire when it ends.

        A grant emits `credits.granted` (source `plan`, by `actor`), as every grant does.
        Runs under the organisation's credit lock, so racing calls grant once; a call with
        nothing to grant changes nothing, emits nothing and answers `granted == 0`."""
        now = self.clock()
        period = month_start(now)
        key = f"refill:{period:%Y-%m}"
        entry = prefetched.entries.pop(org_id, None) if prefetched is not None else None
        if entry is not None and session is not None and entry[1] == period:
            account, _, allowance, rollover, granted, lapsed = entry
            _room(account, allowance - granted)
            if lapsed:
                await self._expire_lapsed(session, account, now)
            # Set-wise, as it was read: the caller's next flush writes this refill with the
            # others of its transaction.
            return await self._grant_refill(
                session,
                account,
                amount=allowance - granted,
                granted=granted,
                allowance=allowance,
                rollover=rollover,
                now=now,
                actor=actor,
                flush=False,
            )
        async with self.database.scope(session) as s:
            account = await usage_account(s, org_id)  # the lock first: the plan read is current
            plan = (
                await s.execute(
                    sa.select(
                        SubscriptionPlan.credits_per_period, SubscriptionPlan.credits_rollover
                    )
                    .join(Organization, Organization.plan_id == SubscriptionPlan.id)
                    .where(Organization.id == org_id)
                )
            ).one_or_none()
            if plan is None:
                raise NotFound(f"no organisation {org_id}", organization=str(org_id))
            allowance, rollover = plan
            of_period = sa.and_(
                CreditGrant.organization_id == org_id,
                CreditGrant.source == CreditSource.PLAN,
                sa.or_(
                    CreditGrant.idempotency_key == key,
                    CreditGrant.idempotency_key.like(f"{key}:%"),
                ),
            )
            granted = int(
                await s.scalar(
                    sa.select(sa.func.coalesce(sa.func.sum(CreditGrant.amount), 0)).where(of_period)
                )
                or 0
            )
            if allowance <= granted:
                latest = (
                    await s.scalars(
                        sa.select(CreditTransaction)
                        .join(
                            CreditGrant,
                            sa.and_(
                                CreditGrant.organization_id == CreditTransaction.organization_id,
                                CreditGrant.id == CreditTransaction.grant_id,
                            ),
                        )
                        .where(of_period, CreditTransaction.type == CreditTransactionType.GRANT)
                        .order_by(CreditTransaction.id.desc())
                        .limit(1)
                    )
                ).one_or_none()
                return Refill(org_id, 0, latest)
            _room(account, allowance - granted)
            await self._expire_lapsed(s, account, now)
            return await self._grant_refill(
                s,
                account,
                amount=allowance - granted,
                granted=granted,
                allowance=allowance,
                rollover=rollover,
                now=now,
                actor=actor,
            )

    async def refill_all(self) -> AsyncIterator[Refill]:
        """`refill_once` for every organisation that is not deleted, oldest first, each in a
        transaction of its own (so one organisation's lock is held only for its own refill);
        yields each organisation's outcome as it commits."""
        after: uuid.UUID | None = None
        while True:
            query = (
                sa.select(Organization.id)
                .where(Organization.status != OrganizationStatus.DELETED)
                .order_by(Organization.id)
                .limit(500)
            )
            if after is not None:
                query = query.where(Organization.id > after)
            async with self.database.scope(None, readonly=True) as s:
                ids = (await s.scalars(query)).all()
            if not ids:
                return
            for org_id in ids:
                yield await self.refill_once(org_id)
            after = ids[-1]

    # --- reads ---------------------------------------------------------------------------------
    async def balance(self, org_id: uuid.UUID, *, session: AsyncSession | None = None) -> int:
        """The credits available now: the cached balance less grants that lapsed since the
        last write. One row read plus an index range over lapsed grants (usually empty)."""
        now = self.clock()
        lapsed = (
            sa.select(sa.func.coalesce(sa.func.sum(CreditGrant.remaining), 0))
            .where(
                CreditGrant.organization_id == org_id,
                CreditGrant.remaining > 0,
                CreditGrant.expires_at <= now,
            )
            .scalar_subquery()
        )
        query = sa.select(UsageLimits.credit_balance - lapsed).where(
            UsageLimits.organization_id == org_id
        )
        async with self.database.scope(session, readonly=True) as s:
            balance = (await s.execute(query)).scalar_one_or_none()
        if balance is None:
            raise NotFound(f"no organisation {org_id}", organization=str(org_id))
        return int(balance)

    async def account(
        self, org_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> CreditAccount:
        """The balance and the grants that still hold credits, in draw order."""
        now = self.clock()
        async with self.database.scope(session, readonly=True) as s:
            balance = await self.balance(org_id, session=s)
            low_threshold = await s.scalar(
                sa.select(UsageLimits.credit_low_threshold).where(
                    UsageLimits.organization_id == org_id
                )
            )
            grants = (
                await s.scalars(
                    sa.select(CreditGrant)
                    .where(
                        CreditGrant.organization_id == org_id,
                        CreditGrant.remaining > 0,
                        sa.or_(CreditGrant.expires_at.is_(None), CreditGrant.expires_at > now),
                    )
                    .order_by(*_DRAW_ORDER)
                )
            ).all()
        return CreditAccount(
            organization_id=org_id, balance=balance, grants=grants, low_threshold=low_threshold
        )

    async def set_low_threshold(
        self,
        org_id: uuid.UUID,
        threshold: int | None,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> int | None:
        """Send `credits.low` when a change takes the balance below `threshold` (None: never).
        A change emits `credits.low_threshold_changed`; setting the same value changes nothing."""
        if threshold is not None and not 0 < threshold <= INT64_MAX:
            raise InvalidInput("the threshold is a positive number of credits", field="threshold")
        async with self.database.scope(session) as s:
            account = await usage_account(s, org_id)
            previous = account.credit_low_threshold
            if previous != threshold:
                account.credit_low_threshold = threshold
                account.updated_at = self.clock()
                await s.flush()
                await self.events.emit(
                    s,
                    org_id,
                    CreditLowThresholdChanged(from_=previous, to=threshold),
                    actor=actor,
                    target_id=org_id,
                )
        return threshold

    async def transactions(
        self,
        org_id: uuid.UUID,
        *,
        limit: int = 50,
        before: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Sequence[CreditTransaction]:
        """The ledger, newest first; `before` pages on from a transaction id."""
        query = sa.select(CreditTransaction).where(CreditTransaction.organization_id == org_id)
        if before is not None:
            query = query.where(CreditTransaction.id < before)
        query = query.order_by(CreditTransaction.id.desc()).limit(limit)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    async def verify(self, *, session: AsyncSession | None = None) -> list[LedgerProblem]:
        """Check every organisation: the cached balance equals the sum of its ledger and of its
        grants' remaining credits, and each grant's remaining equals granted minus drawn."""
        ledger = (
            sa.select(
                CreditTransaction.organization_id.label("org"),
                sa.func.sum(CreditTransaction.amount).label("total"),
            )
            .group_by(CreditTransaction.organization_id)
            .subquery()
        )
        held = (
            sa.select(
                CreditGrant.organization_id.label("org"),
                sa.func.sum(CreditGrant.remaining).label("total"),
            )
            .group_by(CreditGrant.organization_id)
            .subquery()
        )
        balances = sa.select(
            UsageLimits.organization_id,
            UsageLimits.credit_balance,
            sa.func.coalesce(ledger.c.total, 0),
            sa.func.coalesce(held.c.total, 0),
        ).select_from(
            sa.outerjoin(
                sa.outerjoin(UsageLimits, ledger, ledger.c.org == UsageLimits.organization_id),
                held,
                held.c.org == UsageLimits.organization_id,
            )
        )
        drawn = (
            sa.select(
                CreditAllocation.organization_id.label("org"),
                CreditAllocation.grant_id.label("grant_id"),
                sa.func.sum(CreditAllocation.amount).label("total"),
            )
            .group_by(CreditAllocation.organization_id, CreditAllocation.grant_id)
            .subquery()
        )
        grants = (
            sa.select(
                CreditGrant.organization_id,
                CreditGrant.id,
                CreditGrant.amount,
                CreditGrant.remaining,
                sa.func.coalesce(drawn.c.total, 0),
            )
            .select_from(
                sa.outerjoin(
                    CreditGrant,
                    drawn,
                    sa.and_(
                        drawn.c.org == CreditGrant.organization_id,
                        drawn.c.grant_id == CreditGrant.id,
                    ),
                )
            )
            .where(CreditGrant.amount - CreditGrant.remaining != sa.func.coalesce(drawn.c.total, 0))
        )
        problems: list[LedgerProblem] = []
        async with self.database.scope(session, readonly=True) as s:
            for org, cached, in_ledger, in_grants in await s.execute(balances):
                if cached != in_ledger or cached != in_grants:
                    problems.append(
                        LedgerProblem(
                            org,
                            f"cached balance {cached}, ledger {in_ledger}, grants hold {in_grants}",
                        )
                    )
            for org, grant_id, amount, remaining, total_drawn in await s.execute(grants):
                problems.append(
                    LedgerProblem(
                        org,
                        f"grant {grant_id}: {amount} granted, {remaining} remaining, "
                        f"but {total_drawn} drawn",
                    )
                )
        return problems

    # --- internals -----------------------------------------------------------------------------
    async def _find_by_key(
        self, s: AsyncSession, org_id: uuid.UUID, key: str
    ) -> CreditTransaction | None:
        return (
            await s.scalars(
                sa.select(CreditTransaction).where(
                    CreditTransaction.organization_id == org_id,
                    CreditTransaction.idempotency_key == key,
                )
            )
        ).one_or_none()

    async def _replay(
        self, s: AsyncSession, org_id: uuid.UUID, key: str | None, request: dict[str, Any]
    ) -> CreditTransaction | None:
        """The transaction an earlier call with this key made, if any (checked under the lock,
        so a concurrent retry waits and then finds it)."""
        if key is None:
            return None
        existing = await self._find_by_key(s, org_id, key)
        if existing is not None and existing.payload_hash != payload_hash(request):
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used for a different request", idempotency_key=key
            )
        return existing

    async def prefetch_refills(
        self, s: AsyncSession, months: dict[uuid.UUID, datetime]
    ) -> RefillPrefetch:
        """Lock and read, set-wise in `s`, what `refill_once` reads for each organisation of
        `months` in the month containing its instant (see `RefillPrefetch`). The accounts are
        locked in organisation order."""
        found = RefillPrefetch(entries={})
        org_ids = sorted(months)
        if not org_ids:
            return found
        accounts = {
            account.organization_id: account
            for account in await s.scalars(
                sa.select(UsageLimits)
                .where(UsageLimits.organization_id.in_(org_ids))
                .order_by(UsageLimits.organization_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        }
        plans = {
            org_id: (int(allowance), bool(rollover))
            for org_id, allowance, rollover in await s.execute(
                sa.select(
                    Organization.id,
                    SubscriptionPlan.credits_per_period,
                    SubscriptionPlan.credits_rollover,
                )
                .join(SubscriptionPlan, Organization.plan_id == SubscriptionPlan.id)
                .where(Organization.id.in_(org_ids))
            )
        }
        latest = max(months.values())
        lapsed = set(
            await s.scalars(
                sa.select(CreditGrant.organization_id)
                .where(
                    CreditGrant.organization_id.in_(org_ids),
                    CreditGrant.remaining > 0,
                    CreditGrant.expires_at <= latest,
                )
                .distinct()
            )
        )
        granted: dict[tuple[uuid.UUID, str], int] = {}
        for org_id, key, amount in await s.execute(
            sa.select(
                CreditGrant.organization_id, CreditGrant.idempotency_key, CreditGrant.amount
            ).where(
                CreditGrant.organization_id.in_(org_ids),
                CreditGrant.source == CreditSource.PLAN,
                CreditGrant.idempotency_key.like("refill:%"),
            )
        ):
            month = (key or "")[len("refill:") : len("refill:YYYY-MM")]
            granted[org_id, month] = granted.get((org_id, month), 0) + int(amount)
        for org_id in org_ids:
            account, plan = accounts.get(org_id), plans.get(org_id)
            if account is None or plan is None:
                continue  # made on first use, or gone: the slow path
            allowance, rollover = plan
            period = month_start(months[org_id])
            already = granted.get((org_id, f"{period:%Y-%m}"), 0)
            if allowance <= already:
                continue  # nothing to grant: the slow path answers with the latest grant
            found.entries[org_id] = (
                account,
                period,
                allowance,
                rollover,
                already,
                org_id in lapsed,
            )
        return found

    async def _grant_refill(
        self,
        s: AsyncSession,
        account: UsageLimits,
        *,
        amount: int,
        granted: int,
        allowance: int,
        rollover: bool,
        now: datetime,
        actor: Actor,
        flush: bool = True,
    ) -> Refill:
        """Grant `amount` of the month's plan credits to the locked `account` (`refill_once`);
        with `flush=False` the rows are left to the session's next flush."""
        org_id = account.organization_id
        period = month_start(now)
        key = f"refill:{period:%Y-%m}"
        if granted:
            key = f"{key}:{allowance}"
        ends = next_month_start(now)
        grant = await self._new_grant(
            s,
            org_id,
            amount,
            source=CreditSource.PLAN,
            expires_at=None if rollover else ends,
            idempotency_key=key,
            description=f"plan credits for {period:%Y-%m}"
            + (f" (up to {allowance})" if granted else ""),
            now=now,
            flush=flush,
        )
        account.credits_granted_total += amount
        account.last_credit_refill_at = now
        account.next_credit_refill_at = ends
        transaction = await self._append(
            s,
            account,
            CreditTransactionType.GRANT,
            amount,
            now,
            grant_id=grant.id,
            idempotency_key=key,
            request={"op": "refill", "period": period, "allowance": allowance},
            description=grant.description,
            flush=flush,
        )
        await self.events.emit(
            s,
            org_id,
            CreditsGranted(
                transaction_id=transaction.id,
                grant_id=grant.id,
                amount=amount,
                source=CreditSource.PLAN.value,
                idempotency_key=key,
                expires_at=grant.expires_at,
                balance=account.credit_balance,
            ),
            actor=actor,
            target_id=transaction.id,
        )
        return Refill(org_id, amount, transaction)

    async def _new_grant(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        amount: int,
        *,
        source: CreditSource,
        now: datetime,
        priority: int = 0,
        expires_at: datetime | None = None,
        idempotency_key: str | None = None,
        description: str | None = None,
        payment_id: uuid.UUID | None = None,
        flush: bool = True,
    ) -> CreditGrant:
        grant = CreditGrant(
            organization_id=org_id,
            id=new_id(),
            amount=amount,
            remaining=amount,
            priority=priority,
            source=source,
            expires_at=expires_at,
            idempotency_key=idempotency_key,
            description=description,
            payment_id=payment_id,
            effective_at=now,
            created_at=now,
        )
        s.add(grant)
        if flush:
            await s.flush()
        return grant

    async def _draw(
        self, s: AsyncSession, account: UsageLimits, amount: int, now: datetime
    ) -> list[tuple[uuid.UUID, int]]:
        """Take `amount` from the live grants in draw order; refuse if they hold too little."""
        if account.credit_balance < amount:
            raise InsufficientCredits(account.credit_balance, amount)
        grants = (
            await s.scalars(
                sa.select(CreditGrant)
                .where(
                    CreditGrant.organization_id == account.organization_id,
                    CreditGrant.remaining > 0,
                    sa.or_(CreditGrant.expires_at.is_(None), CreditGrant.expires_at > now),
                )
                .order_by(*_DRAW_ORDER)
                .execution_options(populate_existing=True)
            )
        ).all()
        draws: list[tuple[uuid.UUID, int]] = []
        left = amount
        for grant in grants:
            take = min(left, grant.remaining)
            grant.remaining -= take
            draws.append((grant.id, take))
            left -= take
            if left == 0:
                return draws
        raise AssertionError(  # the cached balance said there was enough: the ledger is off
            f"organisation {account.organization_id}: balance {account.credit_balance} but "
            f"grants hold {amount - left}; run 'saascore credits verify'"
        )

    async def _expire_lapsed(
        self, s: AsyncSession, account: UsageLimits, now: datetime
    ) -> list[CreditTransaction]:
        lapsed = (
            await s.scalars(
                sa.select(CreditGrant)
                .where(
                    CreditGrant.organization_id == account.organization_id,
                    CreditGrant.remaining > 0,
                    CreditGrant.expires_at <= now,
                )
                .order_by(CreditGrant.expires_at, CreditGrant.id)
                .execution_options(populate_existing=True)
            )
        ).all()
        expired: list[CreditTransaction] = []
        for grant in lapsed:
            amount, grant.remaining, grant.expired_at = grant.remaining, 0, now
            account.credits_expired_total += amount
            transaction = await self._append(
                s,
                account,
                CreditTransactionType.EXPIRE,
                -amount,
                now,
                grant_id=grant.id,
                allocations=[(grant.id, amount)],
                description="grant expired",
            )
            expired.append(transaction)
            await self.events.emit(
                s,
                account.organization_id,
                CreditsExpired(grant_id=grant.id, amount=amount, balance=account.credit_balance),
                target_id=grant.id,
            )
        return expired

    async def _append(
        self,
        s: AsyncSession,
        account: UsageLimits,
        type_: CreditTransactionType,
        amount: int,
        now: datetime,
        *,
        allocations: Sequence[tuple[uuid.UUID, int]] = (),
        grant_id: uuid.UUID | None = None,
        related_transaction_id: uuid.UUID | None = None,
        idempotency_key: str | None = None,
        request: dict[str, Any] | None = None,
        reference: str | None = None,
        description: str | None = None,
        flush: bool = True,
    ) -> CreditTransaction:
        """Apply `amount` to the cached balance and append the ledger row that records it;
        a fall below the organisation's `credit_low_threshold` emits `credits.low`. With
        `flush=False` and no `allocations`, the row is left to the session's next flush."""
        before = account.credit_balance
        account.credit_balance += amount
        threshold = account.credit_low_threshold
        if threshold is not None and account.credit_balance < threshold <= before:
            await self.events.emit(
                s,
                account.organization_id,
                CreditsLow(balance=account.credit_balance, threshold=threshold),
            )
        account.updated_at = now
        if grant_id is None and len(allocations) == 1:
            grant_id = allocations[0][0]
        transaction = CreditTransaction(
            organization_id=account.organization_id,
            id=new_id(),
            type=type_,
            amount=amount,
            balance_after=account.credit_balance,
            grant_id=grant_id,
            related_transaction_id=related_transaction_id,
            idempotency_key=idempotency_key,
            payload_hash=payload_hash(request) if request is not None else None,
            reference=reference,
            description=description,
            created_at=now,
        )
        s.add(transaction)
        if not allocations:
            if flush:
                await s.flush()
            return transaction
        await s.flush()  # before its allocations: no relationship orders them
        s.add_all(
            CreditAllocation(
                organization_id=account.organization_id,
                id=new_id(),
                transaction_id=transaction.id,
                grant_id=allocated_grant,
                amount=allocated,
            )
            for allocated_grant, allocated in allocations
        )
        await s.flush()
        return transaction

    async def _refundable_shares(
        self, s: AsyncSession, original: CreditTransaction, now: datetime
    ) -> tuple[list[tuple[CreditGrant, int]], int]:
        """What of a consumption is left to refund: in total, and per grant it drew on (in
        draw order, less what refunds already returned to that grant).

        The total is exact; the per-grant shares only say where credits go back, and may
        still count a lapsed grant's share that an earlier refund paid as a new grant.
        """
        org_id = original.organization_id
        refunds = sa.select(CreditTransaction.id).where(
            CreditTransaction.organization_id == org_id,
            CreditTransaction.related_transaction_id == original.id,
        )
        refunded = (
            await s.execute(
                sa.select(sa.func.coalesce(sa.func.sum(CreditTransaction.amount), 0)).where(
                    CreditTransaction.organization_id == org_id,
                    CreditTransaction.related_transaction_id == original.id,
                )
            )
        ).scalar_one()
        rows = await s.execute(
            sa.select(CreditAllocation.grant_id, CreditAllocation.amount)
            .where(
                CreditAllocation.organization_id == org_id,
                sa.or_(
                    CreditAllocation.transaction_id == original.id,
                    CreditAllocation.transaction_id.in_(refunds.scalar_subquery()),
                ),
            )
            .order_by(CreditAllocation.id)
        )
        shares: dict[uuid.UUID, int] = {}
        for grant_id, amount in rows:
            shares[grant_id] = shares.get(grant_id, 0) + amount
        grants = {
            grant.id: grant
            for grant in await s.scalars(
                sa.select(CreditGrant)
                .where(CreditGrant.organization_id == org_id, CreditGrant.id.in_(list(shares)))
                .execution_options(populate_existing=True)
            )
        }
        refundable = -original.amount - int(refunded)
        # A share paid back as a new grant (its grant had lapsed) left no allocation, so it is
        # still counted above. Refunds pay the latest shares first, so the stale ones are the
        # latest lapsed ones: take the excess off them, latest first.
        stale = sum(shares.values()) - refundable
        for grant_id in reversed(list(shares)):
            if stale == 0:
                break
            if shares[grant_id] > 0 and _lapsed(grants[grant_id], now):
                taken = min(stale, shares[grant_id])
                shares[grant_id] -= taken
                stale -= taken
        ordered = [(grants[grant_id], share) for grant_id, share in shares.items() if share > 0]
        return ordered, refundable


def _room(account: UsageLimits, amount: int, *, granted: bool = True) -> None:
    """Refuse (`BalanceOverflow`) credits that would take the balance, or the total ever
    granted (unless they are given back, not `granted`), past what a bigint column holds:
    checked before anything is written."""
    if account.credit_balance + amount > INT64_MAX or (
        granted and account.credits_granted_total + amount > INT64_MAX
    ):
        raise BalanceOverflow(
            f"granting {amount} credits would take the balance past {INT64_MAX}",
            balance=account.credit_balance,
            requested=amount,
        )


def _texts(**texts: str | None) -> None:
    """Refuse a note, reason or reference holding a control character (it is printed in
    ledgers on operators' terminals)."""
    for field, text in texts.items():
        if text is not None:
            checked_text(text, field=field)


def _key(key: str | None) -> None:
    """Refuse an idempotency key that is empty, longer than its column holds (PostgreSQL
    would refuse it with a database error, SQLite would store it) or holds a control
    character: the CLI and library callers pass keys that no schema has checked."""
    if key is None:
        return
    if not 0 < len(key) <= _MAX_KEY:
        raise InvalidInput(
            f"an idempotency key is text of 1 to {_MAX_KEY} characters", field="idempotency_key"
        )
    checked_text(key, field="idempotency_key")


def _positive(amount: int) -> None:
    if amount <= 0:
        raise InvalidInput(f"the amount must be positive, not {amount}", field="amount")


def _lapsed(grant: CreditGrant, now: datetime) -> bool:
    return grant.expired_at is not None or (
        grant.expires_at is not None and grant.expires_at <= now
    )

"""Payments and refunds against invoices (docs/billing.md, "Payments and refunds").

- A payment **records what happened**, whoever reports it (an operator, the CLI, a provider
  later): it `succeeded` or `failed`. A failed payment keeps its reason and changes nothing on
  the invoice.
- A succeeded payment is applied under the invoice's row lock, in the caller's transaction:
  `amount_paid` goes up and `amount_due` down by its amount, and when nothing is left due the
  invoice goes `paid` (`invoice.paid`). Partial payments are allowed; one above the amount due
  is refused (`overpayment`) with nothing written. Payments go to an open, overdue or
  uncollectible invoice only (`invoice_not_payable`).
- **Methods** are `PaymentMethod`'s (`card` is `credit_card`); any other name (seed 003's
  `tharwatt`) is a provider-specific method: the payment's method is `other` and the name is
  kept in `metadata["method_name"]` (and answered as `method_name`).
- **Idempotent by key**: the `payments` table is UNIQUE on (organization_id, idempotency_key);
  a replay with the same content answers the first payment and changes nothing, the same key
  with other content is `idempotency_conflict`. Replays of one invoice wait on its lock; a
  key raced onto two invoices loses at the unique index, inside a savepoint, never a 500.
- **Credit packs**: when a payment makes an invoice with `credit_pack` lines paid in full, the
  lines' credits are granted once (a `purchase` grant keyed on the invoice), in the payment's
  transaction; the payment keeps them in `credits_awarded` (`credits.purchased`).
- **Resume on payment**: when the organisation then has no other invoice past its due date,
  a `past_due` or `suspended` subscription goes back to `active` and a suspended organisation
  is resumed (`SubscriptionService.reactivate_paid`).
- **Refunds** go up to what is left of a payment (`refund_exceeds_payment`). The payment goes
  `partially_refunded` or `refunded`; its invoice's `amount_paid` goes down and `amount_due`
  up by as much (the CHECK `amount_due = total - amount_paid` holds). A paid invoice refunded
  to nothing paid goes `refunded`; one partly refunded stays `paid` (the refund was the
  merchant's choice: it is not owed again, and is never overdue). An open invoice stays open.
  Refunds are kept on the payment (`metadata["refunds"]`), each with its key, under the
  payment's row lock: the same key again answers the payment unchanged.
- **A refunded credit pack takes its credits back** in proportion: after any refund of a
  payment on a pack's invoice, the credits the invoice granted have been taken back in the
  share the invoice's payments have been refunded of its total (rounded down), drawn like a
  consumption in the refund's transaction. Credits already spent are not taken below a zero
  balance: what could not be taken back is kept on the refund as `credits_short`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from saascore.audit.service import AuditService, audited_bus
from saascore.billing.errors import (
    InvalidPayment,
    InvoiceNotFound,
    InvoiceNotPayable,
    Overpayment,
    PaymentExists,
    PaymentNotFound,
    PaymentNotRefundable,
    RefundExceedsPayment,
    TooManyRefunds,
)
from saascore.billing.invoices import (
    LineKind,
    check_invoice_transition,
    emit_invoice_paid,
    mark_paid,
    overdue_clause,
)
from saascore.billing.subscriptions import SubscriptionService
from saascore.credits.service import CreditService
from saascore.events.bus import EventBus
from saascore.events.catalog import (
    CreditsPurchased,
    PaymentFailed,
    PaymentRefunded,
    PaymentSucceeded,
)
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.errors import IdempotencyConflict
from saascore.kit.idempotency import payload_hash
from saascore.kit.money import CurrencyMismatch, Money
from saascore.kit.sql import violates
from saascore.kit.time import utcnow
from saascore.kit.validation import checked_text
from saascore.models import (
    Invoice,
    InvoiceStatus,
    Payment,
    PaymentMethod,
    PaymentProvider,
    PaymentStatus,
    TransactionType,
)
from saascore.models.credits import CreditSource

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_REFUNDS",
    "PAYABLE_STATUSES",
    "PaymentService",
    "method_name",
    "parse_method",
]

#: The longest idempotency key, provider payment id or method name.
MAX_KEY_LENGTH: Final = 255
#: The longest failure or refund reason, in characters.
MAX_REASON_LENGTH: Final = 1000
#: The most refunds one payment takes.
MAX_REFUNDS: Final = 100
#: The statuses of an invoice that takes payments.
PAYABLE_STATUSES: Final = (InvoiceStatus.OPEN, InvoiceStatus.OVERDUE, InvoiceStatus.UNCOLLECTIBLE)
_RECORDABLE: Final = (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED)
_REFUNDABLE: Final = (PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED)
_ALIASES: Final = {"card": PaymentMethod.CREDIT_CARD, "bank": PaymentMethod.BANK_TRANSFER}
_METHOD_NAME: Final = "method_name"
_REQUEST: Final = "request_hash"
_REFUNDS: Final = "refunds"
_CREDITS_BACK: Final = "credits_taken_back"


def parse_method(method: PaymentMethod | str) -> tuple[PaymentMethod, str | None]:
    """A method and, for a provider-specific one, its name: `card` is `credit_card`, and a
    name that is none of `PaymentMethod`'s (`tharwatt`) is `other` with that name."""
    if isinstance(method, PaymentMethod):
        return method, None
    if not isinstance(method, str):
        raise InvalidPayment("a payment's method is a name such as 'card'", field="method")
    name = method.strip().lower().replace("-", "_").replace(" ", "_")
    if (
        not name
        or len(name) > 50
        or not all(c.isascii() and (c.isalnum() or c == "_") for c in name)
    ):
        raise InvalidPayment(
            f"{method[:50]!r} is not a method: card, bank_transfer, mobile_money, cash, ... "
            "or a provider's method name of letters, digits and underscores",
            field="method",
        )
    if name in _ALIASES:
        return _ALIASES[name], None
    try:
        return PaymentMethod(name), None
    except ValueError:
        return PaymentMethod.OTHER, name


def method_name(payment: Payment) -> str | None:
    """The provider-specific method's name of `payment`, if it has one."""
    name = (payment.metadata_ or {}).get(_METHOD_NAME)
    return name if isinstance(name, str) else None


def _token(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEY_LENGTH:
        raise InvalidPayment(f"{field} is text of 1 to {MAX_KEY_LENGTH} characters", field=field)
    return checked_text(value, field=field)


def _ledger_key(payment: Payment, nth: int, key: str | None) -> str:
    """The credit ledger's key of a payment's `nth` refund: the refund's own key within it
    while it fits the ledger's column (`MAX_KEY_LENGTH`), else that key's SHA-256, since a
    refund's key may itself be as long as the column."""
    readable = f"refund:{payment.id}:{nth}:{key or ''}"
    if len(readable) <= MAX_KEY_LENGTH:
        return readable
    digest = hashlib.sha256((key or "").encode()).hexdigest()
    return f"refund:{payment.id}:{nth}:sha256:{digest}"


def _reason(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_REASON_LENGTH:
        raise InvalidPayment(f"{field} is text of 1 to {MAX_REASON_LENGTH} characters", field=field)
    return checked_text(value.strip(), field=field)


def _amount(amount: Money | int, currency: str, field: str = "amount") -> int:
    if isinstance(amount, Money):
        if amount.currency != currency:
            raise CurrencyMismatch(
                f"a {amount.currency} amount for a {currency} invoice",
                field=field,
                currency=amount.currency,
            )
        minor = amount.minor
    elif isinstance(amount, int) and not isinstance(amount, bool):
        minor = Money(amount, currency).minor  # within int64, or amount_out_of_range
    else:
        raise InvalidPayment("an amount is a Money or an integer of minor units", field=field)
    if minor <= 0:
        raise InvalidPayment(f"the {field} must be positive, not {minor}", field=field)
    return minor


class PaymentService:
    """Payments against invoices, their refunds and the payment history (module docstring).

    Every method takes the organisation: a payment or invoice of another organisation is not
    found. `org_id=None` on the reads is an operator's look-up across organisations.
    """

    def __init__(
        self,
        database: Database,
        credits: CreditService,
        subscriptions: SubscriptionService,
        events: EventBus | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.credits = credits
        self.subscriptions = subscriptions
        self.events = events if events is not None else audited_bus(AuditService(database))
        self.clock = clock

    # --- recording -----------------------------------------------------------------------------
    async def record(
        self,
        org_id: uuid.UUID,
        invoice_id: uuid.UUID,
        amount: Money | int,
        method: PaymentMethod | str,
        *,
        key: str | None = None,
        status: PaymentStatus | str = PaymentStatus.SUCCEEDED,
        failure_reason: str | None = None,
        provider_payment_id: str | None = None,
        provider: PaymentProvider = PaymentProvider.MANUAL,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Payment:
        """Record a payment of `amount` (a `Money`, or minor units of the invoice's currency)
        against the invoice, succeeded (applied to the invoice) or failed (with its reason).
        Emits `payment.succeeded` (and `invoice.paid` when nothing is left due) or
        `payment.failed`. Idempotent on `key`."""
        kind, name = parse_method(method)
        try:
            outcome = PaymentStatus(status)
        except ValueError:
            outcome = None
        if outcome not in _RECORDABLE:
            raise InvalidPayment(
                "a recorded payment has succeeded or failed", field="status", status=str(status)
            )
        assert outcome is not None
        reason = _reason(failure_reason, "failure_reason")
        if outcome is PaymentStatus.FAILED and reason is None:
            raise InvalidPayment("a failed payment needs its reason", field="failure_reason")
        if outcome is PaymentStatus.SUCCEEDED and reason is not None:
            raise InvalidPayment(
                "only a failed payment has a failure reason", field="failure_reason"
            )
        key = _token(key, "key")
        provider_id = _token(provider_payment_id, "provider_payment_id")
        async with self.database.scope(session) as s:
            invoice = await _locked_invoice(s, org_id, invoice_id)
            minor = _amount(amount, invoice.currency)
            request = {
                "invoice_id": invoice.id,
                "amount": minor,
                "currency": invoice.currency,
                "method": kind.value,
                "method_name": name,
                "status": outcome.value,
                "failure_reason": reason,
                "provider_payment_id": provider_id,
            }
            digest = payload_hash(request)
            if key is not None and (found := await _by_key(s, org_id, key)) is not None:
                return _replayed(found, key, digest)
            if invoice.status not in PAYABLE_STATUSES:
                raise InvoiceNotPayable(
                    f"invoice {invoice.number or invoice.id} is {invoice.status.value}: "
                    "payments go to open or uncollectible invoices",
                    invoice=str(invoice.id),
                    status=invoice.status.value,
                )
            succeeded = outcome is PaymentStatus.SUCCEEDED
            if succeeded and minor > invoice.amount_due:
                raise Overpayment(
                    f"{Money(minor, invoice.currency)} is above the "
                    f"{Money(invoice.amount_due, invoice.currency)} due on invoice "
                    f"{invoice.number or invoice.id}",
                    invoice=str(invoice.id),
                    amount=minor,
                    amount_due=invoice.amount_due,
                )
            now = self.clock()
            payment = Payment(
                organization_id=org_id,
                invoice_id=invoice.id,
                subscription_id=invoice.subscription_id,
                amount=minor,
                refunded_amount=0,
                currency=invoice.currency,
                status=outcome,
                method=kind,
                provider=PaymentProvider(provider),
                transaction_type=_transaction_type(invoice),
                provider_payment_id=provider_id,
                idempotency_key=key,
                credits_awarded=0,
                failure_reason=reason,
                paid_at=now if succeeded else None,
                processed_at=now,
                metadata_={_REQUEST: digest, **({_METHOD_NAME: name} if name else {})},
            )
            try:
                async with s.begin_nested():
                    s.add(payment)
                    await s.flush()
            except IntegrityError as error:
                # Another transaction took the key (or the provider's id) since we looked.
                if key is not None and (found := await _by_key(s, org_id, key)) is not None:
                    return _replayed(found, key, digest)
                if violates(error, "provider_payment_id"):
                    raise PaymentExists(
                        f"the provider's payment {provider_id!r} is already recorded",
                        provider_payment_id=provider_id,
                    ) from None
                raise
            if not succeeded:
                await self._emit(
                    s, org_id, PaymentFailed, payment, invoice, actor, failure_reason=reason
                )
                return payment
            invoice.amount_paid += minor
            invoice.amount_due -= minor
            paid = invoice.amount_due == 0
            if paid:
                mark_paid(invoice, now)
            await s.flush()
            await self._emit(
                s, org_id, PaymentSucceeded, payment, invoice, actor, amount_due=invoice.amount_due
            )
            if paid:
                await self._paid(s, invoice, payment, now, actor)
            return payment

    async def by_key(
        self, org_id: uuid.UUID, key: str, *, session: AsyncSession | None = None
    ) -> Payment | None:
        """The organisation's payment recorded with idempotency `key`, if any."""
        async with self.database.scope(session, readonly=True) as s:
            return await _by_key(s, org_id, key)

    async def _paid(
        self, s: AsyncSession, invoice: Invoice, payment: Payment, now: datetime, actor: Actor
    ) -> None:
        """The invoice is paid in full by `payment`: `invoice.paid`, its credit packs, and the
        subscription resumed when nothing else is past due."""
        await emit_invoice_paid(s, self.events, invoice, actor)
        await self._award_packs(s, invoice, payment, actor)
        late = await s.scalar(
            sa.select(sa.func.count())
            .select_from(Invoice)
            .where(
                Invoice.organization_id == invoice.organization_id,
                Invoice.id != invoice.id,
                overdue_clause(now.date()),
            )
        )
        if not late:
            await self.subscriptions.reactivate_paid(
                invoice.organization_id, actor=actor, session=s
            )

    async def _award_packs(
        self, s: AsyncSession, invoice: Invoice, payment: Payment, actor: Actor
    ) -> None:
        packs: list[str] = []
        credits = 0
        for line in invoice.lines:
            metadata = line.metadata_ or {}
            if metadata.get("kind") != LineKind.CREDIT_PACK.value:
                continue
            amount = metadata.get("credits")
            if isinstance(amount, int) and not isinstance(amount, bool) and amount > 0:
                credits += amount * line.quantity
                packs.append(str(metadata.get("credit_pack", "")))
        if credits == 0:
            return
        granted = await self.credits.grant_once(
            invoice.organization_id,
            credits,
            source=CreditSource.PURCHASE,
            idempotency_key=f"invoice:{invoice.id}:credit-packs",
            description=f"Credit packs of invoice {invoice.number}",
            payment_id=payment.id,
            actor=actor,
            session=s,
        )
        if granted.replayed:
            return
        payment.credits_awarded = credits
        await s.flush()
        await self.events.emit(
            s,
            invoice.organization_id,
            CreditsPurchased(
                payment_id=payment.id,
                invoice_id=invoice.id,
                credits=credits,
                packs=packs,
                transaction_id=granted.transaction.id,
                balance=granted.transaction.balance_after,
            ),
            actor=actor,
            target_id=payment.id,
        )

    # --- refunds -------------------------------------------------------------------------------
    async def refund(
        self,
        org_id: uuid.UUID,
        payment_id: uuid.UUID,
        amount: Money | int,
        *,
        key: str | None = None,
        reason: str | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Payment:
        """Refund `amount` of a succeeded payment, up to what is left of it; its invoice's
        amount paid goes down by as much (module docstring). Emits `payment.refunded`.
        Idempotent on `key` (per payment)."""
        key = _token(key, "key")
        reason = _reason(reason, "reason")
        async with self.database.scope(session) as s:
            # Invoice first, then payment: the order `record` takes them in.
            found = await self._one(sa.select(Payment), s, org_id, payment_id)
            invoice = (
                await _locked_invoice(s, org_id, found.invoice_id)
                if found.invoice_id is not None
                else None
            )
            payment = await self._one(
                sa.select(Payment).with_for_update().execution_options(populate_existing=True),
                s,
                org_id,
                payment_id,
            )
            minor = _amount(amount, payment.currency)
            refunds: list[dict[str, Any]] = list((payment.metadata_ or {}).get(_REFUNDS, []))
            if key is not None:
                for earlier in refunds:
                    if earlier.get("key") == key:
                        if (earlier.get("amount"), earlier.get("reason")) != (minor, reason):
                            raise IdempotencyConflict(
                                f"refund key {key!r} was used for a different refund",
                                idempotency_key=key,
                            )
                        return payment
            if payment.status not in _REFUNDABLE:
                raise PaymentNotRefundable(
                    f"payment {payment.id} is already refunded in full"
                    if payment.status is PaymentStatus.REFUNDED
                    else f"payment {payment.id} is {payment.status.value}: only a succeeded "
                    "payment is refunded",
                    payment=str(payment.id),
                    status=payment.status.value,
                )
            left = payment.amount - payment.refunded_amount
            if minor > left:
                raise RefundExceedsPayment(
                    f"{Money(minor, payment.currency)} is above the "
                    f"{Money(left, payment.currency)} left of payment {payment.id}",
                    payment=str(payment.id),
                    amount=minor,
                    refundable=left,
                )
            if len(refunds) >= MAX_REFUNDS:
                raise TooManyRefunds(
                    f"payment {payment.id} has taken its {MAX_REFUNDS} refunds",
                    payment=str(payment.id),
                    refunds=len(refunds),
                )
            now = self.clock()
            payment.refunded_amount += minor
            payment.status = (
                PaymentStatus.REFUNDED
                if payment.refunded_amount == payment.amount
                else PaymentStatus.PARTIALLY_REFUNDED
            )
            refunds.append({"key": key, "amount": minor, "reason": reason, "at": now.isoformat()})
            taken, short = (
                await self._take_back_credits(s, invoice, payment, len(refunds), key)
                if invoice is not None
                else (0, 0)
            )
            refunds[-1] |= {"credits_reversed": taken, "credits_short": short}
            payment.metadata_ = {**(payment.metadata_ or {}), _REFUNDS: refunds}
            if invoice is not None:
                invoice.amount_paid -= minor
                invoice.amount_due += minor
                if invoice.status is InvoiceStatus.PAID and invoice.amount_paid == 0:
                    check_invoice_transition(invoice.status, InvoiceStatus.REFUNDED)
                    invoice.status = InvoiceStatus.REFUNDED
            await s.flush()
            await self._emit(
                s,
                org_id,
                PaymentRefunded,
                payment,
                invoice,
                actor,
                refund_amount=minor,
                refunded_amount=payment.refunded_amount,
                reason=reason,
                credits_reversed=taken,
            )
            return payment

    async def _take_back_credits(
        self, s: AsyncSession, invoice: Invoice, payment: Payment, nth: int, key: str | None
    ) -> tuple[int, int]:
        """The credits a refund takes back of a credit pack's invoice (module docstring):
        (taken, short of what was due back). Runs under the invoice's lock, after the refund
        is counted on `payment`; the running total is kept on the payment that granted them."""
        await s.flush()
        granted = await s.scalar(
            sa.select(Payment).where(
                Payment.organization_id == invoice.organization_id,
                Payment.invoice_id == invoice.id,
                Payment.credits_awarded > 0,
            )
        )
        if granted is None or invoice.total <= 0:
            return 0, 0
        refunded = await s.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(Payment.refunded_amount), 0)).where(
                Payment.organization_id == invoice.organization_id,
                Payment.invoice_id == invoice.id,
            )
        )
        due = granted.credits_awarded * min(int(refunded or 0), invoice.total) // invoice.total
        before = int((granted.metadata_ or {}).get(_CREDITS_BACK, 0))
        owed = max(0, due - before)
        if owed == 0:
            return 0, 0
        balance = await self.credits.balance(invoice.organization_id, session=s)
        taken = min(owed, max(0, balance))
        if taken:
            await self.credits.adjust(
                invoice.organization_id,
                -taken,
                reason=f"Credits of refunded invoice {invoice.number}",
                idempotency_key=_ledger_key(payment, nth, key),
                session=s,
            )
        granted.metadata_ = {**(granted.metadata_ or {}), _CREDITS_BACK: before + owed}
        return taken, owed - taken

    # --- reads ---------------------------------------------------------------------------------
    async def get(
        self,
        org_id: uuid.UUID | None,
        payment_id: uuid.UUID,
        *,
        session: AsyncSession | None = None,
    ) -> Payment:
        """The payment; `org_id=None` is an operator's look-up across organisations."""
        async with self.database.scope(session, readonly=True) as s:
            return await self._one(sa.select(Payment), s, org_id, payment_id)

    async def list(
        self,
        org_id: uuid.UUID | None,
        *,
        invoice_id: uuid.UUID | None = None,
        status: PaymentStatus | None = None,
        limit: int = 50,
        before: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Sequence[Payment]:
        """Payments newest first: of `org_id` (every organisation for None), of one invoice,
        in one status, before the id `before` (a cursor)."""
        query = sa.select(Payment).order_by(Payment.id.desc()).limit(limit)
        if org_id is not None:
            query = query.where(Payment.organization_id == org_id)
        if invoice_id is not None:
            query = query.where(Payment.invoice_id == invoice_id)
        if status is not None:
            query = query.where(Payment.status == PaymentStatus(status))
        if before is not None:
            query = query.where(Payment.id < before)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    # --- internals -----------------------------------------------------------------------------
    async def _one(
        self,
        query: sa.Select[Payment],
        s: AsyncSession,
        org_id: uuid.UUID | None,
        payment_id: uuid.UUID,
    ) -> Payment:
        query = query.where(Payment.id == payment_id)
        if org_id is not None:
            query = query.where(Payment.organization_id == org_id)
        payment = (await s.scalars(query)).one_or_none()
        if payment is None:
            raise PaymentNotFound(f"no payment {payment_id}", payment=str(payment_id))
        return payment

    async def _emit(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        kind: type[PaymentSucceeded | PaymentFailed | PaymentRefunded],
        payment: Payment,
        invoice: Invoice | None,
        actor: Actor,
        **extra: Any,
    ) -> None:
        await self.events.emit(
            s,
            org_id,
            kind.model_validate(
                {
                    "payment_id": payment.id,
                    "invoice_id": payment.invoice_id,
                    "invoice_number": invoice.number if invoice is not None else None,
                    "currency": payment.currency,
                    "amount": payment.amount,
                    "method": payment.method.value,
                    "method_name": method_name(payment),
                    "status": payment.status.value,
                    **extra,
                }
            ),
            actor=actor,
            target_id=payment.id,
        )


async def _locked_invoice(s: AsyncSession, org_id: uuid.UUID, invoice_id: uuid.UUID) -> Invoice:
    """The invoice with its lines, its row locked until the transaction ends: what serializes
    the payments of one invoice (`InvoiceService._locked`'s query)."""
    query = (
        sa.select(Invoice)
        .options(selectinload(Invoice.lines))
        .where(Invoice.organization_id == org_id, Invoice.id == invoice_id)
        .with_for_update(of=Invoice)
        .execution_options(populate_existing=True)
    )
    invoice = (await s.scalars(query)).unique().one_or_none()
    if invoice is None:
        raise InvoiceNotFound(f"no invoice {invoice_id}", invoice=str(invoice_id))
    return invoice


async def _by_key(s: AsyncSession, org_id: uuid.UUID, key: str) -> Payment | None:
    return (
        await s.scalars(
            sa.select(Payment)
            .where(Payment.organization_id == org_id, Payment.idempotency_key == key)
            .execution_options(populate_existing=True)
        )
    ).one_or_none()


def _replayed(found: Payment, key: str, digest: str) -> Payment:
    """The first payment made with `key`, when this request is the same as its."""
    if (found.metadata_ or {}).get(_REQUEST) != digest:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was used for a different payment", idempotency_key=key
        )
    return found


def _transaction_type(invoice: Invoice) -> TransactionType:
    if any(
        (line.metadata_ or {}).get("kind") == LineKind.CREDIT_PACK.value for line in invoice.lines
    ):
        return TransactionType.CREDIT_PURCHASE
    if invoice.subscription_id is not None:
        return TransactionType.SUBSCRIPTION
    return TransactionType.ONE_TIME

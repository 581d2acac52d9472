"""The intake of payment providers' webhooks: verified, stored once, applied once, in order.

`ProviderWebhooks.receive` is `POST /v1/webhooks/{provider}`:

1. The body is capped (`SAASCORE_PROVIDER_WEBHOOK_MAX_BYTES`, 413 `webhook_too_large`) and
   verified by the provider's adapter (400 `invalid_signature`, `stale_webhook`,
   `malformed_webhook`): a refused webhook writes nothing. Mock webhooks are unsigned, so
   they are taken only in mock mode and from loopback (403 `mock_webhook_refused`).
2. In ONE transaction the `webhook_events` row is inserted (unique per provider and event id)
   and the event's effects applied (`billing.provider_sync`); only after the commit is the
   answer 2xx. A copy of an event already stored is acknowledged and not applied again, even
   when copies race: the unique index makes the second wait for the first.
3. When applying fails, everything of it is rolled back, the failure is recorded on the
   event's row (`failed`, the error, the attempts) in a transaction of its own, and the answer
   is 500 `webhook_failed`: the provider redelivers, and a redelivery of a failed event
   applies it.

Stored and ignored (outcome `ignored`, with the reason in `error`), and answered 200:

- a type saascore does not act on;
- a snapshot older than the subscription's last (`subscriptions.provider_updated_at`, the
  provider's own clock), or a failed payment older than the last success;
- a subscription snapshot that names no price and is not an end (an end needs no plan):
  nothing in it can be billed, and no redelivery can change that, whereas a price saascore
  does not know yet fails (500), since the catalog may learn it before the redelivery;
- an event whose organisation cannot be trusted: the organisation named in custom data is
  believed only because the body was verified, and only when the customer is not another
  organisation's, nor the subscription.
  A signed event naming an organisation with a customer of no organisation links that
  customer to it, in place of an earlier customer of the same provider (Lemon Squeezy makes
  one per email typed at checkout, not the one saascore made).

`replay` applies a stored event again (`saascore webhooks replay ID`); every operation is
idempotent, so a replay of an applied event changes nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert

from saascore.billing.errors import CustomerLinkedElsewhere, PeriodOutOfRange
from saascore.billing.packs import CreditPackService
from saascore.billing.periods import CYCLE_MONTHS, add_months, period_containing
from saascore.billing.provider_sync import (
    ProviderBilling,
    ProviderCharge,
    ProviderResult,
    owner_columns,
    owner_parameters,
)
from saascore.billing.subscriptions import ProviderState, SubscriptionService
from saascore.config import PaymentProviderChoice
from saascore.kit.actors import Actor
from saascore.kit.db import Database
from saascore.kit.ids import new_id
from saascore.kit.sql import insert
from saascore.kit.time import utcnow
from saascore.models import Organization, WebhookEvent, WebhookOutcome
from saascore.models.catalog import BillingCycle
from saascore.models.enums import PaymentProvider, SubscriptionStatus
from saascore.plans.errors import ProviderPriceUnknown
from saascore.plans.service import PlanService
from saascore.providers.base import EventKind, ProviderEvent, ProviderSubscriptionStatus
from saascore.providers.codec import event_from_json, event_to_json
from saascore.providers.errors import (
    MockWebhookRefused,
    WebhookEventNotFound,
    WebhookFailed,
    WebhookTooLarge,
)
from saascore.providers.mock import pack_from_price_id, plan_price_from_id
from saascore.providers.registry import ProviderRegistry, provider_from_url

__all__ = ["MAX_LIST", "PROVIDER_STATUS", "ProviderWebhooks", "WebhookReceipt", "provider_actor"]

log = logging.getLogger(__name__)
#: An INSERT of either database that takes ON CONFLICT (`kit.sql.insert`).
_Upsert = postgresql.Insert | sqlite.Insert

#: The most stored events one listing answers.
MAX_LIST: Final = 1000
_MAX_ERROR: Final = 2000
#: A provider's subscription status as saascore's.
PROVIDER_STATUS: Final = {
    ProviderSubscriptionStatus.TRIALING: SubscriptionStatus.TRIALING,
    ProviderSubscriptionStatus.ACTIVE: SubscriptionStatus.ACTIVE,
    ProviderSubscriptionStatus.PAST_DUE: SubscriptionStatus.PAST_DUE,
    ProviderSubscriptionStatus.PAUSED: SubscriptionStatus.SUSPENDED,
    ProviderSubscriptionStatus.CANCELED: SubscriptionStatus.CANCELED,
    ProviderSubscriptionStatus.INCOMPLETE: SubscriptionStatus.INCOMPLETE,
}


def provider_actor(provider: PaymentProvider) -> Actor:
    """Who the audit log says made a change a provider's webhook brought."""
    return Actor("provider", provider.value)


@dataclass(frozen=True)
class WebhookReceipt:
    """What became of a delivered event: its stored row's id and outcome; `duplicate` when
    this delivery was a copy of one already applied (nothing was applied now)."""

    id: uuid.UUID | None
    outcome: WebhookOutcome
    duplicate: bool = False
    reason: str | None = None
    organization_id: uuid.UUID | None = None


@dataclass(frozen=True)
class _Applied:
    outcome: WebhookOutcome
    organization_id: uuid.UUID | None = None
    reason: str | None = None


#: The organisations of the event's customer and of its subscription, as saascore links
#: them (`ProviderBilling.owners`).
_Owners = tuple[uuid.UUID | None, uuid.UUID | None]


class _Named(NamedTuple):
    """Whom an event names: the provider's customer and subscription, and the organisation
    its custom data claims (believed only as `ProviderWebhooks._organization` rules)."""

    customer: str | None
    subscription: str | None
    claimed: uuid.UUID | None


@dataclass(frozen=True)
class _Claim:
    """The event's row as the intake claimed it (`ProviderWebhooks._claim`)."""

    id: uuid.UUID
    outcome: WebhookOutcome
    organization_id: uuid.UUID | None
    applies: bool
    #: What the row says already (`_expected`); None for a stored row being applied again.
    settled: _Applied | None = None
    #: Whose the event's customer and subscription are, read in the same statement.
    owners: _Owners | None = None


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ProviderWebhooks:
    """`core.provider_webhooks`: the intake (module docstring)."""

    def __init__(
        self,
        database: Database,
        registry: ProviderRegistry,
        plans: PlanService,
        packs: CreditPackService,
        subscriptions: SubscriptionService,
        billing: ProviderBilling,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.registry = registry
        self.plans = plans
        self.packs = packs
        self.subscriptions = subscriptions
        self.billing = billing
        self.clock = clock
        #: `_claim`'s statement, built once (for the database's dialect) and run with values.
        self._claiming: ReturningInsert[Any] | None = None

    # --- receiving -----------------------------------------------------------------------------
    async def receive(
        self,
        provider: PaymentProvider | str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        client_host: str | None,
    ) -> WebhookReceipt:
        """Verify, store and apply one delivery (module docstring). `provider` is a
        `PaymentProvider` or the URL's name; `headers` have lower-case names."""
        source = provider if isinstance(provider, PaymentProvider) else provider_from_url(provider)
        limit = self.registry.settings.provider_webhook_max_bytes
        if len(body) > limit:
            raise WebhookTooLarge(f"the body is over {limit} bytes", limit=limit)
        if source is PaymentProvider.MOCK:
            if self.registry.settings.payment_provider is not PaymentProviderChoice.MOCK:
                raise MockWebhookRefused("mock webhooks are taken only in mock mode")
            if not _loopback(client_host):
                raise MockWebhookRefused("mock webhooks are taken only from loopback")
        adapter = self.registry.get(source)
        event = adapter.parse_webhook(
            {name.lower(): value for name, value in headers.items()}, body, now=self.clock()
        )
        return await self.ingest(event)

    async def ingest(self, event: ProviderEvent) -> WebhookReceipt:
        """Store and apply a verified event, once (the mock's confirmation page comes here
        too). Raises `WebhookFailed` when applying it failed (recorded on its row)."""
        try:
            async with self.database.transaction() as s:
                claim = await self._claim(s, event)
                if not claim.applies:
                    return WebhookReceipt(
                        claim.id,
                        claim.outcome,
                        duplicate=True,
                        organization_id=claim.organization_id,
                    )
                applied = await self._apply(s, event, owners=claim.owners)
                if claim.settled != applied:
                    await s.execute(
                        sa.update(WebhookEvent)
                        .where(WebhookEvent.id == claim.id)
                        .values(**_settled(applied, self.clock()))
                        .execution_options(synchronize_session=False)
                    )
                receipt = WebhookReceipt(
                    claim.id,
                    applied.outcome,
                    reason=applied.reason,
                    organization_id=applied.organization_id,
                )
        except Exception as error:
            await self._record_failure(event, error)
            log.warning("provider webhook %s %s failed: %s", event.provider.value, event.id, error)
            raise WebhookFailed(
                "the event could not be applied; it is recorded and a redelivery applies it",
                event_id=event.id,
            ) from error
        return receipt

    async def replay(self, row_id: uuid.UUID) -> WebhookReceipt:
        """Apply the stored event again (idempotent: what was applied changes nothing)."""
        async with self.database.session(readonly=True) as s:
            stored = await s.get(WebhookEvent, row_id)
            if stored is None or stored.parsed is None:
                raise WebhookEventNotFound(f"no stored webhook event {row_id}", id=str(row_id))
            event = event_from_json(stored.parsed, payload=stored.payload)
        try:
            async with self.database.transaction() as s:
                row = await s.scalar(
                    sa.select(WebhookEvent)
                    .where(WebhookEvent.id == row_id)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
                assert row is not None
                row.attempts += 1
                applied = await self._apply(s, event)
                _settle(row, applied, self.clock())
                await s.flush()
                return WebhookReceipt(
                    row.id,
                    applied.outcome,
                    reason=applied.reason,
                    organization_id=applied.organization_id,
                )
        except Exception as error:
            await self._record_failure(event, error)
            raise WebhookFailed(
                f"replaying event {row_id} failed: {error}", id=str(row_id)
            ) from error

    # --- reading -------------------------------------------------------------------------------
    async def list(
        self,
        *,
        provider: PaymentProvider | None = None,
        outcome: WebhookOutcome | None = None,
        limit: int = 100,
    ) -> Sequence[WebhookEvent]:
        """The stored events, the latest first."""
        query = sa.select(WebhookEvent).order_by(WebhookEvent.id.desc())
        if provider is not None:
            query = query.where(WebhookEvent.provider == provider)
        if outcome is not None:
            query = query.where(WebhookEvent.outcome == outcome)
        async with self.database.session(readonly=True) as s:
            return (await s.scalars(query.limit(max(1, min(limit, MAX_LIST))))).all()

    async def get(self, row_id: uuid.UUID) -> WebhookEvent:
        async with self.database.session(readonly=True) as s:
            row = await s.get(WebhookEvent, row_id)
        if row is None:
            raise WebhookEventNotFound(f"no stored webhook event {row_id}", id=str(row_id))
        return row

    # --- storing -------------------------------------------------------------------------------
    def _values(self, event: ProviderEvent) -> dict[str, Any]:
        return {
            "provider": event.provider,
            "event_id": event.id,
            "event_type": event.type[:100],
            "payload": dict(event.payload),
            "parsed": event_to_json(event),
        }

    async def _claim(self, s: AsyncSession, event: ProviderEvent) -> _Claim:
        """The event's row, and whether this delivery applies it, in one statement.

        A new row is inserted already settled as the event is expected to end (`_expected`):
        nobody sees it before the commit, and `ingest` corrects it only when applying came
        out otherwise, so the common event costs no second write of its row. A copy of an
        event stored already conflicts: the unique index makes it wait for the first one's
        commit, and the no-op update locks the stored row and answers it (a copy is not
        applied), or counts one more attempt of a failed one (applied again). Only the
        columns the intake needs come back, not the stored bodies, and with them whose the
        event's customer and subscription are (`owner_columns`): applying asks it of every
        event, and it costs no round trip of its own here."""
        expected = _expected(event)
        named = _named(event)
        row_id = new_id()
        now = self.clock()
        values = {
            **_settled(expected, now),
            **self._values(event),
            **owner_parameters(event.provider, named.customer, named.subscription),
            "id": row_id,
            "attempts": 1,
            "received_at": now,
        }
        # The statement stores the organisation named only when it exists (`_claiming`).
        values["claimed"] = values.pop("organization_id")
        if self._claiming is None:
            self._claiming = _claiming(insert(s, WebhookEvent.__table__))
        found_id, outcome, org_id, linked, owner = (await s.execute(self._claiming, values)).one()
        if found_id == row_id:
            settled = _Applied(outcome, org_id, expected.reason)
            return _Claim(row_id, outcome, None, True, settled=settled, owners=(linked, owner))
        failed = outcome is WebhookOutcome.FAILED
        return _Claim(found_id, outcome, org_id, failed, owners=(linked, owner))

    async def _record_failure(self, event: ProviderEvent, error: BaseException) -> None:
        """The failure on the event's row, in a transaction of its own (never raises)."""
        message = f"{type(error).__name__}: {error}"[:_MAX_ERROR]
        try:
            async with self.database.transaction() as s:
                table = WebhookEvent.__table__
                statement = (
                    insert(s, WebhookEvent)
                    .values(
                        id=new_id(),
                        outcome=WebhookOutcome.FAILED,
                        error=message,
                        attempts=1,
                        received_at=self.clock(),
                        **self._values(event),
                    )
                    .on_conflict_do_update(
                        index_elements=["provider", "event_id"],
                        set_={
                            "outcome": WebhookOutcome.FAILED.value,
                            "error": message,
                            "attempts": table.c.attempts + 1,
                            "processed_at": None,
                        },
                    )
                )
                await s.execute(statement)
        except Exception:  # the answer is 500 either way; the provider retries
            log.exception("could not record the failure of webhook %s", event.id)

    # --- applying ------------------------------------------------------------------------------
    async def apply(
        self, event: ProviderEvent, *, actor: Actor, session: AsyncSession | None = None
    ) -> WebhookReceipt:
        """Apply an event that did not come as a delivery (reconciliation builds one from the
        provider's API): the rules of a webhook's, under `actor`, and no `webhook_events` row.
        Every operation is idempotent, so applying a state saascore holds changes nothing."""
        async with self.database.scope(session) as s:
            applied = await self._apply(s, event, actor)
        return WebhookReceipt(
            None, applied.outcome, reason=applied.reason, organization_id=applied.organization_id
        )

    async def _apply(
        self,
        s: AsyncSession,
        event: ProviderEvent,
        actor: Actor | None = None,
        *,
        owners: _Owners | None = None,
    ) -> _Applied:
        """Apply the event in `s` (`owners` when they were read already, else they are)."""
        if event.kind is EventKind.UNHANDLED:
            return _unhandled(event)
        priceless = _priceless(event)
        if priceless is not None:  # before the organisation, whose customer it could link
            return _Applied(WebhookOutcome.IGNORED, reason=priceless)
        org_id, refusal = await self._organization(s, event, owners)
        if refusal is not None:
            return _Applied(WebhookOutcome.IGNORED, org_id, refusal)
        if org_id is None:
            return _Applied(WebhookOutcome.IGNORED, reason="names no organisation saascore knows")
        actor = actor or provider_actor(event.provider)
        result: ProviderResult
        match event.kind:
            case EventKind.CHECKOUT_COMPLETED:
                result = ProviderResult(True)
            case EventKind.SUBSCRIPTION_UPDATED | EventKind.SUBSCRIPTION_ENDED:
                state = await self._state(s, event)
                done = await self.subscriptions.apply_provider_state(
                    org_id, state, actor=actor, session=s, loaded=False
                )
                result = ProviderResult(done.applied, done.reason)
            case EventKind.PAYMENT_SUCCEEDED:
                result = await self.billing.payment_succeeded(
                    org_id, self._charge(event), actor=actor, session=s
                )
            case EventKind.PAYMENT_FAILED:
                result = await self.billing.payment_failed(
                    org_id, self._charge(event), actor=actor, session=s
                )
            case EventKind.ORDER_PAID:
                pack = await self._pack(s, event)
                result = await self.billing.order_paid(
                    org_id, pack, self._charge(event), actor=actor, session=s
                )
            case _:  # pragma: no cover - every kind is above
                return _Applied(WebhookOutcome.IGNORED, org_id, "not acted on")
        if not result.applied:
            return _Applied(WebhookOutcome.IGNORED, org_id, result.reason)
        return _Applied(WebhookOutcome.PROCESSED, org_id, result.reason)

    async def _organization(
        self, s: AsyncSession, event: ProviderEvent, owners: _Owners | None
    ) -> tuple[uuid.UUID | None, str | None]:
        """The organisation the event is about, or why it cannot be trusted. `owners` are
        those of the event's customer and subscription, when read already."""
        provider = event.provider
        customer, provider_subscription, claimed = _named(event)
        if owners is None:
            owners = await self.billing.owners(provider, customer, provider_subscription, session=s)
        linked, owner = owners
        if linked is not None and claimed is not None and linked != claimed:
            return linked, "the customer belongs to another organisation than the one named"
        org_id = linked or claimed
        if owner is not None and org_id is not None and owner != org_id:
            return owner, "the subscription belongs to another organisation"
        org_id = org_id or owner
        if org_id is None:
            return None, None
        if linked is None and customer:
            exists = await s.scalar(sa.select(Organization.id).where(Organization.id == org_id))
            if exists is None:
                return None, "the organisation named does not exist"
            try:
                async with s.begin_nested():
                    # Lemon Squeezy matches its buyer by the email typed at checkout, not by
                    # the customer saascore made: the signed body's customer, nobody's yet,
                    # becomes the organisation's in place of its earlier one of the provider.
                    await self.billing.link_customer(
                        org_id, provider, customer, replace=True, session=s
                    )
            except CustomerLinkedElsewhere as refused:
                return org_id, refused.message
        return org_id, None

    async def _resolve_price(
        self, s: AsyncSession, provider: PaymentProvider, price_id: str | None
    ) -> tuple[str, BillingCycle]:
        if provider is PaymentProvider.MOCK:
            row_id = plan_price_from_id(price_id)
            price = await self.plans.get_price(row_id, session=s) if row_id else None
            if price is None:
                raise ProviderPriceUnknown(
                    f"no plan price is the mock's {price_id!r}", price_id=str(price_id)[:100]
                )
            return price.plan.code, price.billing_cycle
        return await self.plans.plan_of_price(provider, price_id or "", session=s)

    async def _state(self, s: AsyncSession, event: ProviderEvent) -> ProviderState:
        subscription = event.subscription
        if subscription is None:
            raise ValueError(f"event {event.id} carries no subscription")
        status = _status(event, subscription.status)
        try:
            plan, cycle = await self._resolve_price(s, event.provider, subscription.price_id)
        except ProviderPriceUnknown:
            if status is not SubscriptionStatus.CANCELED:
                raise
            plan, cycle = "", BillingCycle.MONTHLY  # an end needs no plan
        start, end = subscription.current_period_start, subscription.current_period_end
        if start is None and end is not None:
            # The provider's end is the period's (Lemon Squeezy's `renews_at`); it began one
            # cycle before, or when the subscription did if that is later.
            try:
                start = add_months(end, -CYCLE_MONTHS[cycle])
            except PeriodOutOfRange:  # an end in the first month of the year 1
                start = None
            began = subscription.started_at
            if start is not None and began is not None and start < began < end:
                start = began
        if start is None or end is None or end < start:
            period = period_containing(event.occurred_at, cycle, event.occurred_at)
            start, end = period.start, period.end
        return ProviderState(
            provider=event.provider,
            subscription_id=subscription.id,
            plan=plan,
            cycle=cycle,
            status=status,
            current_period_start=start,
            current_period_end=end,
            customer_id=subscription.customer_id,
            price_id=subscription.price_id,
            cancel_at_period_end=subscription.cancel_at_period_end,
            canceled_at=subscription.ended_at or subscription.canceled_at,
            trial_end=subscription.trial_end,
            provider_time=subscription.updated_at
            or (event.occurred_at if event.provider_timed else None),
        )

    def _charge(self, event: ProviderEvent) -> ProviderCharge:
        payment = event.payment
        if payment is None:
            raise ValueError(f"event {event.id} carries no payment")
        return ProviderCharge(
            provider=event.provider,
            payment_id=payment.id,
            amount=payment.amount,
            currency=payment.currency,
            subscription_id=payment.subscription_id,
            period_start=payment.period_start,
            period_end=payment.period_end,
            failure_reason=payment.failure_reason,
            occurred_at=event.occurred_at,
        )

    async def _pack(self, s: AsyncSession, event: ProviderEvent) -> str:
        payment = event.payment
        assert payment is not None
        if event.provider is PaymentProvider.MOCK:
            code = payment.pack or pack_from_price_id(payment.price_id)
            if code:
                return code
        if payment.price_id is not None:
            pack = await self.packs.by_provider_price(event.provider, payment.price_id, session=s)
            if pack is not None:
                return pack.code
        if payment.pack:
            return payment.pack
        raise ProviderPriceUnknown(
            f"no credit pack is sold at {event.provider.value} as {payment.price_id!r}",
            price_id=str(payment.price_id)[:100],
        )


def _claiming(statement: _Upsert) -> ReturningInsert[Any]:
    """`_claim`'s INSERT of the webhook_events row, its values given when run. The
    organisation named (`claimed`) is stored when it exists: the column is a foreign key,
    and an event naming a stranger is stored (ignored), not refused. It returns the row's
    id, outcome and organisation, then the owners of the event's customer and subscription
    (`owner_columns`)."""
    table = WebhookEvent.__table__
    failed = table.c.outcome == WebhookOutcome.FAILED
    named = sa.select(Organization.id).where(Organization.id == sa.bindparam("claimed"))
    return (
        statement.values(organization_id=named.scalar_subquery())
        .on_conflict_do_update(
            index_elements=["provider", "event_id"],
            set_={"attempts": sa.case((failed, table.c.attempts + 1), else_=table.c.attempts)},
        )
        .returning(table.c.id, table.c.outcome, table.c.organization_id, *owner_columns())
    )


def _named(event: ProviderEvent) -> _Named:
    subscription, payment = event.subscription, event.payment
    customer = (
        event.customer_id
        or (subscription.customer_id if subscription else None)
        or (payment.customer_id if payment else None)
    )
    provider_subscription = (subscription.id if subscription else None) or (
        payment.subscription_id if payment else None
    )
    claimed = event.organization_id or (subscription.organization_id if subscription else None)
    return _Named(customer or None, provider_subscription or None, claimed)


def _expected(event: ProviderEvent) -> _Applied:
    """How an event is expected to end: a type saascore does not act on is ignored; any
    other is processed for the organisation it names."""
    if event.kind is EventKind.UNHANDLED:
        return _unhandled(event)
    return _Applied(WebhookOutcome.PROCESSED, _named(event).claimed)


def _status(event: ProviderEvent, status: ProviderSubscriptionStatus) -> SubscriptionStatus:
    """saascore's status of the event's subscription: canceled for an end, whatever the
    snapshot says."""
    if event.kind is EventKind.SUBSCRIPTION_ENDED:
        return SubscriptionStatus.CANCELED
    return PROVIDER_STATUS[status]


def _priceless(event: ProviderEvent) -> str | None:
    """Why a subscription snapshot can never be applied, or None. A snapshot that names no
    price, and is not an end (which needs no plan), says nothing saascore could bill: no
    redelivery can change that, so it is ignored, not failed. (A price that saascore does
    not know yet fails, and a redelivery applies it once the catalog knows the price.)"""
    subscription = event.subscription
    if event.kind not in (EventKind.SUBSCRIPTION_UPDATED, EventKind.SUBSCRIPTION_ENDED):
        return None
    if subscription is None or (subscription.price_id or "").strip():
        return None
    if _status(event, subscription.status) is SubscriptionStatus.CANCELED:
        return None
    return "the subscription names no price, and is not ending"


def _unhandled(event: ProviderEvent) -> _Applied:
    return _Applied(WebhookOutcome.IGNORED, reason=f"type {event.type!r} is not acted on")


def _settled(applied: _Applied, at: datetime) -> dict[str, Any]:
    """The columns of an event's row once applied."""
    return {
        "outcome": applied.outcome,
        "organization_id": applied.organization_id,
        "error": applied.reason[:_MAX_ERROR] if applied.reason else None,
        "processed_at": at,
    }


def _settle(row: WebhookEvent, applied: _Applied, at: datetime) -> None:
    row.outcome = applied.outcome
    row.organization_id = applied.organization_id
    row.error = applied.reason[:_MAX_ERROR] if applied.reason else None
    row.processed_at = at

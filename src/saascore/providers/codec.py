"""`ProviderEvent`s as JSON and back: kept in `webhook_events.parsed` for replays, and the
body of the mock provider's webhooks.

`event_to_json` writes every field but the payload; `event_from_json` reads it back, or
raises `WebhookMalformed` for anything not shaped so (the mock's bodies are hostile input).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from saascore.models.enums import PaymentProvider
from saascore.providers.base import (
    EventKind,
    ProviderEvent,
    ProviderPayment,
    ProviderSubscription,
    ProviderSubscriptionStatus,
)
from saascore.providers.errors import WebhookMalformed

__all__ = ["event_from_json", "event_to_json"]

_MAX_TEXT: Final = 255
_MAX_AMOUNT: Final = 2**63 - 1


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def event_to_json(event: ProviderEvent) -> dict[str, Any]:
    """The event as JSON values (without its payload)."""
    subscription = event.subscription
    payment = event.payment
    return {
        "provider": event.provider.value,
        "id": event.id,
        "type": event.type,
        "kind": event.kind.value,
        "occurred_at": _time(event.occurred_at),
        "organization_id": str(event.organization_id) if event.organization_id else None,
        "customer_id": event.customer_id,
        "checkout_id": event.checkout_id,
        "subscription": None
        if subscription is None
        else {
            "id": subscription.id,
            "customer_id": subscription.customer_id,
            "status": subscription.status.value,
            "price_id": subscription.price_id,
            "current_period_start": _time(subscription.current_period_start),
            "current_period_end": _time(subscription.current_period_end),
            "cancel_at_period_end": subscription.cancel_at_period_end,
            "canceled_at": _time(subscription.canceled_at),
            "ended_at": _time(subscription.ended_at),
            "trial_end": _time(subscription.trial_end),
            "organization_id": str(subscription.organization_id)
            if subscription.organization_id
            else None,
            "updated_at": _time(subscription.updated_at),
            "started_at": _time(subscription.started_at),
        },
        "payment": None
        if payment is None
        else {
            "id": payment.id,
            "amount": payment.amount,
            "currency": payment.currency,
            "customer_id": payment.customer_id,
            "subscription_id": payment.subscription_id,
            "period_start": _time(payment.period_start),
            "period_end": _time(payment.period_end),
            "failure_reason": payment.failure_reason,
            "pack": payment.pack,
            "price_id": payment.price_id,
        },
    }


class _Reader:
    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise WebhookMalformed(f"{where} is not an object", field=where)
        self.data = data
        self.where = where

    def text(self, name: str, *, required: bool = False, limit: int = _MAX_TEXT) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise WebhookMalformed(f"{self.where}.{name} is required", field=name)
            return None
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            raise WebhookMalformed(
                f"{self.where}.{name} is text of 1 to {limit} characters", field=name
            )
        if any(ord(c) < 32 or c == "\x7f" for c in value):
            raise WebhookMalformed(f"{self.where}.{name} holds control characters", field=name)
        return value

    def time(self, name: str, *, required: bool = False) -> datetime | None:
        value = self.text(name, required=required, limit=64)
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise WebhookMalformed(f"{self.where}.{name} is not a timestamp", field=name) from None
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise WebhookMalformed(f"{self.where}.{name} has no time zone", field=name)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise WebhookMalformed(f"{self.where}.{name} is out of range", field=name) from None

    def uuid(self, name: str) -> uuid.UUID | None:
        value = self.text(name, limit=64)
        if value is None:
            return None
        try:
            return uuid.UUID(value)
        except ValueError:
            raise WebhookMalformed(f"{self.where}.{name} is not a UUID", field=name) from None

    def flag(self, name: str) -> bool:
        value = self.data.get(name, False)
        if not isinstance(value, bool):
            raise WebhookMalformed(f"{self.where}.{name} is true or false", field=name)
        return value

    def amount(self, name: str) -> int:
        value = self.data.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_AMOUNT:
            raise WebhookMalformed(
                f"{self.where}.{name} is an amount in minor units, 0 to {_MAX_AMOUNT}",
                field=name,
            )
        return value

    def choice(self, name: str, kind: type[Any], *, default: Any = None) -> Any:
        value = self.text(name, limit=64)
        if value is None:
            if default is None:
                raise WebhookMalformed(f"{self.where}.{name} is required", field=name)
            return default
        try:
            return kind(value)
        except ValueError:
            raise WebhookMalformed(f"{self.where}.{name} is not known", field=name) from None


def _subscription(data: object) -> ProviderSubscription | None:
    if data is None:
        return None
    r = _Reader(data, "subscription")
    return ProviderSubscription(
        id=r.text("id", required=True) or "",
        customer_id=r.text("customer_id", required=True) or "",
        status=r.choice("status", ProviderSubscriptionStatus),
        price_id=r.text("price_id"),
        current_period_start=r.time("current_period_start"),
        current_period_end=r.time("current_period_end"),
        cancel_at_period_end=r.flag("cancel_at_period_end"),
        canceled_at=r.time("canceled_at"),
        ended_at=r.time("ended_at"),
        trial_end=r.time("trial_end"),
        organization_id=r.uuid("organization_id"),
        updated_at=r.time("updated_at"),
        started_at=r.time("started_at"),
    )


def _payment(data: object) -> ProviderPayment | None:
    if data is None:
        return None
    r = _Reader(data, "payment")
    currency = r.text("currency", required=True, limit=3) or ""
    if len(currency) != 3 or not currency.isascii() or not currency.isalpha():
        raise WebhookMalformed("payment.currency is an ISO 4217 code", field="currency")
    return ProviderPayment(
        id=r.text("id", required=True) or "",
        amount=r.amount("amount"),
        currency=currency.upper(),
        customer_id=r.text("customer_id"),
        subscription_id=r.text("subscription_id"),
        period_start=r.time("period_start"),
        period_end=r.time("period_end"),
        failure_reason=r.text("failure_reason", limit=1000),
        pack=r.text("pack", limit=50),
        price_id=r.text("price_id"),
    )


def event_from_json(
    data: object,
    *,
    provider: PaymentProvider | None = None,
    payload: Mapping[str, Any] | None = None,
) -> ProviderEvent:
    """The event `event_to_json` wrote (`provider` when the JSON names none, as the mock's
    bodies do not). Unknown kinds read as `UNHANDLED`."""
    r = _Reader(data, "event")
    named = r.text("provider", limit=32)
    try:
        source = PaymentProvider(named) if named is not None else provider
    except ValueError:
        raise WebhookMalformed("event.provider is not known", field="provider") from None
    if source is None:
        raise WebhookMalformed("event.provider is required", field="provider")
    if provider is not None and source != provider:
        raise WebhookMalformed(f"an event of {source.value} is not {provider.value}'s")
    kind_name = r.text("kind", limit=64) or r.text("type", required=True, limit=100) or ""
    try:
        kind = EventKind(kind_name)
    except ValueError:
        kind = EventKind.UNHANDLED
    return ProviderEvent(
        provider=source,
        id=r.text("id", required=True) or "",
        type=r.text("type", required=True, limit=100) or "",
        kind=kind,
        occurred_at=r.time("occurred_at", required=True) or datetime.now(UTC),
        organization_id=r.uuid("organization_id"),
        customer_id=r.text("customer_id"),
        checkout_id=r.text("checkout_id"),
        subscription=_subscription(r.data.get("subscription")),
        payment=_payment(r.data.get("payment")),
        payload=payload if payload is not None else {},
    )

"""Stripe, through its official SDK: checkouts, the billing portal, subscriptions, webhooks.

Every call goes through one `stripe.StripeClient` per adapter, on the SDK's async methods over
httpx: no global `stripe.api_key`, so two adapters (two deployments in one process, or a test
server beside the real Stripe) never share a key. An SDK error becomes `ProviderUnavailable`,
whose message names what failed but never the key.

Webhooks are verified with the SDK's `WebhookSignature` over the raw body. The SDK judges a
timestamp against its own clock and only in the past; saascore judges it against the `now` it
is given and in both directions, so a signature from the future is as stale as an old one.

Stripe has moved fields between API versions; both shapes are read:

- a subscription's `current_period_start`/`_end` are on its items (2025 and later) or on the
  subscription itself (earlier);
- an invoice's subscription is `parent.subscription_details.subscription` (2025 and later) or
  `subscription` (earlier), and a line's price is `pricing.price_details.price` or `price.id`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx
import stripe
from stripe.params import CustomerCreateParams
from stripe.params.checkout import SessionCreateParams

from saascore.config import Settings
from saascore.kit.errors import ConfigurationError
from saascore.models.enums import PaymentProvider
from saascore.providers.base import (
    CheckoutMode,
    CheckoutRequest,
    CheckoutSession,
    Customer,
    EventKind,
    ProviderEvent,
    ProviderPayment,
    ProviderSubscription,
    ProviderSubscriptionStatus,
)
from saascore.providers.errors import (
    ProviderUnavailable,
    WebhookMalformed,
    WebhookSignatureInvalid,
    WebhookStale,
)

__all__ = ["SIGNATURE_HEADER", "WEBHOOK_TOLERANCE_SECONDS", "StripeAdapter"]

#: The header Stripe signs its webhooks in (lower case: `parse_webhook` gets lower-case names).
SIGNATURE_HEADER = "stripe-signature"
#: How far a webhook's signed timestamp may be from `now`, either way.
WEBHOOK_TOLERANCE_SECONDS = 300
#: Seconds to connect to Stripe, and to wait for any one answer.
CONNECT_TIMEOUT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 20.0
#: The SDK retries connection failures, 409s, 429s and 5xx with backoff, reusing one
#: idempotency key per request so a retried POST is applied once.
MAX_NETWORK_RETRIES = 2
#: A page of `list_subscriptions` (Stripe's maximum).
PAGE_SIZE = 100

INT64_MAX = 2**63 - 1
#: The longest id, metadata value or type saascore keeps from a webhook.
MAX_TEXT = 255
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")

_STATUSES: Mapping[str, ProviderSubscriptionStatus] = {
    "trialing": ProviderSubscriptionStatus.TRIALING,
    "active": ProviderSubscriptionStatus.ACTIVE,
    "past_due": ProviderSubscriptionStatus.PAST_DUE,
    "unpaid": ProviderSubscriptionStatus.PAUSED,
    "paused": ProviderSubscriptionStatus.PAUSED,
    "canceled": ProviderSubscriptionStatus.CANCELED,
    "incomplete": ProviderSubscriptionStatus.INCOMPLETE,
    "incomplete_expired": ProviderSubscriptionStatus.INCOMPLETE,
}


class StripeAdapter:
    """`PaymentProviderAdapter` for Stripe (`SAASCORE_PAYMENT_PROVIDER=stripe`)."""

    def __init__(self, settings: Settings) -> None:
        if settings.stripe_secret_key is None:
            raise ConfigurationError("SAASCORE_STRIPE_SECRET_KEY is not set")
        if settings.stripe_webhook_secret is None:
            raise ConfigurationError("SAASCORE_STRIPE_WEBHOOK_SECRET is not set")
        self._webhook_secret = settings.stripe_webhook_secret.get_secret_value()
        self._http = stripe.HTTPXClient(
            timeout=httpx.Timeout(REQUEST_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
        )
        api_base = settings.stripe_api_base
        self._client = stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(),
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            http_client=self._http,
            max_network_retries=MAX_NETWORK_RETRIES,
        )

    @property
    def name(self) -> PaymentProvider:
        return PaymentProvider.STRIPE

    # -- calls to Stripe --------------------------------------------------------------------

    async def create_customer(self, customer: Customer) -> str:
        params: CustomerCreateParams = {
            "name": customer.name,
            "metadata": {"organization_id": str(customer.organization_id)},
        }
        if customer.email is not None:
            params["email"] = customer.email
        try:
            created = await self._client.v1.customers.create_async(params)
        except stripe.StripeError as error:
            _unavailable("create a customer", error)
        return created.id

    async def create_checkout(self, request: CheckoutRequest) -> CheckoutSession:
        metadata = {"organization_id": str(request.organization_id)}
        if request.mode is CheckoutMode.SUBSCRIPTION:
            if request.plan is not None:
                metadata["plan"] = request.plan
            if request.cycle is not None:
                metadata["cycle"] = request.cycle.value
        elif request.pack is not None:
            metadata["pack"] = request.pack
        params: SessionCreateParams = {
            "mode": request.mode.value,
            "line_items": [{"price": request.price_id, "quantity": 1}],
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "client_reference_id": str(request.organization_id),
            "metadata": metadata,
        }
        # The subscription's (and the payment's) own events carry the organisation too, so a
        # `customer.subscription.*` names it without a look-up.
        if request.mode is CheckoutMode.SUBSCRIPTION:
            params["subscription_data"] = {"metadata": dict(metadata)}
        else:
            params["payment_intent_data"] = {"metadata": dict(metadata)}
        if request.customer_id is not None:
            params["customer"] = request.customer_id
        elif request.customer_email is not None:
            params["customer_email"] = request.customer_email
        options: stripe.RequestOptions = {}
        if request.idempotency_key is not None:
            options["idempotency_key"] = request.idempotency_key
        try:
            session = await self._client.v1.checkout.sessions.create_async(params, options)
        except stripe.StripeError as error:
            _unavailable("start a checkout", error)
        if not session.url:
            raise ProviderUnavailable("Stripe started a checkout without a URL")
        return CheckoutSession(id=session.id, url=session.url)

    async def create_portal_session(self, customer_id: str, return_url: str) -> str:
        try:
            session = await self._client.v1.billing_portal.sessions.create_async(
                {"customer": customer_id, "return_url": return_url}
            )
        except stripe.StripeError as error:
            _unavailable("open the billing portal", error)
        return session.url

    async def cancel_subscription(self, subscription_id: str, *, at_period_end: bool) -> None:
        subscriptions = self._client.v1.subscriptions
        try:
            if at_period_end:
                await subscriptions.update_async(subscription_id, {"cancel_at_period_end": True})
            else:
                await subscriptions.cancel_async(subscription_id)
        except stripe.StripeError as error:
            _unavailable("cancel the subscription", error)

    async def resume_subscription(self, subscription_id: str) -> None:
        try:
            await self._client.v1.subscriptions.update_async(
                subscription_id, {"cancel_at_period_end": False}
            )
        except stripe.StripeError as error:
            _unavailable("resume the subscription", error)

    async def change_plan(self, subscription_id: str, price_id: str) -> None:
        subscriptions = self._client.v1.subscriptions
        try:
            current = await subscriptions.retrieve_async(subscription_id)
            items = current.to_dict().get("items", {}).get("data") or []
            if not items or not isinstance(items[0], dict) or "id" not in items[0]:
                raise ProviderUnavailable("Stripe's subscription has no item to change")
            await subscriptions.update_async(
                subscription_id, {"items": [{"id": str(items[0]["id"]), "price": price_id}]}
            )
        except stripe.StripeError as error:
            _unavailable("change the plan", error)

    async def list_subscriptions(self) -> Sequence[ProviderSubscription]:
        found: list[ProviderSubscription] = []
        try:
            page = await self._client.v1.subscriptions.list_async(
                {"status": "all", "limit": PAGE_SIZE}
            )
            async for subscription in page.auto_paging_iter():
                try:
                    found.append(_subscription(subscription.to_dict(), updated_at=None))
                except WebhookMalformed as error:
                    raise ProviderUnavailable(
                        f"Stripe answered a subscription saascore cannot read: {error.message}"
                    ) from None
        except stripe.StripeError as error:
            _unavailable("list the subscriptions", error)
        return found

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    # -- webhooks ---------------------------------------------------------------------------

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, *, now: datetime
    ) -> ProviderEvent:
        header = headers.get(SIGNATURE_HEADER)
        if not header:
            raise WebhookSignatureInvalid("The Stripe-Signature header is missing")
        if not body:
            raise WebhookMalformed("The webhook's body is empty")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookMalformed("The webhook's body is not UTF-8") from None
        try:
            # No tolerance here: the SDK would judge it by its own clock, one way only.
            stripe.WebhookSignature.verify_header(text, header, self._webhook_secret)
        except stripe.SignatureVerificationError:
            raise WebhookSignatureInvalid("The webhook's signature does not match") from None
        signed_at = _signed_at(header)
        # In integers: a signed `t` may be far beyond what a float holds.
        if abs(int(now.timestamp()) - signed_at) > WEBHOOK_TOLERANCE_SECONDS:
            raise WebhookStale(
                f"The webhook was signed more than {WEBHOOK_TOLERANCE_SECONDS} s from now"
            )
        return _event(_load(text))


# -- helpers ----------------------------------------------------------------------------------


def _unavailable(action: str, error: stripe.StripeError) -> NoReturn:
    """Say what failed and how Stripe answered, never with the SDK's message: Stripe's
    messages may echo a (masked) key or the request's values."""
    if isinstance(error, stripe.APIConnectionError):
        raise ProviderUnavailable(f"Stripe could not be reached to {action}") from None
    status = error.http_status if isinstance(error.http_status, int) else None
    code = error.code if isinstance(error.code, str) and len(error.code) <= 64 else None
    detail = ", ".join(part for part in (str(status) if status else None, code) if part)
    suffix = f" ({detail})" if detail else ""
    raise ProviderUnavailable(
        f"Stripe refused to {action}{suffix}", http_status=status, stripe_code=code
    ) from None


def _signed_at(header: str) -> int:
    """The `t=` of a header the SDK has already verified, read exactly as the SDK reads it
    (the first item whose key is exactly `t`): the timestamp the signature covers. Reading it
    any other way would let a second, unsigned `t` pass an old signature off as fresh."""
    for item in header.split(","):
        parts = item.split("=", 2)
        if parts[0] == "t" and len(parts) > 1:
            try:
                return int(parts[1])
            except ValueError:
                break
    raise WebhookSignatureInvalid("The Stripe-Signature header has no timestamp")


def _reject_constant(name: str) -> NoReturn:
    raise WebhookMalformed(f"The webhook's body holds {name}, which is not JSON")


def _load(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise WebhookMalformed("The webhook's body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookMalformed("The webhook's body is not a JSON object")
    return data


def _event(data: Mapping[str, Any]) -> ProviderEvent:
    if data.get("object") != "event":
        raise WebhookMalformed("The webhook's body is not a Stripe event")
    event_id = _text(data, "id")
    type_ = _text(data, "type")
    occurred_at = _time(data, "created")
    container = data.get("data")
    obj = container.get("object") if isinstance(container, dict) else None
    if not isinstance(obj, dict):
        raise WebhookMalformed("The event has no data.object")

    def made(kind: EventKind, **fields: Any) -> ProviderEvent:
        return ProviderEvent(
            provider=PaymentProvider.STRIPE,
            id=event_id,
            type=type_,
            kind=kind,
            occurred_at=occurred_at,
            payload=data,
            **fields,
        )

    if type_ in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        return _checkout(obj, made)
    if type_.startswith("customer.subscription.") and _unknown_status(obj):
        # A status Stripe adds later: stored and acknowledged (refused, it would come back
        # for days), acted on once saascore knows it (`saascore webhooks replay`).
        return made(EventKind.UNHANDLED)
    if type_ in ("customer.subscription.created", "customer.subscription.updated"):
        subscription = _subscription(obj, updated_at=occurred_at)
        return made(
            EventKind.SUBSCRIPTION_UPDATED,
            organization_id=subscription.organization_id,
            customer_id=subscription.customer_id,
            subscription=subscription,
        )
    if type_ == "customer.subscription.deleted":
        subscription = _subscription(obj, updated_at=occurred_at)
        return made(
            EventKind.SUBSCRIPTION_ENDED,
            organization_id=subscription.organization_id,
            customer_id=subscription.customer_id,
            subscription=subscription,
        )
    if type_ in ("invoice.paid", "invoice.payment_failed"):
        failed = type_ == "invoice.payment_failed"
        payment = _invoice(obj, failed=failed)
        return made(
            EventKind.PAYMENT_FAILED if failed else EventKind.PAYMENT_SUCCEEDED,
            organization_id=_invoice_organization(obj),
            customer_id=payment.customer_id,
            payment=payment,
        )
    return made(EventKind.UNHANDLED)


def _checkout(obj: Mapping[str, Any], made: Callable[..., ProviderEvent]) -> ProviderEvent:
    metadata = _metadata(obj)
    organization_id = _organization(metadata) or _as_uuid(obj.get("client_reference_id"))
    session_id = _text(obj, "id")
    customer_id = _ref(obj, "customer")
    mode = obj.get("mode")
    event: ProviderEvent
    if mode == "subscription":
        event = made(
            EventKind.CHECKOUT_COMPLETED,
            organization_id=organization_id,
            customer_id=customer_id,
            checkout_id=session_id,
        )
    elif mode == "payment" and obj.get("payment_status") == "paid":
        payment = ProviderPayment(
            id=_ref(obj, "payment_intent") or session_id,
            amount=_amount(obj, "amount_total"),
            currency=_currency(obj),
            customer_id=customer_id,
            pack=_optional_text(metadata, "pack"),
        )
        event = made(
            EventKind.ORDER_PAID,
            organization_id=organization_id,
            customer_id=customer_id,
            checkout_id=session_id,
            payment=payment,
        )
    else:
        event = made(EventKind.UNHANDLED, organization_id=organization_id, checkout_id=session_id)
    return event


def _unknown_status(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status")
    return isinstance(status, str) and bool(status) and status not in _STATUSES


def _subscription(obj: Mapping[str, Any], *, updated_at: datetime | None) -> ProviderSubscription:
    if obj.get("object", "subscription") != "subscription":
        raise WebhookMalformed("The event's object is not a subscription")
    status = _STATUSES.get(str(obj.get("status")))
    if status is None:
        raise WebhookMalformed("The subscription's status is not one Stripe has")
    items = obj.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    price = first.get("price")
    price_id = _optional_text(price, "id") if isinstance(price, dict) else None
    if price_id is None and isinstance(price, str):
        price_id = _optional_text(first, "price")
    # API versions from 2025 keep the period on the item; earlier ones on the subscription.
    start = _optional_time(first, "current_period_start") or _optional_time(
        obj, "current_period_start"
    )
    end = _optional_time(first, "current_period_end") or _optional_time(obj, "current_period_end")
    return ProviderSubscription(
        id=_text(obj, "id"),
        customer_id=_ref(obj, "customer") or _missing("customer"),
        status=status,
        price_id=price_id,
        current_period_start=start,
        current_period_end=end,
        cancel_at_period_end=obj.get("cancel_at_period_end") is True,
        canceled_at=_optional_time(obj, "canceled_at"),
        ended_at=_optional_time(obj, "ended_at"),
        trial_end=_optional_time(obj, "trial_end"),
        organization_id=_organization(_metadata(obj)),
        updated_at=updated_at,
    )


def _invoice(obj: Mapping[str, Any], *, failed: bool) -> ProviderPayment:
    if obj.get("object", "invoice") != "invoice":
        raise WebhookMalformed("The event's object is not an invoice")
    subscription_id = _ref(obj, "subscription")
    parent = obj.get("parent")
    if subscription_id is None and isinstance(parent, dict):
        details = parent.get("subscription_details")
        if isinstance(details, dict):
            subscription_id = _ref(details, "subscription")
    line = _subscription_line(obj)
    period = line.get("period") if line else None
    period = period if isinstance(period, dict) else {}
    return ProviderPayment(
        id=_text(obj, "id"),
        amount=_amount(obj, "amount_due" if failed else "amount_paid"),
        currency=_currency(obj),
        customer_id=_ref(obj, "customer"),
        subscription_id=subscription_id,
        period_start=_optional_time(period, "start"),
        period_end=_optional_time(period, "end"),
        failure_reason=_failure_reason(obj) if failed else None,
        price_id=_line_price(line) if line else None,
    )


def _invoice_organization(obj: Mapping[str, Any]) -> uuid.UUID | None:
    """The organisation on the invoice's own metadata, or on the snapshot of its
    subscription's metadata (`parent.subscription_details`, or `subscription_details` before
    2025), which is where the checkout's `subscription_data.metadata` ends up."""
    parent = obj.get("parent")
    holders = [obj, parent.get("subscription_details") if isinstance(parent, dict) else None]
    holders.append(obj.get("subscription_details"))
    for holder in holders:
        if isinstance(holder, dict):
            organization_id = _organization(_metadata(holder))
            if organization_id is not None:
                return organization_id
    return None


def _subscription_line(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The invoice's line for the subscription's price: the period it pays for."""
    lines = obj.get("lines")
    data = lines.get("data") if isinstance(lines, dict) else None
    if not isinstance(data, list):
        return None
    candidates = [line for line in data if isinstance(line, dict)]
    for line in candidates:
        parent = line.get("parent")
        new_style = isinstance(parent, dict) and parent.get("type") == "subscription_item_details"
        if new_style or line.get("type") == "subscription":
            return line
    return candidates[0] if candidates else None


def _line_price(line: Mapping[str, Any]) -> str | None:
    pricing = line.get("pricing")
    if isinstance(pricing, dict):
        details = pricing.get("price_details")
        if isinstance(details, dict):
            return _ref(details, "price")
    price = line.get("price")
    if isinstance(price, dict):
        return _optional_text(price, "id")
    return None


def _failure_reason(obj: Mapping[str, Any]) -> str | None:
    for holder, key in (("last_finalization_error", "message"), ("charge", "failure_message")):
        nested = obj.get(holder)
        if isinstance(nested, dict):
            reason = nested.get(key)
            if isinstance(reason, str) and reason:
                return reason[:MAX_TEXT]
    intent = obj.get("payment_intent")
    if isinstance(intent, dict):
        error = intent.get("last_payment_error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:MAX_TEXT] or None
    return None


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _organization(metadata: Mapping[str, Any]) -> uuid.UUID | None:
    return _as_uuid(metadata.get("organization_id"))


def _as_uuid(value: Any) -> uuid.UUID | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _missing(key: str) -> NoReturn:
    raise WebhookMalformed(f"The event's object has no {key}")


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = _optional_text(obj, key)
    if value is None:
        _missing(key)
    return value


def _optional_text(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise WebhookMalformed(f"The event's {key} is not a short string")
    return value


def _ref(obj: Mapping[str, Any], key: str) -> str | None:
    """An id Stripe sends as a string, or as the object itself when it is expanded."""
    value = obj.get(key)
    if isinstance(value, dict):
        return _optional_text(value, "id")
    return _optional_text(obj, key)


def _amount(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WebhookMalformed(f"The event's {key} is not an integer")
    if not 0 <= value <= INT64_MAX:
        raise WebhookMalformed(f"The event's {key} is out of range")
    return value


def _currency(obj: Mapping[str, Any]) -> str:
    value = obj.get("currency")
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise WebhookMalformed("The event's currency is not a three-letter code")
    return value.upper()


def _time(obj: Mapping[str, Any], key: str) -> datetime:
    value = _optional_time(obj, key)
    if value is None:
        _missing(key)
    return value


def _optional_time(obj: Mapping[str, Any], key: str) -> datetime | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise WebhookMalformed(f"The event's {key} is not a timestamp")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise WebhookMalformed(f"The event's {key} is out of range") from None

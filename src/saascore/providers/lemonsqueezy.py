"""Lemon Squeezy behind the provider protocol: its JSON:API through httpx, its webhooks parsed.

What Lemon Squeezy does differently from Stripe, and what this adapter does about it:

- **Customers need an email.** `create_customer` sends the organisation's email; an
  organisation without one gets a derived, undeliverable address
  (`org-<id>@customers.saascore.invalid`), so the customer can exist before anyone pays. The
  checkout asks the buyer for a real address, and Lemon Squeezy keeps it on its order.
- **Checkouts have no cancel URL, and no customer id.** `product_options.redirect_url` is the
  success URL; a buyer who gives up simply closes the page. Lemon Squeezy matches the buyer to a
  customer by email, so `customer_id` is not sent; `checkout_data.email` pre-fills the form.
- **There is no portal session API.** Each subscription carries a signed
  `urls.customer_portal` link: `create_portal_session` finds the customer's subscription and
  returns that link. `return_url` is not used (the portal has none).
- **There is no immediate cancellation.** `DELETE /v1/subscriptions/{id}` cancels at the
  period's end (the subscription is `cancelled` until `ends_at`, then `expired`). So
  `cancel_subscription(at_period_end=False)` also cancels at the period's end at Lemon Squeezy;
  ending access now is saascore's own business (the caller ends its subscription at once, and
  the `subscription_expired` that follows finds it ended already).
- **There is no event id.** See `event_id`.
- **There is no signature timestamp.** Lemon Squeezy retries a failed delivery for days with
  the same body, so a webhook is never refused for its age; the ordering of deliveries is done
  above the adapter with `ProviderEvent.occurred_at` (the object's `updated_at`).
- **There is no period start.** A subscription gives `renews_at` (the current period's end)
  and no start: `current_period_start` is left `None`, and the intake takes the period as
  ending at `renews_at` and starting one cycle before (never before the subscription's
  `created_at`). A subscription invoice gives no period either: for an `initial` or `renewal`
  invoice, which Lemon Squeezy makes when the period starts, `period_start` is the invoice's
  `created_at`; the period's end is left `None`.

Calls are retried on a 5xx, a 429 and a failure to connect, at most three tries with a small
backoff; anything else that goes wrong (a 4xx, a timeout once the request was sent, an answer
that is not JSON:API) raises `ProviderUnavailable`, whose message never holds the API key.
Lemon Squeezy takes no idempotency key, so a POST retried after a 5xx may make a second
checkout (an unused link, harmless) or a second customer (the caller keeps the id it got).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import httpx

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
)

__all__ = ["DEFAULT_API_BASE", "LemonSqueezyAdapter", "event_id", "signature"]

DEFAULT_API_BASE: Final = "https://api.lemonsqueezy.com"
JSON_API: Final = "application/vnd.api+json"
MAX_TRIES: Final = 3
PAGE_SIZE: Final = 100
#: A store with more subscriptions than this many pages is not listed past them.
MAX_PAGES: Final = 10_000
INT64_MAX: Final = 2**63 - 1
TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)
#: The header Lemon Squeezy signs with (lower case, as `parse_webhook` receives headers).
SIGNATURE_HEADER: Final = "x-signature"

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_RETRIED_STATUS: Final = frozenset({429, 500, 502, 503, 504})

#: Lemon Squeezy's subscription statuses, but `cancelled` (which depends on `ends_at`).
_STATUSES: Final[Mapping[str, ProviderSubscriptionStatus]] = {
    "on_trial": ProviderSubscriptionStatus.TRIALING,
    "active": ProviderSubscriptionStatus.ACTIVE,
    "paused": ProviderSubscriptionStatus.PAUSED,
    "past_due": ProviderSubscriptionStatus.PAST_DUE,
    "unpaid": ProviderSubscriptionStatus.PAUSED,
    "expired": ProviderSubscriptionStatus.CANCELED,
}

_SUBSCRIPTION_EVENTS: Final = frozenset(
    {
        "subscription_created",
        "subscription_updated",
        "subscription_cancelled",
        "subscription_resumed",
        "subscription_paused",
        "subscription_unpaused",
    }
)
_PAYMENT_EVENTS: Final[Mapping[str, EventKind]] = {
    "subscription_payment_success": EventKind.PAYMENT_SUCCEEDED,
    "subscription_payment_failed": EventKind.PAYMENT_FAILED,
}
#: The JSON:API type each handled event's `data` must have.
_DATA_TYPES: Final[Mapping[str, str]] = {
    "order_created": "orders",
    "subscription_expired": "subscriptions",
    **dict.fromkeys(_SUBSCRIPTION_EVENTS, "subscriptions"),
    **dict.fromkeys(_PAYMENT_EVENTS, "subscription-invoices"),
}


def signature(body: bytes, secret: str) -> str:
    """Lemon Squeezy's `X-Signature`: the hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event_id(body: bytes) -> str:
    """The id of a Lemon Squeezy webhook, which sends none: the SHA-256 of the signed body.

    A redelivery (Lemon Squeezy's retries, or a resend from its dashboard) is the same body,
    so it has the same id and is applied once. Two different events always differ in their
    bodies, so they never share an id: not even two `subscription_updated` within the same
    second, which an id made of the event name, the object id and `updated_at` would merge
    (dropping the second). Should two deliveries of one event ever differ in their bytes, the
    cost is the same snapshot or payment parsed twice, which the layer above applies
    idempotently (a payment is recorded once per provider payment id)."""
    return hashlib.sha256(body).hexdigest()


class LemonSqueezyAdapter:
    """`PaymentProviderAdapter` for Lemon Squeezy (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        retry_backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        api_key = settings.lemonsqueezy_api_key
        store_id = settings.lemonsqueezy_store_id
        secret = settings.lemonsqueezy_signing_secret
        if api_key is None:
            raise ConfigurationError("Lemon Squeezy needs SAASCORE_LEMONSQUEEZY_API_KEY")
        if store_id is None:
            raise ConfigurationError("Lemon Squeezy needs SAASCORE_LEMONSQUEEZY_STORE_ID")
        if secret is None:
            raise ConfigurationError("Lemon Squeezy needs SAASCORE_LEMONSQUEEZY_SIGNING_SECRET")
        self._api_key = api_key.get_secret_value()
        self._store_id = store_id
        self._secret = secret.get_secret_value()
        self._backoff = retry_backoff
        self._base_url = (settings.lemonsqueezy_api_base or DEFAULT_API_BASE).rstrip("/")
        self._transport = transport
        # Made at the first call: building one loads the TLS trust store, which a process that
        # only verifies webhooks never needs.
        self._http: httpx.AsyncClient | None = None

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self._base_url,
                headers={
                    "Authorization": f"Bearer {self._api_key}",
                    "Accept": JSON_API,
                    "Content-Type": JSON_API,
                },
                timeout=TIMEOUT,
                transport=self._transport,
                follow_redirects=False,
            )
        return self._http

    @property
    def name(self) -> PaymentProvider:
        return PaymentProvider.LEMON_SQUEEZY

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # The API --------------------------------------------------------------------------------

    async def create_customer(self, customer: Customer) -> str:
        email = customer.email or f"org-{customer.organization_id}@customers.saascore.invalid"
        body = {
            "data": {
                "type": "customers",
                "attributes": {"name": customer.name, "email": email},
                "relationships": {"store": _to_one("stores", self._store_id)},
            }
        }
        data = _data(await self._request("POST", "/v1/customers", body=body))
        return _api_id(data.get("id"))

    async def create_checkout(self, request: CheckoutRequest) -> CheckoutSession:
        custom = {
            "organization_id": str(request.organization_id),
            "mode": request.mode.value,
            "plan": request.plan,
            "cycle": request.cycle.value if request.cycle is not None else None,
            "pack": request.pack,
        }
        checkout_data: dict[str, Any] = {
            "custom": {key: value for key, value in custom.items() if value is not None}
        }
        if request.customer_email:
            checkout_data["email"] = request.customer_email
        body = {
            "data": {
                "type": "checkouts",
                "attributes": {
                    "checkout_data": checkout_data,
                    "product_options": {
                        "redirect_url": request.success_url,
                        "enabled_variants": [_numeric(request.price_id)],
                    },
                },
                "relationships": {
                    "store": _to_one("stores", self._store_id),
                    "variant": _to_one("variants", request.price_id),
                },
            }
        }
        data = _data(await self._request("POST", "/v1/checkouts", body=body))
        url = _attributes(data).get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ProviderUnavailable("Lemon Squeezy answered a checkout without a URL")
        return CheckoutSession(id=_api_id(data.get("id")), url=url)

    async def create_portal_session(self, customer_id: str, return_url: str) -> str:
        """The customer's portal link, from their most recently changed subscription that has
        one, else from the customer (Lemon Squeezy signs it; it has no session API).
        `return_url` is not used: the portal has no way back."""
        customer = _data(await self._request("GET", f"/v1/customers/{_path(customer_id)}"))
        email = _attributes(customer).get("email")
        params = {"filter[user_email]": email} if isinstance(email, str) and email else {}
        best: tuple[datetime, str] | None = None
        async for item in self._pages("/v1/subscriptions", params):
            attributes = _attributes(item)
            urls = attributes.get("urls")
            portal = urls.get("customer_portal") if isinstance(urls, dict) else None
            if str(attributes.get("customer_id")) != customer_id or not _https(portal):
                continue
            changed = _when(attributes.get("updated_at")) or datetime.min.replace(tzinfo=UTC)
            if best is None or changed > best[0]:
                best = (changed, str(portal))
        if best is None:
            # A customer without a subscription (a credit pack's buyer) may still have a link
            # of their own, which Lemon Squeezy gives on the customer.
            urls = _attributes(customer).get("urls")
            portal = urls.get("customer_portal") if isinstance(urls, dict) else None
            if _https(portal):
                return str(portal)
            raise ProviderUnavailable(
                "Lemon Squeezy has no subscription with a customer portal for this customer"
            )
        return best[1]

    async def cancel_subscription(self, subscription_id: str, *, at_period_end: bool) -> None:
        """Cancel at the period's end: Lemon Squeezy cannot cancel at once, so `at_period_end`
        only tells the caller what to do on its side (see the module's docstring)."""
        await self._request("DELETE", f"/v1/subscriptions/{_path(subscription_id)}")

    async def resume_subscription(self, subscription_id: str) -> None:
        await self._patch_subscription(subscription_id, {"cancelled": False})

    async def change_plan(self, subscription_id: str, price_id: str) -> None:
        await self._patch_subscription(subscription_id, {"variant_id": _numeric(price_id)})

    async def list_subscriptions(self) -> Sequence[ProviderSubscription]:
        now = datetime.now(UTC)
        found: list[ProviderSubscription] = []
        async for item in self._pages("/v1/subscriptions", {}):
            try:
                found.append(_subscription(item, now=now, organization_id=None))
            except WebhookMalformed as exc:
                raise ProviderUnavailable(
                    f"Lemon Squeezy answered a subscription saascore cannot read: {exc.message}"
                ) from None
        return found

    async def _patch_subscription(self, subscription_id: str, attributes: dict[str, Any]) -> None:
        body = {"data": {"type": "subscriptions", "id": subscription_id, "attributes": attributes}}
        await self._request("PATCH", f"/v1/subscriptions/{_path(subscription_id)}", body=body)

    async def _pages(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        """Every object of a list, page by page, in the adapter's store."""
        page = 1
        while page <= MAX_PAGES:
            answer = await self._request(
                "GET",
                path,
                params={
                    **params,
                    "filter[store_id]": self._store_id,
                    "page[number]": str(page),
                    "page[size]": str(PAGE_SIZE),
                },
            )
            items = answer.get("data")
            if not isinstance(items, list):
                raise ProviderUnavailable(f"Lemon Squeezy answered {path} without a list")
            for item in items:
                if not isinstance(item, dict):
                    raise ProviderUnavailable(f"Lemon Squeezy answered {path} with a non-object")
                yield item
            meta = answer.get("meta")
            pages = meta.get("page") if isinstance(meta, dict) else None
            last = pages.get("lastPage") if isinstance(pages, dict) else None
            if not items or not isinstance(last, int) or page >= last:
                return
            page += 1

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        content = json.dumps(body).encode() if body is not None else None
        what = f"{method} {path.split('?')[0]}"
        for attempt in range(1, MAX_TRIES + 1):
            last = attempt == MAX_TRIES
            try:
                response = await self._client.request(method, path, content=content, params=params)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Never sent: safe to try again, whatever the method.
                if last:
                    raise ProviderUnavailable(
                        f"Lemon Squeezy could not be reached ({what}): {type(exc).__name__}"
                    ) from None
            except httpx.HTTPError as exc:
                # Sent, and perhaps done: not retried.
                raise ProviderUnavailable(
                    f"Lemon Squeezy did not answer {what}: {type(exc).__name__}"
                ) from None
            else:
                if response.status_code in _RETRIED_STATUS and not last:
                    await response.aclose()
                else:
                    return self._answer(response, what)
            await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _answer(self, response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code == 204:
            return {}
        if not response.is_success:
            raise ProviderUnavailable(
                f"Lemon Squeezy answered {response.status_code} to {what}" + self._detail(response),
                status=response.status_code,
            )
        try:
            answer = response.json()
        except ValueError:
            raise ProviderUnavailable(f"Lemon Squeezy answered {what} with no JSON") from None
        if not isinstance(answer, dict):
            raise ProviderUnavailable(f"Lemon Squeezy answered {what} with no JSON object")
        return answer

    def _detail(self, response: httpx.Response) -> str:
        """The first JSON:API error's detail, short and without the API key."""
        try:
            errors = response.json().get("errors")
            detail = errors[0].get("detail") or errors[0].get("title")
        except (ValueError, AttributeError, IndexError, KeyError, TypeError):
            return ""
        if not isinstance(detail, str):
            return ""
        return ": " + detail.replace(self._api_key, "[redacted]")[:200]

    # Webhooks -------------------------------------------------------------------------------

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, *, now: datetime
    ) -> ProviderEvent:
        """Verify `X-Signature` over the raw body, then parse it.

        Nothing is refused for its age (Lemon Squeezy signs no timestamp and retries for
        days): `now` only tells a `cancelled` subscription still in its paid period from one
        that has ended."""
        if not body:
            raise WebhookMalformed("The webhook's body is empty")
        given = headers.get(SIGNATURE_HEADER)
        if not given:
            raise WebhookSignatureInvalid("The webhook has no X-Signature header")
        expected = signature(body, self._secret)
        if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
            raise WebhookSignatureInvalid("The webhook's X-Signature does not match its body")
        payload = _load(body)
        meta = payload.get("meta")
        data = payload.get("data")
        if not isinstance(meta, dict) or not isinstance(data, dict):
            raise WebhookMalformed("A Lemon Squeezy webhook has `meta` and `data` objects")
        name = meta.get("event_name")
        if not isinstance(name, str) or not 0 < len(name) <= 100:
            raise WebhookMalformed("The webhook has no `meta.event_name`")
        custom = meta.get("custom_data")
        custom = custom if isinstance(custom, dict) else {}
        organization_id = _organization(custom.get("organization_id"))
        attributes = _attributes(data, webhook=True)
        event = ProviderEvent(
            provider=PaymentProvider.LEMON_SQUEEZY,
            id=event_id(body),
            type=name,
            kind=EventKind.UNHANDLED,
            occurred_at=_occurred(attributes),
            organization_id=organization_id,
            payload=payload,
        )
        expected_type = _DATA_TYPES.get(name)
        if expected_type is None:
            return event
        if data.get("type") != expected_type:
            raise WebhookMalformed(f"`{name}` carries `{expected_type}`, not {data.get('type')!r}")
        object_id = _hook_id(data.get("id"), "data.id")
        customer_id = _optional_hook_id(attributes.get("customer_id"), "customer_id")
        if name == "order_created":
            return _order(event, object_id, customer_id, attributes, custom)
        if name in _PAYMENT_EVENTS:
            kind = _PAYMENT_EVENTS[name]
            payment = ProviderPayment(
                id=object_id,
                amount=_amount(attributes.get("total")),
                currency=_currency(attributes.get("currency")),
                customer_id=customer_id,
                subscription_id=_optional_hook_id(
                    attributes.get("subscription_id"), "subscription_id"
                ),
                period_start=(
                    _time(attributes.get("created_at"), "created_at")
                    if attributes.get("billing_reason") in ("initial", "renewal")
                    else None
                ),
                failure_reason=(
                    f"Lemon Squeezy: payment {attributes.get('status') or 'failed'}"[:200]
                    if kind is EventKind.PAYMENT_FAILED
                    else None
                ),
            )
            return replace(event, kind=kind, customer_id=customer_id, payment=payment)
        subscription = _subscription(data, now=now, organization_id=organization_id)
        kind = (
            EventKind.SUBSCRIPTION_ENDED
            if name == "subscription_expired"
            else EventKind.SUBSCRIPTION_UPDATED
        )
        return replace(
            event,
            kind=kind,
            customer_id=subscription.customer_id,
            subscription=subscription,
        )


def _order(
    event: ProviderEvent,
    order_id: str,
    customer_id: str | None,
    attributes: Mapping[str, Any],
    custom: Mapping[str, Any],
) -> ProviderEvent:
    """`order_created`. A subscription's first order (its custom data names a plan, or says
    `mode: subscription`) is `CHECKOUT_COMPLETED`: it links the customer to the organisation,
    and its payment is left to `subscription_payment_success`, so it is not counted twice. A
    paid one-off order is `ORDER_PAID`, with the pack from the custom data and the variant as
    `price_id` (an order bought without saascore's checkout names no pack). An order not paid
    (pending, failed, refunded) is `UNHANDLED`."""
    if custom.get("plan") is not None or custom.get("mode") == CheckoutMode.SUBSCRIPTION.value:
        return replace(event, kind=EventKind.CHECKOUT_COMPLETED, customer_id=customer_id)
    if attributes.get("status") != "paid":
        return replace(event, kind=EventKind.UNHANDLED, customer_id=customer_id)
    item = attributes.get("first_order_item")
    variant = item.get("variant_id") if isinstance(item, dict) else None
    pack = custom.get("pack")
    payment = ProviderPayment(
        id=order_id,
        amount=_amount(attributes.get("total")),
        currency=_currency(attributes.get("currency")),
        customer_id=customer_id,
        pack=pack if isinstance(pack, str) and 0 < len(pack) <= 100 else None,
        price_id=_optional_hook_id(variant, "first_order_item.variant_id"),
    )
    return replace(event, kind=EventKind.ORDER_PAID, customer_id=customer_id, payment=payment)


def _subscription(
    data: Mapping[str, Any], *, now: datetime, organization_id: uuid.UUID | None
) -> ProviderSubscription:
    """A Lemon Squeezy subscription object as a snapshot. Raises `WebhookMalformed`.

    `cancelled` is a cancellation at the period's end while `ends_at` is ahead of `now`
    (`ACTIVE` with `cancel_at_period_end`, or still `TRIALING`), and `CANCELED` once passed."""
    attributes = _attributes(data, webhook=True)
    status = attributes.get("status")
    ends_at = _time(attributes.get("ends_at"), "ends_at")
    renews_at = _time(attributes.get("renews_at"), "renews_at")
    trial_end = _time(attributes.get("trial_ends_at"), "trial_ends_at")
    cancel_at_period_end = False
    ended_at = None
    if status == "cancelled":
        if ends_at is not None and ends_at > now:
            on_trial = trial_end is not None and trial_end > now
            mapped = (
                ProviderSubscriptionStatus.TRIALING
                if on_trial
                else ProviderSubscriptionStatus.ACTIVE
            )
            cancel_at_period_end = True
        else:
            mapped = ProviderSubscriptionStatus.CANCELED
            ended_at = ends_at
    elif isinstance(status, str) and status in _STATUSES:
        mapped = _STATUSES[status]
        if status == "expired":
            ended_at = ends_at or _time(attributes.get("updated_at"), "updated_at")
    else:
        raise WebhookMalformed(f"Unknown Lemon Squeezy subscription status {status!r}")
    if attributes.get("cancelled") is True and mapped is not ProviderSubscriptionStatus.CANCELED:
        cancel_at_period_end = True
    customer_id = _optional_hook_id(attributes.get("customer_id"), "customer_id")
    if customer_id is None:
        raise WebhookMalformed("A Lemon Squeezy subscription names its customer")
    return ProviderSubscription(
        id=_hook_id(data.get("id"), "data.id"),
        customer_id=customer_id,
        status=mapped,
        price_id=_optional_hook_id(attributes.get("variant_id"), "variant_id"),
        current_period_start=None,
        current_period_end=renews_at or ends_at,
        cancel_at_period_end=cancel_at_period_end,
        ended_at=ended_at,
        trial_end=trial_end,
        organization_id=organization_id,
        updated_at=_time(attributes.get("updated_at"), "updated_at"),
        started_at=_time(attributes.get("created_at"), "created_at"),
    )


# Reading bodies ------------------------------------------------------------------------------


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not a JSON number")


def _load(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise WebhookMalformed("The webhook's body is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookMalformed("The webhook's body is not a JSON object")
    return payload


def _data(answer: Mapping[str, Any]) -> dict[str, Any]:
    data = answer.get("data")
    if not isinstance(data, dict):
        raise ProviderUnavailable("Lemon Squeezy answered without a `data` object")
    return data


def _attributes(data: Mapping[str, Any], *, webhook: bool = False) -> dict[str, Any]:
    attributes = data.get("attributes")
    if isinstance(attributes, dict):
        return attributes
    if webhook:
        raise WebhookMalformed("The webhook's `data` has no `attributes` object")
    raise ProviderUnavailable("Lemon Squeezy answered an object without attributes")


def _api_id(value: Any) -> str:
    if isinstance(value, str) and _ID.fullmatch(value):
        return value
    raise ProviderUnavailable("Lemon Squeezy answered an object without a usable id")


def _hook_id(value: Any, where: str) -> str:
    """A JSON:API id (a string) or an id attribute (an integer), as text."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX:
        return str(value)
    if isinstance(value, str) and _ID.fullmatch(value):
        return value
    raise WebhookMalformed(f"The webhook's `{where}` is not an id")


def _optional_hook_id(value: Any, where: str) -> str | None:
    return None if value is None else _hook_id(value, where)


def _amount(value: Any) -> int:
    """Minor units: an integer from 0 to int64's largest."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX:
        return value
    raise WebhookMalformed("The webhook's `total` is not an amount in minor units")


def _currency(value: Any) -> str:
    if isinstance(value, str) and _CURRENCY.fullmatch(value):
        return value.upper()
    raise WebhookMalformed("The webhook's `currency` is not a currency code")


def _organization(value: Any) -> uuid.UUID | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _when(value: Any) -> datetime | None:
    """An ISO 8601 time, in UTC; `None` when absent or unreadable."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    moment = _when(value)
    if moment is None:
        raise WebhookMalformed(f"The webhook's `{where}` is not a time")
    return moment


def _occurred(attributes: Mapping[str, Any]) -> datetime:
    moment = _time(attributes.get("updated_at"), "updated_at") or _time(
        attributes.get("created_at"), "created_at"
    )
    if moment is None:
        raise WebhookMalformed("The webhook's object has neither `updated_at` nor `created_at`")
    return moment


def _numeric(value: str) -> int:
    """A variant id as Lemon Squeezy's attributes take it: an integer."""
    if value.isascii() and value.isdigit() and int(value) <= INT64_MAX:
        return int(value)
    raise ProviderUnavailable(f"{value!r} is not a Lemon Squeezy variant id")


def _path(value: str) -> str:
    """An id as one path segment: quoted, so it can never reach another path."""
    return quote(value, safe="")


def _to_one(kind: str, identifier: str) -> dict[str, Any]:
    return {"data": {"type": kind, "id": identifier}}


def _https(url: Any) -> bool:
    return isinstance(url, str) and url.startswith("https://") and len(url) <= 2048

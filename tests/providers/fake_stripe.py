"""A fake Stripe: a real HTTP server on loopback that the real `stripe` SDK talks to.

It answers the endpoints saascore's Stripe adapter calls with bodies shaped like Stripe's
(`object`, `cs_`/`cus_`/`sub_`/`bps_` ids, list envelopes with `has_more`), keeps what was
created in memory (`FakeStripe.state`) and records every request (`FakeStripe.requests`: the
form-encoded params as sent, the headers), so tests assert what the SDK sent.

Beside it, builders for webhook bodies shaped like Stripe's events and `sign`, Stripe's
signature scheme, so the webhook intake's tests can send what Stripe would:

    body, headers = signed(invoice_event("invoice.paid", ...), SECRET, timestamp=now)

The `fake_stripe` fixture yields a running `FakeStripe`; `settings_for(fake)` points a
deployment's Stripe settings at it. Unless told otherwise, objects use the current API shape
(subscription periods on the items, an invoice's subscription under `parent`);
`legacy=True` builds the pre-2025 shape.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from saascore.config import Settings
from tests.helpers import make_settings

API_KEY = "sk_test_fake_" + "k" * 24
WEBHOOK_SECRET = "whsec_fake_" + "s" * 24
#: The API version the builders stamp on events (Stripe's current shape).
API_VERSION = "2026-10-28.endive"
LEGACY_API_VERSION = "2024-06-20"
PERIOD = timedelta(days=30)

__all__ = [
    "API_KEY",
    "WEBHOOK_SECRET",
    "FakeStripe",
    "FakeStripeState",
    "Recorded",
    "checkout_completed",
    "checkout_session_object",
    "event",
    "fake_stripe_server",
    "invoice_event",
    "invoice_object",
    "new_id",
    "settings_for",
    "sign",
    "signed",
    "subscription_event",
    "subscription_object",
    "unflatten",
]


# -- ids, signatures, event builders ----------------------------------------------------------


def new_id(prefix: str) -> str:
    """A Stripe-looking id: `cus_...`, `sub_...`, `evt_...`."""
    return f"{prefix}_{secrets.token_hex(12)}"


def _ts(value: datetime | int | None, default: int | None = None) -> int | None:
    if value is None:
        return default
    if isinstance(value, datetime):
        return int(value.timestamp())
    return value


def sign(payload: bytes, secret: str, timestamp: int | datetime) -> str:
    """The `Stripe-Signature` header Stripe sends for `payload` signed at `timestamp`."""
    t = _ts(timestamp)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


def signed(
    body: Mapping[str, Any] | bytes, secret: str = WEBHOOK_SECRET, *, timestamp: int | datetime
) -> tuple[bytes, dict[str, str]]:
    """A webhook as Stripe delivers it: the raw body and its (lower-case) headers."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {
        "content-type": "application/json; charset=utf-8",
        "stripe-signature": sign(raw, secret, timestamp),
    }
    return raw, headers


def event(
    type_: str,
    obj: Mapping[str, Any],
    *,
    id: str | None = None,
    created: int | datetime | None = None,
    api_version: str = API_VERSION,
    previous_attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Stripe event envelope around `obj` (a snapshot event, as webhooks carry)."""
    data: dict[str, Any] = {"object": dict(obj)}
    if previous_attributes is not None:
        data["previous_attributes"] = dict(previous_attributes)
    return {
        "id": id or new_id("evt"),
        "object": "event",
        "api_version": api_version,
        "created": _ts(created, int(time.time())),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }


def _org_metadata(
    organization_id: uuid.UUID | str | None, extra: Mapping[str, str] | None
) -> dict[str, str]:
    metadata = dict(extra or {})
    if organization_id is not None:
        metadata["organization_id"] = str(organization_id)
    return metadata


def checkout_session_object(
    *,
    organization_id: uuid.UUID | str | None,
    mode: str = "subscription",
    id: str | None = None,
    customer: str | None = None,
    subscription: str | None = None,
    payment_intent: str | None = None,
    amount_total: int | None = 2900,
    currency: str = "usd",
    payment_status: str = "paid",
    status: str = "complete",
    metadata: Mapping[str, str] | None = None,
    client_reference_id: str | None = None,
    created: int | datetime | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """A `checkout.session` (metadata names the organisation, with `plan`/`cycle`/`pack`)."""
    return {
        "id": id or new_id("cs_test"),
        "object": "checkout.session",
        "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "client_reference_id": client_reference_id
        if client_reference_id is not None
        else (str(organization_id) if organization_id is not None else None),
        "created": _ts(created, int(time.time())),
        "currency": currency,
        "customer": customer,
        "customer_email": None,
        "livemode": False,
        "metadata": _org_metadata(organization_id, metadata),
        "mode": mode,
        "payment_intent": payment_intent,
        "payment_status": payment_status,
        "status": status,
        "subscription": subscription,
        "url": url,
    }


def checkout_completed(
    *,
    organization_id: uuid.UUID | str | None,
    created: int | datetime | None = None,
    event_id: str | None = None,
    **session: Any,
) -> dict[str, Any]:
    """A `checkout.session.completed` event (see `checkout_session_object` for the fields)."""
    obj = checkout_session_object(organization_id=organization_id, created=created, **session)
    return event("checkout.session.completed", obj, id=event_id, created=created)


def subscription_object(
    *,
    customer: str,
    price: str,
    organization_id: uuid.UUID | str | None = None,
    id: str | None = None,
    status: str = "active",
    period_start: int | datetime | None = None,
    period_end: int | datetime | None = None,
    cancel_at_period_end: bool = False,
    canceled_at: int | datetime | None = None,
    ended_at: int | datetime | None = None,
    trial_end: int | datetime | None = None,
    metadata: Mapping[str, str] | None = None,
    created: int | datetime | None = None,
    legacy: bool = False,
) -> dict[str, Any]:
    """A `subscription` with one item on `price`. `legacy` puts the period on the
    subscription (API versions before 2025), otherwise it is on the item."""
    sub_id = id or new_id("sub")
    start = _ts(period_start, int(time.time()))
    assert start is not None
    end = _ts(period_end, start + int(PERIOD.total_seconds()))
    period = {"current_period_start": start, "current_period_end": end}
    item: dict[str, Any] = {
        "id": new_id("si"),
        "object": "subscription_item",
        "created": start,
        "metadata": {},
        "price": {
            "id": price,
            "object": "price",
            "active": True,
            "currency": "usd",
            "recurring": {"interval": "month", "interval_count": 1},
            "type": "recurring",
        },
        "quantity": 1,
        "subscription": sub_id,
    }
    body: dict[str, Any] = {
        "id": sub_id,
        "object": "subscription",
        "billing_cycle_anchor": start,
        "cancel_at": end if cancel_at_period_end else None,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": _ts(canceled_at),
        "created": _ts(created, start),
        "currency": "usd",
        "customer": customer,
        "ended_at": _ts(ended_at),
        "items": {
            "object": "list",
            "data": [item],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "livemode": False,
        "metadata": _org_metadata(organization_id, metadata),
        "start_date": start,
        "status": status,
        "trial_end": _ts(trial_end),
        "trial_start": None,
    }
    if legacy:
        body.update(period)
    else:
        item.update(period)
    return body


def subscription_event(
    type_: str,
    *,
    created: int | datetime | None = None,
    event_id: str | None = None,
    **subscription: Any,
) -> dict[str, Any]:
    """A `customer.subscription.created|updated|deleted` event (fields as
    `subscription_object`'s)."""
    obj = subscription_object(**subscription)
    version = LEGACY_API_VERSION if subscription.get("legacy") else API_VERSION
    return event(type_, obj, id=event_id, created=created, api_version=version)


def invoice_object(
    *,
    customer: str,
    subscription: str | None,
    amount: int = 2900,
    currency: str = "usd",
    price: str | None = None,
    id: str | None = None,
    period_start: int | datetime | None = None,
    period_end: int | datetime | None = None,
    status: str = "paid",
    failure_message: str | None = None,
    metadata: Mapping[str, str] | None = None,
    subscription_metadata: Mapping[str, str] | None = None,
    organization_id: uuid.UUID | str | None = None,
    created: int | datetime | None = None,
    legacy: bool = False,
) -> dict[str, Any]:
    """A subscription's `invoice`, with one subscription line for the period. `legacy` uses
    the pre-2025 shape (`subscription` on the invoice, `price` on the line).
    `organization_id` goes where Stripe copies the subscription's metadata to."""
    copied = _org_metadata(organization_id, subscription_metadata)
    invoice_id = id or new_id("in")
    start = _ts(period_start, int(time.time()))
    assert start is not None
    end = _ts(period_end, start + int(PERIOD.total_seconds()))
    paid = status == "paid"
    line: dict[str, Any] = {
        "id": new_id("il"),
        "object": "line_item",
        "amount": amount,
        "currency": currency,
        "description": "1 x plan",
        "period": {"start": start, "end": end},
        "quantity": 1,
    }
    body: dict[str, Any] = {
        "id": invoice_id,
        "object": "invoice",
        "amount_due": amount,
        "amount_paid": amount if paid else 0,
        "amount_remaining": 0 if paid else amount,
        "attempt_count": 1,
        "billing_reason": "subscription_cycle",
        "created": _ts(created, start),
        "currency": currency,
        "customer": customer,
        "last_finalization_error": None,
        "livemode": False,
        "metadata": dict(metadata or {}),
        "period_start": start,
        "period_end": start,
        "status": status,
        "status_transitions": {"paid_at": start if paid else None},
        "lines": {
            "object": "list",
            "data": [line],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
    }
    if legacy:
        body["subscription"] = subscription
        body["subscription_details"] = {"metadata": copied}
        body["charge"] = (
            {"id": new_id("ch"), "object": "charge", "failure_message": failure_message}
            if failure_message is not None
            else None
        )
        line.update(
            {
                "type": "subscription",
                "subscription": subscription,
                "price": {"id": price, "object": "price"} if price else None,
            }
        )
    else:
        body["parent"] = (
            {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": copied, "subscription": subscription},
            }
            if subscription is not None
            else None
        )
        if failure_message is not None:
            body["last_finalization_error"] = {
                "type": "card_error",
                "message": failure_message,
            }
        line.update(
            {
                "parent": {
                    "type": "subscription_item_details",
                    "invoice_item_details": None,
                    "subscription_item_details": {
                        "subscription": subscription,
                        "subscription_item": new_id("si"),
                        "proration": False,
                    },
                },
                "pricing": {
                    "type": "price_details",
                    "price_details": {"price": price, "product": new_id("prod")},
                    "unit_amount_decimal": str(amount),
                },
            }
        )
    return body


def invoice_event(
    type_: str,
    *,
    created: int | datetime | None = None,
    event_id: str | None = None,
    **invoice: Any,
) -> dict[str, Any]:
    """An `invoice.paid` or `invoice.payment_failed` event (fields as `invoice_object`'s;
    `invoice.payment_failed` defaults to an open, unpaid invoice)."""
    if type_ == "invoice.payment_failed":
        invoice.setdefault("status", "open")
    obj = invoice_object(**invoice)
    version = LEGACY_API_VERSION if invoice.get("legacy") else API_VERSION
    return event(type_, obj, id=event_id, created=created, api_version=version)


# -- form decoding ----------------------------------------------------------------------------


_KEY_PART = re.compile(r"[^\[\]]+")


def unflatten(pairs: Mapping[str, str]) -> dict[str, Any]:
    """Stripe's form encoding back into nested values: `items[0][price]=p` becomes
    `{"items": [{"price": "p"}]}`."""
    root: dict[str, Any] = {}
    for key, value in pairs.items():
        parts = _KEY_PART.findall(key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def listify(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        converted = {k: listify(v) for k, v in node.items()}
        if converted and all(k.isdigit() for k in converted):
            return [converted[k] for k in sorted(converted, key=int)]
        return converted

    result = listify(root)
    assert isinstance(result, dict)
    return result


# -- the server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One request the SDK sent: `form` holds the params exactly as encoded."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]

    @property
    def params(self) -> dict[str, Any]:
        return unflatten(self.form if self.method == "POST" else self.query)

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class _Failure:
    status: int
    type: str
    code: str | None
    message: str
    headers: dict[str, str]


@dataclass
class FakeStripeState:
    """What the fake Stripe holds: the objects by id, and canned failures to answer next."""

    base_url: str = ""
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkout_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    portal_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Minor-unit amounts of prices (unknown prices cost 2900).
    prices: dict[str, int] = field(default_factory=dict)
    #: What a checkout session was created with, beyond the session's own fields.
    checkout_requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[_Failure] = field(default_factory=list)
    idempotent: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def fail_next(
        self,
        status: int = 500,
        *,
        times: int = 1,
        type: str = "api_error",
        code: str | None = None,
        message: str = "Something went wrong on the fake Stripe.",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `times` requests with a Stripe error body of `status`."""
        with self.lock:
            for _ in range(times):
                self.failures.append(_Failure(status, type, code, message, dict(headers or {})))

    def add_subscription(self, **fields: Any) -> dict[str, Any]:
        """Put a subscription in the fake Stripe (fields as `subscription_object`'s)."""
        body = subscription_object(**fields)
        with self.lock:
            self.subscriptions[body["id"]] = body
        return body

    def complete_checkout(
        self, session_id: str, *, at: int | datetime | None = None
    ) -> list[dict[str, Any]]:
        """The customer pays: the session completes and Stripe's webhooks follow, in order.

        Subscription mode: the customer (made if the session had none), the subscription on
        the session's price and an invoice, paid; the events `checkout.session.completed`,
        `customer.subscription.created` and `invoice.paid`. Payment mode: a payment intent;
        the event `checkout.session.completed`."""
        now = _ts(at, int(time.time()))
        assert now is not None
        with self.lock:
            session = self.checkout_sessions[session_id]
            request = self.checkout_requests[session_id]
            customer = session["customer"]
            if customer is None:
                customer = self._new_customer({"email": session.get("customer_email")})["id"]
            session.update(customer=customer, status="complete", payment_status="paid", url=None)
            if session["mode"] == "payment":
                session["payment_intent"] = new_id("pi")
                return [event("checkout.session.completed", session, created=now)]
            subscription = subscription_object(
                customer=customer,
                price=request["price"],
                metadata=request["subscription_metadata"],
                period_start=now,
                created=now,
            )
            self.subscriptions[subscription["id"]] = subscription
            session["subscription"] = subscription["id"]
            invoice = invoice_object(
                customer=customer,
                subscription=subscription["id"],
                amount=session["amount_total"],
                currency=session["currency"],
                price=request["price"],
                subscription_metadata=request["subscription_metadata"],
                period_start=now,
                created=now,
            )
            self.invoices[invoice["id"]] = invoice
            return [
                event("checkout.session.completed", session, created=now),
                event("customer.subscription.created", subscription, created=now),
                event("invoice.paid", invoice, created=now),
            ]

    def _new_customer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        body = {
            "id": new_id("cus"),
            "object": "customer",
            "created": int(time.time()),
            "email": params.get("email"),
            "livemode": False,
            "metadata": dict(params.get("metadata") or {}),
            "name": params.get("name"),
        }
        self.customers[body["id"]] = body
        return body


class _StripeError(Exception):
    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.param = param


class FakeStripe:
    """The fake Stripe, serving on `url` until `close()`."""

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.webhook_secret = WEBHOOK_SECRET
        self.requests: list[Recorded] = []
        self.state = FakeStripeState()
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self.state.base_url = self.url
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def sent(self, method: str, path: str) -> list[Recorded]:
        """The requests recorded for `method` on `path` (exact), oldest first."""
        return [r for r in self.requests if r.method == method and r.path == path]

    # -- routing ------------------------------------------------------------------------------

    def answer(self, recorded: Recorded) -> tuple[int, dict[str, Any], dict[str, str]]:
        state = self.state
        with state.lock:
            self.requests.append(recorded)
            if recorded.headers.get("authorization") != f"Bearer {self.api_key}":
                # Real Stripe masks the key; this echoes it whole so a test can prove the
                # adapter never repeats Stripe's message.
                provided = recorded.headers.get("authorization", "").removeprefix("Bearer ")
                return _error(401, f"Invalid API Key provided: {provided}", "invalid_api_key")
            if state.failures:
                failure = state.failures.pop(0)
                status, body, _ = _error(
                    failure.status, failure.message, failure.code, failure.type
                )
                return status, body, failure.headers
            try:
                status, body = self._route(recorded)
            except _StripeError as error:
                return _error(error.status, error.message, error.code, param=error.param)
            return status, body, {}

    def _route(self, r: Recorded) -> tuple[int, dict[str, Any]]:
        state = self.state
        params = r.params
        parts = [p for p in r.path.split("/") if p]
        match (r.method, parts):
            case ("POST", ["v1", "customers"]):
                return 200, state._new_customer(params)
            case ("GET", ["v1", "customers", customer_id]):
                return 200, _found(state.customers, customer_id)
            case ("POST", ["v1", "checkout", "sessions"]):
                return 200, self._create_checkout(params)
            case ("GET", ["v1", "checkout", "sessions", session_id]):
                return 200, _found(state.checkout_sessions, session_id)
            case ("POST", ["v1", "billing_portal", "sessions"]):
                customer = _required(params, "customer")
                _found(state.customers, customer, param="customer")
                session_id = new_id("bps")
                body = {
                    "id": session_id,
                    "object": "billing_portal.session",
                    "created": int(time.time()),
                    "customer": customer,
                    "livemode": False,
                    "return_url": params.get("return_url"),
                    "url": f"{self.url}/p/session/{session_id}",
                }
                state.portal_sessions[session_id] = body
                return 200, body
            case ("GET", ["v1", "subscriptions"]):
                return 200, self._list_subscriptions(params)
            case ("GET", ["v1", "subscriptions", subscription_id]):
                return 200, _found(state.subscriptions, subscription_id)
            case ("POST", ["v1", "subscriptions", subscription_id]):
                return 200, self._update_subscription(subscription_id, params)
            case ("DELETE", ["v1", "subscriptions", subscription_id]):
                subscription = _found(state.subscriptions, subscription_id)
                if subscription["status"] == "canceled":
                    raise _StripeError(
                        400, "This subscription is already canceled.", code="resource_missing"
                    )
                now = int(time.time())
                subscription.update(status="canceled", canceled_at=now, ended_at=now)
                return 200, subscription
        raise _StripeError(404, f"Unrecognized request URL ({r.method}: {r.path}).")

    def _create_checkout(self, params: Mapping[str, Any]) -> dict[str, Any]:
        state = self.state
        mode = _required(params, "mode")
        if mode not in ("subscription", "payment"):
            raise _StripeError(400, "Invalid mode", code="parameter_invalid_string", param="mode")
        items = params.get("line_items")
        if not isinstance(items, list) or not items or "price" not in items[0]:
            raise _StripeError(400, "Missing line_items", code="parameter_missing")
        price = items[0]["price"]
        quantity = int(items[0].get("quantity", "1"))
        customer = params.get("customer")
        if customer is not None:
            _found(state.customers, customer, param="customer")
        session_id = new_id("cs_test")
        session = checkout_session_object(
            organization_id=None,
            id=session_id,
            mode=mode,
            customer=customer,
            amount_total=state.prices.get(price, 2900) * quantity,
            payment_status="unpaid",
            status="open",
            metadata=params.get("metadata") or {},
            client_reference_id=params.get("client_reference_id"),
            url=f"{self.url}/c/pay/{session_id}",
        )
        session.update(
            customer_email=params.get("customer_email"),
            success_url=_required(params, "success_url"),
            cancel_url=params.get("cancel_url"),
        )
        subscription_data = params.get("subscription_data") or {}
        state.checkout_sessions[session_id] = session
        state.checkout_requests[session_id] = {
            "price": price,
            "subscription_metadata": subscription_data.get("metadata") or {},
            "params": params,
        }
        return session

    def _list_subscriptions(self, params: Mapping[str, Any]) -> dict[str, Any]:
        limit = min(int(params.get("limit", "10")), 100)
        status = params.get("status")
        found = [
            s
            for s in self.state.subscriptions.values()
            if status == "all"
            or (status is None and s["status"] != "canceled")
            or s["status"] == status
        ]
        after = params.get("starting_after")
        if after is not None:
            ids = [s["id"] for s in found]
            if after not in ids:
                raise _StripeError(404, f"No such subscription: '{after}'", code="resource_missing")
            found = found[ids.index(after) + 1 :]
        return {
            "object": "list",
            "data": found[:limit],
            "has_more": len(found) > limit,
            "url": "/v1/subscriptions",
        }

    def _update_subscription(
        self, subscription_id: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        subscription = _found(self.state.subscriptions, subscription_id)
        if "cancel_at_period_end" in params:
            flag = params["cancel_at_period_end"] == "true"
            if subscription["status"] == "canceled":
                raise _StripeError(400, "A canceled subscription can only update its metadata.")
            item = subscription["items"]["data"][0]
            end = item.get("current_period_end", subscription.get("current_period_end"))
            subscription.update(
                cancel_at_period_end=flag,
                cancel_at=end if flag else None,
                canceled_at=int(time.time()) if flag else None,
            )
        for change in params.get("items") or []:
            items = subscription["items"]["data"]
            matching = [i for i in items if i["id"] == change.get("id")]
            if not matching:
                raise _StripeError(400, "No such subscription item", code="resource_missing")
            matching[0]["price"] = {**matching[0]["price"], "id": change["price"]}
        if "metadata" in params:
            subscription["metadata"].update(params["metadata"])
        return subscription


def _required(params: Mapping[str, Any], name: str) -> Any:
    if name not in params:
        raise _StripeError(400, f"Missing required param: {name}.", code="parameter_missing")
    return params[name]


def _found(
    objects: Mapping[str, dict[str, Any]], object_id: str, *, param: str = "id"
) -> dict[str, Any]:
    if object_id not in objects:
        raise _StripeError(
            404, f"No such object: '{object_id}'", code="resource_missing", param=param
        )
    return objects[object_id]


def _error(
    status: int,
    message: str,
    code: str | None = None,
    type_: str = "invalid_request_error",
    *,
    param: str | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    body: dict[str, Any] = {"error": {"type": type_, "message": message}}
    if code is not None:
        body["error"]["code"] = code
    if param is not None:
        body["error"]["param"] = param
    return status, body, {}


class _Handler(BaseHTTPRequestHandler):
    owner: FakeStripe
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        recorded = Recorded(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            form=dict(parse_qsl(raw.decode(), keep_blank_values=True)),
            headers=headers,
        )
        key = recorded.idempotency_key
        state = self.owner.state
        with state.lock:
            replay = state.idempotent.get((recorded.path, key)) if key else None
            if replay is not None:
                self.owner.requests.append(recorded)
                status, body = replay
                extra: dict[str, str] = {"idempotent-replayed": "true"}
            else:
                status, payload, extra = self.owner.answer(recorded)
                body = json.dumps(payload).encode()
                if key and self.command == "POST" and status < 500:
                    state.idempotent[(recorded.path, key)] = (status, body)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("request-id", new_id("req"))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = _handle
    do_POST = _handle
    do_DELETE = _handle


def settings_for(fake: FakeStripe, **values: Any) -> Settings:
    """A deployment selling through `fake`: Stripe's keys, its API base pointed at it."""
    values.setdefault("payment_provider", "stripe")
    return make_settings(
        stripe_secret_key=fake.api_key,
        stripe_webhook_secret=fake.webhook_secret,
        stripe_api_base=fake.url,
        **values,
    )


@pytest.fixture(name="fake_stripe")
def fake_stripe_server() -> Iterator[FakeStripe]:
    """A running fake Stripe on loopback (import this into a test module to use it)."""
    fake = FakeStripe()
    try:
        yield fake
    finally:
        fake.close()

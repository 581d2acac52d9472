"""A fake Lemon Squeezy: a real HTTP server on loopback, and builders for its webhooks.

The server answers the JSON:API endpoints `LemonSqueezyAdapter` calls, with bodies shaped like
Lemon Squeezy's, keeping its objects in memory (`FakeLemonSqueezy.state`) and recording every
request (`.requests`). It checks the `Authorization: Bearer` key, the JSON:API media type and
the store relationship as Lemon Squeezy does, and can be told to fail (`fail_next`).

- Fixture `fake_lemonsqueezy`: a started `FakeLemonSqueezy` (`.url`, `.api_key`, `.store_id`,
  `.signing_secret`, `.settings_values()` for `make_settings`, `.requests`, `.state`).
- `fake.complete_checkout(checkout_id)`: the buyer pays. It makes the order (and, for a
  subscription variant, the subscription and its first invoice) and returns the webhooks Lemon
  Squeezy would send, in its order, as `Delivery`s (`.body` bytes, `.headers` signed).
- Builders of webhook payloads: `order_created`, `subscription_event` (any
  `subscription_*` lifecycle event, `subscription_expired` included), `invoice_event`
  (`subscription_payment_success` / `_failed`), the general `webhook`; the objects inside them
  come from `order_object`, `subscription_object`, `invoice_object`.
- `sign(body, secret)`: the `X-Signature` value; `deliver(payload, secret)`: a `Delivery`.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

JSON_API = "application/vnd.api+json"
API_KEY = "ls_test_key_0123456789abcdef"
STORE_ID = "4242"
SIGNING_SECRET = "ls-signing-secret"


def ls_time(moment: datetime) -> str:
    """A time as Lemon Squeezy writes it: `2024-05-01T12:00:00.000000Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sign(body: bytes, secret: str = SIGNING_SECRET) -> str:
    """The `X-Signature` Lemon Squeezy sends: the hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """One webhook as Lemon Squeezy posts it."""

    event_name: str
    body: bytes
    headers: dict[str, str]


def encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def deliver(payload: Mapping[str, Any], secret: str = SIGNING_SECRET) -> Delivery:
    """`payload` encoded and signed as Lemon Squeezy would post it."""
    body = encode(payload)
    meta = payload.get("meta")
    name = meta.get("event_name", "") if isinstance(meta, dict) else ""
    headers = {
        "content-type": "application/json",
        "x-event-name": str(name),
        "x-signature": sign(body, secret),
    }
    return Delivery(str(name), body, headers)


# Objects -------------------------------------------------------------------------------------


def order_object(
    order_id: str,
    *,
    customer_id: int,
    variant_id: int,
    total: Any = 999,
    currency: Any = "USD",
    status: str = "paid",
    store_id: str = STORE_ID,
    email: str = "buyer@example.com",
    at: datetime | None = None,
) -> dict[str, Any]:
    stamp = ls_time(at or datetime.now(UTC))
    return {
        "type": "orders",
        "id": order_id,
        "attributes": {
            "store_id": int(store_id),
            "customer_id": customer_id,
            "identifier": str(uuid.uuid4()),
            "order_number": int(order_id),
            "user_name": "Buyer",
            "user_email": email,
            "currency": currency,
            "currency_rate": "1.00000000",
            "subtotal": total,
            "discount_total": 0,
            "tax": 0,
            "total": total,
            "status": status,
            "status_formatted": status.title(),
            "refunded": False,
            "refunded_at": None,
            "first_order_item": {
                "id": int(order_id),
                "order_id": int(order_id),
                "product_id": 1,
                "variant_id": variant_id,
                "product_name": "saascore",
                "variant_name": f"variant {variant_id}",
                "price": total,
                "quantity": 1,
                "created_at": stamp,
                "updated_at": stamp,
            },
            "created_at": stamp,
            "updated_at": stamp,
            "test_mode": True,
        },
    }


def subscription_object(
    subscription_id: str,
    *,
    customer_id: int,
    variant_id: int,
    status: str = "active",
    cancelled: bool = False,
    renews_at: datetime | None = None,
    ends_at: datetime | None = None,
    trial_ends_at: datetime | None = None,
    order_id: int = 1,
    store_id: str = STORE_ID,
    email: str = "buyer@example.com",
    portal_url: str | None = None,
    created_at: datetime | None = None,
    updated_at: datetime | None = None,
) -> dict[str, Any]:
    now = datetime.now(UTC)
    renews = renews_at if renews_at is not None else now + timedelta(days=30)
    portal = portal_url or f"https://store.example/billing?signature={subscription_id}"
    return {
        "type": "subscriptions",
        "id": subscription_id,
        "attributes": {
            "store_id": int(store_id),
            "customer_id": customer_id,
            "order_id": order_id,
            "order_item_id": order_id,
            "product_id": 1,
            "variant_id": variant_id,
            "product_name": "saascore",
            "variant_name": f"variant {variant_id}",
            "user_name": "Buyer",
            "user_email": email,
            "status": status,
            "status_formatted": status.replace("_", " ").title(),
            "card_brand": "visa",
            "card_last_four": "4242",
            "pause": None,
            "cancelled": cancelled,
            "trial_ends_at": ls_time(trial_ends_at) if trial_ends_at else None,
            "billing_anchor": renews.day,
            "urls": {
                "update_payment_method": f"{portal}&update=1",
                "customer_portal": portal,
            },
            "renews_at": ls_time(renews),
            "ends_at": ls_time(ends_at) if ends_at else None,
            "created_at": ls_time(created_at or now),
            "updated_at": ls_time(updated_at or now),
            "test_mode": True,
        },
    }


def invoice_object(
    invoice_id: str,
    *,
    subscription_id: int,
    customer_id: int,
    total: Any = 999,
    currency: Any = "USD",
    status: str = "paid",
    billing_reason: str = "initial",
    store_id: str = STORE_ID,
    at: datetime | None = None,
) -> dict[str, Any]:
    stamp = ls_time(at or datetime.now(UTC))
    return {
        "type": "subscription-invoices",
        "id": invoice_id,
        "attributes": {
            "store_id": int(store_id),
            "subscription_id": subscription_id,
            "customer_id": customer_id,
            "user_name": "Buyer",
            "user_email": "buyer@example.com",
            "billing_reason": billing_reason,
            "card_brand": "visa",
            "card_last_four": "4242",
            "currency": currency,
            "currency_rate": "1.00000000",
            "status": status,
            "status_formatted": status.title(),
            "refunded": False,
            "refunded_at": None,
            "subtotal": total,
            "discount_total": 0,
            "tax": 0,
            "total": total,
            "urls": {"invoice_url": f"https://store.example/invoice/{invoice_id}"},
            "created_at": stamp,
            "updated_at": stamp,
            "test_mode": True,
        },
    }


# Webhook payloads ----------------------------------------------------------------------------


def webhook(
    event_name: str, data: Mapping[str, Any], custom_data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A webhook payload: `meta` (the event's name, the checkout's custom data) and `data`."""
    meta: dict[str, Any] = {"test_mode": True, "event_name": event_name, "webhook_id": "wh_1"}
    if custom_data is not None:
        meta["custom_data"] = dict(custom_data)
    return {"meta": meta, "data": dict(data)}


def order_created(
    order_id: str = "1001",
    *,
    custom_data: Mapping[str, Any] | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    """`order_created`; `attributes` go to `order_object` (customer_id, variant_id, total...)."""
    attributes.setdefault("customer_id", 7)
    attributes.setdefault("variant_id", 501)
    return webhook("order_created", order_object(order_id, **attributes), custom_data)


def subscription_event(
    event_name: str = "subscription_created",
    subscription_id: str = "2001",
    *,
    custom_data: Mapping[str, Any] | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    """Any `subscription_*` lifecycle event; `attributes` go to `subscription_object`."""
    attributes.setdefault("customer_id", 7)
    attributes.setdefault("variant_id", 301)
    return webhook(event_name, subscription_object(subscription_id, **attributes), custom_data)


def invoice_event(
    event_name: str = "subscription_payment_success",
    invoice_id: str = "3001",
    *,
    custom_data: Mapping[str, Any] | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    """`subscription_payment_success` or `_failed`; `attributes` go to `invoice_object`."""
    attributes.setdefault("subscription_id", 2001)
    attributes.setdefault("customer_id", 7)
    return webhook(event_name, invoice_object(invoice_id, **attributes), custom_data)


# The server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


@dataclass
class FakeState:
    """Lemon Squeezy's objects, by id (the JSON:API objects as the API answers them)."""

    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Variants that sell a subscription (the others are one-off, like a credit pack).
    subscription_variants: set[int] = field(default_factory=set)


class FakeLemonSqueezy:
    """The fake server. Start with `start()`, stop with `stop()` (the fixture does both)."""

    def __init__(
        self,
        *,
        api_key: str = API_KEY,
        store_id: str = STORE_ID,
        signing_secret: str = SIGNING_SECRET,
    ) -> None:
        self.api_key = api_key
        self.store_id = store_id
        self.signing_secret = signing_secret
        self.state = FakeState()
        self.requests: list[FakeRequest] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._failures: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle and controls ------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "the fake is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeLemonSqueezy:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def settings_values(self) -> dict[str, Any]:
        """The settings that point saascore at this fake (for `tests.helpers.make_settings`).
        Before `start()`, the API base is a loopback port nothing listens on."""
        url = self.url if self._server is not None else "http://127.0.0.1:9"
        return {
            "payment_provider": "lemonsqueezy",
            "lemonsqueezy_api_key": self.api_key,
            "lemonsqueezy_store_id": self.store_id,
            "lemonsqueezy_signing_secret": self.signing_secret,
            "lemonsqueezy_api_base": url,
        }

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """Answer the next `count` requests with `status` (an error object, nothing done)."""
        with self._lock:
            self._failures.extend([status] * count)

    def next_id(self) -> str:
        with self._lock:
            return str(next(self._ids))

    def deliver(self, payload: Mapping[str, Any]) -> Delivery:
        return deliver(payload, self.signing_secret)

    # Objects made as the buyer would --------------------------------------------------------

    def add_customer(self, *, name: str = "Buyer", email: str = "buyer@example.com") -> str:
        customer_id = self.next_id()
        stamp = ls_time(datetime.now(UTC))
        self.state.customers[customer_id] = {
            "type": "customers",
            "id": customer_id,
            "attributes": {
                "store_id": int(self.store_id),
                "name": name,
                "email": email,
                "status": "subscribed",
                "city": None,
                "region": None,
                "country": None,
                "urls": {"customer_portal": f"{self.url}/billing?customer={customer_id}"},
                "created_at": stamp,
                "updated_at": stamp,
                "test_mode": True,
            },
        }
        return customer_id

    def add_subscription(
        self, *, customer_id: str, variant_id: int, **attributes: Any
    ) -> dict[str, Any]:
        """A subscription at the fake (`attributes` go to `subscription_object`)."""
        customer = self.state.customers.get(customer_id)
        email = customer["attributes"]["email"] if customer else "buyer@example.com"
        attributes.setdefault("email", email)
        attributes.setdefault("store_id", self.store_id)
        subscription_id = self.next_id()
        self.state.subscriptions[subscription_id] = subscription_object(
            subscription_id, customer_id=int(customer_id), variant_id=variant_id, **attributes
        )
        return self.state.subscriptions[subscription_id]

    def complete_checkout(
        self,
        checkout_id: str,
        *,
        total: int = 999,
        currency: str = "USD",
        email: str = "buyer@example.com",
    ) -> list[Delivery]:
        """The buyer pays the checkout: the objects it makes and the webhooks that follow.

        A variant in `state.subscription_variants` sells a subscription: `order_created`,
        `subscription_created`, `subscription_payment_success`. Any other is a one-off order
        (a credit pack): `order_created` alone. Each carries the checkout's custom data."""
        checkout = self.state.checkouts[checkout_id]
        attributes = checkout["attributes"]
        custom = dict(attributes["checkout_data"].get("custom") or {})
        variant_id = int(attributes["variant_id"])
        email = attributes["checkout_data"].get("email") or email
        customer_id = next(
            (
                key
                for key, value in self.state.customers.items()
                if value["attributes"]["email"] == email
            ),
            None,
        ) or self.add_customer(email=email)
        order_id = self.next_id()
        order = order_object(
            order_id,
            customer_id=int(customer_id),
            variant_id=variant_id,
            total=total,
            currency=currency,
            email=email,
            store_id=self.store_id,
        )
        self.state.orders[order_id] = order
        deliveries = [self.deliver(webhook("order_created", order, custom))]
        if variant_id in self.state.subscription_variants:
            subscription = self.add_subscription(
                customer_id=customer_id, variant_id=variant_id, order_id=int(order_id)
            )
            invoice_id = self.next_id()
            invoice = invoice_object(
                invoice_id,
                subscription_id=int(subscription["id"]),
                customer_id=int(customer_id),
                total=total,
                currency=currency,
                store_id=self.store_id,
            )
            self.state.invoices[invoice_id] = invoice
            deliveries.append(self.deliver(webhook("subscription_created", subscription, custom)))
            deliveries.append(
                self.deliver(webhook("subscription_payment_success", invoice, custom))
            )
        return deliveries

    # Serving ---------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = FakeRequest(
            method=handler.command,
            path=split.path,
            query=dict(parse_qsl(split.query)),
            headers={key.lower(): value for key, value in handler.headers.items()},
            json=body,
        )
        with self._lock:
            self.requests.append(request)
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            status, answer = failure, _error(failure, "The fake was told to fail")
        else:
            status, answer = self._route(request, raw)
        payload = json.dumps(answer).encode() if answer is not None else b""
        handler.send_response(status)
        handler.send_header("Content-Type", JSON_API)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _route(self, request: FakeRequest, raw: bytes) -> tuple[int, Any]:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, _error(401, "Unauthenticated.")
        if request.headers.get("accept") != JSON_API:
            return 406, _error(406, "Not Acceptable")
        if request.method in ("POST", "PATCH"):
            if request.headers.get("content-type") != JSON_API:
                return 415, _error(415, "Unsupported Media Type")
            if not isinstance(request.json, dict) or not isinstance(request.json.get("data"), dict):
                return 400, _error(400, "A JSON:API document is required")
        parts = request.path.strip("/").split("/")
        match request.method, parts:
            case "POST", ["v1", "customers"]:
                return self._create_customer(request.json["data"])
            case "GET", ["v1", "customers", customer_id]:
                return self._one(self.state.customers, customer_id, "customers")
            case "POST", ["v1", "checkouts"]:
                return self._create_checkout(request.json["data"])
            case "GET", ["v1", "subscriptions"]:
                return self._list_subscriptions(request.query)
            case "GET", ["v1", "subscriptions", subscription_id]:
                return self._one(self.state.subscriptions, subscription_id, "subscriptions")
            case "DELETE", ["v1", "subscriptions", subscription_id]:
                return self._cancel(subscription_id)
            case "PATCH", ["v1", "subscriptions", subscription_id]:
                return self._update(subscription_id, request.json["data"])
        return 404, _error(404, "Not Found")

    def _store_of(self, data: Mapping[str, Any]) -> str | None:
        try:
            return str(data["relationships"]["store"]["data"]["id"])
        except (KeyError, TypeError):
            return None

    def _create_customer(self, data: dict[str, Any]) -> tuple[int, Any]:
        attributes = data.get("attributes") or {}
        if data.get("type") != "customers" or self._store_of(data) != self.store_id:
            return 422, _error(422, "The store relationship is required")
        if not attributes.get("name") or "@" not in str(attributes.get("email", "")):
            return 422, _error(422, "The name and a valid email are required")
        customer_id = self.add_customer(name=attributes["name"], email=attributes["email"])
        return 201, _document(self.state.customers[customer_id])

    def _create_checkout(self, data: dict[str, Any]) -> tuple[int, Any]:
        if data.get("type") != "checkouts" or self._store_of(data) != self.store_id:
            return 422, _error(422, "The store relationship is required")
        try:
            variant = int(data["relationships"]["variant"]["data"]["id"])
        except (KeyError, TypeError, ValueError):
            return 422, _error(422, "The variant relationship is required")
        attributes = data.get("attributes") or {}
        checkout_id = str(uuid.uuid4())
        stamp = ls_time(datetime.now(UTC))
        self.state.checkouts[checkout_id] = {
            "type": "checkouts",
            "id": checkout_id,
            "attributes": {
                "store_id": int(self.store_id),
                "variant_id": variant,
                "custom_price": None,
                "product_options": attributes.get("product_options") or {},
                "checkout_options": attributes.get("checkout_options") or {},
                "checkout_data": attributes.get("checkout_data") or {},
                "expires_at": None,
                "created_at": stamp,
                "updated_at": stamp,
                "test_mode": True,
                "url": f"{self.url}/checkout/custom/{checkout_id}?signature=fake",
            },
        }
        return 201, _document(self.state.checkouts[checkout_id])

    def _one(self, table: dict[str, Any], key: str, kind: str) -> tuple[int, Any]:
        found = table.get(key)
        if found is None:
            return 404, _error(404, f"No {kind} with this id")
        return 200, _document(found)

    def _list_subscriptions(self, query: Mapping[str, str]) -> tuple[int, Any]:
        try:
            number = max(1, int(query.get("page[number]", "1")))
            size = min(100, max(1, int(query.get("page[size]", "10"))))
        except ValueError:
            return 400, _error(400, "Bad page")
        rows = [
            row
            for row in self.state.subscriptions.values()
            if (
                "filter[store_id]" not in query
                or str(row["attributes"]["store_id"]) == query["filter[store_id]"]
            )
            and (
                "filter[user_email]" not in query
                or row["attributes"]["user_email"] == query["filter[user_email]"]
            )
        ]
        last = max(1, -(-len(rows) // size))
        page = rows[(number - 1) * size : number * size]
        return 200, {
            "meta": {
                "page": {
                    "currentPage": number,
                    "from": (number - 1) * size + 1 if page else None,
                    "lastPage": last,
                    "perPage": size,
                    "to": (number - 1) * size + len(page) if page else None,
                    "total": len(rows),
                }
            },
            "jsonapi": {"version": "1.0"},
            "data": page,
        }

    def _cancel(self, subscription_id: str) -> tuple[int, Any]:
        found = self.state.subscriptions.get(subscription_id)
        if found is None:
            return 404, _error(404, "No subscriptions with this id")
        attributes = found["attributes"]
        attributes.update(
            status="cancelled",
            status_formatted="Cancelled",
            cancelled=True,
            ends_at=attributes["renews_at"],
            updated_at=ls_time(datetime.now(UTC)),
        )
        return 200, _document(found)

    def _update(self, subscription_id: str, data: dict[str, Any]) -> tuple[int, Any]:
        found = self.state.subscriptions.get(subscription_id)
        if found is None:
            return 404, _error(404, "No subscriptions with this id")
        if data.get("type") != "subscriptions" or str(data.get("id")) != subscription_id:
            return 409, _error(409, "The type and id must match the URL")
        changes = data.get("attributes") or {}
        attributes = found["attributes"]
        if "variant_id" in changes:
            if not isinstance(changes["variant_id"], int):
                return 422, _error(422, "variant_id must be an integer")
            attributes["variant_id"] = changes["variant_id"]
        if changes.get("cancelled") is False:
            if attributes["status"] == "expired":
                return 422, _error(422, "An expired subscription cannot be resumed")
            attributes.update(
                status="active", status_formatted="Active", cancelled=False, ends_at=None
            )
        attributes["updated_at"] = ls_time(datetime.now(UTC))
        return 200, _document(found)


def _document(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonapi": {"version": "1.0"}, "data": data}


def _error(status: int, detail: str) -> dict[str, Any]:
    return {
        "jsonapi": {"version": "1.0"},
        "errors": [{"status": str(status), "title": "Error", "detail": detail}],
    }


@pytest.fixture
def fake_lemonsqueezy() -> Iterator[FakeLemonSqueezy]:
    """A started fake Lemon Squeezy, stopped after the test."""
    fake = FakeLemonSqueezy().start()
    try:
        yield fake
    finally:
        fake.stop()

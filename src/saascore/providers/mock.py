"""The mock payment provider: the default, so that a checkout works end to end with nothing
configured (seed 004's mock mode).

- Ids start with `mock_`: customers `mock_cus_...`, checkouts `mock_cs_...`, subscriptions
  `mock_sub_...`, payments `mock_pay_...`, orders `mock_ord_...`, events `mock_evt_...`.
- A checkout is a link to saascore's own confirmation page, `GET /v1/checkout/mock/{token}`.
  The token is a short-lived JWT signed with a key derived from the app's JWT key, carrying
  the checkout request: nothing is stored until it is confirmed. Confirming
  (`POST` on the same path) applies the events a real provider would send, through the same
  intake as webhooks: checkout completed, the subscription with its first period, and its
  payment; or, for a credit pack, the paid order. Their ids come from the checkout's, so a
  second confirmation is a duplicate delivery and changes nothing.
- Its webhooks (`POST /v1/webhooks/mock`) are unsigned: the intake takes them only in mock
  mode and only from loopback. The body is the event as `providers.codec` writes it, with
  `type` one of `EventKind`'s values.
- Price ids: a plan price is `mock_price_<its id>`, a credit pack `mock_pack_<its code>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

# PyJWT is imported where a checkout token is made or read (see identity.tokens).
from saascore.billing.periods import period_containing
from saascore.config import Settings
from saascore.models.catalog import BillingCycle
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
from saascore.providers.codec import event_from_json
from saascore.providers.errors import CheckoutNotFound, WebhookMalformed

__all__ = [
    "CHECKOUT_PATH",
    "CHECKOUT_TTL",
    "MockAdapter",
    "MockCheckout",
    "pack_from_price_id",
    "pack_price_id",
    "plan_price_from_id",
    "plan_price_id",
]

#: Where the confirmation page is served; the token follows.
CHECKOUT_PATH: Final = "/v1/checkout/mock/"
#: How long a mock checkout's link stays valid.
CHECKOUT_TTL: Final = timedelta(minutes=30)
_ISSUER: Final = "saascore-mock-checkout"
_PLAN_PRICE: Final = "mock_price_"
_PACK_PRICE: Final = "mock_pack_"


def plan_price_id(price_row_id: uuid.UUID) -> str:
    """The mock's price id of a plan price (a `plan_prices` row)."""
    return f"{_PLAN_PRICE}{price_row_id.hex}"


def plan_price_from_id(price_id: str | None) -> uuid.UUID | None:
    """The `plan_prices` row id a mock price id names, if it names one."""
    if not isinstance(price_id, str) or not price_id.startswith(_PLAN_PRICE):
        return None
    try:
        return uuid.UUID(hex=price_id.removeprefix(_PLAN_PRICE))
    except ValueError:
        return None


def pack_price_id(code: str) -> str:
    """The mock's price id of a credit pack."""
    return f"{_PACK_PRICE}{code}"


def pack_from_price_id(price_id: str | None) -> str | None:
    """The credit pack's code a mock price id names, if it names one."""
    if not isinstance(price_id, str) or not price_id.startswith(_PACK_PRICE):
        return None
    return price_id.removeprefix(_PACK_PRICE) or None


@dataclass(frozen=True, slots=True)
class MockCheckout:
    """A mock checkout, as its token carries it."""

    id: str
    organization_id: uuid.UUID
    mode: CheckoutMode
    price_id: str
    customer_id: str
    amount: int
    currency: str
    success_url: str
    cancel_url: str
    plan: str | None
    cycle: BillingCycle | None
    pack: str | None
    expires_at: datetime


class MockAdapter:
    """The mock provider (module docstring). `signing_key` is the app's JWT key; the
    checkout tokens are signed with a key derived from it (a random one without)."""

    def __init__(
        self, settings: Settings, *, signing_key: Callable[[], str] | str | None = None
    ) -> None:
        self.settings = settings
        self._base = signing_key
        self._derived: str | None = None

    @property
    def _key(self) -> str:
        """The tokens' key, derived from the app's JWT key when first needed."""
        if self._derived is None:
            base = self._base() if callable(self._base) else self._base
            if base is None:
                base = secrets.token_hex(32)
            self._derived = hmac.new(
                base.encode(), b"saascore mock checkout tokens", hashlib.sha256
            ).hexdigest()
        return self._derived

    @property
    def name(self) -> PaymentProvider:
        return PaymentProvider.MOCK

    async def create_customer(self, customer: Customer) -> str:
        return f"mock_cus_{uuid.uuid4().hex}"

    async def create_checkout(self, request: CheckoutRequest) -> CheckoutSession:
        """A link to the confirmation page; `request.amount` and `currency` must be set."""
        if request.customer_id is None or request.amount is None or request.currency is None:
            raise ValueError("a mock checkout needs the customer, the amount and the currency")
        checkout_id = f"mock_cs_{uuid.uuid4().hex}"
        now = datetime.now().astimezone()
        claims: dict[str, Any] = {
            "iss": _ISSUER,
            "jti": checkout_id,
            "iat": int(now.timestamp()),
            "exp": int((now + CHECKOUT_TTL).timestamp()),
            "org": str(request.organization_id),
            "mode": request.mode.value,
            "price": request.price_id,
            "customer": request.customer_id,
            "amount": request.amount,
            "currency": request.currency,
            "success": request.success_url,
            "cancel": request.cancel_url,
            "plan": request.plan,
            "cycle": request.cycle.value if request.cycle is not None else None,
            "pack": request.pack,
        }
        import jwt

        token = jwt.encode(claims, self._key, algorithm="HS256")
        return CheckoutSession(id=checkout_id, url=f"{CHECKOUT_PATH}{token}")

    def read_checkout(self, token: str) -> MockCheckout:
        """The checkout the token carries; `checkout_not_found` for a forged, altered or
        expired one."""
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                issuer=_ISSUER,
                options={"require": ["exp", "iat", "jti", "iss"]},
            )
            cycle = claims.get("cycle")
            expires = datetime.fromtimestamp(int(claims["exp"])).astimezone()
            return MockCheckout(
                id=str(claims["jti"]),
                organization_id=uuid.UUID(str(claims["org"])),
                mode=CheckoutMode(claims["mode"]),
                price_id=str(claims["price"]),
                customer_id=str(claims["customer"]),
                amount=int(claims["amount"]),
                currency=str(claims["currency"]),
                success_url=str(claims["success"]),
                cancel_url=str(claims["cancel"]),
                plan=claims.get("plan"),
                cycle=BillingCycle(cycle) if cycle is not None else None,
                pack=claims.get("pack"),
                expires_at=expires,
            )
        except (jwt.PyJWTError, KeyError, ValueError, TypeError, OverflowError):
            raise CheckoutNotFound("this checkout link is not valid or has expired") from None

    def confirmation_events(self, checkout: MockCheckout, now: datetime) -> list[ProviderEvent]:
        """The events a provider would send once the customer paid the checkout."""
        suffix = checkout.id.removeprefix("mock_cs_")
        org = checkout.organization_id
        customer = checkout.customer_id
        events = [
            ProviderEvent(
                provider=PaymentProvider.MOCK,
                id=f"mock_evt_{suffix}_checkout",
                type=EventKind.CHECKOUT_COMPLETED.value,
                kind=EventKind.CHECKOUT_COMPLETED,
                occurred_at=now,
                organization_id=org,
                customer_id=customer,
                checkout_id=checkout.id,
            )
        ]
        if checkout.mode is CheckoutMode.PAYMENT:
            events.append(
                ProviderEvent(
                    provider=PaymentProvider.MOCK,
                    id=f"mock_evt_{suffix}_order",
                    type=EventKind.ORDER_PAID.value,
                    kind=EventKind.ORDER_PAID,
                    occurred_at=now,
                    organization_id=org,
                    customer_id=customer,
                    checkout_id=checkout.id,
                    payment=ProviderPayment(
                        id=f"mock_ord_{suffix}",
                        amount=checkout.amount,
                        currency=checkout.currency,
                        customer_id=customer,
                        pack=checkout.pack,
                        price_id=checkout.price_id,
                    ),
                )
            )
            return events
        period = period_containing(now, checkout.cycle or BillingCycle.MONTHLY, now)
        subscription_id = f"mock_sub_{suffix}"
        events.append(
            ProviderEvent(
                provider=PaymentProvider.MOCK,
                id=f"mock_evt_{suffix}_subscription",
                type=EventKind.SUBSCRIPTION_UPDATED.value,
                kind=EventKind.SUBSCRIPTION_UPDATED,
                occurred_at=now,
                organization_id=org,
                customer_id=customer,
                subscription=ProviderSubscription(
                    id=subscription_id,
                    customer_id=customer,
                    status=ProviderSubscriptionStatus.ACTIVE,
                    price_id=checkout.price_id,
                    current_period_start=period.start,
                    current_period_end=period.end,
                    organization_id=org,
                    updated_at=now,
                ),
            )
        )
        events.append(
            ProviderEvent(
                provider=PaymentProvider.MOCK,
                id=f"mock_evt_{suffix}_payment",
                type=EventKind.PAYMENT_SUCCEEDED.value,
                kind=EventKind.PAYMENT_SUCCEEDED,
                occurred_at=now,
                organization_id=org,
                customer_id=customer,
                payment=ProviderPayment(
                    id=f"mock_pay_{suffix}",
                    amount=checkout.amount,
                    currency=checkout.currency,
                    customer_id=customer,
                    subscription_id=subscription_id,
                    period_start=period.start,
                    period_end=period.end,
                    price_id=checkout.price_id,
                ),
            )
        )
        return events

    async def create_portal_session(self, customer_id: str, return_url: str) -> str:
        """The mock has no portal: the customer goes back where they came from."""
        return return_url

    async def cancel_subscription(self, subscription_id: str, *, at_period_end: bool) -> None:
        """Nothing to do: saascore's own state is the mock's."""

    async def resume_subscription(self, subscription_id: str) -> None:
        """Nothing to do: saascore's own state is the mock's."""

    async def change_plan(self, subscription_id: str, price_id: str) -> None:
        """Nothing to do: saascore's own state is the mock's."""

    async def list_subscriptions(self) -> Sequence[ProviderSubscription]:
        return ()

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, *, now: datetime
    ) -> ProviderEvent:
        """The body is the event as JSON (`providers.codec`); nothing is signed."""
        if not body.strip():
            raise WebhookMalformed("the body is empty")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise WebhookMalformed("the body is not JSON") from None
        if not isinstance(data, dict):
            raise WebhookMalformed("the body is not a JSON object")
        return event_from_json(data, provider=PaymentProvider.MOCK, payload=data)

    async def aclose(self) -> None:
        """Nothing to close."""

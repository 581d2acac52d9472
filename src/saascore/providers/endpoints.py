"""The payment-provider routes.

- `POST /v1/webhooks/{provider}` (`stripe`, `lemonsqueezy`, `mock`): the providers'
  webhooks, verified on the raw body (no saascore credentials: the signature is the proof).
- `POST /v1/subscription/checkout`, `/portal`, `/cancel`, `/resume`, `/change-plan`: the
  caller's organisation at its provider (`billing:write`).
- `GET` and `POST /v1/checkout/mock/{token}`: the mock provider's confirmation page.
"""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from saascore.api.deps import CoreDep, OriginDep, client_address, require
from saascore.api.errors import error_responses
from saascore.billing.errors import (
    CreditPackCurrencyMismatch,
    CreditPackNotFound,
    InvalidTransition,
    PeriodEnded,
    PlanPriceMissing,
    SubscriptionExists,
    SubscriptionNotFound,
)
from saascore.billing.schemas import SubscriptionOut
from saascore.config import PaymentProviderChoice
from saascore.identity.endpoints import AUTH_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.kit.errors import InvalidInput
from saascore.kit.money import Money, format_money
from saascore.plans.errors import PlanNotFound
from saascore.providers.errors import (
    BillingCustomerMissing,
    CheckoutNotFound,
    MockWebhookRefused,
    PlanNotOffered,
    ProviderNotConfigured,
    ProviderPriceMissing,
    ProviderUnavailable,
    UnknownProvider,
    WebhookFailed,
    WebhookMalformed,
    WebhookSignatureInvalid,
    WebhookStale,
    WebhookTooLarge,
)
from saascore.providers.mock import MockCheckout
from saascore.providers.registry import url_name
from saascore.providers.schemas import (
    CheckoutCreate,
    CheckoutOut,
    MockCheckoutConfirmed,
    PortalOut,
    ProviderCancel,
    ProviderPlanChange,
    WebhookAck,
)
from saascore.providers.webhooks import WebhookReceipt

__all__ = [
    "create_mock_checkout_router",
    "create_provider_subscription_router",
    "create_provider_webhooks_router",
]

BillingWriter = Annotated[Principal, Depends(require(Permission.BILLING_WRITE))]
ProviderName = Annotated[
    str,
    Path(max_length=32, description="The provider: stripe, lemonsqueezy or mock"),
]
Token = Annotated[str, Path(max_length=4096, description="The mock checkout's token")]
_PROVIDER_ERRORS = (ProviderNotConfigured, ProviderUnavailable)


async def _capped_body(request: Request, limit: int) -> bytes:
    """The raw body, refused (413) as soon as it grows past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise WebhookTooLarge(f"the body is over {limit} bytes", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookTooLarge(f"the body is over {limit} bytes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def create_provider_webhooks_router() -> APIRouter:
    """`POST /v1/webhooks/{provider}`: the payment providers' webhooks."""
    router = APIRouter(prefix="/v1/webhooks", tags=["payment-providers"])

    @router.post(
        "/{provider}",
        summary="Receive a payment provider's webhook",
        responses=error_responses(
            UnknownProvider,
            WebhookSignatureInvalid,
            WebhookStale,
            WebhookMalformed,
            WebhookTooLarge,
            MockWebhookRefused,
            ProviderNotConfigured,
            WebhookFailed,
        ),
    )
    async def receive_provider_webhook(
        provider: ProviderName, request: Request, core: CoreDep
    ) -> WebhookAck:
        """A provider's webhook, verified on the raw body with the provider's secret (400
        `invalid_signature`, `stale_webhook` or `malformed_webhook`, nothing written). Each
        event is stored once and applied in the same transaction; a copy is acknowledged
        (`duplicate`) and not applied again; an unknown type or an event older than the
        state it would change is stored and ignored. 200 only after the commit; 500
        `webhook_failed` when applying failed, so the provider retries. `mock` webhooks are
        unsigned: taken in mock mode from loopback only (403 `mock_webhook_refused`)."""
        limit = core.settings.provider_webhook_max_bytes
        body = await _capped_body(request, limit)
        receipt = await core.provider_webhooks.receive(
            provider, dict(request.headers), body, client_host=client_address(request)
        )
        return WebhookAck.of(receipt)

    return router


def create_provider_subscription_router() -> APIRouter:
    """`/v1/subscription/...`: the caller's organisation at its payment provider."""
    router = APIRouter(prefix="/v1/subscription", tags=["billing"])

    @router.post(
        "/checkout",
        summary="Start a checkout",
        responses=error_responses(
            *AUTH_ERRORS,
            PermissionDenied,
            PlanNotFound,
            PlanNotOffered,
            PlanPriceMissing,
            CreditPackNotFound,
            CreditPackCurrencyMismatch,
            ProviderPriceMissing,
            SubscriptionExists,
            InvalidInput,
            *_PROVIDER_ERRORS,
        ),
    )
    async def start_checkout(
        body: CheckoutCreate, principal: BillingWriter, core: CoreDep, request: Request
    ) -> CheckoutOut:
        """A checkout at your organisation's payment provider for `plan` at `cycle`, or
        for the credit pack `pack`: send the customer to `url`. The subscription, or the
        pack's credits, follow from the provider's webhooks once it is paid. With the mock
        provider, `url` is saascore's own confirmation page."""
        started = await core.providers.checkout(
            principal.tenant, plan=body.plan, cycle=body.cycle, pack=body.pack
        )
        url = started.session.url
        if url.startswith("/"):  # the mock's page is served here
            url = str(request.base_url).rstrip("/") + url
        return CheckoutOut(id=started.session.id, url=url, provider=url_name(started.provider))

    @router.post(
        "/portal",
        summary="Open the customer portal",
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, BillingCustomerMissing, *_PROVIDER_ERRORS
        ),
    )
    async def open_portal(principal: BillingWriter, core: CoreDep) -> PortalOut:
        """A session of your payment provider's customer portal (payment methods, invoices
        at the provider); 409 `billing_customer_missing` before your first checkout."""
        return PortalOut(url=await core.providers.portal(principal.tenant))

    @router.post(
        "/cancel",
        summary="Cancel the subscription",
        responses=error_responses(
            *AUTH_ERRORS,
            PermissionDenied,
            SubscriptionNotFound,
            InvalidTransition,
            *_PROVIDER_ERRORS,
        ),
    )
    async def cancel_subscription(
        principal: BillingWriter,
        core: CoreDep,
        origin: OriginDep,
        body: ProviderCancel | None = None,
    ) -> SubscriptionOut:
        """Cancel at the period's end (the default) or now, at the provider and here. The
        body may be left out."""
        body = body or ProviderCancel()
        subscription = await core.providers.cancel(
            principal.tenant, at_period_end=body.at_period_end, actor=principal.actor(origin)
        )
        return SubscriptionOut.of(subscription)

    @router.post(
        "/resume",
        summary="Resume the subscription",
        responses=error_responses(
            *AUTH_ERRORS,
            PermissionDenied,
            SubscriptionNotFound,
            InvalidTransition,
            PeriodEnded,
            *_PROVIDER_ERRORS,
        ),
    )
    async def resume_subscription(
        principal: BillingWriter, core: CoreDep, origin: OriginDep
    ) -> SubscriptionOut:
        """Withdraw a cancellation at the period's end, at the provider and here."""
        subscription = await core.providers.resume(principal.tenant, actor=principal.actor(origin))
        return SubscriptionOut.of(subscription)

    @router.post(
        "/change-plan",
        summary="Change the subscription's plan",
        responses=error_responses(
            *AUTH_ERRORS,
            PermissionDenied,
            SubscriptionNotFound,
            PlanNotFound,
            PlanNotOffered,
            PlanPriceMissing,
            ProviderPriceMissing,
            InvalidTransition,
            *_PROVIDER_ERRORS,
        ),
    )
    async def change_subscription_plan(
        body: ProviderPlanChange, principal: BillingWriter, core: CoreDep, origin: OriginDep
    ) -> SubscriptionOut:
        """Move the subscription to `plan` at the same cycle: at the provider (which bills
        the change) and here, without saascore's proration."""
        subscription = await core.providers.change_plan(
            principal.tenant, body.plan, actor=principal.actor(origin)
        )
        return SubscriptionOut.of(subscription)

    return router


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mock checkout</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head>
<body><h1>Mock checkout</h1>
<p>This is saascore's mock payment provider: nothing is charged.</p>
<p><strong>{what}</strong>: {amount}</p>
<form method="post"><button type="submit" name="confirm" value="1">Confirm payment</button></form>
<p><a href="{cancel}">Cancel</a></p></body></html>
"""


def _describe(checkout: MockCheckout) -> tuple[str, str]:
    what = (
        f"Credit pack {checkout.pack}"
        if checkout.pack
        else f"Plan {checkout.plan} ({checkout.cycle.value if checkout.cycle else 'monthly'})"
    )
    price = format_money(
        Money(checkout.amount, checkout.currency), "en_US", numbering_system="latn"
    )
    return what, price


def _mock_mode(core: Any) -> None:
    if core.settings.payment_provider is not PaymentProviderChoice.MOCK:
        raise MockWebhookRefused("mock checkouts are taken only in mock mode")


def create_mock_checkout_router() -> APIRouter:
    """`/v1/checkout/mock/{token}`: the mock provider's confirmation page."""
    router = APIRouter(prefix="/v1/checkout/mock", tags=["payment-providers"])

    @router.get(
        "/{token}",
        summary="Show a mock checkout",
        response_class=HTMLResponse,
        responses={
            200: {"content": {"text/html": {}}, "description": "The confirmation page"},
            **error_responses(CheckoutNotFound, MockWebhookRefused),
        },
    )
    async def show_mock_checkout(token: Token, core: CoreDep) -> HTMLResponse:
        """The mock provider's confirmation page: what is bought, and a button that pays
        for it (nothing is charged). 404 `checkout_not_found` for a forged or expired link."""
        _mock_mode(core)
        checkout = core.provider_registry.mock.read_checkout(token)
        what, amount = _describe(checkout)
        page = _PAGE.format(
            what=html.escape(what),
            amount=html.escape(amount),
            cancel=html.escape(checkout.cancel_url, quote=True),
        )
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @router.post(
        "/{token}",
        summary="Confirm a mock checkout",
        responses={
            303: {"description": "Sent by the page's form: on to the checkout's success URL"},
            **error_responses(CheckoutNotFound, MockWebhookRefused, WebhookFailed),
        },
    )
    async def confirm_mock_checkout(
        token: Token, core: CoreDep, request: Request
    ) -> MockCheckoutConfirmed:
        """Pay the mock checkout: the events a provider would send (checkout completed, the
        subscription with its first period and its payment; or the credit pack's order)
        are applied through the webhook intake, so confirming twice changes nothing. A form
        post is redirected (303) to the success URL; otherwise the events are answered."""
        _mock_mode(core)
        mock = core.provider_registry.mock
        checkout = mock.read_checkout(token)
        receipts: list[WebhookReceipt] = []
        for event in mock.confirmation_events(checkout, core.provider_webhooks.clock()):
            receipts.append(await core.provider_webhooks.ingest(event))
        confirmed = MockCheckoutConfirmed(
            checkout_id=checkout.id,
            organization_id=checkout.organization_id,
            events=[WebhookAck.of(receipt) for receipt in receipts],
            redirect_url=checkout.success_url,
        )
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/x-www-form-urlencoded"):
            return RedirectResponse(checkout.success_url, status_code=303)  # type: ignore[return-value]
        return confirmed

    return router

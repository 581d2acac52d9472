"""The payment providers' refusals.

SaascoreError
├── DomainError
│   ├── WebhookRejected         (400) a webhook's signature, timestamp or body is refused
│   │   ├── WebhookSignatureInvalid (400) missing, forged, or over another body
│   │   ├── WebhookStale            (400) signed too long ago (or too far ahead)
│   │   ├── WebhookMalformed        (400) empty, not JSON, or not shaped as the provider's
│   │   └── WebhookTooLarge         (413) the body is over `provider_webhook_max_bytes`
│   ├── WebhookFailed           (500) applying a stored webhook failed: the provider retries
│   ├── ProviderUnavailable     (502) the provider did not answer, or answered an error
│   ├── NotFound
│   │   ├── UnknownProvider         (404) no payment provider of this name
│   │   ├── CheckoutNotFound        (404) a mock checkout's link is forged or expired
│   │   └── WebhookEventNotFound    (404) no stored webhook event with this id
│   ├── PermissionDenied
│   │   └── MockWebhookRefused      (403) unsigned mock webhooks: loopback, mock mode only
│   ├── Conflict
│   │   ├── ProviderNotConfigured   (409) the provider's settings are missing here
│   │   ├── BillingCustomerMissing  (409) the organisation is no provider's customer yet
│   │   └── PlanNotOffered          (409) a retired or unlisted plan: an operator's to give
│   └── InvalidInput
│       └── ProviderPriceMissing    (422) the plan or pack has no id at the provider
"""

from __future__ import annotations

from saascore.kit.errors import Conflict, DomainError, InvalidInput, NotFound, PermissionDenied

__all__ = [
    "BillingCustomerMissing",
    "CheckoutNotFound",
    "MockWebhookRefused",
    "PlanNotOffered",
    "ProviderNotConfigured",
    "ProviderPriceMissing",
    "ProviderUnavailable",
    "UnknownProvider",
    "WebhookEventNotFound",
    "WebhookFailed",
    "WebhookMalformed",
    "WebhookRejected",
    "WebhookSignatureInvalid",
    "WebhookStale",
    "WebhookTooLarge",
]


class WebhookRejected(DomainError):
    """(400) A provider's webhook that is not accepted: nothing of it is written."""

    code = "webhook_rejected"
    status_code = 400


class WebhookSignatureInvalid(WebhookRejected):
    """(400) The signature is missing, forged, or made over another body."""

    code = "invalid_signature"


class WebhookStale(WebhookRejected):
    """(400) The signature's timestamp is outside the tolerance (300 s)."""

    code = "stale_webhook"


class WebhookMalformed(WebhookRejected):
    """(400) The body is empty, not JSON, or not shaped as the provider's events are."""

    code = "malformed_webhook"


class ProviderUnavailable(DomainError):
    """(502) The payment provider could not be reached or answered with an error."""

    code = "provider_unavailable"
    status_code = 502


class WebhookTooLarge(WebhookRejected):
    """(413) The body is larger than `SAASCORE_PROVIDER_WEBHOOK_MAX_BYTES`."""

    code = "webhook_too_large"
    status_code = 413


class WebhookFailed(DomainError):
    """(500) The webhook was verified but applying it failed: nothing of it was applied, the
    failure is recorded on its stored event, and the provider's redelivery applies it."""

    code = "webhook_failed"
    status_code = 500


class UnknownProvider(NotFound):
    """(404) No payment provider of this name: `stripe`, `lemonsqueezy` or `mock`."""

    code = "provider_not_found"


class CheckoutNotFound(NotFound):
    """(404) The mock checkout's link is forged, altered or expired: start another."""

    code = "checkout_not_found"


class WebhookEventNotFound(NotFound):
    """(404) No stored provider webhook event with this id."""

    code = "webhook_event_not_found"


class MockWebhookRefused(PermissionDenied):
    """(403) Unsigned mock webhooks are taken only in mock mode, and only from loopback."""

    code = "mock_webhook_refused"


class ProviderNotConfigured(Conflict):
    """(409) The payment provider's settings (keys, secrets) are not set in this deployment."""

    code = "provider_not_configured"


class BillingCustomerMissing(Conflict):
    """(409) The organisation is not a customer of a payment provider yet: check out first."""

    code = "billing_customer_missing"


class PlanNotOffered(Conflict):
    """(409) A tenant asked for a plan that is retired (`is_active = false`) or unlisted
    (`is_public = false`): only an operator subscribes an organisation to it."""

    code = "plan_not_offered"
    stateful = True


class ProviderPriceMissing(InvalidInput):
    """(422) The plan's price for the cycle (or the credit pack) has no id at the provider:
    set it in the plan catalog (`stripe_price_id`, `lemon_squeezy_variant_id`) or the pack."""

    code = "provider_price_missing"
    stateful = True

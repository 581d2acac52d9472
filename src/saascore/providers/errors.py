"""The payment providers' refusals.

SaascoreError
├── DomainError
│   ├── WebhookRejected         (400) a webhook's signature, timestamp or body is refused
│   │   ├── WebhookSignatureInvalid (400) missing, forged, or over another body
│   │   ├── WebhookStale            (400) signed too long ago (or too far ahead)
│   │   └── WebhookMalformed        (400) empty, not JSON, or not shaped as the provider's
│   └── ProviderUnavailable     (502) the provider did not answer, or answered an error
"""

from __future__ import annotations

from saascore.kit.errors import DomainError

__all__ = [
    "ProviderUnavailable",
    "WebhookMalformed",
    "WebhookRejected",
    "WebhookSignatureInvalid",
    "WebhookStale",
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

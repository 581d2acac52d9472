"""The refusals of webhook endpoints and their deliveries.

InvalidInput (422)
├── WebhookUrlInvalid            `webhook_url_invalid`: not a URL a webhook can be sent to
│   ├── WebhookUrlTooLong        `webhook_url_too_long`: more than 2048 characters
│   ├── WebhookUrlNotHttps       `webhook_url_not_https`: http only with the private setting
│   ├── WebhookUrlUserinfo       `webhook_url_userinfo`: `user:password@` in the URL
│   ├── WebhookUrlPrivate        `webhook_url_private`: a loopback, private, link-local, ... address
│   └── WebhookUrlUnresolvable   `webhook_url_unresolvable`: the host name does not resolve
└── UnknownEventType             `unknown_event_type`: not a type an endpoint may subscribe to
NotFound (404)
├── WebhookEndpointNotFound
└── WebhookDeliveryNotFound
Conflict (409)
├── EndpointDisabled             `webhook_endpoint_disabled`: enable the endpoint first
├── DeliveryInFlight             `webhook_delivery_in_flight`: a dispatcher is sending it now
└── TooManyEndpoints             `too_many_webhook_endpoints`: the organisation has its maximum
"""

from __future__ import annotations

from saascore.kit.errors import Conflict, InvalidInput, NotFound

__all__ = [
    "DeliveryInFlight",
    "EndpointDisabled",
    "TooManyEndpoints",
    "UnknownEventType",
    "WebhookDeliveryNotFound",
    "WebhookEndpointNotFound",
    "WebhookUrlInvalid",
    "WebhookUrlNotHttps",
    "WebhookUrlPrivate",
    "WebhookUrlTooLong",
    "WebhookUrlUnresolvable",
    "WebhookUrlUserinfo",
]


class WebhookUrlInvalid(InvalidInput):
    """The URL is not one a webhook can be sent to."""

    code = "webhook_url_invalid"


class WebhookUrlTooLong(WebhookUrlInvalid):
    """The URL is longer than 2048 characters."""

    code = "webhook_url_too_long"


class WebhookUrlNotHttps(WebhookUrlInvalid):
    """Webhooks are sent over HTTPS only."""

    code = "webhook_url_not_https"


class WebhookUrlUserinfo(WebhookUrlInvalid):
    """The URL carries a user name or password; put credentials in a path or query instead."""

    code = "webhook_url_userinfo"


class WebhookUrlPrivate(WebhookUrlInvalid):
    """The URL's host is a loopback, private, link-local or otherwise non-public address."""

    code = "webhook_url_private"


class WebhookUrlUnresolvable(WebhookUrlInvalid):
    """The URL's host name does not resolve."""

    code = "webhook_url_unresolvable"


class UnknownEventType(InvalidInput):
    """An event type that endpoints cannot subscribe to (see the event-types catalogue)."""

    code = "unknown_event_type"


class WebhookEndpointNotFound(NotFound):
    """No webhook endpoint with this id in the caller's organisation."""

    code = "webhook_endpoint_not_found"


class WebhookDeliveryNotFound(NotFound):
    """No delivery with this id for this webhook endpoint."""

    code = "webhook_delivery_not_found"


class EndpointDisabled(Conflict):
    """The endpoint is disabled: enable it first."""

    code = "webhook_endpoint_disabled"


class DeliveryInFlight(Conflict):
    """A dispatcher is sending this delivery right now."""

    code = "webhook_delivery_in_flight"


class TooManyEndpoints(Conflict):
    """The organisation has `MAX_ENDPOINTS` webhook endpoints: delete one to make another."""

    code = "too_many_webhook_endpoints"

"""The catalogue of events: one payload class per type, with its JSON schema.

Public events go to tenants' webhook endpoints (`PUBLIC_EVENTS`, documented in the OpenAPI
document and in docs/webhooks.md); the others are audited only. A payload's fields are the
audit entry's `details` as well as the webhook's `data`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from pydantic import ConfigDict, Field

from saascore.events.bus import EventPayload

__all__ = [
    "EVENT_TYPES",
    "PUBLIC_EVENTS",
    "ApiKeyCreated",
    "ApiKeyRevoked",
    "AuthLogin",
    "AuthLoginFailed",
    "AuthLogout",
    "AuthRefreshTokenReused",
    "CatalogChanged",
    "CreditLowThresholdChanged",
    "CreditsExpired",
    "CreditsGranted",
    "CreditsLow",
    "LimitOverridden",
    "LimitOverrideCleared",
    "OperatorKeyRevoked",
    "OrganizationCreated",
    "OrganizationPlanChanged",
    "OrganizationResumed",
    "OrganizationSuspended",
    "OrganizationUpdated",
    "UsageLimitExceeded",
    "UsageThresholdReached",
    "UserCreated",
    "UserProvisioned",
    "UserRegistered",
    "UserRemoved",
    "UserRoleChanged",
    "UserUpdated",
    "WebhookDeliveryRetried",
    "WebhookEndpointCreated",
    "WebhookEndpointDeleted",
    "WebhookEndpointDisabled",
    "WebhookEndpointSecretRotated",
    "WebhookEndpointUpdated",
    "WebhookTest",
]


class _FromTo(EventPayload):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# --- usage ---------------------------------------------------------------------------------------
class UsageThresholdReached(EventPayload):
    """A metric's use crossed 80 % or 100 % of its limit in a period (once per period)."""

    type: ClassVar[str] = "usage.threshold_reached"
    audit_action: ClassVar[str | None] = None
    metric: str = Field(examples=["tokens"])
    period_start: datetime
    threshold_percent: int = Field(examples=[80])
    limit: int = Field(examples=[1_000_000])
    used: int = Field(examples=[800_512])


class UsageLimitExceeded(EventPayload):
    """A hard limit refused usage (at most once per metric and period)."""

    type: ClassVar[str] = "usage.limit_exceeded"
    audit_action: ClassVar[str | None] = None
    metric: str = Field(examples=["tokens"])
    period_start: datetime
    limit: int = Field(examples=[1_000_000])
    used: int = Field(examples=[999_000])
    requested: int = Field(examples=[4_000])


class LimitOverridden(_FromTo):
    type: ClassVar[str] = "limit.overridden"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "limit"
    metric: str
    from_: dict[str, Any] | None = Field(alias="from")
    to: dict[str, Any]


class LimitOverrideCleared(_FromTo):
    type: ClassVar[str] = "limit.override_cleared"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "limit"
    metric: str
    from_: dict[str, Any] | None = Field(alias="from")


# --- credits -------------------------------------------------------------------------------------
class CreditsGranted(EventPayload):
    """Credits were added to the organisation's balance."""

    type: ClassVar[str] = "credits.granted"
    target_type: ClassVar[str | None] = "credit_transaction"
    transaction_id: uuid.UUID
    grant_id: uuid.UUID
    amount: int = Field(examples=[5_000])
    source: str = Field(examples=["manual"])
    idempotency_key: str | None = Field(examples=["goodwill-812"])
    expires_at: datetime | None = None
    balance: int = Field(description="The balance after the grant", examples=[12_500])


class CreditsLow(EventPayload):
    """The balance fell below the organisation's `credit_low_threshold`."""

    type: ClassVar[str] = "credits.low"
    audit_action: ClassVar[str | None] = None
    balance: int = Field(examples=[90])
    threshold: int = Field(examples=[100])


class CreditsExpired(EventPayload):
    """Credits of a grant expired unused."""

    type: ClassVar[str] = "credits.expired"
    target_type: ClassVar[str | None] = "credit_grant"
    grant_id: uuid.UUID
    amount: int = Field(examples=[300])
    balance: int = Field(description="The balance after the expiry", examples=[1_200])


class CreditLowThresholdChanged(_FromTo):
    """The balance below which `credits.low` is sent changed (None: never)."""

    type: ClassVar[str] = "credits.low_threshold_changed"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "organization"
    from_: int | None = Field(alias="from")
    to: int | None


# --- organisations -------------------------------------------------------------------------------
class OrganizationCreated(EventPayload):
    type: ClassVar[str] = "organization.created"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "organization"
    name: str
    slug: str
    plan: str


class OrganizationUpdated(EventPayload):
    type: ClassVar[str] = "organization.updated"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "organization"
    changes: dict[str, Any]


class OrganizationPlanChanged(_FromTo):
    """The organisation moved to another plan."""

    type: ClassVar[str] = "organization.plan_changed"
    audit_action: ClassVar[str | None] = "plan.changed"
    affects_access: ClassVar[bool] = True
    target_type: ClassVar[str | None] = "organization"
    from_: str = Field(alias="from", examples=["free"])
    to: str = Field(examples=["pro"])


class OrganizationSuspended(EventPayload):
    """The organisation was suspended: its users and keys are refused until it resumes."""

    type: ClassVar[str] = "organization.suspended"
    affects_access: ClassVar[bool] = True
    target_type: ClassVar[str | None] = "organization"
    reason: str | None = Field(examples=["unpaid invoices"])


class OrganizationResumed(EventPayload):
    """The organisation's suspension was lifted."""

    type: ClassVar[str] = "organization.resumed"
    affects_access: ClassVar[bool] = True
    target_type: ClassVar[str | None] = "organization"
    reason: str | None = Field(examples=["invoices paid"])


class CatalogChanged(EventPayload):
    """A plan of the catalog changed (platform-wide: no organisation, no audit chain)."""

    type: ClassVar[str] = "catalog.changed"
    public: ClassVar[bool] = False
    audit_action: ClassVar[str | None] = None
    affects_access: ClassVar[bool] = True
    plans: list[str]


# --- users ---------------------------------------------------------------------------------------
class UserCreated(EventPayload):
    """A user was added to the organisation."""

    type: ClassVar[str] = "user.created"
    target_type: ClassVar[str | None] = "user"
    user_id: uuid.UUID
    email: str = Field(examples=["ada@engines.example"])
    role: str = Field(examples=["member"])


class UserRemoved(EventPayload):
    """A user was removed from the organisation."""

    type: ClassVar[str] = "user.removed"
    audit_action: ClassVar[str | None] = "user.deleted"
    affects_access: ClassVar[bool] = True
    target_type: ClassVar[str | None] = "user"
    user_id: uuid.UUID
    email: str = Field(examples=["ada@engines.example"])
    role: str = Field(examples=["member"])


class UserRoleChanged(_FromTo):
    type: ClassVar[str] = "user.role_changed"
    public: ClassVar[bool] = False
    affects_access: ClassVar[bool] = True
    target_type: ClassVar[str | None] = "user"
    from_: str = Field(alias="from")
    to: str


class UserUpdated(EventPayload):
    model_config = ConfigDict(frozen=True, extra="allow")
    type: ClassVar[str] = "user.updated"
    public: ClassVar[bool] = False
    affects_access: ClassVar[bool] = True
    target_type: ClassVar[str | None] = "user"


class UserRegistered(EventPayload):
    type: ClassVar[str] = "user.registered"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "user"
    email: str
    organization: str


class UserProvisioned(EventPayload):
    type: ClassVar[str] = "user.provisioned"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "user"
    external_platform: str
    external_id: str


class AuthLogin(EventPayload):
    type: ClassVar[str] = "auth.login"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "user"
    rehashed: bool


class AuthLoginFailed(EventPayload):
    type: ClassVar[str] = "auth.login_failed"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "user"
    email: str


class AuthLogout(EventPayload):
    type: ClassVar[str] = "auth.logout"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "user"


class AuthRefreshTokenReused(EventPayload):
    type: ClassVar[str] = "auth.refresh_token_reused"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "user"
    family_id: str
    revoked: int


# --- API keys ------------------------------------------------------------------------------------
class ApiKeyCreated(EventPayload):
    """An API key was made (the key itself is never sent)."""

    type: ClassVar[str] = "api_key.created"
    target_type: ClassVar[str | None] = "api_key"
    key_id: uuid.UUID
    name: str = Field(examples=["ingest"])
    prefix: str = Field(examples=["sk_live_ab12cd34"])
    scopes: list[str] = Field(examples=[["usage:write"]])
    user_id: uuid.UUID | None = None
    expires_at: datetime | None = None


class ApiKeyRevoked(EventPayload):
    """An API key was revoked: it is refused from now on."""

    type: ClassVar[str] = "api_key.revoked"
    affects_access: ClassVar[bool] = True
    target_type: ClassVar[str | None] = "api_key"
    key_id: uuid.UUID
    name: str = Field(examples=["ingest"])
    prefix: str = Field(examples=["sk_live_ab12cd34"])


class OperatorKeyRevoked(EventPayload):
    """An operator key was revoked (platform-wide: no organisation, no audit chain)."""

    type: ClassVar[str] = "operator_key.revoked"
    public: ClassVar[bool] = False
    audit_action: ClassVar[str | None] = None
    affects_access: ClassVar[bool] = True
    key_id: uuid.UUID


# --- webhooks ------------------------------------------------------------------------------------
class WebhookEndpointDisabled(EventPayload):
    """An endpoint that failed for 3 days was disabled (or an admin disabled it)."""

    type: ClassVar[str] = "webhook_endpoint.disabled"
    target_type: ClassVar[str | None] = "webhook_endpoint"
    endpoint_id: uuid.UUID
    url: str
    reason: str


class WebhookTest(EventPayload):
    """Sent by `POST /v1/webhook-endpoints/{id}/test`, to that endpoint only."""

    type: ClassVar[str] = "webhook.test"
    audit_action: ClassVar[str | None] = None
    endpoint_id: uuid.UUID
    message: str = "a test event from saascore"


class WebhookEndpointCreated(EventPayload):
    type: ClassVar[str] = "webhook_endpoint.created"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "webhook_endpoint"
    endpoint_id: uuid.UUID
    url: str
    event_types: list[str]
    description: str | None = None


class WebhookEndpointUpdated(EventPayload):
    type: ClassVar[str] = "webhook_endpoint.updated"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "webhook_endpoint"
    endpoint_id: uuid.UUID
    #: Each changed field: `{"from": ..., "to": ...}`.
    changes: dict[str, Any]


class WebhookEndpointDeleted(EventPayload):
    type: ClassVar[str] = "webhook_endpoint.deleted"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "webhook_endpoint"
    endpoint_id: uuid.UUID
    url: str


class WebhookEndpointSecretRotated(EventPayload):
    """A new signing secret; the previous one signs beside it until `previous_expires_at`
    (the secrets themselves are never in an event)."""

    type: ClassVar[str] = "webhook_endpoint.secret_rotated"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "webhook_endpoint"
    endpoint_id: uuid.UUID
    previous_expires_at: datetime


class WebhookDeliveryRetried(EventPayload):
    """An admin asked for a delivery to be sent again now."""

    type: ClassVar[str] = "webhook_delivery.retried"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "webhook_delivery"
    endpoint_id: uuid.UUID
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str


EVENT_TYPES: dict[str, type[EventPayload]] = {
    payload.type: payload
    for payload in (
        UsageThresholdReached,
        UsageLimitExceeded,
        LimitOverridden,
        LimitOverrideCleared,
        CreditsGranted,
        CreditsLow,
        CreditsExpired,
        CreditLowThresholdChanged,
        OrganizationCreated,
        OrganizationUpdated,
        OrganizationPlanChanged,
        OrganizationSuspended,
        OrganizationResumed,
        CatalogChanged,
        UserCreated,
        UserRemoved,
        UserRoleChanged,
        UserUpdated,
        UserRegistered,
        UserProvisioned,
        AuthLogin,
        AuthLoginFailed,
        AuthLogout,
        AuthRefreshTokenReused,
        ApiKeyCreated,
        ApiKeyRevoked,
        OperatorKeyRevoked,
        WebhookEndpointDisabled,
        WebhookTest,
        WebhookEndpointCreated,
        WebhookEndpointUpdated,
        WebhookEndpointDeleted,
        WebhookEndpointSecretRotated,
        WebhookDeliveryRetried,
    )
}

#: The types a webhook endpoint may subscribe to (`webhook.test` is sent on request only).
PUBLIC_EVENTS: dict[str, type[EventPayload]] = {
    name: payload
    for name, payload in EVENT_TYPES.items()
    if payload.public and name != WebhookTest.type
}

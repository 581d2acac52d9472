"""The catalogue of events: one payload class per type, with its JSON schema.

Public events go to tenants' webhook endpoints (`PUBLIC_EVENTS`, documented in the OpenAPI
document and in docs/webhooks.md); the others are audited only. A payload's fields are the
audit entry's `details` as well as the webhook's `data`.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
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
    "CouponRedeemed",
    "CreditLowThresholdChanged",
    "CreditsExpired",
    "CreditsGranted",
    "CreditsLow",
    "CreditsPurchased",
    "DocumentCreated",
    "DocumentDeleted",
    "InvoiceDraftDeleted",
    "InvoiceFinalized",
    "InvoiceMarkedUncollectible",
    "InvoiceOverdue",
    "InvoicePaid",
    "InvoiceVoided",
    "JobFailed",
    "JobSucceeded",
    "LimitOverridden",
    "LimitOverrideCleared",
    "OperatorKeyRevoked",
    "OrganizationCreated",
    "OrganizationPlanChanged",
    "OrganizationResumed",
    "OrganizationSuspended",
    "OrganizationTaxRateChanged",
    "OrganizationUpdated",
    "PaymentFailed",
    "PaymentRefunded",
    "PaymentSucceeded",
    "StorageRepaired",
    "SubscriptionCanceled",
    "SubscriptionCreated",
    "SubscriptionExpired",
    "SubscriptionRenewed",
    "SubscriptionTrialWillEnd",
    "SubscriptionUpdated",
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
    metric: str = Field(description="The meter's code", examples=["tokens"])
    period_start: datetime = Field(description="The start of the meter's current period")
    threshold_percent: int = Field(
        description="The share of the limit reached, in percent", examples=[80]
    )
    limit: int = Field(description="The limit this period", examples=[1_000_000])
    used: int = Field(description="Usage this period", examples=[800_512])


class UsageLimitExceeded(EventPayload):
    """A hard limit refused usage (at most once per metric and period)."""

    type: ClassVar[str] = "usage.limit_exceeded"
    audit_action: ClassVar[str | None] = None
    metric: str = Field(description="The meter's code", examples=["tokens"])
    period_start: datetime = Field(description="The start of the meter's current period")
    limit: int = Field(description="The limit this period", examples=[1_000_000])
    used: int = Field(description="Usage this period", examples=[999_000])
    requested: int = Field(description="The quantity refused", examples=[4_000])


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


# --- invoices ------------------------------------------------------------------------------------
class _InvoiceEvent(EventPayload):
    target_type: ClassVar[str | None] = "invoice"
    invoice_id: uuid.UUID = Field(description="The invoice's id")
    number: str = Field(description="The invoice's number", examples=["INV-2026-0001"])
    currency: str = Field(description="ISO 4217 currency code", examples=["USD"])
    total: int = Field(description="The total, in minor units of the currency", examples=[3449])
    amount_due: int = Field(
        description="What is left to pay, in minor units of the currency", examples=[3449]
    )


class InvoiceFinalized(_InvoiceEvent):
    """A draft invoice was finalised: it has its number and is open for payment."""

    type: ClassVar[str] = "invoice.finalized"
    due_date: date = Field(description="The day the invoice falls due")


class InvoiceOverdue(_InvoiceEvent):
    """An open invoice passed its due date unpaid (sent once per invoice, by the billing
    run's dunning step)."""

    type: ClassVar[str] = "invoice.overdue"
    due_date: date = Field(description="The day the invoice fell due")


class InvoiceVoided(_InvoiceEvent):
    """An open invoice was voided: nothing is owed on it; it keeps its number."""

    type: ClassVar[str] = "invoice.voided"


class CouponRedeemed(EventPayload):
    """The organisation redeemed a coupon, on its subscription or on a draft invoice."""

    type: ClassVar[str] = "coupon.redeemed"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "coupon_redemption"
    redemption_id: uuid.UUID = Field(description="The redemption's id")
    coupon: str = Field(description="The coupon's code")
    subscription_id: uuid.UUID | None = Field(description="The subscription it applies to")
    invoice_id: uuid.UUID | None = Field(description="The draft invoice it applies to")


class OrganizationTaxRateChanged(_FromTo):
    """An operator set the organisation's tax rate (basis points)."""

    type: ClassVar[str] = "organization.tax_rate_changed"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "organization"
    from_: int = Field(alias="from")
    to: int


class InvoiceDraftDeleted(EventPayload):
    """An operator deleted a draft invoice: it had no number, so no gap is left."""

    type: ClassVar[str] = "invoice.draft_deleted"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "invoice"
    invoice_id: uuid.UUID = Field(description="The draft's id")
    currency: str = Field(description="ISO 4217 currency code", examples=["USD"])
    total: int = Field(description="Its total, in minor units of the currency", examples=[3449])
    lines: int = Field(description="How many lines it had", examples=[2])
    subscription_id: uuid.UUID | None = Field(description="The subscription it billed, if any")


class InvoiceMarkedUncollectible(_InvoiceEvent):
    """An operator wrote an open invoice off as uncollectible."""

    type: ClassVar[str] = "invoice.marked_uncollectible"
    public: ClassVar[bool] = False


class InvoicePaid(_InvoiceEvent):
    """A payment brought the invoice's amount due to zero, or it was finalised owing
    nothing (a 100 % coupon): it is paid in full."""

    type: ClassVar[str] = "invoice.paid"
    amount_paid: int = Field(
        description="What was paid, in minor units of the currency", examples=[3449]
    )
    paid_at: datetime = Field(
        description="When the last payment made it paid (or, owing nothing, it was finalised)"
    )


# --- payments ------------------------------------------------------------------------------------
class _PaymentEvent(EventPayload):
    target_type: ClassVar[str | None] = "payment"
    payment_id: uuid.UUID = Field(description="The payment's id")
    invoice_id: uuid.UUID | None = Field(description="The invoice it pays, if any")
    invoice_number: str | None = Field(
        default=None, description="That invoice's number", examples=["INV-2026-0001"]
    )
    currency: str = Field(description="ISO 4217 currency code", examples=["USD"])
    amount: int = Field(
        description="The payment's amount, in minor units of the currency", examples=[1500]
    )
    method: str = Field(description="How it was paid", examples=["credit_card"])
    method_name: str | None = Field(
        default=None,
        description="The provider-specific method's name, when not one of the methods",
        examples=["tharwatt"],
    )
    status: str = Field(description="The payment's status now", examples=["succeeded"])


class PaymentSucceeded(_PaymentEvent):
    """A payment was received and applied to its invoice."""

    type: ClassVar[str] = "payment.succeeded"
    amount_due: int = Field(
        description="What is left to pay on the invoice after it, in minor units", examples=[0]
    )


class PaymentFailed(_PaymentEvent):
    """A payment failed; the invoice is unchanged."""

    type: ClassVar[str] = "payment.failed"
    failure_reason: str = Field(
        description="Why it failed, as reported", examples=["card declined"]
    )


class PaymentRefunded(_PaymentEvent):
    """Part or all of a payment was refunded; its invoice's amount paid went down by as much."""

    type: ClassVar[str] = "payment.refunded"
    refund_amount: int = Field(description="This refund, in minor units", examples=[500])
    refunded_amount: int = Field(
        description="Everything refunded of the payment so far, in minor units", examples=[500]
    )
    reason: str | None = Field(default=None, description="Why, as given", examples=["goodwill"])
    credits_reversed: int = Field(
        default=0,
        description="Credits of a refunded credit pack taken back by this refund",
        examples=[0],
    )


# --- credits -------------------------------------------------------------------------------------
class CreditsGranted(EventPayload):
    """Credits were added to the organisation's balance."""

    type: ClassVar[str] = "credits.granted"
    target_type: ClassVar[str | None] = "credit_transaction"
    transaction_id: uuid.UUID = Field(description="The ledger transaction of the grant")
    grant_id: uuid.UUID = Field(description="The grant's id")
    amount: int = Field(description="Credits granted", examples=[5_000])
    source: str = Field(description="Where the credits came from", examples=["manual"])
    idempotency_key: str | None = Field(
        description="The key the grant was made with", examples=["goodwill-812"]
    )
    expires_at: datetime | None = Field(
        default=None, description="When unused credits expire; null: never"
    )
    balance: int = Field(description="The balance after the grant", examples=[12_500])


class CreditsPurchased(EventPayload):
    """A paid invoice's credit packs granted their credits (once per invoice)."""

    type: ClassVar[str] = "credits.purchased"
    target_type: ClassVar[str | None] = "payment"
    payment_id: uuid.UUID = Field(description="The payment that paid the invoice in full")
    invoice_id: uuid.UUID = Field(description="The invoice of the credit packs")
    credits: int = Field(description="Credits granted", examples=[100])
    packs: list[str] = Field(description="The packs' codes, one per line", examples=[["p100"]])
    transaction_id: uuid.UUID = Field(description="The ledger transaction of the grant")
    balance: int = Field(description="The balance after the grant", examples=[12_500])


class CreditsLow(EventPayload):
    """The balance fell below the organisation's `credit_low_threshold`."""

    type: ClassVar[str] = "credits.low"
    audit_action: ClassVar[str | None] = None
    balance: int = Field(description="The balance now", examples=[90])
    threshold: int = Field(description="The organisation's low-balance threshold", examples=[100])


class CreditsExpired(EventPayload):
    """Credits of a grant expired unused."""

    type: ClassVar[str] = "credits.expired"
    target_type: ClassVar[str | None] = "credit_grant"
    grant_id: uuid.UUID = Field(description="The grant that expired")
    amount: int = Field(description="Credits that expired unused", examples=[300])
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
    from_: str = Field(description="The previous plan's code", alias="from", examples=["free"])
    to: str = Field(description="The new plan's code", examples=["pro"])


class OrganizationSuspended(EventPayload):
    """The organisation was suspended: its users and keys are refused until it resumes."""

    type: ClassVar[str] = "organization.suspended"
    affects_access: ClassVar[bool] = True
    target_type: ClassVar[str | None] = "organization"
    reason: str | None = Field(
        description="Why, as the operator gave it", examples=["unpaid invoices"]
    )


class OrganizationResumed(EventPayload):
    """The organisation's suspension was lifted."""

    type: ClassVar[str] = "organization.resumed"
    affects_access: ClassVar[bool] = True
    target_type: ClassVar[str | None] = "organization"
    reason: str | None = Field(
        description="Why, as the operator gave it", examples=["invoices paid"]
    )


# --- subscriptions -------------------------------------------------------------------------------
class _SubscriptionEvent(EventPayload):
    target_type: ClassVar[str | None] = "subscription"
    subscription_id: uuid.UUID = Field(description="The subscription's id")
    plan: str = Field(description="The plan's code", examples=["pro"])
    status: str = Field(description="The subscription's status now", examples=["active"])
    billing_cycle: str = Field(description="monthly, quarterly or yearly", examples=["monthly"])
    currency: str = Field(description="ISO 4217 code of the price", examples=["USD"])
    unit_amount: int = Field(
        description="The price per period, in minor units of `currency`", examples=[2_999]
    )
    current_period_start: datetime = Field(description="Start of the current period")
    current_period_end: datetime = Field(description="End of the current period (excluded)")
    cancel_at_period_end: bool = Field(description="Whether it ends at the current period's end")
    trial_end: datetime | None = Field(default=None, description="When the trial ends; null: none")


class SubscriptionCreated(_SubscriptionEvent):
    """The organisation subscribed to a plan."""

    type: ClassVar[str] = "subscription.created"


class SubscriptionUpdated(_SubscriptionEvent):
    """The plan changed (an upgrade at once), or a downgrade or a cancellation was scheduled
    for the period's end, or withdrawn."""

    type: ClassVar[str] = "subscription.updated"
    changes: dict[str, Any] = Field(
        description="Each changed field's `from` and `to`",
        examples=[{"plan": {"from": "starter", "to": "pro"}}],
    )


class SubscriptionCanceled(_SubscriptionEvent):
    """The subscription ended by choice: canceled now, or at the end of its period."""

    type: ClassVar[str] = "subscription.canceled"
    ends_at: datetime = Field(description="When what was paid for ends: the plan stays until then")


class SubscriptionExpired(_SubscriptionEvent):
    """The subscription ended unpaid."""

    type: ClassVar[str] = "subscription.expired"


class SubscriptionRenewed(_SubscriptionEvent):
    """The billing run opened the subscription's next period (or ended its trial) and issued
    the period's invoice (none for a free plan)."""

    type: ClassVar[str] = "subscription.renewed"
    invoice_id: uuid.UUID | None = Field(
        default=None, description="The period's invoice; null: nothing was billed (a free plan)"
    )
    trial_ended: bool = Field(
        default=False, description="Whether this renewal ended a trial (the first paid period)"
    )


class SubscriptionTrialWillEnd(_SubscriptionEvent):
    """The trial ends in three days or less: sent once per trial, by the billing run."""

    type: ClassVar[str] = "subscription.trial_will_end"


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
    user_id: uuid.UUID = Field(description="The new user's id")
    email: str = Field(description="The user's e-mail address", examples=["ada@engines.example"])
    role: str = Field(description="The user's role", examples=["member"])


class UserRemoved(EventPayload):
    """A user was removed from the organisation."""

    type: ClassVar[str] = "user.removed"
    audit_action: ClassVar[str | None] = "user.deleted"
    affects_access: ClassVar[bool] = True
    target_type: ClassVar[str | None] = "user"
    user_id: uuid.UUID = Field(description="The removed user's id")
    email: str = Field(description="The user's e-mail address", examples=["ada@engines.example"])
    role: str = Field(description="The role the user had", examples=["member"])


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
    key_id: uuid.UUID = Field(description="The key's id")
    name: str = Field(description="The key's name", examples=["ingest"])
    prefix: str = Field(
        description="The start of the key, to recognise it", examples=["sk_live_ab12cd34"]
    )
    scopes: list[str] = Field(description="What the key may do", examples=[["usage:write"]])
    user_id: uuid.UUID | None = Field(
        default=None, description="The user the key acts for; null: a service key"
    )
    expires_at: datetime | None = Field(
        default=None, description="When it stops working; null: never"
    )


class ApiKeyRevoked(EventPayload):
    """An API key was revoked: it is refused from now on."""

    type: ClassVar[str] = "api_key.revoked"
    affects_access: ClassVar[bool] = True
    target_type: ClassVar[str | None] = "api_key"
    key_id: uuid.UUID = Field(description="The key's id")
    name: str = Field(description="The key's name", examples=["ingest"])
    prefix: str = Field(
        description="The start of the key, to recognise it", examples=["sk_live_ab12cd34"]
    )


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
    endpoint_id: uuid.UUID = Field(description="The endpoint's id")
    url: str = Field(description="The endpoint's URL")
    reason: str = Field(description="Why it was disabled")


class WebhookTest(EventPayload):
    """Sent by `POST /v1/webhook-endpoints/{id}/test`, to that endpoint only."""

    type: ClassVar[str] = "webhook.test"
    audit_action: ClassVar[str | None] = None
    endpoint_id: uuid.UUID = Field(description="The endpoint tested")
    message: str = Field(default="a test event from saascore", description="A fixed text")


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
    changes: dict[str, Any] = Field(description='Each changed field: `{"from": ..., "to": ...}`.')


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


# --- workspace -----------------------------------------------------------------------------------
class DocumentCreated(EventPayload):
    """A document was registered; its size now counts against the storage limit."""

    type: ClassVar[str] = "document.created"
    target_type: ClassVar[str | None] = "document"
    document_id: uuid.UUID = Field(description="The document's id")
    folder_id: uuid.UUID | None = Field(description="Its folder; null: the root")
    filename: str = Field(description="The document's file name", examples=["report.pdf"])
    size_bytes: int = Field(description="Its size, in bytes", examples=[48_213])
    file_hash: str = Field(description="SHA-256 of its content, in hex")


class DocumentDeleted(EventPayload):
    """A document was deleted (on its own or with its folder); its size was freed."""

    type: ClassVar[str] = "document.deleted"
    target_type: ClassVar[str | None] = "document"
    document_id: uuid.UUID = Field(description="The document's id")
    folder_id: uuid.UUID | None = Field(description="Its folder; null: the root")
    filename: str = Field(description="The document's file name", examples=["report.pdf"])
    size_bytes: int = Field(description="The bytes freed", examples=[48_213])


class JobSucceeded(EventPayload):
    """A processing job finished with a result (cached for identical jobs)."""

    type: ClassVar[str] = "job.succeeded"
    target_type: ClassVar[str | None] = "processing_job"
    job_id: uuid.UUID = Field(description="The job's id")
    document_id: uuid.UUID | None = Field(description="The document it processed")
    job_type: str = Field(description="The kind of processing", examples=["parse"])
    input_tokens: int = Field(description="Tokens read", examples=[1_200])
    output_tokens: int = Field(description="Tokens written", examples=[300])


class JobFailed(EventPayload):
    """A processing job failed; the error is kept on the job."""

    type: ClassVar[str] = "job.failed"
    target_type: ClassVar[str | None] = "processing_job"
    job_id: uuid.UUID = Field(description="The job's id")
    document_id: uuid.UUID | None = Field(description="The document it processed")
    job_type: str = Field(description="The kind of processing", examples=["parse"])
    error: str = Field(description="What went wrong", examples=["the PDF is encrypted"])


class StorageRepaired(_FromTo):
    """`saascore storage verify --fix` set the storage gauge to what the documents add up to."""

    type: ClassVar[str] = "storage.repaired"
    public: ClassVar[bool] = False
    target_type: ClassVar[str | None] = "organization"
    from_: int = Field(alias="from")
    to: int


EVENT_TYPES: dict[str, type[EventPayload]] = {
    payload.type: payload
    for payload in (
        UsageThresholdReached,
        UsageLimitExceeded,
        LimitOverridden,
        LimitOverrideCleared,
        CreditsGranted,
        CreditsLow,
        CreditsPurchased,
        CreditsExpired,
        CreditLowThresholdChanged,
        InvoiceFinalized,
        InvoiceOverdue,
        InvoiceVoided,
        InvoiceMarkedUncollectible,
        InvoiceDraftDeleted,
        InvoicePaid,
        PaymentSucceeded,
        PaymentFailed,
        PaymentRefunded,
        OrganizationTaxRateChanged,
        OrganizationCreated,
        OrganizationUpdated,
        OrganizationPlanChanged,
        OrganizationSuspended,
        OrganizationResumed,
        SubscriptionCreated,
        SubscriptionUpdated,
        SubscriptionCanceled,
        SubscriptionExpired,
        SubscriptionRenewed,
        SubscriptionTrialWillEnd,
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
        DocumentCreated,
        DocumentDeleted,
        JobSucceeded,
        JobFailed,
        StorageRepaired,
    )
}

#: The types a webhook endpoint may subscribe to (`webhook.test` is sent on request only).
PUBLIC_EVENTS: dict[str, type[EventPayload]] = {
    name: payload
    for name, payload in EVENT_TYPES.items()
    if payload.public and name != WebhookTest.type
}

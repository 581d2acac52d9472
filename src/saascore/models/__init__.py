"""Every table of saascore, re-exported so that `Base.metadata` sees them all.

Tenant tables are keyed `(organization_id, id)`; the catalog tables (plans, prices, limits,
meters, model prices), invoice sequences and webhook events are global. The `...Model` aliases
keep seed 000's names working.
"""

from saascore.models.audit import AuditChainHead, AuditLog
from saascore.models.base import Base, TenantMixin
from saascore.models.billing import (
    LIVE_SUBSCRIPTION_STATUSES,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    InvoiceStatus,
    Payment,
    PaymentMethod,
    PaymentProvider,
    PaymentStatus,
    Subscription,
    TransactionType,
    WebhookEvent,
    WebhookOutcome,
)
from saascore.models.catalog import (
    Aggregation,
    BillingCycle,
    Meter,
    ModelPricing,
    PlanLimit,
    PlanPrice,
    ResetPeriod,
    SubscriptionPlan,
)
from saascore.models.coupons import Coupon, CouponDuration, CouponRedemption, CreditPack
from saascore.models.credits import (
    CreditAllocation,
    CreditGrant,
    CreditSource,
    CreditTransaction,
    CreditTransactionType,
)
from saascore.models.events import (
    DeliveryStatus,
    OutboxEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from saascore.models.identity import ApiKey, ApiKeyEnvironment, OperatorKey, RefreshToken
from saascore.models.tenancy import (
    Organization,
    OrganizationStatus,
    SubscriptionStatus,
    User,
    UserRole,
)
from saascore.models.usage import (
    ReservationStatus,
    UsageAlert,
    UsageCounter,
    UsageDailySummary,
    UsageEvent,
    UsageLimits,
    UsageReservation,
)
from saascore.models.workspace import (
    ACTIVE_JOB_STATUSES,
    ConversationSummary,
    Document,
    DocumentFolder,
    DocumentGeneration,
    DocumentStatus,
    FileSearchStore,
    Folder,
    GenerationType,
    JobStatus,
    MemoryEntry,
    ProcessingJob,
    UserPreference,
)

# Seed 000's names.
OrganizationModel = Organization
UserModel = User
FolderModel = Folder
DocumentModel = Document
AuditLogModel = AuditLog
ProcessingJobModel = ProcessingJob
DocumentGenerationModel = DocumentGeneration
UserPreferenceModel = UserPreference
ConversationSummaryModel = ConversationSummary
MemoryEntryModel = MemoryEntry
FileSearchStoreModel = FileSearchStore
DocumentFolderModel = DocumentFolder
SubscriptionPlanModel = SubscriptionPlan
UsageEventModel = UsageEvent
UsageDailySummaryModel = UsageDailySummary
UsageLimitsModel = UsageLimits
ModelPricingModel = ModelPricing

__all__ = [
    "ACTIVE_JOB_STATUSES",
    "LIVE_SUBSCRIPTION_STATUSES",
    "Aggregation",
    "ApiKey",
    "ApiKeyEnvironment",
    "AuditChainHead",
    "AuditLog",
    "AuditLogModel",
    "Base",
    "BillingCycle",
    "ConversationSummary",
    "ConversationSummaryModel",
    "Coupon",
    "CouponDuration",
    "CouponRedemption",
    "CreditAllocation",
    "CreditGrant",
    "CreditPack",
    "CreditSource",
    "CreditTransaction",
    "CreditTransactionType",
    "DeliveryStatus",
    "Document",
    "DocumentFolder",
    "DocumentFolderModel",
    "DocumentGeneration",
    "DocumentGenerationModel",
    "DocumentModel",
    "DocumentStatus",
    "FileSearchStore",
    "FileSearchStoreModel",
    "Folder",
    "FolderModel",
    "GenerationType",
    "Invoice",
    "InvoiceLine",
    "InvoiceSequence",
    "InvoiceStatus",
    "JobStatus",
    "MemoryEntry",
    "MemoryEntryModel",
    "Meter",
    "ModelPricing",
    "ModelPricingModel",
    "OperatorKey",
    "Organization",
    "OrganizationModel",
    "OrganizationStatus",
    "OutboxEvent",
    "Payment",
    "PaymentMethod",
    "PaymentProvider",
    "PaymentStatus",
    "PlanLimit",
    "PlanPrice",
    "ProcessingJob",
    "ProcessingJobModel",
    "RefreshToken",
    "ReservationStatus",
    "ResetPeriod",
    "Subscription",
    "SubscriptionPlan",
    "SubscriptionPlanModel",
    "SubscriptionStatus",
    "TenantMixin",
    "TransactionType",
    "UsageAlert",
    "UsageCounter",
    "UsageDailySummary",
    "UsageDailySummaryModel",
    "UsageEvent",
    "UsageEventModel",
    "UsageLimits",
    "UsageLimitsModel",
    "UsageReservation",
    "User",
    "UserModel",
    "UserPreference",
    "UserPreferenceModel",
    "UserRole",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookOutcome",
]

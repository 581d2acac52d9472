"""`Saascore`, the facade that wires the database and every service from `Settings`."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from saascore.audit.service import AuditService
from saascore.billing.coupons import CouponService
from saascore.billing.dunning import DunningService
from saascore.billing.invoices import InvoiceService
from saascore.billing.overview import BillingOverviewService
from saascore.billing.packs import CreditPackService
from saascore.billing.payments import PaymentService
from saascore.billing.provider_sync import ProviderBilling
from saascore.billing.render import InvoiceRenderer
from saascore.billing.run import BillingRun
from saascore.billing.subscriptions import SubscriptionService
from saascore.config import Settings, load_settings
from saascore.credits.service import CreditService
from saascore.events.bus import Event, EventBus
from saascore.events.catalog import WebhookDeliveryRetried
from saascore.events.dispatcher import Dispatcher, Doorbell
from saascore.events.service import WebhookService
from saascore.identity.api_keys import ApiKeyService
from saascore.identity.cache import PrincipalCache
from saascore.identity.service import IdentityService
from saascore.identity.tokens import signing_key
from saascore.kit.db import Database
from saascore.llm.client import HttpGateway, LLMClient, MockGateway
from saascore.metering.ratelimit import RateLimiter
from saascore.metering.service import UsageService
from saascore.plans.pricing import ModelPricingService
from saascore.plans.service import PlanService
from saascore.providers.reconcile import Reconciler
from saascore.providers.registry import ProviderRegistry
from saascore.providers.service import PaymentProviderService
from saascore.providers.webhooks import ProviderWebhooks
from saascore.tenancy.service import OrganizationService
from saascore.tenancy.users import UserService
from saascore.workspace.documents import DocumentService
from saascore.workspace.jobs import JobService
from saascore.workspace.memory import MemoryService
from saascore.workspace.rag import RagStoreService

__all__ = ["Saascore"]

log = logging.getLogger(__name__)


class Saascore:
    """saascore in one object: `async with Saascore(settings) as core: await core.orgs.create(...)`.

    Entering builds the `Database` (and migrates it when `auto_migrate` is on); leaving closes
    its connections. Services are attributes: `core.plans`, `core.pricing` (model prices),
    `core.orgs`, `core.users`, `core.identity`, `core.api_keys`, `core.audit`, `core.usage`,
    `core.credits`, `core.subscriptions`, `core.invoices`, `core.invoice_renderer` (their
    HTML and PDF), `core.dunning` (unpaid invoices), `core.payments`, `core.coupons`,
    `core.credit_packs`, `core.providers` (checkouts and subscription changes at the payment
    provider), `core.provider_webhooks` (their webhooks' intake), `core.provider_billing`
    (what those webhooks become), `core.reconciler` (the provider's subscriptions compared
    with saascore's, and fixed), `core.documents` (folders and documents, against the storage
    limit) and `core.jobs` (processing jobs, generations and generation preferences);
    `core.events` is the bus they emit into.
    """

    def __init__(
        self, settings: Settings | None = None, *, database: Database | None = None
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.database = database if database is not None else Database(self.settings)
        self._owns_database = database is None
        #: Every service emits into this bus: the audit log writes its entries in the
        #: transaction, and the principal cache is cleared after commit by the changes that
        #: decide what a principal may do.
        self.events = EventBus()
        self.audit = AuditService(self.database)
        self.events.in_transaction(self.audit.handle, many=self.audit.handle_many)
        self.principals = PrincipalCache(self.settings.auth_cache_seconds)
        self.events.after_commit(self._forget_principals)
        #: Rung when a public event commits: this process's webhook dispatcher wakes at once
        #: (ringing only sets a flag, so the committing request never waits for it).
        self.doorbell = Doorbell()
        self.events.after_commit(self._ring_dispatcher)
        self.plans = PlanService(self.database, self.events)
        self.pricing = ModelPricingService(self.database)
        self.credits = CreditService(self.database, self.events)
        self.orgs = OrganizationService(
            self.database, self.plans, self.events, plan_credits=self.credits
        )
        self.subscriptions = SubscriptionService(
            self.database, self.plans, self.orgs, self.events, audit=self.audit
        )
        self.users = UserService(
            self.database, self.events, password_min_length=self.settings.password_min_length
        )
        self.rate_limiter = RateLimiter.from_settings(self.settings)
        self.identity = IdentityService(
            self.database,
            self.settings,
            self.orgs,
            self.events,
            users=self.users,
            principals=self.principals,
            rate_limiter=self.rate_limiter,
        )
        self.api_keys = ApiKeyService(self.database, self.events, plans=self.plans)
        self.webhooks = WebhookService(
            self.database, self.events, allow_private=self.settings.webhooks_allow_private
        )
        self.invoices = InvoiceService(self.database, self.settings, self.events)
        self.dunning = DunningService(
            self.database, self.settings, self.subscriptions, self.orgs, self.events
        )
        #: The invoices as HTML pages and PDFs.
        self.invoice_renderer = InvoiceRenderer(self.invoices)
        self.payments = PaymentService(self.database, self.credits, self.subscriptions, self.events)
        self.coupons = CouponService(self.database, self.events)
        self.credit_packs = CreditPackService(self.database, self.invoices)
        #: The payment providers' adapters (mock, Stripe, Lemon Squeezy), closed on close.
        self.provider_registry = ProviderRegistry(
            self.settings, signing_key=lambda: signing_key(self.settings)
        )
        self.provider_billing = ProviderBilling(
            self.database, self.subscriptions, self.invoices, self.payments, self.credit_packs
        )
        self.providers = PaymentProviderService(
            self.database,
            self.settings,
            self.provider_registry,
            self.plans,
            self.credit_packs,
            self.subscriptions,
        )
        self.provider_webhooks = ProviderWebhooks(
            self.database,
            self.provider_registry,
            self.plans,
            self.credit_packs,
            self.subscriptions,
            self.provider_billing,
        )
        #: The provider's subscriptions beside saascore's; `fix` applies the provider's.
        self.reconciler = Reconciler(
            self.database, self.provider_registry, self.plans, self.provider_webhooks
        )
        #: The billing overview and the upcoming invoice's preview (reads only).
        self.billing = BillingOverviewService(
            self.database, self.subscriptions, self.credits, self.payments
        )
        self.billing_run = BillingRun(
            self.database, self.settings, self.plans, self.orgs, self.events
        )
        self.usage = UsageService(
            self.database,
            group_commit=self.settings.group_commit,
            group_commit_max_events=self.settings.group_commit_max_events,
            events=self.events,
        )
        self.documents = DocumentService(
            self.database,
            self.usage,
            self.events,
            audit=self.audit,
            group_commit=self.settings.group_commit,
            group_commit_max_events=self.settings.group_commit_max_events,
        )
        self.jobs = JobService(self.database, self.events)
        #: Metered chat completions: the gateway at `SAASCORE_LLM_GATEWAY_URL`, else the mock.
        self.llm = LLMClient(self.usage, self._llm_gateway())
        self.memory = MemoryService(self.database)
        self.rag = RagStoreService(self.database)

    def _llm_gateway(self) -> HttpGateway | MockGateway:
        s = self.settings
        if s.llm_gateway_url is None:
            return MockGateway()
        return HttpGateway(
            s.llm_gateway_url,
            api_key=s.llm_api_key.get_secret_value() if s.llm_api_key is not None else None,
            timeout=s.llm_timeout_seconds,
            max_retries=s.llm_max_retries,
            backoff=s.llm_retry_backoff_seconds,
        )

    def dispatcher(self, **options: Any) -> Dispatcher:
        """A webhook dispatcher on this database, emitting into this bus (so an endpoint it
        disables is audited) and woken by this process's commits; `options` as `Dispatcher`'s."""
        if self.settings.billing_autorun:
            options.setdefault("periodic", self._billing_autorun)
            options.setdefault("periodic_interval", self.settings.billing_autorun_interval)
        return Dispatcher(
            self.database, self.settings, bus=self.events, doorbell=self.doorbell, **options
        )

    async def _billing_autorun(self) -> None:
        """`SAASCORE_BILLING_AUTORUN`: the billing run, now, from the dispatcher's loop."""
        summary = await self.billing_run.run()
        if summary.failures:
            log.warning(
                "billing autorun: %d organisation(s) failed, first: %s",
                len(summary.failures),
                summary.failures[0],
            )

    def _ring_dispatcher(self, event: Event) -> None:
        """A public event has deliveries to make; a retried delivery is due again now."""
        if event.organization_id is not None and (
            event.payload.public or isinstance(event.payload, WebhookDeliveryRetried)
        ):
            self.doorbell.ring()

    def _forget_principals(self, event: Event) -> None:
        if event.payload.affects_access:
            self.principals.clear()

    async def start(self) -> None:
        if self.settings.should_auto_migrate:
            # Alembic (and, through it, Mako and Pygments) only where the schema is migrated.
            from saascore.migrations import migrate

            await migrate.upgrade(self.database)

    async def close(self) -> None:
        await self.identity.settle()  # failed logins' audit entries, written after the answer
        await self.documents.settle()  # the dispatchers' wake-up, sent after the answer
        await self.rate_limiter.close()
        await self.provider_registry.aclose()
        await self.llm.aclose()
        if self._owns_database:
            await self.database.dispose()

    async def __aenter__(self) -> Saascore:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

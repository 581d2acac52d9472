"""`Saascore`, the facade that wires the database and every service from `Settings`."""

from __future__ import annotations

from types import TracebackType

from saascore.audit.service import AuditService
from saascore.config import Settings, load_settings
from saascore.credits.service import CreditService
from saascore.identity.api_keys import ApiKeyService
from saascore.identity.service import IdentityService
from saascore.kit import migrate
from saascore.kit.db import Database
from saascore.kit.principals import PrincipalCache
from saascore.metering.ratelimit import RateLimiter
from saascore.metering.service import UsageService
from saascore.plans.service import PlanService
from saascore.tenancy.service import OrganizationService
from saascore.tenancy.users import UserService

__all__ = ["Saascore"]


class Saascore:
    """saascore in one object: `async with Saascore(settings) as core: await core.orgs.create(...)`.

    Entering builds the `Database` (and migrates it when `auto_migrate` is on); leaving closes
    its connections. Services are attributes: `core.plans`, `core.orgs`, `core.users`,
    `core.identity`, `core.api_keys`, `core.audit`, `core.usage` and `core.credits`.
    """

    def __init__(
        self, settings: Settings | None = None, *, database: Database | None = None
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.database = database if database is not None else Database(self.settings)
        self._owns_database = database is None
        #: Authenticated principals, shared by the services whose changes must clear it.
        principals = PrincipalCache(self.settings.auth_cache_seconds)
        self.plans = PlanService(self.database, principals=principals)
        self.audit = AuditService(self.database)
        self.orgs = OrganizationService(
            self.database, self.plans, self.audit, principals=principals
        )
        self.users = UserService(
            self.database,
            self.audit,
            password_min_length=self.settings.password_min_length,
            principals=principals,
        )
        self.identity = IdentityService(
            self.database, self.settings, self.orgs, self.audit, principals=principals
        )
        self.api_keys = ApiKeyService(self.database, self.audit, principals=principals)
        self.credits = CreditService(self.database)
        self.usage = UsageService(
            self.database,
            group_commit=self.settings.group_commit,
            group_commit_max_events=self.settings.group_commit_max_events,
        )
        self.rate_limiter = RateLimiter.from_settings(self.settings)

    async def start(self) -> None:
        if self.settings.should_auto_migrate:
            await migrate.upgrade(self.database)

    async def close(self) -> None:
        await self.rate_limiter.close()
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

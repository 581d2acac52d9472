"""Request and response bodies of `/v1/users` and `/v1/organization` (and of the operators'
organisation endpoints, which show organisations the same way)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from saascore.kit.inputs import StrictBool
from saascore.metering.schemas import UsageLimitOut
from saascore.metering.values import UsageSnapshot
from saascore.models import Organization, OrganizationStatus, SubscriptionStatus, UserRole

__all__ = [
    "OrganizationCreate",
    "OrganizationOut",
    "OrganizationPlan",
    "OrganizationSummary",
    "OrganizationUpdate",
    "PlanChange",
    "Resumption",
    "Suspension",
    "UserCreate",
    "UserOut",
    "UserUpdate",
]

_PASSWORD = Field(
    default=None,
    min_length=1,
    max_length=256,
    description="Without one the user cannot log in until one is set",
    examples=["correct horse battery staple"],
)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    full_name: str | None
    role: UserRole
    is_active: bool
    external_platform: str | None = None
    external_id: str | None = None
    created_at: datetime
    last_login_at: datetime | None = None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(_Body):
    email: str = Field(
        min_length=3,
        max_length=320,
        json_schema_extra={"format": "email"},
        examples=["grace@example.com"],
    )
    name: str | None = Field(default=None, max_length=255, examples=["Grace Hopper"])
    role: UserRole = Field(default=UserRole.MEMBER, examples=[UserRole.MEMBER])
    password: str | None = _PASSWORD


class UserUpdate(_Body):
    """The fields to change; those left out (or null) stay as they are."""

    name: str | None = Field(default=None, max_length=255, examples=["Grace B. Hopper"])
    role: UserRole | None = Field(default=None, examples=[UserRole.ADMIN])
    is_active: StrictBool | None = Field(default=None, examples=[True])
    password: str | None = _PASSWORD


class OrganizationUpdate(_Body):
    """The fields to change; those left out stay as they are. Null clears `domain`,
    `billing_email` or `country`, and leaves the other fields as they are. `settings`
    replaces the whole document. `billing_email` and `currency` also need `billing:write`."""

    name: str | None = Field(
        default=None, min_length=1, max_length=255, examples=["Analytical Engines"]
    )
    domain: str | None = Field(default=None, max_length=255, examples=["engines.example"])
    billing_email: str | None = Field(
        default=None,
        max_length=320,
        json_schema_extra={"format": "email"},
        examples=["billing@engines.example"],
    )
    locale: str | None = Field(default=None, max_length=16, examples=["en-GB"])
    country: str | None = Field(
        default=None, pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2", examples=["GB"]
    )
    currency: str | None = Field(
        default=None, pattern=r"^[A-Za-z]{3}$", description="ISO 4217", examples=["GBP"]
    )
    settings: dict[str, Any] | None = Field(
        default=None, description="At most 16 KiB as JSON", examples=[{"theme": "dark"}]
    )

    def changes(self) -> dict[str, Any]:
        """The fields the request sets, as `OrganizationService.update` takes them."""
        return {
            field: value
            for field, value in self.model_dump(exclude_unset=True).items()
            if value is not None or field in _CLEARABLE
        }


_CLEARABLE = frozenset({"domain", "billing_email", "country"})


class OrganizationPlan(BaseModel):
    code: str = Field(examples=["starter"])
    name: str = Field(examples=["Starter"])


class OrganizationSummary(BaseModel):
    id: uuid.UUID
    name: str = Field(examples=["Analytical Engines"])
    slug: str = Field(examples=["analytical-engines"])
    status: OrganizationStatus
    plan: OrganizationPlan
    external_id: str | None = Field(examples=[None])
    created_at: datetime
    suspended_at: datetime | None = Field(examples=[None])

    @classmethod
    def of(cls, organization: Organization) -> OrganizationSummary:
        """An organisation with its plan loaded."""
        return cls(**_summary(organization))


class OrganizationOut(OrganizationSummary):
    """An organisation: its plan, status, limits (with this period's usage), settings and
    billing details."""

    domain: str | None = Field(examples=["engines.example"])
    billing_email: str | None = Field(examples=["billing@engines.example"])
    locale: str = Field(examples=["en"])
    country: str | None = Field(examples=["GB"])
    currency: str = Field(examples=["USD"])
    subscription_status: SubscriptionStatus
    settings: dict[str, Any] = Field(examples=[{"theme": "dark"}])
    limits: list[UsageLimitOut]

    @classmethod
    def with_limits(
        cls, organization: Organization, limits: list[UsageSnapshot]
    ) -> OrganizationOut:
        """An organisation with its plan loaded, and its `UsageService.limits`."""
        return cls(
            **_summary(organization),
            domain=organization.domain,
            billing_email=organization.billing_email,
            locale=organization.locale,
            country=organization.country,
            currency=organization.currency,
            subscription_status=organization.subscription_status,
            settings=organization.settings,
            limits=[UsageLimitOut.of(snapshot) for snapshot in limits],
        )


def _summary(organization: Organization) -> dict[str, Any]:
    return {
        "id": organization.id,
        "name": organization.name,
        "slug": organization.slug,
        "status": organization.status,
        "plan": OrganizationPlan(code=organization.plan.code, name=organization.plan.name),
        "external_id": organization.external_id,
        "created_at": organization.created_at,
        "suspended_at": organization.suspended_at,
    }


class OrganizationCreate(_Body):
    name: str = Field(min_length=1, max_length=255, examples=["Analytical Engines"])
    plan: str | None = Field(
        default=None, max_length=50, description="Default: the default plan", examples=["pro"]
    )
    external_id: str | None = Field(default=None, max_length=255, examples=["store-17"])
    domain: str | None = Field(default=None, max_length=255, examples=["engines.example"])
    billing_email: str | None = Field(
        default=None,
        max_length=320,
        json_schema_extra={"format": "email"},
        examples=["billing@engines.example"],
    )


class PlanChange(_Body):
    plan: str = Field(min_length=1, max_length=50, examples=["business"])


class Suspension(_Body):
    reason: str = Field(min_length=1, max_length=500, examples=["unpaid invoices"])


class Resumption(_Body):
    reason: str | None = Field(default=None, max_length=500, examples=["invoices paid"])

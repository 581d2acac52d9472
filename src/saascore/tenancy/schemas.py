"""Request and response bodies of `/v1/users` and `/v1/organization` (and of the operators'
organisation endpoints, which show organisations the same way)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from saascore.kit.inputs import StrictBool
from saascore.kit.validation import Label
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

    id: uuid.UUID = Field(description="The user's id")
    email: str = Field(
        description="The user's e-mail address, unique in the organisation",
        examples=["grace@example.com"],
    )
    full_name: str | None = Field(description="The user's full name", examples=["Grace Hopper"])
    role: UserRole = Field(
        description="`owner`, `admin`, `member` or `viewer`: what the user may do"
    )
    is_active: bool = Field(
        description="An inactive user cannot log in, and their keys are refused"
    )
    external_platform: str | None = Field(
        default=None,
        description="The platform the user was provisioned from, if any",
        examples=[None],
    )
    external_id: str | None = Field(
        default=None, description="The user's id on that platform", examples=[None]
    )
    created_at: datetime = Field(description="When the user was created")
    last_login_at: datetime | None = Field(default=None, description="When the user last logged in")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(_Body):
    email: str = Field(
        description="The user's e-mail address, unique in the organisation",
        min_length=3,
        max_length=320,
        json_schema_extra={"format": "email"},
        examples=["grace@example.com"],
    )
    name: Label | None = Field(
        description="The user's full name", default=None, max_length=255, examples=["Grace Hopper"]
    )
    role: UserRole = Field(
        description="What the user may do (an admin cannot make an owner)",
        default=UserRole.MEMBER,
        examples=[UserRole.MEMBER],
    )
    password: str | None = _PASSWORD


class UserUpdate(_Body):
    """The fields to change; those left out (or null) stay as they are."""

    name: Label | None = Field(
        description="The user's full name",
        default=None,
        max_length=255,
        examples=["Grace B. Hopper"],
    )
    role: UserRole | None = Field(
        description="The user's new role", default=None, examples=[UserRole.ADMIN]
    )
    is_active: StrictBool | None = Field(
        description=("False deactivates the user: they cannot log in, and their keys are refused"),
        default=None,
        examples=[True],
    )
    password: str | None = _PASSWORD


class OrganizationUpdate(_Body):
    """The fields to change; those left out stay as they are. Null clears `domain`,
    `billing_email` or `country`, and leaves the other fields as they are. `settings`
    replaces the whole document. `billing_email`, `currency` and `country` (which sets the
    default tax rate) also need `billing:write`."""

    name: Label | None = Field(
        description="The organisation's name",
        default=None,
        min_length=1,
        max_length=255,
        examples=["Analytical Engines"],
    )
    domain: str | None = Field(
        description="The organisation's web domain",
        default=None,
        max_length=255,
        examples=["engines.example"],
    )
    billing_email: str | None = Field(
        description="Where invoices go (needs `billing:write`)",
        default=None,
        max_length=320,
        json_schema_extra={"format": "email"},
        examples=["billing@engines.example"],
    )
    locale: str | None = Field(
        description=("The language and region of texts sent to the organisation (BCP 47)"),
        default=None,
        max_length=16,
        examples=["en-GB"],
    )
    country: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z]{2}$",
        description="ISO 3166-1 alpha-2; sets the default tax rate (needs `billing:write`)",
        examples=["GB"],
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
    code: str = Field(description="The plan's code", examples=["starter"])
    name: str = Field(description="The plan's name", examples=["Starter"])


class OrganizationSummary(BaseModel):
    id: uuid.UUID = Field(description="The organisation's id")
    name: str = Field(description="The organisation's name", examples=["Analytical Engines"])
    slug: str = Field(
        description="Its URL-safe short name, unique", examples=["analytical-engines"]
    )
    status: OrganizationStatus = Field(
        description="`active` or `suspended` (its users and keys are refused)"
    )
    plan: OrganizationPlan = Field(description="The plan it is on")
    external_id: str | None = Field(
        description="Its id on an external platform, if provisioned from one", examples=[None]
    )
    created_at: datetime = Field(description="When it was created")
    suspended_at: datetime | None = Field(
        description="When it was suspended; null when active", examples=[None]
    )

    @classmethod
    def of(cls, organization: Organization) -> OrganizationSummary:
        """An organisation with its plan loaded."""
        return cls(**_summary(organization))


class OrganizationOut(OrganizationSummary):
    """An organisation: its plan, status, limits (with this period's usage), settings and
    billing details."""

    domain: str | None = Field(description="Its web domain", examples=["engines.example"])
    billing_email: str | None = Field(
        description="Where invoices go", examples=["billing@engines.example"]
    )
    locale: str = Field(
        description="The language and region of texts sent to it (BCP 47)", examples=["en"]
    )
    country: str | None = Field(description="ISO 3166-1 alpha-2 country code", examples=["GB"])
    currency: str = Field(description="ISO 4217 currency it is billed in", examples=["USD"])
    subscription_status: SubscriptionStatus = Field(
        description=("The state of its subscription (`trialing`, `active`, `past_due`, ...)")
    )
    settings: dict[str, Any] = Field(
        description="Free-form JSON settings of the organisation", examples=[{"theme": "dark"}]
    )
    limits: list[UsageLimitOut] = Field(
        description="Each active meter's usage and limit this period"
    )

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
    name: Label = Field(
        description="The organisation's name; its slug is made from it",
        min_length=1,
        max_length=255,
        examples=["Analytical Engines"],
    )
    plan: str | None = Field(
        default=None, max_length=50, description="Default: the default plan", examples=["pro"]
    )
    external_id: str | None = Field(
        description="Its id on an external platform, unique",
        default=None,
        max_length=255,
        examples=["store-17"],
    )
    domain: str | None = Field(
        description="Its web domain", default=None, max_length=255, examples=["engines.example"]
    )
    billing_email: str | None = Field(
        description="Where invoices go",
        default=None,
        max_length=320,
        json_schema_extra={"format": "email"},
        examples=["billing@engines.example"],
    )
    country: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z]{2}$",
        description="ISO 3166-1 alpha-2; the organisation takes its standard tax rate",
        examples=["SA"],
    )


class PlanChange(_Body):
    plan: str = Field(
        description="The code of the new plan", min_length=1, max_length=50, examples=["business"]
    )


class Suspension(_Body):
    reason: Label = Field(
        description=("Why, kept in the audit trail and sent in `organization.suspended`"),
        min_length=1,
        max_length=500,
        examples=["unpaid invoices"],
    )


class Resumption(_Body):
    reason: Label | None = Field(
        description=("Why, kept in the audit trail and sent in `organization.resumed`"),
        default=None,
        max_length=500,
        examples=["invoices paid"],
    )

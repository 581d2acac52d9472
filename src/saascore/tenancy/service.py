"""Organisations: creating, finding, listing, editing, moving between plans, suspending.

Every change emits its event in the caller's unit of work, with the actor the caller names:
the audit entry and the tenant's webhooks follow from it.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, Final, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value

from saascore.audit.service import AuditService, audited_bus
from saascore.events.bus import EventBus
from saascore.events.catalog import (
    OrganizationCreated,
    OrganizationPlanChanged,
    OrganizationResumed,
    OrganizationSuspended,
    OrganizationUpdated,
)
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.countries import is_country
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.sql import violates
from saascore.kit.tax import default_tax_rate
from saascore.kit.time import utcnow
from saascore.kit.validation import checked_json, checked_text
from saascore.models import (
    LIVE_SUBSCRIPTION_STATUSES,
    Invoice,
    InvoiceStatus,
    Organization,
    OrganizationStatus,
    Subscription,
    UsageLimits,
)
from saascore.plans.service import PlanService
from saascore.tenancy.errors import (
    CurrencyInUse,
    OrganizationDeleted,
    OrganizationExists,
    OrganizationNotFound,
)

__all__ = [
    "UNSET",
    "OrganizationDeleted",
    "OrganizationExists",
    "OrganizationNotFound",
    "OrganizationService",
    "PlanCredits",
    "locked_organization",
    "normalize_email",
    "slugify",
]


class _Unset(Enum):
    UNSET = "unset"


#: "Leave this field as it is" in `OrganizationService.update` (None may be a value to set).
UNSET: Final = _Unset.UNSET

#: The largest `settings` document an organisation keeps, as compact JSON.
MAX_SETTINGS_BYTES: Final = 16_384
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$")
_LOCALE = re.compile(r"^[a-zA-Z]{2,3}([_-][a-zA-Z0-9]{2,8}){0,3}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_REASON_MAX = 500


def slugify(name: str) -> str:
    """`"Acme Corp."` -> `"acme-corp"`: ASCII letters and digits joined by single hyphens."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:60] or "org"


def normalize_email(email: str, field: str = "email") -> str:
    """The e-mail as stored: trimmed and lower-cased; `InvalidInput` if it is not one."""
    normalized = email.strip().lower()
    if len(normalized) > 320 or not _EMAIL.match(normalized):
        raise InvalidInput(f"{field} is not an e-mail address", field=field)
    return normalized


def _name(name: str) -> str:
    name = checked_text(name, field="name").strip()
    if not name or len(name) > 255:
        raise InvalidInput("an organisation needs a name of 1 to 255 characters", field="name")
    return name


def _domain(domain: str | None) -> str | None:
    if domain is None:
        return None
    normalized = domain.strip().lower().rstrip(".")
    if not _DOMAIN.match(normalized):
        raise InvalidInput(f"{domain!r} is not a domain name", field="domain")
    return normalized


def _billing_email(email: str | None) -> str | None:
    return None if email is None else normalize_email(email, "billing_email")


def _locale(locale: str) -> str:
    locale = locale.strip()
    if len(locale) > 16 or not _LOCALE.match(locale):
        raise InvalidInput(f"{locale!r} is not a locale such as 'en' or 'pt-BR'", field="locale")
    return locale


def _country(country: str | None) -> str | None:
    if country is None:
        return None
    code = country.strip().upper()
    if not (_COUNTRY.match(code) and is_country(code)):
        raise InvalidInput(
            f"{country[:8]!r} is not an ISO 3166-1 country code such as 'GB' or 'SA'",
            field="country",
        )
    return code


def _currency(currency: str) -> str:
    code = currency.strip().upper()
    if not _CURRENCY.match(code):
        raise InvalidInput(f"{currency!r} is not an ISO 4217 currency code", field="currency")
    return code


def _settings(settings: dict[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = checked_json(settings, field="settings", max_bytes=MAX_SETTINGS_BYTES)
    return checked


def _external_id(external_id: str | None) -> str | None:
    if external_id is not None and not 0 < len(external_id) <= 255:
        raise InvalidInput("external_id must be 1 to 255 characters", field="external_id")
    return external_id


def _reason(reason: str) -> str:
    reason = checked_text(reason, field="reason").strip()
    if not reason or len(reason) > _REASON_MAX:
        raise InvalidInput(f"a reason of 1 to {_REASON_MAX} characters is needed", field="reason")
    return reason


#: What `update` validates each field with.
_CHECKS: Final[dict[str, Callable[[Any], Any]]] = {
    "name": _name,
    "domain": _domain,
    "billing_email": _billing_email,
    "locale": _locale,
    "country": _country,
    "currency": _currency,
    "settings": _settings,
}


async def locked_organization(
    session: AsyncSession, org_id: uuid.UUID, *, with_plan: bool = False
) -> Organization:
    """The organisation, its row locked until the transaction ends: what serializes changes
    to the organisation and to who owns it. The lock (`FOR NO KEY UPDATE`) does not hold up
    rows of other tables that merely reference the organisation."""
    query = (
        sa.select(Organization)
        .where(Organization.id == org_id)
        .with_for_update(key_share=True, of=Organization)
        .execution_options(populate_existing=True)
    )
    if with_plan:
        query = query.options(joinedload(Organization.plan))
    organization = (await session.scalars(query)).one_or_none()
    if organization is None:
        raise OrganizationNotFound(f"no organisation {org_id}", organization=str(org_id))
    return organization


#: An invoice still owed: the currency it is owed in stays the organisation's.
_UNPAID_INVOICES: Final = (InvoiceStatus.OPEN, InvoiceStatus.OVERDUE, InvoiceStatus.UNCOLLECTIBLE)


async def _check_currency_unused(session: AsyncSession, organization: Organization) -> None:
    """Refuse (`CurrencyInUse`) to move the organisation off its currency while a live
    subscription or an unpaid invoice is in it.

    Tenancy sits below billing and does not import it: the rule reads the billing tables
    through the models, whose status sets (`LIVE_SUBSCRIPTION_STATUSES`, `InvoiceStatus`)
    are the shared vocabulary. The caller holds the organisation's row lock, which a new
    subscription or purchase takes too, so none appears between this check and the change."""
    org_id, currency = organization.id, organization.currency
    subscription = sa.exists().where(
        Subscription.organization_id == org_id,
        Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES),
        Subscription.currency == currency,
    )
    invoice = sa.exists().where(
        Invoice.organization_id == org_id,
        Invoice.status.in_(_UNPAID_INVOICES),
        Invoice.currency == currency,
    )
    live, unpaid = (await session.execute(sa.select(subscription, invoice))).one()
    if live or unpaid:
        what = "a live subscription" if live else "unpaid invoices"
        raise CurrencyInUse(
            f"the organisation is billed in {currency} ({what}): its currency cannot change",
            currency=currency,
            live_subscription=bool(live),
            unpaid_invoices=bool(unpaid),
        )


class PlanCredits(Protocol):
    """What grants an organisation its plan's credits (`CreditService`, wired by `Saascore`).

    `refill` brings the month's plan credits up to the organisation's current plan; it is
    called in the same transaction when an organisation is created and when its plan changes,
    with the actor of that change, whom the grant's `credits.granted` names.
    """

    async def refill(
        self, org_id: uuid.UUID, *, actor: Actor = SYSTEM, session: AsyncSession | None = None
    ) -> object: ...


class OrganizationService:
    def __init__(
        self,
        database: Database,
        plans: PlanService,
        events: EventBus | None = None,
        *,
        plan_credits: PlanCredits | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.plans = plans
        #: Grants the plan's credits at creation and on a plan change (None: no credits).
        self.plan_credits = plan_credits
        self.events = events if events is not None else audited_bus(AuditService(database))
        self.clock = clock

    async def create(
        self,
        *,
        name: str,
        plan: str | None = None,
        external_id: str | None = None,
        domain: str | None = None,
        billing_email: str | None = None,
        country: str | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Organization:
        """Create an organisation on a plan (by code; the default plan if None), in
        `country` (ISO 3166), whose default tax rate it takes (`kit/tax_rates.toml`; 0 for a
        country not listed, or none).

        Its `usage_limits` row, and the plan's credits for the month (with `plan_credits`), are
        created in the same transaction. The slug comes from the
        name, with a random suffix when the plain slug is taken. The creation emits
        `organization.created` (by `actor`, saascore itself by default), which opens the
        organisation's audit chain, before the plan's grant emits `credits.granted`.
        """
        name = _name(name)
        external_id = _external_id(external_id)
        domain = _domain(domain)
        billing_email = _billing_email(billing_email)
        country = _country(country)
        async with self.database.scope(session) as s:
            plan_row = await self.plans.get_by_code(
                plan or self.database.settings.default_plan, session=s
            )
            base = slugify(name)
            for attempt in range(5):
                slug = base if attempt == 0 else f"{base}-{secrets.token_hex(3)}"
                organization = Organization(
                    name=name,
                    slug=slug,
                    plan_id=plan_row.id,
                    external_id=external_id,
                    domain=domain,
                    billing_email=billing_email,
                    country=country,
                )
                if country is not None:  # else the database's default, as at old revisions
                    organization.tax_rate_bps = default_tax_rate(country)
                try:
                    async with s.begin_nested():
                        s.add(organization)
                        await s.flush()
                except IntegrityError as error:
                    if external_id is not None and violates(error, "external_id"):
                        raise OrganizationExists(
                            f"an organisation with external id {external_id!r} exists",
                            external_id=external_id,
                        ) from None
                    if violates(error, "slug"):
                        continue
                    raise
                break
            else:  # pragma: no cover - five random suffixes colliding
                raise OrganizationExists(f"no free slug for {name!r}", name=name)
            s.add(UsageLimits(organization_id=organization.id))
            await s.flush()
            set_committed_value(organization, "plan", plan_row)
            await self.events.emit(
                s,
                organization.id,
                OrganizationCreated(name=name, slug=organization.slug, plan=plan_row.code),
                actor=actor,
                target_id=organization.id,
            )
            if self.plan_credits is not None:
                await self.plan_credits.refill(organization.id, actor=actor, session=s)
        return organization

    async def get(
        self, organization_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> Organization:
        return await self._one(Organization.id == organization_id, session, str(organization_id))

    async def get_by_external_id(
        self, external_id: str, *, session: AsyncSession | None = None
    ) -> Organization:
        if "\x00" in external_id or not _is_unicode(external_id):
            # No external id holds these (they are refused when stored), and the databases
            # cannot take them as a parameter: a NUL or half a surrogate pair (bytes that are
            # not UTF-8 on a command line) is simply no organisation.
            raise OrganizationNotFound(
                f"no organisation {external_id!r}", organization=ascii(external_id)
            )
        return await self._one(Organization.external_id == external_id, session, external_id)

    async def resolve(self, reference: str, *, session: AsyncSession | None = None) -> Organization:
        """An organisation by its id or, failing that, its external id (for people typing)."""
        try:
            organization_id = uuid.UUID(reference)
        except ValueError:
            return await self.get_by_external_id(reference, session=session)
        return await self.get(organization_id, session=session)

    async def list(
        self,
        *,
        limit: int = 100,
        after: uuid.UUID | None = None,
        offset: int = 0,
        status: OrganizationStatus | None = None,
        session: AsyncSession | None = None,
    ) -> Sequence[Organization]:
        """Organisations oldest first (ids are time-ordered), with their plans: those after
        the id `after` (a cursor), or after skipping `offset`."""
        query = (
            sa.select(Organization)
            .options(joinedload(Organization.plan))
            .order_by(Organization.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(Organization.id > after)
        if offset:
            query = query.offset(offset)
        if status is not None:
            query = query.where(Organization.status == status)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    async def count(
        self,
        *,
        status: OrganizationStatus | None = None,
        session: AsyncSession | None = None,
    ) -> int:
        """How many organisations there are (with `status`, if given)."""
        query = sa.select(sa.func.count()).select_from(Organization)
        if status is not None:
            query = query.where(Organization.status == status)
        async with self.database.scope(session, readonly=True) as s:
            return int(await s.scalar(query) or 0)

    async def update(
        self,
        org_id: uuid.UUID,
        *,
        name: str | _Unset = UNSET,
        domain: str | _Unset | None = UNSET,
        billing_email: str | _Unset | None = UNSET,
        locale: str | _Unset = UNSET,
        country: str | _Unset | None = UNSET,
        currency: str | _Unset = UNSET,
        settings: dict[str, Any] | _Unset = UNSET,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Organization:
        """Change the fields given (`UNSET` leaves one alone; None clears `domain`,
        `billing_email` or `country`). `settings` replaces the whole document. Every field is
        checked before anything is written; a change is audited as `organization.updated`
        with each changed field's old and new value.

        A new country brings its default tax rate (`tax_rate_bps` among the changes), unless
        an operator set the rate (`tax_rate_source == "operator"`). The currency does not
        change while the organisation is billed in the old one (`CurrencyInUse`)."""
        given = {
            "name": name,
            "domain": domain,
            "billing_email": billing_email,
            "locale": locale,
            "country": country,
            "currency": currency,
            "settings": settings,
        }
        values = {
            field: _CHECKS[field](value) for field, value in given.items() if value is not UNSET
        }
        async with self.database.scope(session) as s:
            organization = await locked_organization(s, org_id, with_plan=True)
            _check_not_deleted(organization)
            changes = {
                field: {"from": getattr(organization, field), "to": value}
                for field, value in values.items()
                if getattr(organization, field) != value
            }
            if "currency" in changes:
                await _check_currency_unused(s, organization)
            if "country" in changes and organization.tax_rate_source != "operator":
                rate = default_tax_rate(changes["country"]["to"])
                if rate != organization.tax_rate_bps:
                    changes["tax_rate_bps"] = {"from": organization.tax_rate_bps, "to": rate}
            if changes:
                for field, change in changes.items():
                    setattr(organization, field, change["to"])
                organization.updated_at = self.clock()
                await s.flush()
                await self.events.emit(
                    s, org_id, OrganizationUpdated(changes=changes), actor=actor, target_id=org_id
                )
        return organization

    async def change_plan(
        self,
        org_id: uuid.UUID,
        plan_code: str,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Organization:
        """Move the organisation to another plan (by code), audited as `plan.changed` with
        the codes from and to, and bring the month's plan credits up to the new plan's
        allowance (see `CreditService.refill_once`: nothing is taken back on a downgrade).
        Moving it to the plan it is on changes nothing."""
        async with self.database.scope(session) as s:
            organization = await locked_organization(s, org_id, with_plan=True)
            _check_not_deleted(organization)
            plan = await self.plans.get_by_code(plan_code, session=s)
            previous = organization.plan
            if plan.id != previous.id:
                organization.plan_id = plan.id
                organization.updated_at = self.clock()
                await s.flush()
                set_committed_value(organization, "plan", plan)
                await self.events.emit(
                    s,
                    org_id,
                    OrganizationPlanChanged(from_=previous.code, to=plan.code),
                    actor=actor,
                    target_id=org_id,
                )
                if self.plan_credits is not None:
                    await self.plan_credits.refill(org_id, actor=actor, session=s)
        return organization

    async def suspend(
        self,
        org_id: uuid.UUID,
        *,
        reason: str,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Organization:
        """Suspend the organisation: its users and keys are refused (403
        `organization_suspended`) until it is resumed. Audited as `organization.suspended`
        with the reason; suspending a suspended organisation changes nothing."""
        reason = _reason(reason)
        return await self._set_status(
            org_id,
            OrganizationStatus.SUSPENDED,
            OrganizationSuspended(reason=reason),
            actor,
            session,
        )

    async def resume(
        self,
        org_id: uuid.UUID,
        *,
        reason: str | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Organization:
        """Lift a suspension, audited as `organization.resumed`; resuming an active
        organisation changes nothing."""
        reason = _reason(reason) if reason is not None else None
        return await self._set_status(
            org_id, OrganizationStatus.ACTIVE, OrganizationResumed(reason=reason), actor, session
        )

    async def _set_status(
        self,
        org_id: uuid.UUID,
        status: OrganizationStatus,
        event: OrganizationSuspended | OrganizationResumed,
        actor: Actor,
        session: AsyncSession | None,
    ) -> Organization:
        async with self.database.scope(session) as s:
            organization = await locked_organization(s, org_id, with_plan=True)
            _check_not_deleted(organization)
            if organization.status is not status:
                now = self.clock()
                organization.status = status
                organization.suspended_at = now if status is OrganizationStatus.SUSPENDED else None
                organization.updated_at = now
                await s.flush()
                await self.events.emit(s, org_id, event, actor=actor, target_id=org_id)
        return organization

    async def _one(
        self, condition: sa.ColumnElement[bool], session: AsyncSession | None, key: str
    ) -> Organization:
        query = sa.select(Organization).where(condition).options(joinedload(Organization.plan))
        async with self.database.scope(session, readonly=True) as s:
            organization = (await s.scalars(query)).one_or_none()
        if organization is None:
            raise OrganizationNotFound(f"no organisation {key}", organization=key)
        return organization


def _is_unicode(text: str) -> bool:
    """Whether `text` is valid Unicode (no half of a surrogate pair), as UTF-8 needs."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_not_deleted(organization: Organization) -> None:
    if organization.status is OrganizationStatus.DELETED:
        raise OrganizationDeleted(
            f"organisation {organization.id} is deleted", organization=str(organization.id)
        )

"""Organisations: creating them (with their usage_limits row and a unique slug), finding and
listing them, editing them, moving them between plans, suspending and resuming them."""

from __future__ import annotations

import re
import uuid

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import Actor, AuditService, audited_bus
from saascore.kit.db import Database
from saascore.kit.errors import AlreadyExists, InvalidInput
from saascore.models import AuditLog, Organization, OrganizationStatus, UsageLimits
from saascore.plans import PlanNotFound, PlanService, read_catalog
from saascore.tenancy import OrganizationExists, OrganizationNotFound, OrganizationService
from saascore.tenancy.service import OrganizationDeleted, slugify
from tests.helpers import CLOCK_START, Clock

OPERATOR = Actor("operator", "op-1", ip_address="203.0.113.9")


@pytest_asyncio.fixture(loop_scope="session")
async def orgs(database: Database, session: AsyncSession) -> OrganizationService:
    """The service, with the default catalog loaded in the test's session."""
    plans = PlanService(database)
    await plans.load_catalog(read_catalog(), session=session)
    return OrganizationService(database, plans, audited_bus(AuditService(database)), clock=Clock())


async def count(session: AsyncSession, model: type, *conditions: sa.ColumnElement[bool]) -> int:
    query = sa.select(sa.func.count()).select_from(model).where(*conditions)
    return int(await session.scalar(query) or 0)


async def audit_entries(
    session: AsyncSession, org_id: uuid.UUID, *, creation: bool = False
) -> list[AuditLog]:
    """The organisation's audit entries in order; without the `organization.created` entry
    that opens every chain, unless `creation`."""
    query = sa.select(AuditLog).where(AuditLog.organization_id == org_id).order_by(AuditLog.seq)
    if not creation:
        query = query.where(AuditLog.action != "organization.created")
    return list((await session.scalars(query)).all())


async def stored(session: AsyncSession, org_id: uuid.UUID) -> dict[str, object]:
    """The organisation's row as the database holds it."""
    row = (
        await session.execute(sa.select(Organization.__table__).where(Organization.id == org_id))
    ).one()
    return {key: value for key, value in row._asdict().items() if key != "updated_at"}


class TestSlugify:
    @pytest.mark.parametrize(
        ("name", "slug"),
        [
            ("Acme", "acme"),
            ("Acme Corp.", "acme-corp"),
            ("  Crème Brûlée & Co  ", "creme-brulee-co"),
            ("Ünïcödé--Name__2", "unicode-name-2"),
            ("!!!", "org"),
            ("日本", "org"),
        ],
    )
    def test_slugify(self, name: str, slug: str) -> None:
        assert slugify(name) == slug

    def test_long_names_are_cut(self) -> None:
        assert len(slugify("x" * 500)) == 60


class TestCreate:
    async def test_creates_the_organization_and_its_usage_limits(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(
            name="  Acme Corp. ",
            external_id="ext-1",
            domain="acme.example",
            billing_email="billing@acme.example",
            session=session,
        )
        assert (org.name, org.slug, org.external_id, org.domain, org.billing_email) == (
            "Acme Corp.",
            "acme-corp",
            "ext-1",
            "acme.example",
            "billing@acme.example",
        )
        assert org.status is OrganizationStatus.ACTIVE
        assert org.plan.code == "free"  # the default plan, loaded with it
        stored = await session.scalar(sa.select(Organization.name).where(Organization.id == org.id))
        assert stored == "Acme Corp."
        limits = (
            await session.execute(
                sa.select(UsageLimits.storage_used_bytes, UsageLimits.credit_balance).where(
                    UsageLimits.organization_id == org.id
                )
            )
        ).all()
        assert [tuple(row) for row in limits] == [(0, 0)]

    async def test_on_a_named_plan(self, orgs: OrganizationService, session: AsyncSession) -> None:
        org = await orgs.create(name="Pro Co", plan="pro", session=session)
        pro = await orgs.plans.get_by_code("pro", session=session)
        assert org.plan_id == pro.id
        assert org.plan.code == "pro"

    async def test_the_default_plan_comes_from_settings(
        self, database: Database, session: AsyncSession
    ) -> None:
        settings = database.settings.model_copy(update={"default_plan": "starter"})
        plans = PlanService(Database(settings))
        await plans.load_catalog(read_catalog(), session=session)
        org = await OrganizationService(plans.database, plans).create(name="S", session=session)
        assert org.plan.code == "starter"

    async def test_a_taken_slug_gets_a_suffix(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        first = await orgs.create(name="Acme", session=session)
        second = await orgs.create(name="Acme", session=session)
        third = await orgs.create(name="ACME!", session=session)
        assert first.slug == "acme"
        assert re.fullmatch(r"acme-[0-9a-f]{6}", second.slug)
        assert re.fullmatch(r"acme-[0-9a-f]{6}", third.slug)
        assert len({first.slug, second.slug, third.slug}) == 3
        assert await count(session, Organization, Organization.name.in_(["Acme", "ACME!"])) == 3
        assert (
            await count(
                session,
                UsageLimits,
                UsageLimits.organization_id.in_([first.id, second.id, third.id]),
            )
            == 3
        )

    async def test_duplicate_external_id(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        await orgs.create(name="First", external_id="platform-42", session=session)
        with pytest.raises(OrganizationExists) as info:
            await orgs.create(name="Second", external_id="platform-42", session=session)
        assert isinstance(info.value, AlreadyExists)
        assert info.value.code == "organization_exists"
        assert info.value.details == {"external_id": "platform-42"}
        assert await count(session, Organization, Organization.name == "Second") == 0
        # The session is still usable afterwards: the failure was contained in a savepoint.
        assert (await orgs.create(name="Third", session=session)).slug == "third"

    async def test_duplicate_external_id_and_name(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        await orgs.create(name="Same", external_id="dup", session=session)
        with pytest.raises(OrganizationExists):
            await orgs.create(name="Same", external_id="dup", session=session)
        assert await count(session, Organization, Organization.name == "Same") == 1

    async def test_unknown_plan(self, orgs: OrganizationService, session: AsyncSession) -> None:
        with pytest.raises(PlanNotFound) as info:
            await orgs.create(name="Nowhere", plan="platinum", session=session)
        assert info.value.code == "plan_not_found"
        assert await count(session, Organization, Organization.name == "Nowhere") == 0

    @pytest.mark.parametrize("name", ["", "   "])
    async def test_a_name_is_required(
        self, orgs: OrganizationService, session: AsyncSession, name: str
    ) -> None:
        with pytest.raises(InvalidInput) as info:
            await orgs.create(name=name, session=session)
        assert info.value.details == {"field": "name"}


class TestFind:
    async def test_get(self, orgs: OrganizationService, session: AsyncSession) -> None:
        created = await orgs.create(name="Findable", plan="business", session=session)
        session.expunge_all()  # read it back from the database
        found = await orgs.get(created.id, session=session)
        assert (found.id, found.name, found.slug) == (created.id, "Findable", "findable")
        assert found.plan.code == "business"  # eagerly loaded

    async def test_get_unknown(self, orgs: OrganizationService, session: AsyncSession) -> None:
        missing = uuid.uuid4()
        with pytest.raises(OrganizationNotFound) as info:
            await orgs.get(missing, session=session)
        assert info.value.code == "organization_not_found"
        assert info.value.details == {"organization": str(missing)}

    async def test_get_by_external_id(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        created = await orgs.create(name="Ext", external_id="store-9", session=session)
        await orgs.create(name="Other", external_id="store-10", session=session)
        session.expunge_all()
        found = await orgs.get_by_external_id("store-9", session=session)
        assert found.id == created.id
        assert found.plan.code == "free"
        with pytest.raises(OrganizationNotFound):
            await orgs.get_by_external_id("store-11", session=session)

    @pytest.mark.parametrize(
        "reference",
        ["store\x009", "store-\udcff", "\udced\udca0\udc80"],
        ids=["nul", "half", "bytes"],
    )
    async def test_an_external_id_no_database_can_take_is_no_organisation(
        self, orgs: OrganizationService, session: AsyncSession, reference: str
    ) -> None:
        # `saascore credits balance` with bytes that are not UTF-8 passed half surrogate
        # pairs to the database: an unexpected error on SQLite, a database error on PostgreSQL.
        await orgs.create(name="Ext", external_id="store-9", session=session)
        for find in (orgs.get_by_external_id, orgs.resolve):
            with pytest.raises(OrganizationNotFound):
                await find(reference, session=session)
        assert (await orgs.get_by_external_id("store-9", session=session)).name == "Ext"

    async def test_list_in_creation_order(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        created = [await orgs.create(name=f"Org {i}", session=session) for i in range(5)]
        ids = [org.id for org in created]
        session.expunge_all()
        listed = await orgs.list(session=session)
        assert [org.id for org in listed if org.id in ids] == ids
        assert all(org.plan.code == "free" for org in listed if org.id in ids)

        everything = [org.id for org in listed]
        start = everything.index(ids[0])
        page = await orgs.list(limit=2, offset=start + 1, session=session)
        assert [org.id for org in page] == ids[1:3]

    async def test_list_after_a_cursor(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        ids = [(await orgs.create(name=f"Paged {i}", session=session)).id for i in range(5)]
        page = await orgs.list(limit=2, after=ids[0], session=session)
        assert [org.id for org in page] == ids[1:3]
        assert await orgs.list(after=ids[-1], session=session) == []

    async def test_list_by_status(self, orgs: OrganizationService, session: AsyncSession) -> None:
        active = await orgs.create(name="Stays", session=session)
        suspended = await orgs.create(name="Goes", session=session)
        await orgs.suspend(suspended.id, reason="fraud", session=session)
        found = await orgs.list(status=OrganizationStatus.SUSPENDED, session=session)
        assert suspended.id in [org.id for org in found]
        assert active.id not in [org.id for org in found]
        assert all(org.status is OrganizationStatus.SUSPENDED for org in found)


class TestUpdate:
    async def test_changes_every_field_and_audits_old_and_new(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(name="Before", domain="before.example", session=session)
        updated = await orgs.update(
            org.id,
            name="  After  ",
            domain="After.Example.",
            billing_email=" Billing@After.Example ",
            locale="pt-BR",
            country="br",
            currency="brl",
            settings={"theme": "dark", "seats": [1, 2]},
            actor=OPERATOR,
            session=session,
        )
        assert updated.id == org.id
        row = await stored(session, org.id)
        assert {field: row[field] for field in ("name", "domain", "billing_email")} == {
            "name": "After",
            "domain": "after.example",
            "billing_email": "billing@after.example",
        }
        assert (row["locale"], row["country"], row["currency"]) == ("pt-BR", "BR", "BRL")
        assert row["settings"] == {"theme": "dark", "seats": [1, 2]}
        [entry] = await audit_entries(session, org.id)
        assert (entry.action, entry.actor_type, entry.actor_id) == (
            "organization.updated",
            "operator",
            "op-1",
        )
        assert entry.ip_address == "203.0.113.9"
        assert entry.details["changes"]["name"] == {"from": "Before", "to": "After"}
        assert entry.details["changes"]["currency"] == {"from": "USD", "to": "BRL"}
        assert entry.details["changes"]["country"] == {"from": None, "to": "BR"}
        assert set(entry.details["changes"]) == {
            "name",
            "domain",
            "billing_email",
            "locale",
            "country",
            "currency",
            "settings",
        }

    async def test_only_given_fields_change_and_none_clears(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(
            name="Keep", domain="keep.example", billing_email="b@keep.example", session=session
        )
        await orgs.update(org.id, domain=None, session=session)
        row = await stored(session, org.id)
        assert (row["name"], row["domain"], row["billing_email"]) == (
            "Keep",
            None,
            "b@keep.example",
        )

    async def test_no_change_writes_no_audit_entry(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(name="Same", session=session)
        await orgs.update(org.id, name="Same", currency="usd", session=session)
        await orgs.update(org.id, session=session)
        assert await audit_entries(session, org.id) == []

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("name", ""),
            ("name", "x" * 256),
            ("domain", "not a domain"),
            ("domain", "-bad-.example"),
            ("billing_email", "nobody"),
            ("locale", "english please"),
            ("country", "GBR"),
            ("country", "1A"),
            ("currency", "US"),
            ("currency", "U$D"),
            ("settings", {"big": "x" * 20_000}),
            ("settings", {"nan": float("nan")}),
            ("settings", {"lone": "\ud800"}),
            ("settings", ["not", "an", "object"]),
        ],
    )
    async def test_invalid_values_change_nothing(
        self, orgs: OrganizationService, session: AsyncSession, field: str, value: object
    ) -> None:
        org = await orgs.create(name="Valid", session=session)
        before = await stored(session, org.id)
        # A valid change beside the invalid one: it must not be written either.
        valid = {"locale": "fr"} if field != "locale" else {"name": "Renamed"}
        with pytest.raises(InvalidInput) as info:
            await orgs.update(org.id, **valid, **{field: value}, session=session)
        assert info.value.details["field"] == field
        session.expunge_all()
        assert await stored(session, org.id) == before
        assert await audit_entries(session, org.id) == []

    async def test_unknown_organization(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        with pytest.raises(OrganizationNotFound):
            await orgs.update(uuid.uuid4(), name="Nobody", session=session)

    async def test_a_deleted_organization_cannot_change(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(name="Gone", session=session)
        org.status = OrganizationStatus.DELETED
        await session.flush()
        with pytest.raises(OrganizationDeleted) as info:
            await orgs.update(org.id, name="Back", session=session)
        assert (info.value.code, info.value.status_code) == ("organization_deleted", 409)
        with pytest.raises(OrganizationDeleted):
            await orgs.suspend(org.id, reason="x", session=session)
        with pytest.raises(OrganizationDeleted):
            await orgs.change_plan(org.id, "pro", session=session)


class TestChangePlan:
    async def test_moves_and_audits_from_and_to(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(name="Mover", session=session)
        moved = await orgs.change_plan(org.id, "business", actor=OPERATOR, session=session)
        assert moved.plan.code == "business"
        session.expunge_all()
        assert (await orgs.get(org.id, session=session)).plan.code == "business"
        [entry] = await audit_entries(session, org.id)
        assert entry.action == "plan.changed"
        assert entry.details == {"from": "free", "to": "business"}
        assert (entry.actor_type, entry.target_type, entry.target_id) == (
            "operator",
            "organization",
            str(org.id),
        )

    async def test_the_same_plan_changes_nothing(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(name="Stayer", plan="pro", session=session)
        assert (await orgs.change_plan(org.id, "pro", session=session)).plan.code == "pro"
        assert await audit_entries(session, org.id) == []

    async def test_unknown_plan_changes_nothing(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(name="Hopeful", session=session)
        with pytest.raises(PlanNotFound):
            await orgs.change_plan(org.id, "platinum", session=session)
        session.expunge_all()
        assert (await orgs.get(org.id, session=session)).plan.code == "free"
        assert await audit_entries(session, org.id) == []

    async def test_unknown_organization(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        with pytest.raises(OrganizationNotFound):
            await orgs.change_plan(uuid.uuid4(), "pro", session=session)


class TestSuspend:
    async def test_suspend_and_resume(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(name="Naughty", session=session)
        suspended = await orgs.suspend(
            org.id, reason="  unpaid invoices ", actor=OPERATOR, session=session
        )
        assert suspended.status is OrganizationStatus.SUSPENDED
        row = await stored(session, org.id)
        assert (row["status"], row["suspended_at"]) == ("suspended", CLOCK_START)
        resumed = await orgs.resume(org.id, reason="paid", actor=OPERATOR, session=session)
        assert resumed.status is OrganizationStatus.ACTIVE
        row = await stored(session, org.id)
        assert (row["status"], row["suspended_at"]) == ("active", None)
        entries = await audit_entries(session, org.id)
        assert [(e.action, e.details, e.actor_type) for e in entries] == [
            ("organization.suspended", {"reason": "unpaid invoices"}, "operator"),
            ("organization.resumed", {"reason": "paid"}, "operator"),
        ]

    async def test_repeating_changes_nothing(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(name="Twice", session=session)
        await orgs.resume(org.id, session=session)  # already active
        await orgs.suspend(org.id, reason="first", session=session)
        await orgs.suspend(org.id, reason="second", session=session)
        entries = await audit_entries(session, org.id)
        assert [(e.action, e.details["reason"]) for e in entries] == [
            ("organization.suspended", "first")
        ]

    @pytest.mark.parametrize("reason", ["", "   ", "x" * 501])
    async def test_a_reason_is_needed(
        self, orgs: OrganizationService, session: AsyncSession, reason: str
    ) -> None:
        org = await orgs.create(name="Reasonless", session=session)
        with pytest.raises(InvalidInput) as info:
            await orgs.suspend(org.id, reason=reason, session=session)
        assert info.value.details == {"field": "reason"}
        assert (await stored(session, org.id))["status"] == "active"

    async def test_unknown_organization(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        with pytest.raises(OrganizationNotFound):
            await orgs.suspend(uuid.uuid4(), reason="x", session=session)
        with pytest.raises(OrganizationNotFound):
            await orgs.resume(uuid.uuid4(), session=session)


class TestCreateAudit:
    async def test_with_an_actor_creation_opens_the_chain(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(name="Audited", plan="pro", actor=OPERATOR, session=session)
        [entry] = await audit_entries(session, org.id, creation=True)
        assert (entry.seq, entry.action, entry.actor_type) == (
            1,
            "organization.created",
            "operator",
        )
        assert entry.details == {"name": "Audited", "slug": "audited", "plan": "pro"}

    async def test_without_one_saascore_is_the_actor(
        self, orgs: OrganizationService, session: AsyncSession
    ) -> None:
        org = await orgs.create(name="Quiet", session=session)
        [entry] = await audit_entries(session, org.id, creation=True)
        assert (entry.seq, entry.action, entry.actor_type, entry.actor_id) == (
            1,
            "organization.created",
            "system",
            None,
        )
        assert entry.details == {"name": "Quiet", "slug": "quiet", "plan": "free"}

    @pytest.mark.parametrize(
        ("field", "value"),
        [("domain", "no domain"), ("billing_email", "no-at-sign"), ("external_id", "")],
    )
    async def test_invalid_fields(
        self, orgs: OrganizationService, session: AsyncSession, field: str, value: str
    ) -> None:
        with pytest.raises(InvalidInput) as info:
            await orgs.create(name="Bad", **{field: value}, session=session)
        assert info.value.details == {"field": field}
        assert await count(session, Organization, Organization.name == "Bad") == 0


@pytest.mark.race_database(fresh=True)
class TestWithoutASession:
    """Called without a session, the service commits its own transaction."""

    async def test_create_commits(self, race_database: Database) -> None:
        plans = PlanService(race_database)
        await plans.load_catalog(read_catalog())
        orgs = OrganizationService(race_database, plans)
        org = await orgs.create(name="Committed", external_id="c-1")
        assert org.plan.code == "free"
        found = await orgs.get_by_external_id("c-1")
        assert found.id == org.id
        assert [o.id for o in await orgs.list()] == [org.id]
        with pytest.raises(OrganizationExists):
            await orgs.create(name="Again", external_id="c-1")
        assert [o.id for o in await orgs.list()] == [org.id]

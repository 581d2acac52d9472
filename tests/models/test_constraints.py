"""What the database itself refuses, on both backends.

Bad rows are written with Core `INSERT`s or text SQL so that nothing on the Python side (the ORM,
`Enum` validation) refuses them first. Each refusal runs in a SAVEPOINT, and each test checks
that the refused row is not there and that a valid twin of it is accepted (so the refusal is
about the one bad value).
"""

from __future__ import annotations

import uuid
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.ids import new_id
from saascore.kit.time import utcnow
from saascore.models import (
    ApiKey,
    Base,
    CreditGrant,
    Document,
    Invoice,
    MemoryEntry,
    Organization,
    SubscriptionPlan,
    UsageEvent,
    UsageLimits,
    User,
)
from tests.factories import (
    create_api_key,
    create_credit_grant,
    create_document,
    create_folder,
    create_memory_entry,
    create_organization,
    create_usage_event,
    create_user,
)
from tests.models.test_schema import tenant_table_names


def table(model: type[Base]) -> sa.Table:
    """The model's table, for Core statements that bypass the ORM."""
    return cast(sa.Table, model.__table__)


async def refused(
    session: AsyncSession, statement: sa.Executable, *fragments: str
) -> IntegrityError:
    """Run `statement` in a savepoint; it must fail with an IntegrityError naming a fragment."""
    with pytest.raises(IntegrityError) as info:
        async with session.begin_nested():
            await session.execute(statement)
    message = str(info.value.orig)
    if fragments:
        assert any(fragment in message for fragment in fragments), message
    return info.value


async def accepted(session: AsyncSession, statement: sa.Executable) -> None:
    async with session.begin_nested():
        await session.execute(statement)


async def count(session: AsyncSession, model: type[Base], *conditions: Any) -> int:
    query = sa.select(sa.func.count()).select_from(table(model)).where(*conditions)
    return int(await session.scalar(query) or 0)


class TestNonNegative:
    async def test_credit_grant_amount(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        grants = table(CreditGrant)
        values = {"organization_id": org.id, "source": "manual", "amount": 5, "remaining": 5}
        await accepted(session, sa.insert(grants).values(**values))
        await refused(
            session,
            sa.insert(grants).values({**values, "amount": -5, "remaining": -5}),
            "ck_credit_grants_amount_non_negative",
            "ck_credit_grants_remaining_non_negative",
        )
        assert await count(session, CreditGrant, CreditGrant.organization_id == org.id) == 1

    async def test_credit_grant_remaining_within_amount(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        values = {"organization_id": org.id, "source": "manual", "amount": 5, "remaining": 6}
        await refused(
            session,
            sa.insert(table(CreditGrant)).values(**values),
            "ck_credit_grants_remaining_within_amount",
        )
        assert await count(session, CreditGrant, CreditGrant.organization_id == org.id) == 0

    async def test_usage_event_quantity(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        values = {
            "organization_id": org.id,
            "payload_hash": "0" * 64,
            "metric": "api_calls",
            "occurred_at": utcnow(),
        }
        events = table(UsageEvent)
        await accepted(
            session, sa.insert(events).values({**values, "idempotency_key": "a", "quantity": 0})
        )
        await refused(
            session,
            sa.insert(events).values({**values, "idempotency_key": "b", "quantity": -1}),
            "ck_usage_events_quantity_non_negative",
        )
        assert await count(session, UsageEvent, UsageEvent.organization_id == org.id) == 1

    async def test_invoice_total(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        invoices = table(Invoice)
        # The totals add up, so only `total >= 0` of an issued invoice is broken. A draft may
        # be negative while it is built (a credit line before its charges).
        await accepted(
            session,
            sa.insert(invoices).values(
                organization_id=org.id, currency="USD", subtotal=1, total=1, amount_due=1
            ),
        )
        negative = {"subtotal": 0, "discount_amount": 1, "total": -1, "amount_due": -1}
        await accepted(
            session, sa.insert(invoices).values(organization_id=org.id, currency="USD", **negative)
        )
        await refused(
            session,
            sa.insert(invoices).values(
                organization_id=org.id, currency="USD", status="open", number="N-1", **negative
            ),
            "ck_invoices_issued_totals_non_negative",
        )
        assert await count(session, Invoice, Invoice.organization_id == org.id) == 2

    async def test_invoice_amount_due_adds_up(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        await refused(
            session,
            sa.insert(table(Invoice)).values(
                organization_id=org.id, currency="USD", subtotal=10, total=10, amount_due=9
            ),
            "ck_invoices_due_adds_up",
        )
        assert await count(session, Invoice, Invoice.organization_id == org.id) == 0

    async def test_invoice_total_adds_up(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        await refused(
            session,
            sa.insert(table(Invoice)).values(
                organization_id=org.id,
                currency="USD",
                subtotal=10,
                tax_amount=2,
                total=11,
                amount_due=11,
            ),
            "ck_invoices_total_adds_up",
        )
        assert await count(session, Invoice, Invoice.organization_id == org.id) == 0


class TestEnums:
    INSERT_DOCUMENT = sa.text(
        "INSERT INTO documents (organization_id, id, filename, size_bytes, status, metadata) "
        "VALUES (:organization_id, :id, 'a.pdf', 0, :status, '{}')"
    ).bindparams(
        sa.bindparam("organization_id", type_=sa.Uuid()), sa.bindparam("id", type_=sa.Uuid())
    )
    INSERT_USER = sa.text(
        "INSERT INTO users (organization_id, id, email, role, is_active, settings) "
        "VALUES (:organization_id, :id, :email, :role, true, '{}')"
    ).bindparams(
        sa.bindparam("organization_id", type_=sa.Uuid()), sa.bindparam("id", type_=sa.Uuid())
    )

    async def test_unknown_document_status(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        ok, bad = new_id(), new_id()
        await accepted(
            session, self.INSERT_DOCUMENT.params(organization_id=org.id, id=ok, status="uploaded")
        )
        await refused(
            session,
            self.INSERT_DOCUMENT.params(organization_id=org.id, id=bad, status="bogus"),
            "ck_documents_status",
        )
        ids = (
            await session.scalars(sa.select(Document.id).where(Document.organization_id == org.id))
        ).all()
        assert ids == [ok]

    async def test_unknown_user_role(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        await accepted(
            session,
            self.INSERT_USER.params(
                organization_id=org.id, id=new_id(), email="a@x.io", role="admin"
            ),
        )
        await refused(
            session,
            self.INSERT_USER.params(
                organization_id=org.id, id=new_id(), email="b@x.io", role="bogus"
            ),
            "ck_users_role",
        )
        assert await count(session, User, User.organization_id == org.id) == 1


class TestUniqueness:
    async def test_usage_event_idempotency_key_per_organization(
        self, session: AsyncSession
    ) -> None:
        org, other = await create_organization(session), await create_organization(session)
        first = await create_usage_event(session, org, idempotency_key="evt-1")

        def again(organization: Organization) -> sa.Insert:
            return sa.insert(table(UsageEvent)).values(
                organization_id=organization.id,
                idempotency_key="evt-1",
                payload_hash="1" * 64,
                metric="tokens",
                quantity=7,
                occurred_at=utcnow(),
            )

        await refused(
            session,
            again(org),
            "uq_usage_events_organization_id_idempotency_key",
            "usage_events.idempotency_key",
        )
        await accepted(session, again(other))  # keys are per organisation
        rows = (
            await session.execute(
                sa.select(UsageEvent.id, UsageEvent.metric).where(
                    UsageEvent.organization_id == org.id
                )
            )
        ).all()
        assert [tuple(row) for row in rows] == [(first.id, "api_calls")]

    async def test_user_email_per_organization(self, session: AsyncSession) -> None:
        org, other = await create_organization(session), await create_organization(session)
        await create_user(session, org, email="ada@example.com")

        def same_email(organization: Organization) -> sa.Insert:
            return sa.insert(table(User)).values(
                organization_id=organization.id, email="ada@example.com", role="member"
            )

        await refused(session, same_email(org), "uq_users_organization_id_email", "users.email")
        await accepted(session, same_email(other))
        assert await count(session, User, User.organization_id == org.id) == 1
        assert await count(session, User, User.email == "ada@example.com") == 2

    async def test_one_usage_limits_row_per_organization(self, session: AsyncSession) -> None:
        org = await create_organization(session)  # creates its usage_limits row
        await refused(
            session,
            sa.insert(table(UsageLimits)).values(organization_id=org.id),
            "uq_usage_limits_organization_id",
            "usage_limits.organization_id",
        )
        assert await count(session, UsageLimits, UsageLimits.organization_id == org.id) == 1

    async def test_memory_entry_namespace_and_key(self, session: AsyncSession) -> None:
        org, other = await create_organization(session), await create_organization(session)
        await create_memory_entry(session, org, namespace="agent", key="k", value={"v": 1})

        def entry(organization: Organization, namespace: str) -> sa.Insert:
            return sa.insert(table(MemoryEntry)).values(
                organization_id=organization.id, namespace=namespace, key="k", value={"v": 2}
            )

        await refused(
            session,
            entry(org, "agent"),
            "uq_memory_entries_organization_id_namespace_key",
            "memory_entries.namespace",
        )
        await accepted(session, entry(org, "other-namespace"))
        await accepted(session, entry(other, "agent"))
        values = (
            await session.scalars(
                sa.select(MemoryEntry.value).where(
                    MemoryEntry.organization_id == org.id, MemoryEntry.namespace == "agent"
                )
            )
        ).all()
        assert values == [{"v": 1}]


class TestTenantIsolation:
    async def test_document_cannot_use_another_organizations_folder(
        self, session: AsyncSession
    ) -> None:
        org_a, org_b = await create_organization(session), await create_organization(session)
        folder_a = await create_folder(session, org_a)

        def document(organization: Organization) -> sa.Insert:
            return sa.insert(table(Document)).values(
                organization_id=organization.id, folder_id=folder_a.id, filename="x.pdf"
            )

        await refused(session, document(org_b), "fk_documents_folder_id_folders", "FOREIGN KEY")
        await accepted(session, document(org_a))
        assert await count(session, Document, Document.organization_id == org_b.id) == 0
        assert await count(session, Document, Document.folder_id == folder_a.id) == 1

    async def test_document_cannot_move_into_another_organizations_folder(
        self, session: AsyncSession
    ) -> None:
        org_a, org_b = await create_organization(session), await create_organization(session)
        folder_a = await create_folder(session, org_a)
        document_b = await create_document(session, org_b)
        await refused(
            session,
            sa.update(table(Document))
            .where(Document.organization_id == org_b.id, Document.id == document_b.id)
            .values(folder_id=folder_a.id),
            "fk_documents_folder_id_folders",
            "FOREIGN KEY",
        )
        folder_id = await session.scalar(
            sa.select(Document.folder_id).where(Document.id == document_b.id)
        )
        assert folder_id is None

    async def test_api_key_cannot_act_for_another_organizations_user(
        self, session: AsyncSession
    ) -> None:
        org_a, org_b = await create_organization(session), await create_organization(session)
        user_a = await create_user(session, org_a)

        def api_key(organization: Organization) -> sa.Insert:
            return sa.insert(table(ApiKey)).values(
                organization_id=organization.id,
                user_id=user_a.id,
                name="k",
                key_prefix="sk_test_x",
                key_hash="f" * 64,
            )

        await refused(session, api_key(org_b), "fk_api_keys_user_id_users", "FOREIGN KEY")
        await accepted(session, api_key(org_a))
        assert await count(session, ApiKey, ApiKey.user_id == user_a.id) == 1
        assert await count(session, ApiKey, ApiKey.organization_id == org_b.id) == 0

    async def test_row_of_an_unknown_organization(self, session: AsyncSession) -> None:
        unknown = uuid.uuid4()
        await refused(
            session,
            sa.insert(table(User)).values(organization_id=unknown, email="a@b.c", role="member"),
            "fk_users_organization_id_organizations",
            "FOREIGN KEY",
        )
        assert await count(session, User, User.organization_id == unknown) == 0


class TestDeletion:
    async def test_deleting_an_organization_deletes_its_rows(self, session: AsyncSession) -> None:
        org, other = await create_organization(session), await create_organization(session)
        for organization in (org, other):
            user = await create_user(session, organization)
            await create_api_key(session, organization, user=user)
            parent = await create_folder(session, organization)
            child = await create_folder(session, organization, parent=parent)
            await create_document(session, organization, folder=child)
            await create_usage_event(session, organization)
            await create_credit_grant(session, organization)
            await create_memory_entry(session, organization)

        tenant_models = [
            mapper.class_
            for mapper in Base.registry.mappers
            if table(mapper.class_).name in tenant_table_names(Base.metadata)
        ]

        async def rows_of(organization: Organization) -> dict[str, int]:
            result = {}
            for model in tenant_models:
                n = await count(session, model, model.organization_id == organization.id)
                if n:
                    result[model.__tablename__] = n
            return result

        before = await rows_of(org)
        assert before == {
            "users": 1,
            "api_keys": 1,
            "folders": 2,
            "documents": 1,
            "usage_events": 1,
            "credit_grants": 1,
            "memory_entries": 1,
            "usage_limits": 1,
        }
        await session.execute(sa.delete(table(Organization)).where(Organization.id == org.id))
        assert await rows_of(org) == {}
        assert await rows_of(other) == before  # the other tenant keeps everything

    async def test_a_plan_in_use_cannot_be_deleted(self, session: AsyncSession) -> None:
        org = await create_organization(session)
        await refused(
            session,
            sa.delete(table(SubscriptionPlan)).where(SubscriptionPlan.id == org.plan_id),
            "fk_organizations_plan_id_subscription_plans",
            "FOREIGN KEY",
        )
        assert await count(session, SubscriptionPlan, SubscriptionPlan.id == org.plan_id) == 1

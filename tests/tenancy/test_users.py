"""Users and roles: adding, changing and removing users; only owners touch owners; an
organisation always keeps an active owner, even when two admins race to demote the last two;
the plan's seats cap the active users."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import Actor, AuditService, audited_bus
from saascore.identity.errors import (
    LastOwner,
    PermissionDenied,
    UserExists,
    UserNotFound,
    WeakPassword,
)
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.metering.errors import LimitExceeded
from saascore.models import (
    ApiKey,
    AuditLog,
    Organization,
    RefreshToken,
    User,
    UserRole,
)
from saascore.tenancy.passwords import verify_password
from saascore.tenancy.service import OrganizationNotFound
from saascore.tenancy.users import UserService
from tests.factories import create_api_key, create_organization, create_plan, create_user
from tests.helpers import CLOCK_START, Clock

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN_ACTOR = Actor("user", "admin-1")
PASSWORD = "a long enough password"


@pytest.fixture
def users(database: Database) -> UserService:
    return UserService(database, audited_bus(AuditService(database)), clock=Clock())


async def organization(session: AsyncSession, **plan: Any) -> Organization:
    return await create_organization(session, plan=await create_plan(session, **plan))


async def user_row(session: AsyncSession, user_id: uuid.UUID) -> dict[str, Any] | None:
    """The user as the database holds it (None once deleted)."""
    row = (await session.execute(sa.select(User.__table__).where(User.id == user_id))).one_or_none()
    if row is None:
        return None
    return {key: value for key, value in row._asdict().items() if key != "updated_at"}


async def actions(session: AsyncSession, org_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    entries = await session.scalars(
        sa.select(AuditLog).where(AuditLog.organization_id == org_id).order_by(AuditLog.seq)
    )
    return [(entry.action, entry.details) for entry in entries]


class TestCreate:
    async def test_adds_a_user_and_audits_it(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        user = await users.create(
            org.id,
            email="  Grace@Example.COM ",
            name=" Grace Hopper ",
            role=UserRole.ADMIN,
            password=PASSWORD,
            actor=ADMIN_ACTOR,
            session=session,
        )
        row = await user_row(session, user.id)
        assert row is not None
        assert (row["email"], row["full_name"], row["role"], row["is_active"]) == (
            "grace@example.com",
            "Grace Hopper",
            "admin",
            True,
        )
        assert (await verify_password(PASSWORD, row["password_hash"]))[0]
        assert await actions(session, org.id) == [
            (
                "user.created",
                {"user_id": str(user.id), "email": "grace@example.com", "role": "admin"},
            )
        ]

    async def test_without_a_password_nobody_can_log_in(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        user = await users.create(org.id, email="sso@example.com", session=session)
        row = await user_row(session, user.id)
        assert row is not None
        assert (row["password_hash"], row["role"]) == (None, "member")

    async def test_an_email_is_unique_within_an_organisation_only(
        self, users: UserService, session: AsyncSession
    ) -> None:
        first, second = await organization(session), await organization(session)
        await users.create(first.id, email="same@example.com", session=session)
        with pytest.raises(UserExists) as info:
            await users.create(first.id, email="SAME@example.com", session=session)
        assert (info.value.code, info.value.status_code) == ("user_exists", 409)
        other = await users.create(second.id, email="same@example.com", session=session)
        assert other.organization_id == second.id
        count = await session.scalar(
            sa.select(sa.func.count()).where(User.email == "same@example.com")
        )
        assert count == 2

    @pytest.mark.parametrize(
        ("values", "error", "field"),
        [
            ({"email": "not-an-email"}, InvalidInput, "email"),
            ({"email": "x@example.com", "name": "n" * 256}, InvalidInput, "name"),
            ({"email": "x@example.com", "password": "short"}, WeakPassword, None),
        ],
    )
    async def test_invalid_input_adds_nobody(
        self,
        users: UserService,
        session: AsyncSession,
        values: dict[str, Any],
        error: type[Exception],
        field: str | None,
    ) -> None:
        org = await organization(session)
        with pytest.raises(error) as info:
            await users.create(org.id, **values, session=session)
        if field is not None:
            assert getattr(info.value, "details", {}).get("field") == field
        assert (
            await session.scalar(sa.select(sa.func.count()).where(User.organization_id == org.id))
            == 0
        )

    async def test_unknown_organisation(self, users: UserService, session: AsyncSession) -> None:
        with pytest.raises(OrganizationNotFound):
            await users.create(uuid.uuid4(), email="lost@example.com", session=session)


class TestOnlyOwnersTouchOwners:
    async def test_an_admin_cannot_make_an_owner(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        member = await create_user(session, org)
        with pytest.raises(PermissionDenied) as info:
            await users.create(
                org.id,
                email="boss@example.com",
                role=UserRole.OWNER,
                acting_role=UserRole.ADMIN,
                session=session,
            )
        assert (info.value.code, info.value.status_code) == ("permission_denied", 403)
        with pytest.raises(PermissionDenied):
            await users.update(
                org.id,
                member.id,
                role=UserRole.OWNER,
                acting_role=UserRole.ADMIN,
                session=session,
            )
        assert (await user_row(session, member.id) or {})["role"] == "member"
        assert await actions(session, org.id) == []

    @pytest.mark.parametrize(
        "change",
        [
            {"name": "Renamed"},
            {"role": UserRole.ADMIN},
            {"is_active": False},
            {"password": PASSWORD},
        ],
    )
    async def test_an_admin_cannot_change_an_owner(
        self, users: UserService, session: AsyncSession, change: dict[str, Any]
    ) -> None:
        org = await organization(session)
        owner = await create_user(session, org, role=UserRole.OWNER)
        await create_user(session, org, role=UserRole.OWNER)  # so that LastOwner is not why
        before = await user_row(session, owner.id)
        with pytest.raises(PermissionDenied):
            await users.update(
                org.id, owner.id, **change, acting_role=UserRole.ADMIN, session=session
            )
        session.expunge_all()
        assert await user_row(session, owner.id) == before
        assert await actions(session, org.id) == []

    async def test_an_admin_cannot_remove_an_owner(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        owner = await create_user(session, org, role=UserRole.OWNER)
        await create_user(session, org, role=UserRole.OWNER)
        with pytest.raises(PermissionDenied):
            await users.delete(org.id, owner.id, acting_role=UserRole.ADMIN, session=session)
        assert await user_row(session, owner.id) is not None

    async def test_an_owner_can_make_and_unmake_owners(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        await create_user(session, org, role=UserRole.OWNER)
        member = await create_user(session, org)
        await users.update(org.id, member.id, role=UserRole.OWNER, session=session)
        assert (await user_row(session, member.id) or {})["role"] == "owner"
        await users.update(org.id, member.id, role=UserRole.VIEWER, session=session)
        assert (await user_row(session, member.id) or {})["role"] == "viewer"
        assert [action for action, _ in await actions(session, org.id)] == [
            "user.role_changed",
            "user.role_changed",
        ]

    async def test_an_admin_manages_members_and_admins(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        member = await create_user(session, org)
        await users.update(
            org.id,
            member.id,
            role=UserRole.ADMIN,
            acting_role=UserRole.ADMIN,
            actor=ADMIN_ACTOR,
            session=session,
        )
        assert await actions(session, org.id) == [
            ("user.role_changed", {"from": "member", "to": "admin"})
        ]
        await users.delete(org.id, member.id, acting_role=UserRole.ADMIN, session=session)
        assert await user_row(session, member.id) is None


class TestLastOwner:
    async def test_the_only_owner_cannot_leave(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        owner = await create_user(session, org, role=UserRole.OWNER)
        for change in ({"role": UserRole.ADMIN}, {"is_active": False}):
            with pytest.raises(LastOwner) as info:
                await users.update(org.id, owner.id, **change, session=session)
            assert (info.value.code, info.value.status_code) == ("last_owner", 409)
        with pytest.raises(LastOwner):
            await users.delete(org.id, owner.id, session=session)
        session.expunge_all()
        row = await user_row(session, owner.id)
        assert row is not None
        assert (row["role"], row["is_active"]) == ("owner", True)

    async def test_an_inactive_owner_does_not_count(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        owner = await create_user(session, org, role=UserRole.OWNER)
        await create_user(session, org, role=UserRole.OWNER, is_active=False)
        with pytest.raises(LastOwner):
            await users.update(org.id, owner.id, role=UserRole.MEMBER, session=session)

    async def test_with_another_owner_one_may_leave(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        leaving = await create_user(session, org, role=UserRole.OWNER)
        staying = await create_user(session, org, role=UserRole.OWNER)
        await users.update(org.id, leaving.id, role=UserRole.ADMIN, session=session)
        with pytest.raises(LastOwner):
            await users.delete(org.id, staying.id, session=session)
        await users.update(org.id, leaving.id, role=UserRole.OWNER, session=session)
        await users.delete(org.id, staying.id, session=session)
        assert await user_row(session, staying.id) is None

    async def test_an_inactive_owner_may_be_removed(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        await create_user(session, org, role=UserRole.OWNER)
        dormant = await create_user(session, org, role=UserRole.OWNER, is_active=False)
        await users.delete(org.id, dormant.id, session=session)
        assert await user_row(session, dormant.id) is None


class TestUpdate:
    async def test_unknown_or_foreign_user(self, users: UserService, session: AsyncSession) -> None:
        mine, theirs = await organization(session), await organization(session)
        stranger = await create_user(session, theirs)
        for user_id in (uuid.uuid4(), stranger.id):
            with pytest.raises(UserNotFound):
                await users.update(mine.id, user_id, name="x", session=session)
            with pytest.raises(UserNotFound):
                await users.delete(mine.id, user_id, session=session)
            with pytest.raises(UserNotFound):
                await users.get(mine.id, user_id, session=session)
        assert (await user_row(session, stranger.id) or {})["full_name"] is None

    async def test_nothing_to_change_writes_no_audit_entry(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        member = await create_user(session, org, full_name="Same")
        await users.update(org.id, member.id, session=session)
        await users.update(
            org.id, member.id, name="Same", role=UserRole.MEMBER, is_active=True, session=session
        )
        assert await actions(session, org.id) == []

    async def test_a_new_password_or_a_deactivation_ends_sessions(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        member = await create_user(session, org)

        async def live_sessions() -> int:
            return int(
                await session.scalar(
                    sa.select(sa.func.count()).where(
                        RefreshToken.user_id == member.id, RefreshToken.revoked_at.is_(None)
                    )
                )
                or 0
            )

        async def log_in() -> None:
            session.add(
                RefreshToken(
                    organization_id=org.id,
                    user_id=member.id,
                    family_id=uuid.uuid4(),
                    token_hash=uuid.uuid4().hex,
                    expires_at=CLOCK_START + timedelta(days=30),
                )
            )
            await session.flush()

        await log_in()
        await users.update(org.id, member.id, name="Still here", session=session)
        assert await live_sessions() == 1
        await users.update(org.id, member.id, password=PASSWORD, session=session)
        assert await live_sessions() == 0
        await log_in()
        await users.update(org.id, member.id, is_active=False, session=session)
        assert await live_sessions() == 0
        assert [details for action, details in await actions(session, org.id)] == [
            {"name_changed": True},
            {"password_changed": True},
            {"is_active": False},
        ]

    async def test_delete_takes_the_users_keys_along(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session)
        member = await create_user(session, org)
        key = await create_api_key(session, org, user=member)
        await users.delete(org.id, member.id, actor=ADMIN_ACTOR, session=session)
        assert await session.scalar(sa.select(ApiKey.id).where(ApiKey.id == key.id)) is None
        assert await actions(session, org.id) == [
            (
                "user.deleted",
                {"user_id": str(member.id), "email": member.email, "role": "member"},
            )
        ]


class TestSeats:
    async def test_the_plan_caps_active_users(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session, max_users=2)
        await create_user(session, org, role=UserRole.OWNER)
        dormant = await users.create(org.id, email="second@example.com", session=session)
        with pytest.raises(LimitExceeded) as info:
            await users.create(org.id, email="third@example.com", session=session)
        assert (info.value.code, info.value.status_code) == ("limit_exceeded", 402)
        assert info.value.details == {"metric": "users", "limit": 2, "used": 2, "requested": 1}
        await users.update(org.id, dormant.id, is_active=False, session=session)
        third = await users.create(org.id, email="third@example.com", session=session)
        with pytest.raises(LimitExceeded):
            await users.update(org.id, dormant.id, is_active=True, session=session)
        assert (await user_row(session, dormant.id) or {})["is_active"] is False
        assert third.is_active

    async def test_no_cap_without_max_users(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org = await organization(session, max_users=None)
        for i in range(4):
            await users.create(org.id, email=f"u{i}@example.com", session=session)
        assert len(await users.list(org.id, session=session)) == 4


class TestList:
    async def test_oldest_first_and_paged_by_cursor(
        self, users: UserService, session: AsyncSession
    ) -> None:
        org, other = await organization(session), await organization(session)
        created = [
            (await users.create(org.id, email=f"p{i}@example.com", session=session)).id
            for i in range(5)
        ]
        await users.create(other.id, email="elsewhere@example.com", session=session)
        assert [u.id for u in await users.list(org.id, session=session)] == created
        page = await users.list(org.id, limit=2, after=created[1], session=session)
        assert [u.id for u in page] == created[2:4]


# --- races: each change in its own transaction, committed -------------------------------------
Change = Callable[[UserService, uuid.UUID, uuid.UUID], Awaitable[object]]


async def demote(users: UserService, org_id: uuid.UUID, user_id: uuid.UUID) -> object:
    return await users.update(org_id, user_id, role=UserRole.ADMIN)


async def deactivate(users: UserService, org_id: uuid.UUID, user_id: uuid.UUID) -> object:
    return await users.update(org_id, user_id, is_active=False)


async def remove(users: UserService, org_id: uuid.UUID, user_id: uuid.UUID) -> object:
    await users.delete(org_id, user_id)
    return user_id


async def active_owners(database: Database, org_id: uuid.UUID) -> int:
    async with database.session(readonly=True) as s:
        count = await s.scalar(
            sa.select(sa.func.count()).where(
                User.organization_id == org_id,
                User.role == UserRole.OWNER,
                User.is_active.is_(True),
            )
        )
    return int(count or 0)


@pytest.mark.parametrize(
    ("first", "second"),
    [(demote, demote), (demote, deactivate), (remove, remove), (deactivate, remove)],
    ids=["demote+demote", "demote+deactivate", "remove+remove", "deactivate+remove"],
)
async def test_two_racing_changes_leave_an_owner(
    race_database: Database, first: Change, second: Change
) -> None:
    """Two owners, and two admins each taking one of them away at the same moment: exactly
    one change wins, the other is `LastOwner`, and one active owner is left."""
    audit = AuditService(race_database)
    users = UserService(race_database, audited_bus(audit))
    for _ in range(5):
        async with race_database.transaction() as s:
            plan = await create_plan(s)
            org = await create_organization(s, plan=plan)
            a = await create_user(s, org, role=UserRole.OWNER)
            b = await create_user(s, org, role=UserRole.OWNER)
            org_id, a_id, b_id = org.id, a.id, b.id
        outcomes = await asyncio.gather(
            first(users, org_id, a_id), second(users, org_id, b_id), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(refused) == 1, outcomes
        assert isinstance(refused[0], LastOwner), refused
        assert await active_owners(race_database, org_id) == 1
        assert await audit.verify(org_id) == []
        async with race_database.session(readonly=True) as s:
            entries = await s.scalar(
                sa.select(sa.func.count()).where(AuditLog.organization_id == org_id)
            )
        assert entries == 1  # the winner's change only


async def test_seats_hold_under_racing_additions(race_database: Database) -> None:
    """Ten additions race for two free seats: two win."""
    users = UserService(race_database, audited_bus(AuditService(race_database)))
    async with race_database.transaction() as s:
        plan = await create_plan(s, max_users=3)
        org = await create_organization(s, plan=plan)
        await create_user(s, org, role=UserRole.OWNER)
        org_id = org.id
    outcomes = await asyncio.gather(
        *(users.create(org_id, email=f"racer{i}@example.com") for i in range(10)),
        return_exceptions=True,
    )
    assert sum(isinstance(o, User) for o in outcomes) == 2
    assert all(isinstance(o, User | LimitExceeded) for o in outcomes), outcomes
    async with race_database.session(readonly=True) as s:
        count = await s.scalar(sa.select(sa.func.count()).where(User.organization_id == org_id))
    assert count == 3

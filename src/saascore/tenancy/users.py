"""The users of an organisation and their roles.

An organisation always keeps an active owner, and only an owner may make, change or remove an
owner. Changes to one organisation's users take its row lock first (`locked_organization`), so
two admins demoting the last two owners at once cannot both succeed: the second one waits,
then sees the first one's change. The plan's `max_users` caps the active users.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.events.bus import EventBus
from saascore.events.catalog import UserCreated, UserRemoved, UserRoleChanged, UserUpdated
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput, PermissionDenied
from saascore.kit.sql import violates
from saascore.kit.time import utcnow
from saascore.kit.validation import checked_text
from saascore.metering.errors import LimitExceeded
from saascore.models import Organization, RefreshToken, User, UserRole
from saascore.tenancy.errors import LastOwner, UserExists, UserNotFound
from saascore.tenancy.passwords import check_password, hash_password
from saascore.tenancy.service import locked_organization, normalize_email

__all__ = ["UserService", "check_seats", "end_access_tokens"]


def _check_name(name: str | None) -> str | None:
    if name is None:
        return None
    name = checked_text(name, field="name").strip()
    if len(name) > 255:
        raise InvalidInput("a name has at most 255 characters", field="name")
    return name or None


class UserService:
    def __init__(
        self,
        database: Database,
        events: EventBus,
        *,
        password_min_length: int = 10,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.events = events
        self.password_min_length = password_min_length
        self.clock = clock

    async def _hash(self, password: str | None, email: str) -> str | None:
        """The hash of a password that passes `check_password` for the account `email`."""
        if password is None:
            return None
        check_password(password, self.password_min_length, email=email)
        return await hash_password(password)

    async def list(
        self,
        org_id: uuid.UUID,
        *,
        limit: int = 50,
        after: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Sequence[User]:
        """The organisation's users, oldest first (ids are time-ordered); `after` pages on."""
        query = sa.select(User).where(User.organization_id == org_id).order_by(User.id).limit(limit)
        if after is not None:
            query = query.where(User.id > after)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    async def get(
        self, org_id: uuid.UUID, user_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> User:
        async with self.database.scope(session, readonly=True) as s:
            user = await s.scalar(
                sa.select(User).where(User.organization_id == org_id, User.id == user_id)
            )
        if user is None:
            raise UserNotFound(f"no user {user_id}", user=str(user_id))
        return user

    async def get_by_email(
        self, org_id: uuid.UUID, email: str, *, session: AsyncSession | None = None
    ) -> User:
        """The organisation's user with this e-mail (compared as `create` stores it)."""
        email = normalize_email(email)
        async with self.database.scope(session, readonly=True) as s:
            user = await s.scalar(
                sa.select(User).where(User.organization_id == org_id, User.email == email)
            )
        if user is None:
            raise UserNotFound(f"no user {email}", email=email)
        return user

    async def create(
        self,
        org_id: uuid.UUID,
        *,
        email: str,
        role: UserRole = UserRole.MEMBER,
        name: str | None = None,
        password: str | None = None,
        external_platform: str | None = None,
        external_id: str | None = None,
        external_store_id: str | None = None,
        acting_role: UserRole = UserRole.OWNER,
        actor: Actor = SYSTEM,
        announce: bool = True,
        session: AsyncSession | None = None,
    ) -> User:
        """Add a user: every path that makes one (the API, registration, provisioning from
        an external platform) comes here. Without a password the user cannot log in (until
        one is set), which suits accounts that only use API keys or an external sign-in.
        `user.created` is emitted unless `announce` is false, for a caller whose own event
        says it (`user.registered`, `user.provisioned`).

        `LimitExceeded` (metric `users`) when the plan's `max_users` active users are there.
        """
        email = normalize_email(email)
        name = _check_name(name)
        _guard_owner(acting_role, role)
        password_hash = await self._hash(password, email)
        async with self.database.scope(session) as s:
            organization = await locked_organization(s, org_id, with_plan=True)
            await check_seats(s, organization)
            user = User(
                organization_id=org_id,
                email=email,
                full_name=name,
                role=role,
                password_hash=password_hash,
                external_platform=external_platform,
                external_id=external_id,
                external_store_id=external_store_id,
            )
            try:
                async with s.begin_nested():
                    s.add(user)
                    await s.flush()
            except IntegrityError as error:
                if violates(error, "email"):
                    raise UserExists(f"{email} is already a user here", email=email) from None
                raise
            if not announce:
                return user
            await self.events.emit(
                s,
                org_id,
                UserCreated(user_id=user.id, email=email, role=role.value),
                actor=actor,
                target_id=user.id,
            )
        return user

    async def update(
        self,
        org_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        name: str | None = None,
        role: UserRole | None = None,
        is_active: bool | None = None,
        password: str | None = None,
        acting_role: UserRole = UserRole.OWNER,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> User:
        """Change a user's name, role, activity or password (None leaves each as it is).

        Changing an owner, or making one, takes an owner (`PermissionDenied`); a change that
        would leave no active owner is `LastOwner`; reactivating a user needs a free seat.
        A new password or a deactivation ends the user's sessions (refresh tokens).
        """
        name = _check_name(name)
        if role is UserRole.OWNER:
            _guard_owner(acting_role, role)
        password_hash = None
        if password is not None:  # hashed before any lock is taken (e-mails never change)
            email = (await self.get(org_id, user_id, session=session)).email
            password_hash = await self._hash(password, email)
        async with self.database.scope(session) as s:
            organization = await locked_organization(s, org_id, with_plan=True)
            user = await self._locked(s, org_id, user_id)
            _guard_owner(acting_role, user.role)
            old_name, old_role, was_active = user.full_name, user.role, user.is_active
            # Every refusal comes before the first change, so a refused call changes nothing
            # even in a session the caller goes on using.
            new_role = role if role is not None else old_role
            new_active = is_active if is_active is not None else was_active
            if (old_role is UserRole.OWNER and was_active) and not (
                new_role is UserRole.OWNER and new_active
            ):
                await self._keep_an_owner(s, org_id, user_id)
            if new_active and not was_active:
                await check_seats(s, organization)
            if name is not None:
                user.full_name = name
            user.role, user.is_active = new_role, new_active
            if password_hash is not None:
                user.password_hash = password_hash
            if password_hash is not None or (was_active and not user.is_active):
                user.tokens_valid_after = self.clock()  # its access tokens end at once
                await self._end_sessions(s, org_id, user_id)
            await s.flush()
            if user.role is not old_role:
                await self.events.emit(
                    s,
                    org_id,
                    UserRoleChanged(from_=old_role.value, to=user.role.value),
                    actor=actor,
                    target_id=user.id,
                )
            details: dict[str, Any] = {}
            if user.full_name != old_name:
                details["name_changed"] = True
            if user.is_active != was_active:
                details["is_active"] = user.is_active
            if password_hash is not None:
                details["password_changed"] = True
            if details:
                await self.events.emit(
                    s, org_id, UserUpdated(**details), actor=actor, target_id=user.id
                )
        return user

    async def delete(
        self,
        org_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        acting_role: UserRole = UserRole.OWNER,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> None:
        """Remove a user, with their API keys and sessions."""
        async with self.database.scope(session) as s:
            await locked_organization(s, org_id)
            user = await self._locked(s, org_id, user_id)
            _guard_owner(acting_role, user.role)
            if user.role is UserRole.OWNER and user.is_active:
                await self._keep_an_owner(s, org_id, user_id)
            email, role = user.email, user.role
            await s.delete(user)
            await s.flush()
            await self.events.emit(
                s,
                org_id,
                UserRemoved(user_id=user_id, email=email, role=role.value),
                actor=actor,
                target_id=user_id,
            )

    async def _locked(self, s: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID) -> User:
        user = await s.scalar(
            sa.select(User)
            .where(User.organization_id == org_id, User.id == user_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if user is None:
            raise UserNotFound(f"no user {user_id}", user=str(user_id))
        return user

    async def _keep_an_owner(self, s: AsyncSession, org_id: uuid.UUID, leaving: uuid.UUID) -> None:
        """`LastOwner` unless another active owner remains (read under the organisation's
        lock, so no concurrent change can remove that one too)."""
        other = await s.scalar(
            sa.select(User.id)
            .where(
                User.organization_id == org_id,
                User.role == UserRole.OWNER,
                User.is_active.is_(True),
                User.id != leaving,
            )
            .limit(1)
        )
        if other is None:
            raise LastOwner("an organisation must keep at least one active owner")

    async def _end_sessions(self, s: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID) -> None:
        await s.execute(
            sa.update(RefreshToken)
            .where(
                RefreshToken.organization_id == org_id,
                RefreshToken.user_id == user_id,
                RefreshToken.revoked_at.is_(None),
            )
            .values(revoked_at=self.clock())
        )


async def end_access_tokens(
    s: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID, now: datetime
) -> None:
    """Refuse from now on every access token issued to the user until `now` (authentication
    compares a token's `iat` with `tokens_valid_after`, read with the user on every request)."""
    await s.execute(
        sa.update(User)
        .where(User.organization_id == org_id, User.id == user_id)
        .values(tokens_valid_after=now)
        .execution_options(synchronize_session=False)
    )


async def check_seats(s: AsyncSession, organization: Organization) -> None:
    """`LimitExceeded` unless the plan has room for one more active user. The caller holds
    the organisation's lock (`locked_organization`), so racing additions count each other."""
    seats = organization.plan.max_users
    if seats is None:
        return
    active = await s.scalar(
        sa.select(sa.func.count())
        .select_from(User)
        .where(User.organization_id == organization.id, User.is_active.is_(True))
    )
    if int(active or 0) + 1 > seats:
        raise LimitExceeded("users", seats, int(active or 0), 1)


def _guard_owner(acting_role: UserRole, role: UserRole) -> None:
    if role is UserRole.OWNER and acting_role is not UserRole.OWNER:
        raise PermissionDenied("only an owner may make, change or remove an owner")

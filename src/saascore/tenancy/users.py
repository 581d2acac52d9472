"""The users of an organisation and their roles. An organisation always keeps an active owner,
and only an owner may make, change or remove an owner."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import SYSTEM, Actor, AuditService
from saascore.identity.errors import LastOwner, PermissionDenied, UserExists, UserNotFound
from saascore.identity.passwords import check_password, hash_password
from saascore.identity.service import normalize_email
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.time import utcnow
from saascore.models import User, UserRole

__all__ = ["UserService"]


def _check_name(name: str | None) -> str | None:
    if name is not None and len(name) > 255:
        raise InvalidInput("a name has at most 255 characters", field="name")
    return name


class UserService:
    def __init__(
        self,
        database: Database,
        audit: AuditService,
        *,
        password_min_length: int = 10,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.audit = audit
        self.password_min_length = password_min_length
        self.clock = clock

    async def _hash(self, password: str | None) -> str | None:
        if password is None:
            return None
        check_password(password, self.password_min_length)
        return await hash_password(password)

    async def list(
        self,
        org_id: uuid.UUID,
        *,
        limit: int = 50,
        after: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Sequence[User]:
        """The organisation's users, oldest first."""
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

    async def create(
        self,
        org_id: uuid.UUID,
        *,
        email: str,
        role: UserRole = UserRole.MEMBER,
        name: str | None = None,
        password: str | None = None,
        acting_role: UserRole = UserRole.OWNER,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> User:
        """Add a user. Without a password the user cannot log in (until one is set), which
        suits accounts that only use API keys or an external sign-in."""
        email = normalize_email(email)
        _guard_owner(acting_role, role)
        password_hash = await self._hash(password)
        async with self.database.scope(session) as s:
            user = User(
                organization_id=org_id,
                email=email,
                full_name=_check_name(name),
                role=role,
                password_hash=password_hash,
            )
            try:
                async with s.begin_nested():
                    s.add(user)
                    await s.flush()
            except IntegrityError:
                raise UserExists(f"{email} is already a user here", email=email) from None
            await self.audit.record(
                org_id,
                "user.created",
                actor=actor,
                target_type="user",
                target_id=user.id,
                details={"email": email, "role": role.value},
                session=s,
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
        """Change a user's name, role, activity or password. A role change or deactivation
        that would leave no active owner is `LastOwner`."""
        password_hash = await self._hash(password)
        async with self.database.scope(session) as s:
            user = await self._locked(s, org_id, user_id)
            if role is not None and role is not user.role:
                _guard_owner(acting_role, user.role, role)
            if is_active is False and user.role is UserRole.OWNER:
                _guard_owner(acting_role, user.role)
            was_owner = user.role is UserRole.OWNER and user.is_active
            old_role = user.role
            if name is not None:
                user.full_name = _check_name(name)
            if role is not None:
                user.role = role
            if is_active is not None:
                user.is_active = is_active
            if password_hash is not None:
                user.password_hash = password_hash
            still_owner = user.role is UserRole.OWNER and user.is_active
            if was_owner and not still_owner:
                await self._keep_an_owner(s, org_id, user_id)
            await s.flush()
            if role is not None and role is not old_role:
                await self.audit.record(
                    org_id,
                    "user.role_changed",
                    actor=actor,
                    target_type="user",
                    target_id=user.id,
                    details={"from": old_role.value, "to": role.value},
                    session=s,
                )
            if is_active is not None or password is not None or name is not None:
                await self.audit.record(
                    org_id,
                    "user.updated",
                    actor=actor,
                    target_type="user",
                    target_id=user.id,
                    details={
                        "is_active": is_active,
                        "password_changed": password is not None,
                        "name_changed": name is not None,
                    },
                    session=s,
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
            user = await self._locked(s, org_id, user_id)
            if user.role is UserRole.OWNER:
                _guard_owner(acting_role, user.role)
                if user.is_active:
                    await self._keep_an_owner(s, org_id, user_id)
            await s.delete(user)
            await s.flush()
            await self.audit.record(
                org_id,
                "user.deleted",
                actor=actor,
                target_type="user",
                target_id=user_id,
                details={"email": user.email, "role": user.role.value},
                session=s,
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
        """`LastOwner` unless another active owner remains. The other owners' rows are locked,
        so two admins demoting the last two owners at once cannot both succeed."""
        others = (
            await s.scalars(
                sa.select(User.id)
                .where(
                    User.organization_id == org_id,
                    User.role == UserRole.OWNER,
                    User.is_active.is_(True),
                    User.id != leaving,
                )
                .with_for_update()
            )
        ).all()
        if not others:
            raise LastOwner("an organisation must keep at least one active owner")


def _guard_owner(acting_role: UserRole, *roles: UserRole) -> None:
    if UserRole.OWNER in roles and acting_role is not UserRole.OWNER:
        raise PermissionDenied("only an owner may make, change or remove an owner")

"""API keys of organisations (`sk_live_...`, `sk_test_...`) and of operators (`sk_op_...`)."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.events.bus import EventBus
from saascore.events.catalog import ApiKeyCreated, ApiKeyRevoked, OperatorKeyRevoked
from saascore.identity.errors import ApiKeyNotFound
from saascore.identity.keys import OPERATOR, new_key
from saascore.identity.permissions import parse_scopes
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.time import utcnow
from saascore.kit.validation import checked_instant, checked_text
from saascore.models import ApiKey, ApiKeyEnvironment, OperatorKey
from saascore.plans.service import API_ACCESS, PlanService

__all__ = ["ApiKeyService"]


def _check_name(name: str) -> str:
    name = checked_text(name, field="name").strip()
    if not 0 < len(name) <= 255:
        raise InvalidInput("a key needs a name of 1 to 255 characters", field="name")
    return name


class ApiKeyService:
    def __init__(
        self,
        database: Database,
        events: EventBus,
        *,
        clock: Callable[[], datetime] = utcnow,
        plans: PlanService | None = None,
    ) -> None:
        self.database = database
        self.events = events
        self.clock = clock
        #: An organisation makes keys only on a plan with API access.
        self.plans = plans if plans is not None else PlanService(database, events)

    def _check_expiry(self, expires_at: datetime | None) -> None:
        if expires_at is None:
            return
        checked_instant(expires_at, field="expires_at")
        if expires_at <= self.clock():
            raise InvalidInput("expires_at is in the past", field="expires_at")

    async def create(
        self,
        org_id: uuid.UUID,
        *,
        name: str,
        scopes: Iterable[str],
        user_id: uuid.UUID | None = None,
        expires_at: datetime | None = None,
        environment: ApiKeyEnvironment = ApiKeyEnvironment.LIVE,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its raw value, which is not stored and cannot be shown again.

        A key with a `user_id` acts for that user, and never beyond what the user may do.
        An organisation whose plan lacks `api_access` is refused (`PlanFeatureMissing`);
        operators' keys (`create_operator_key`) belong to no plan."""
        name = _check_name(name)
        permissions = parse_scopes(scopes)
        if not permissions:
            raise InvalidInput("a key needs at least one scope", field="scopes")
        self._check_expiry(expires_at)
        material = new_key(ApiKeyEnvironment(environment).value)
        async with self.database.scope(session) as s:
            await self.plans.require(org_id, feature=API_ACCESS, session=s)
            key = ApiKey(
                organization_id=org_id,
                user_id=user_id,
                name=name,
                key_prefix=material.prefix,
                key_hash=material.hash,
                environment=environment,
                scopes=sorted(p.value for p in permissions),
                expires_at=expires_at,
                created_by=actor.user_id,
                created_at=self.clock(),
            )
            s.add(key)
            await s.flush()
            await self.events.emit(
                s,
                org_id,
                ApiKeyCreated(
                    key_id=key.id,
                    name=name,
                    prefix=key.key_prefix,
                    scopes=key.scopes,
                    user_id=user_id,
                    expires_at=expires_at,
                ),
                actor=actor,
                target_id=key.id,
            )
        return key, material.raw

    async def list(
        self,
        org_id: uuid.UUID,
        *,
        user_id: uuid.UUID | None = None,
        include_revoked: bool = False,
        limit: int = 50,
        after: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Sequence[ApiKey]:
        """The organisation's keys (only `user_id`'s when given), newest first."""
        query = (
            sa.select(ApiKey)
            .where(ApiKey.organization_id == org_id)
            .order_by(ApiKey.id.desc())
            .limit(limit)
        )
        if user_id is not None:
            query = query.where(ApiKey.user_id == user_id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        if after is not None:
            query = query.where(ApiKey.id < after)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    async def revoke(
        self,
        org_id: uuid.UUID,
        key_id: uuid.UUID,
        *,
        user_id: uuid.UUID | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> ApiKey:
        """Revoke a key at once (only one of `user_id`'s when given). Revoking a revoked key
        changes nothing; a key of another organisation is `ApiKeyNotFound`."""
        async with self.database.scope(session) as s:
            query = sa.select(ApiKey).where(ApiKey.organization_id == org_id, ApiKey.id == key_id)
            if user_id is not None:
                query = query.where(ApiKey.user_id == user_id)
            key = await s.scalar(query.with_for_update())
            if key is None:
                raise ApiKeyNotFound(f"no API key {key_id}", api_key=str(key_id))
            if key.revoked_at is None:
                key.revoked_at = self.clock()
                await s.flush()
                await self.events.emit(
                    s,
                    org_id,
                    ApiKeyRevoked(key_id=key.id, name=key.name, prefix=key.key_prefix),
                    actor=actor,
                    target_id=key.id,
                )
        return key

    async def organization_of(
        self, key_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> uuid.UUID | None:
        """The organisation of the tenant key with this id, or None: for the operators' tools,
        which may be given a key's id alone (the API always knows the organisation)."""
        query = sa.select(ApiKey.organization_id).where(ApiKey.id == key_id)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).first()

    # --- operators -----------------------------------------------------------------------------
    async def create_operator_key(
        self,
        *,
        name: str,
        expires_at: datetime | None = None,
        session: AsyncSession | None = None,
    ) -> tuple[OperatorKey, str]:
        """A key for the platform's staff (`/v1/admin/...`); the raw value is shown once."""
        name = _check_name(name)
        self._check_expiry(expires_at)
        material = new_key(OPERATOR)
        async with self.database.scope(session) as s:
            key = OperatorKey(
                name=name,
                key_prefix=material.prefix,
                key_hash=material.hash,
                expires_at=expires_at,
                created_at=self.clock(),
            )
            s.add(key)
            await s.flush()
        return key, material.raw

    async def list_operator_keys(
        self, *, session: AsyncSession | None = None
    ) -> builtins.list[OperatorKey]:
        query = sa.select(OperatorKey).order_by(OperatorKey.id)
        async with self.database.scope(session, readonly=True) as s:
            return list((await s.scalars(query)).all())

    async def revoke_operator_key(
        self, key_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> OperatorKey:
        async with self.database.scope(session) as s:
            key = await s.get(OperatorKey, key_id)
            if key is None:
                raise ApiKeyNotFound(f"no operator key {key_id}", api_key=str(key_id))
            if key.revoked_at is None:
                key.revoked_at = self.clock()
                await s.flush()
                await self.events.emit(s, None, OperatorKeyRevoked(key_id=key.id))
        return key

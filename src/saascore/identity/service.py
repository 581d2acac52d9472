"""Accounts and authentication: register, log in, rotate and revoke tokens, provision, and
turn a credential (access token, API key, operator key) into a `Principal`.

Login, refresh and logout run in transactions of their own rather than the caller's: what
they must keep when they refuse (a failed login in the audit log, a token family revoked on
reuse) is committed before the refusal is raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.config import Settings
from saascore.events.bus import EventBus
from saascore.events.catalog import (
    AuthLogin,
    AuthLoginFailed,
    AuthLogout,
    AuthRefreshTokenReused,
    UserProvisioned,
    UserRegistered,
)
from saascore.identity.cache import PrincipalCache
from saascore.identity.errors import (
    AccountDisabled,
    InvalidCredentials,
    InvalidToken,
    OrganizationRequired,
    OrganizationSuspended,
    TokenReused,
    Unauthenticated,
    UserExists,
)
from saascore.identity.keys import OPERATOR, hash_key
from saascore.identity.permissions import ROLE_PERMISSIONS, Permission, parse_scopes
from saascore.identity.principal import Principal, PrincipalKind
from saascore.identity.tokens import Claims, TokenCodec
from saascore.kit.actors import Origin
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.sql import violates
from saascore.kit.time import utcnow
from saascore.metering.ratelimit import PlanRateLimits, RateLimited, RateLimiter
from saascore.models import (
    ApiKey,
    OperatorKey,
    Organization,
    OrganizationStatus,
    RefreshToken,
    SubscriptionPlan,
    User,
    UserRole,
)
from saascore.tenancy.passwords import check_password, verify_password
from saascore.tenancy.service import (
    OrganizationExists,
    OrganizationNotFound,
    OrganizationService,
    locked_organization,
    normalize_email,
)
from saascore.tenancy.users import UserService, end_access_tokens

__all__ = ["IdentityService", "Provisioned", "TokenPair", "normalize_email"]

logger = logging.getLogger("saascore.identity")

#: The most accounts one login tries (verifying a password costs milliseconds of CPU each).
MAX_LOGIN_CANDIDATES: Final = 3
#: An e-mail's logins from all addresses together may fail this many times as often as from
#: one (`SAASCORE_LOGIN_FAILURES_PER_EMAIL_PER_HOUR`).
LOGIN_ADDRESSES: Final = 5
#: Failed logins' audit writes run in the background, this many at a time; past
#: `MAX_PENDING_WRITES` waiting, further ones are dropped (and logged), so that a burst of
#: failures can neither hold the connection pool nor pile up tasks.
BACKGROUND_WRITERS: Final = 2
MAX_PENDING_WRITES: Final = 1000
#: `last_used_at` is written at most this often per key.
LAST_USED_EVERY: Final = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    access_expires_at: datetime
    refresh_expires_at: datetime
    user_id: uuid.UUID
    organization_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Provisioned:
    organization: Organization
    user: User
    organization_created: bool
    user_created: bool


def _plan_limits(plan: Any) -> PlanRateLimits:
    return PlanRateLimits(
        per_minute=plan.requests_per_minute,
        per_hour=plan.requests_per_hour,
        per_day=plan.max_api_calls_per_day,
    )


_PLAN_LIMITS = (
    SubscriptionPlan.requests_per_minute,
    SubscriptionPlan.requests_per_hour,
    SubscriptionPlan.max_api_calls_per_day,
)


class IdentityService:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        orgs: OrganizationService,
        events: EventBus,
        *,
        users: UserService | None = None,
        clock: Callable[[], datetime] = utcnow,
        principals: PrincipalCache | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.orgs = orgs
        self.events = events
        self.users = users or UserService(
            database, events, password_min_length=settings.password_min_length, clock=clock
        )
        self.clock = clock
        self.tokens = TokenCodec(settings, clock=clock)
        #: Authenticated principals, kept `SAASCORE_AUTH_CACHE_SECONDS` (0: not at all).
        self.principals = principals or PrincipalCache(settings.auth_cache_seconds)
        #: Where login attempts are counted (`SAASCORE_LOGIN_FAILURES_PER_EMAIL_PER_HOUR`);
        #: without one, logins are not throttled here.
        self.rate_limiter = rate_limiter
        self._background: set[asyncio.Task[None]] = set()
        self._writers = asyncio.Semaphore(BACKGROUND_WRITERS)

    # --- accounts ------------------------------------------------------------------------------
    async def register(
        self,
        *,
        email: str,
        password: str,
        name: str | None,
        organization_name: str,
        origin: Origin | None = None,
    ) -> TokenPair:
        """A new organisation on the default plan, with this user as its owner; logged in."""
        email = normalize_email(email)
        check_password(password, self.settings.password_min_length, email=email)
        origin = origin or Origin()
        async with self.database.transaction() as s:
            # The user does not exist yet: the creation is by an anonymous user, from here.
            organization = await self.orgs.create(
                name=organization_name, actor=origin.actor(PrincipalKind.USER.value), session=s
            )
            user = await self.users.create(
                organization.id,
                email=email,
                name=name,
                role=UserRole.OWNER,
                password=password,
                announce=False,
                session=s,
            )
            actor = origin.actor(PrincipalKind.USER.value, user.id, user.id)
            await self.events.emit(
                s,
                organization.id,
                UserRegistered(email=email, organization=organization.slug),
                actor=actor,
                target_id=user.id,
            )
            return await self._issue(s, user, origin)

    async def login(
        self,
        *,
        email: str,
        password: str,
        organization: str | None = None,
        origin: Origin | None = None,
    ) -> TokenPair:
        """Tokens for the active account with this e-mail and password.

        When the pair matches accounts in several organisations, `organization` (an id or a
        slug) picks one; without it, `OrganizationRequired` lists them. Every other failure is
        the same `InvalidCredentials`, taking the same time whether or not the e-mail exists:
        the failure's audit entries are written after the answer, in the background (see
        `settle`), so a failed login never waits for an organisation's audit chain.

        At most `MAX_LOGIN_CANDIDATES` accounts are tried (the oldest), so that an e-mail in
        many organisations does not multiply the hashing work; past that, name the
        organisation. A password changed, or an account disabled, while the password was being
        checked fails the login, and never has the old password's re-hash written over it.
        """
        origin = origin or Origin()
        try:
            email = normalize_email(email)
        except InvalidInput:
            await verify_password(password, None)
            raise InvalidCredentials("the e-mail or password is wrong") from None
        from_address = await self._count_login_attempt(email, origin)
        query = (
            sa.select(User, Organization)
            .join(Organization, Organization.id == User.organization_id)
            .where(
                User.email == email,
                User.is_active.is_(True),
                Organization.status != OrganizationStatus.DELETED,
            )
            .order_by(User.created_at, User.id)
            .limit(MAX_LOGIN_CANDIDATES)
        )
        if organization is not None:
            query = query.where(_organization_is(organization))
        async with self.database.session(readonly=True) as s:
            candidates = (await s.execute(query)).all()
        matches: list[tuple[User, Organization, str | None]] = []
        for user, org in candidates:
            ok, new_hash = await verify_password(password, user.password_hash)
            if ok:
                matches.append((user, org, new_hash))
        if not candidates:
            await verify_password(password, None)
        if not matches:
            failed = [(org.id, user.id) for user, org in candidates]
            if failed:
                self._in_background(self._record_failed_login(email, failed, origin))
            raise InvalidCredentials("the e-mail or password is wrong")
        if len(matches) > 1:
            raise OrganizationRequired(
                "this account exists in several organisations: name one",
                organizations=[
                    {"id": str(org.id), "slug": org.slug, "name": org.name} for _, org, _ in matches
                ],
            )
        user, org, new_hash = matches[0]
        if org.status is OrganizationStatus.SUSPENDED:
            raise OrganizationSuspended("the organisation is suspended")
        async with self.database.transaction() as s:
            # One conditional statement: it locks the row, and writes only if the hash that
            # was verified is still the stored one and the account still active (a password
            # change or a deactivation that came in meanwhile wins, and this login fails).
            values: dict[str, Any] = {"last_login_at": self.clock()}
            if new_hash is not None:  # an older scheme or weaker parameters: upgrade it
                values["password_hash"] = new_hash
            stamped = (
                await s.execute(
                    sa.update(User)
                    .where(
                        User.organization_id == user.organization_id,
                        User.id == user.id,
                        User.password_hash == user.password_hash,
                        User.is_active.is_(True),
                    )
                    .values(**values)
                    .returning(User.tokens_valid_after)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if stamped is None:
                raise InvalidCredentials("the e-mail or password is wrong")
            user.tokens_valid_after = stamped.tokens_valid_after
            await self.events.emit(
                s,
                org.id,
                AuthLogin(rehashed=new_hash is not None),
                actor=origin.actor(PrincipalKind.USER.value, user.id, user.id),
                target_id=user.id,
            )
            pair = await self._issue(s, user, origin)
        if from_address is not None:  # the right password: this address starts afresh
            await self._limiter().reset(from_address)
        return pair

    def _limiter(self) -> RateLimiter:
        assert self.rate_limiter is not None
        return self.rate_limiter

    async def _count_login_attempt(self, email: str, origin: Origin) -> str | None:
        """Count a login for `email` from the caller's address before its password is checked
        (so that concurrent guesses cannot all pass one free slot), or refuse it with
        `RateLimited`: `login_failures_per_email_per_hour` from one address, and
        `LOGIN_ADDRESSES` times that from all of them. A login that succeeds clears its
        address's count; the key of that count is returned. The keys hold hashes only."""
        per_hour = self.settings.login_failures_per_email_per_hour
        if self.rate_limiter is None or per_hour is None:
            return None
        account = hashlib.sha256(email.encode()).hexdigest()[:32]
        address = hashlib.sha256((origin.ip_address or "").encode()).hexdigest()[:16]
        from_address = f"login:{account}:{address}"
        result = await self.rate_limiter.hit_many(
            {
                from_address: PlanRateLimits(per_hour=per_hour),
                f"login:{account}": PlanRateLimits(per_hour=per_hour * LOGIN_ADDRESSES),
            }
        )
        if not result.allowed:
            raise RateLimited(result)
        return from_address

    async def _record_failed_login(
        self, email: str, accounts: list[tuple[uuid.UUID, uuid.UUID]], origin: Origin
    ) -> None:
        """`auth.login_failed` in each organisation tried, in a transaction of its own."""
        async with self.database.transaction() as s:
            for org_id, user_id in accounts:
                await self.events.emit(
                    s,
                    org_id,
                    AuthLoginFailed(email=email),
                    actor=origin.actor("anonymous"),
                    target_id=user_id,
                )

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` after the caller's answer, `BACKGROUND_WRITERS` at a time; a failure is
        logged, never raised. Past `MAX_PENDING_WRITES` waiting, `work` is dropped."""
        if len(self._background) >= MAX_PENDING_WRITES:
            work.close()
            logger.warning("a failed login's audit entry was dropped: too many are waiting")
            return

        async def guarded() -> None:
            try:
                async with self._writers:
                    await work
            except Exception:
                logger.exception("a background write of the identity service failed")

        task = asyncio.get_running_loop().create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for the background writes started so far (failed logins' audit entries):
        before closing the database, and in tests."""
        while self._background:
            await asyncio.gather(*self._background)

    async def refresh(self, refresh_token: str, *, origin: Origin | None = None) -> TokenPair:
        """New tokens for a refresh token, which is spent. A spent token presented again
        means it was stolen or leaked: its whole family is revoked (`TokenReused`)."""
        origin = origin or Origin()
        claims = self.tokens.decode(refresh_token, "refresh")
        now = self.clock()
        async with self.database.transaction() as s:
            spent = await s.execute(
                sa.update(RefreshToken)
                .where(
                    RefreshToken.organization_id == claims.organization_id,
                    RefreshToken.id == claims.token_id,
                    RefreshToken.token_hash == hash_key(refresh_token),
                    RefreshToken.used_at.is_(None),
                    RefreshToken.revoked_at.is_(None),
                    RefreshToken.expires_at > now,
                )
                .values(used_at=now)
                .returning(RefreshToken.user_id)
            )
            if spent.first() is not None:
                user = await self._active_user(s, claims)
                return await self._issue(s, user, origin, replaces=claims)
        await self._refuse_refresh(claims, refresh_token, origin)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _refuse_refresh(self, claims: Claims, token: str, origin: Origin) -> None:
        """Why a refresh token was refused; a spent one revokes its family first."""
        async with self.database.transaction() as s:
            row = (
                await s.execute(
                    sa.select(RefreshToken.used_at, RefreshToken.user_id).where(
                        RefreshToken.organization_id == claims.organization_id,
                        RefreshToken.id == claims.token_id,
                        RefreshToken.token_hash == hash_key(token),
                    )
                )
            ).first()
            if row is None or row.used_at is None:  # unknown, revoked or expired
                raise InvalidToken("the token is invalid or has expired")
            revoked = await self._revoke_family(s, claims)
            if revoked:  # once: a thief replaying the token cannot keep logging the user out
                await end_access_tokens(s, claims.organization_id, row.user_id, self.clock())
            await self.events.emit(
                s,
                claims.organization_id,
                AuthRefreshTokenReused(family_id=str(claims.family_id), revoked=revoked),
                actor=origin.actor("anonymous"),
                target_id=row.user_id,
            )
        raise TokenReused("the refresh token was already used: every session it began is ended")

    async def logout(self, refresh_token: str, *, origin: Origin | None = None) -> None:
        """End the session the refresh token belongs to (its whole family), and every access
        token of the user issued until now (the user's other sessions get new ones when
        they refresh). Idempotent."""
        claims = self.tokens.decode(refresh_token, "refresh")
        async with self.database.transaction() as s:
            owner = await s.scalar(
                sa.select(RefreshToken.user_id).where(
                    RefreshToken.organization_id == claims.organization_id,
                    RefreshToken.id == claims.token_id,
                    RefreshToken.token_hash == hash_key(refresh_token),
                )
            )
            if owner is None:
                raise InvalidToken("the token is invalid or has expired")
            if await self._revoke_family(s, claims):
                await end_access_tokens(s, claims.organization_id, owner, self.clock())
                await self.events.emit(
                    s,
                    claims.organization_id,
                    AuthLogout(),
                    actor=(origin or Origin()).actor(PrincipalKind.USER.value, owner, owner),
                    target_id=owner,
                )

    async def _revoke_family(self, s: AsyncSession, claims: Claims) -> int:
        result = await s.execute(
            sa.update(RefreshToken)
            .where(
                RefreshToken.organization_id == claims.organization_id,
                RefreshToken.family_id == claims.family_id,
                RefreshToken.revoked_at.is_(None),
            )
            .values(revoked_at=self.clock())
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def _active_user(self, s: AsyncSession, claims: Claims) -> User:
        row = (
            await s.execute(
                sa.select(User, Organization.status)
                .join(Organization, Organization.id == User.organization_id)
                .where(User.organization_id == claims.organization_id, User.id == claims.user_id)
            )
        ).first()
        if row is None:
            raise InvalidToken("the token is invalid or has expired")
        user, status = row
        _check_active(user.is_active, status)
        return user

    async def _issue(
        self,
        s: AsyncSession,
        user: User,
        origin: Origin,
        *,
        replaces: Claims | None = None,
    ) -> TokenPair:
        """Access and refresh tokens for the user; the refresh token starts a family, or,
        replacing a spent one, joins its family."""
        access = self.tokens.issue(
            "access", user.id, user.organization_id, after=user.tokens_valid_after
        )
        row_id = uuid.uuid4()
        refresh = self.tokens.issue(
            "refresh",
            user.id,
            user.organization_id,
            token_id=row_id,
            family_id=replaces.family_id if replaces is not None else uuid.uuid4(),
        )
        s.add(
            RefreshToken(
                organization_id=user.organization_id,
                id=row_id,
                user_id=user.id,
                family_id=refresh.claims.family_id,
                token_hash=hash_key(refresh.token),
                issued_at=refresh.claims.issued_at,
                expires_at=refresh.claims.expires_at,
                ip_address=origin.ip_address[:45] if origin.ip_address else None,
                user_agent=origin.user_agent[:512] if origin.user_agent else None,
            )
        )
        if replaces is not None:
            await s.execute(
                sa.update(RefreshToken)
                .where(
                    RefreshToken.organization_id == replaces.organization_id,
                    RefreshToken.id == replaces.token_id,
                )
                .values(replaced_by_id=row_id)
            )
        await s.flush()
        return TokenPair(
            access_token=access.token,
            refresh_token=refresh.token,
            access_expires_at=access.claims.expires_at,
            refresh_expires_at=refresh.claims.expires_at,
            user_id=user.id,
            organization_id=user.organization_id,
        )

    # --- provisioning --------------------------------------------------------------------------
    async def provision(
        self,
        *,
        external_platform: str,
        external_user_id: str,
        email: str,
        organization_external_id: str,
        organization_name: str,
        name: str | None = None,
        external_store_id: str | None = None,
        plan: str | None = None,
        origin: Origin | None = None,
    ) -> Provisioned:
        """Find or create the organisation (by its external id) and its user (by platform and
        external id), as seed 004's `provision_user`. Calling again finds what the first call
        made; racing calls end with one organisation and one user. An e-mail that is already
        a user of the organisation under another external id is `UserExists`: the account is
        not taken over by a new identity."""
        email = normalize_email(email)
        for field, value in (
            ("external_platform", external_platform),
            ("external_user_id", external_user_id),
        ):
            if not value.strip():
                raise InvalidInput(f"{field} must not be empty", field=field)
        for _ in range(3):
            try:
                return await self._provision(
                    external_platform,
                    external_user_id,
                    email,
                    organization_external_id,
                    organization_name,
                    name,
                    external_store_id,
                    plan,
                    origin or Origin(),
                )
            except OrganizationExists:
                pass  # a racing call made the organisation first: find it on the next try
            except IntegrityError as error:
                if violates(error, "external"):
                    continue  # a racing call made the user first: find it on the next try
                if violates(error, "email"):
                    raise UserExists(
                        f"{email} is already a user of this organisation, with another external id",
                        email=email,
                    ) from None
                raise
        raise InvalidInput("could not provision: the account keeps changing")  # pragma: no cover

    async def _provision(
        self,
        platform: str,
        user_external_id: str,
        email: str,
        org_external_id: str,
        org_name: str,
        name: str | None,
        store_id: str | None,
        plan: str | None,
        origin: Origin,
    ) -> Provisioned:
        async with self.database.transaction() as s:
            org_created = False
            try:
                organization = await self.orgs.get_by_external_id(org_external_id, session=s)
            except OrganizationNotFound:
                organization = await self.orgs.create(
                    name=org_name,
                    plan=plan,
                    external_id=org_external_id,
                    actor=origin.actor(PrincipalKind.OPERATOR.value),
                    session=s,
                )
                org_created = True
            user = await s.scalar(
                sa.select(User).where(
                    User.organization_id == organization.id,
                    User.external_platform == platform,
                    User.external_id == user_external_id,
                )
            )
            user_created = user is None
            if user is None:
                await locked_organization(s, organization.id)  # owners counted, then added
                owners = await s.scalar(
                    sa.select(sa.func.count()).where(
                        User.organization_id == organization.id, User.role == UserRole.OWNER
                    )
                )
                user = await self.users.create(
                    organization.id,
                    email=email,
                    name=name,
                    role=UserRole.MEMBER if owners else UserRole.OWNER,
                    external_platform=platform,
                    external_id=user_external_id,
                    external_store_id=store_id,
                    announce=False,
                    session=s,
                )
                await self.events.emit(
                    s,
                    organization.id,
                    UserProvisioned(external_platform=platform, external_id=user_external_id),
                    actor=origin.actor(PrincipalKind.OPERATOR.value),
                    target_id=user.id,
                )
            return Provisioned(organization, user, org_created, user_created)

    # --- authentication ------------------------------------------------------------------------
    async def authenticate(self, credential: str) -> Principal:
        """The principal behind an access token, an API key (`sk_live_...`, `sk_test_...`) or
        an operator key (`sk_op_...`). `Unauthenticated` (401) when it does not hold,
        `PermissionDenied` (403) for a disabled user or a suspended organisation. With
        `SAASCORE_AUTH_CACHE_SECONDS`, a principal found is kept that long (see `cache`)."""
        key, generation = None, self.principals.generation
        if self.principals.enabled:
            key = PrincipalCache.key(credential)
            cached = self.principals.get(key)
            if cached is not None:
                return cached
        if credential.startswith(f"sk_{OPERATOR}_"):
            principal, expires_at = await self._operator(credential)
        elif credential.startswith("sk_"):
            principal, expires_at = await self._api_key(credential)
        else:
            principal, expires_at = await self._access_token(credential)
        if key is not None:
            valid_for = None
            if expires_at is not None:
                valid_for = (expires_at - self.clock()).total_seconds()
            self.principals.put(key, principal, valid_for, generation)
        return principal

    async def _access_token(self, token: str) -> tuple[Principal, datetime | None]:
        claims = self.tokens.decode(token, "access")
        row = await self._read(
            _ACCESS_TOKEN_USER, {"org": claims.organization_id, "user": claims.user_id}
        )
        if row is None:
            raise InvalidToken("the token is invalid or has expired")
        _check_active(row.is_active, row.status)
        if row.tokens_valid_after is not None and claims.issued_at <= row.tokens_valid_after:
            # Issued before a logout, a reused refresh token, a new password or a deactivation.
            raise InvalidToken("the token is invalid or has expired")
        principal = Principal(
            kind=PrincipalKind.USER,
            id=claims.user_id,
            organization_id=claims.organization_id,
            user_id=claims.user_id,
            role=row.role,
            permissions=ROLE_PERMISSIONS[row.role],
            rate_limits=_plan_limits(row),
        )
        return principal, claims.expires_at

    async def _api_key(self, raw: str) -> tuple[Principal, datetime | None]:
        now = self.clock()
        row = await self._read(_API_KEY, {"key_hash": hash_key(raw)})
        if row is None or row.revoked_at is not None:
            raise InvalidToken("the API key is invalid or revoked")
        if row.expires_at is not None and row.expires_at <= now:
            raise InvalidToken("the API key has expired")
        permissions = parse_scopes(row.scopes)
        if row.user_id is not None:  # held to what its user may do now
            _check_active(bool(row.is_active), row.status)
            permissions &= ROLE_PERMISSIONS[row.role]
        else:
            _check_active(True, row.status)
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
            await self._touch(ApiKey, now, ApiKey.organization_id == row.organization_id, row.id)
        principal = Principal(
            kind=PrincipalKind.API_KEY,
            id=row.id,
            organization_id=row.organization_id,
            user_id=row.user_id,
            role=row.role,
            permissions=permissions,
            rate_limits=_plan_limits(row),
            environment=row.environment.value,
        )
        return principal, row.expires_at

    async def _operator(self, raw: str) -> tuple[Principal, datetime | None]:
        now = self.clock()
        key = await self._read(_OPERATOR_KEY, {"key_hash": hash_key(raw)})
        if key is None or key.revoked_at is not None:
            raise InvalidToken("the API key is invalid or revoked")
        if key.expires_at is not None and key.expires_at <= now:
            raise InvalidToken("the API key has expired")
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_EVERY:
            await self._touch(OperatorKey, now, sa.true(), key.id)
        principal = Principal(
            kind=PrincipalKind.OPERATOR,
            id=key.id,
            permissions=frozenset(Permission),
            rate_limits=PlanRateLimits(per_minute=self.settings.operator_requests_per_minute),
        )
        return principal, key.expires_at

    async def _read(
        self, query: sa.Select[*tuple[Any, ...]], parameters: dict[str, Any]
    ) -> sa.Row[*tuple[Any, ...]] | None:
        """One row in one round trip, outside a transaction (a single read needs none), by a
        statement built once; on PostgreSQL through the raw driver (`Database.read_row`)."""
        row: sa.Row[*tuple[Any, ...]] | None = await self.database.read_row(query, parameters)
        return row

    async def _touch(
        self, model: type[ApiKey] | type[OperatorKey], now: datetime, scope: Any, key_id: uuid.UUID
    ) -> None:
        """Write `last_used_at`, unless another request did within the last minute."""
        async with self.database.transaction() as s:
            await s.execute(
                sa.update(model)
                .where(
                    scope,
                    model.id == key_id,
                    sa.or_(
                        model.last_used_at.is_(None), model.last_used_at <= now - LAST_USED_EVERY
                    ),
                )
                .values(last_used_at=now)
            )


#: What authenticating reads, one statement each, built once.
_ACCESS_TOKEN_USER = (
    sa.select(
        User.role, User.is_active, User.tokens_valid_after, Organization.status, *_PLAN_LIMITS
    )
    .join(Organization, Organization.id == User.organization_id)
    .join(SubscriptionPlan, SubscriptionPlan.id == Organization.plan_id)
    .where(User.organization_id == sa.bindparam("org"), User.id == sa.bindparam("user"))
)
_API_KEY = (
    sa.select(
        ApiKey.organization_id,
        ApiKey.id,
        ApiKey.user_id,
        ApiKey.scopes,
        ApiKey.environment,
        ApiKey.expires_at,
        ApiKey.revoked_at,
        ApiKey.last_used_at,
        Organization.status,
        User.role,
        User.is_active,
        *_PLAN_LIMITS,
    )
    .join(Organization, Organization.id == ApiKey.organization_id)
    .join(SubscriptionPlan, SubscriptionPlan.id == Organization.plan_id)
    .outerjoin(User, (User.organization_id == ApiKey.organization_id) & (User.id == ApiKey.user_id))
    .where(ApiKey.key_hash == sa.bindparam("key_hash"))
)
_OPERATOR_KEY = sa.select(
    OperatorKey.id, OperatorKey.expires_at, OperatorKey.revoked_at, OperatorKey.last_used_at
).where(OperatorKey.key_hash == sa.bindparam("key_hash"))


def _organization_is(reference: str) -> sa.ColumnElement[bool]:
    try:
        return Organization.id == uuid.UUID(reference)
    except ValueError:
        return Organization.slug == reference


def _check_active(is_active: bool, status: OrganizationStatus) -> None:
    if status is OrganizationStatus.SUSPENDED:
        raise OrganizationSuspended("the organisation is suspended")
    if status is OrganizationStatus.DELETED:
        raise Unauthenticated("the organisation no longer exists")
    if not is_active:
        raise AccountDisabled("the account is disabled")

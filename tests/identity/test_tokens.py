"""Tokens on a controllable clock: the times a token carries are checked against the clock of
the service that issued it (not the wall clock), so lifetimes hold to the second."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import jwt
import pytest

from saascore.audit import AuditService, audited_bus
from saascore.identity import IdentityService, InvalidToken, PrincipalKind, TokenCodec
from saascore.kit.db import Database
from saascore.plans import PlanService
from saascore.tenancy import OrganizationService
from tests.helpers import Clock, make_settings

SECRET = "a test signing key of at least thirty-two characters"


def identity_on(scratch: Database, clock: Clock) -> IdentityService:
    audit = AuditService(scratch, clock=clock)
    orgs = OrganizationService(scratch, PlanService(scratch))
    return IdentityService(scratch, scratch.settings, orgs, audited_bus(audit), clock=clock)


@pytest.mark.asyncio(loop_scope="session")
class TestLifetimes:
    async def test_an_access_token_lives_its_minutes_on_the_services_clock(
        self, scratch: Database
    ) -> None:
        clock = Clock()  # years before the wall clock: the wall clock must not matter
        identity = identity_on(scratch, clock)
        pair = await identity.register(
            email="clock@example.com",
            password="a long enough password",
            name=None,
            organization_name="Clockwork",
        )
        principal = await identity.authenticate(pair.access_token)
        assert (principal.kind, principal.id) == (PrincipalKind.USER, pair.user_id)
        clock.advance(minutes=scratch.settings.access_token_minutes - 1)
        assert (await identity.authenticate(pair.access_token)).id == pair.user_id
        clock.advance(minutes=2)
        with pytest.raises(InvalidToken):
            await identity.authenticate(pair.access_token)

    async def test_a_refresh_token_lives_its_days(self, scratch: Database) -> None:
        clock = Clock()
        identity = identity_on(scratch, clock)
        pair = await identity.register(
            email="days@example.com",
            password="a long enough password",
            name=None,
            organization_name="Calendar",
        )
        clock.advance(days=scratch.settings.refresh_token_days - 1)
        rotated = await identity.refresh(pair.refresh_token)
        assert rotated.refresh_expires_at == clock.now.replace(microsecond=0) + timedelta(
            days=scratch.settings.refresh_token_days
        )
        clock.advance(days=scratch.settings.refresh_token_days + 1)
        with pytest.raises(InvalidToken):
            await identity.refresh(rotated.refresh_token)


class TestCodec:
    """`TokenCodec.decode` on its own: what it refuses, with five seconds of leeway."""

    @staticmethod
    def codec(clock: Clock) -> TokenCodec:
        return TokenCodec(make_settings(jwt_secret=SECRET), clock=clock)

    def test_leeway_is_five_seconds_either_side(self) -> None:
        clock = Clock()
        codec = self.codec(clock)
        issued = codec.issue("access", *_ids())
        clock.advance(codec.access_ttl + timedelta(seconds=4))
        assert codec.decode(issued.token, "access").token_id == issued.claims.token_id
        clock.advance(seconds=1)
        with pytest.raises(InvalidToken):
            codec.decode(issued.token, "access")

        early = Clock(clock.now - timedelta(seconds=5))
        assert self.codec(early).decode(codec.issue("access", *_ids()).token, "access")
        with pytest.raises(InvalidToken):
            self.codec(Clock(clock.now - timedelta(seconds=6))).decode(
                codec.issue("access", *_ids()).token, "access"
            )

    def test_iat_carries_microseconds_and_passes_after(self) -> None:
        """On a clock that has not moved, a token issued `after` an instant is still later
        than it, so a `tokens_valid_after` set in the same microsecond cannot catch it."""
        clock = Clock()
        codec = self.codec(clock)
        clock.advance(timedelta(microseconds=123_456))
        issued = codec.issue("access", *_ids())
        assert codec.decode(issued.token, "access").issued_at == clock.now
        later = codec.issue("access", *_ids(), after=clock.now)
        assert codec.decode(later.token, "access").issued_at > clock.now

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param(lambda p: {**p, "exp": str(p["exp"])}, id="exp-as-text"),
            pytest.param(lambda p: {**p, "nbf": True}, id="nbf-as-bool"),
            pytest.param(lambda p: {**p, "iat": None}, id="iat-null"),
            pytest.param(lambda p: {k: v for k, v in p.items() if k != "jti"}, id="no-jti"),
            pytest.param(lambda p: {**p, "typ": "refresh"}, id="refresh-without-family"),
        ],
    )
    def test_malformed_claims(self, change: Callable[[dict[str, object]], object]) -> None:
        clock = Clock()
        codec = self.codec(clock)
        payload = jwt.decode(
            codec.issue("access", *_ids()).token, options={"verify_signature": False}
        )
        token = jwt.encode(change(payload), SECRET, algorithm="HS256")  # type: ignore[arg-type]
        for expected in ("access", "refresh"):
            with pytest.raises(InvalidToken):
                codec.decode(token, expected)


def _ids() -> tuple[uuid.UUID, uuid.UUID]:
    """A user and an organisation."""
    return uuid.uuid4(), uuid.uuid4()

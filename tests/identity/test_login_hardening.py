"""Login under attack, through the real app: the client's address behind (untrusted and trusted)
proxies, failures throttled per e-mail, a login racing a password change, an e-mail in many
organisations, and failed logins that neither wait for the audit chain nor take longer for an
e-mail that exists."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from ipaddress import ip_network
from typing import Any

import bcrypt
import pytest
import sqlalchemy as sa

from saascore.identity import service as identity_service
from saascore.kit.db import Database
from saascore.models import AuditChainHead, AuditLog, User
from saascore.tenancy import passwords
from tests.identity.support import Served, login, register, served, table_counts, written_since

pytestmark = pytest.mark.asyncio(loop_scope="session")

LOOPBACK = [ip_network("127.0.0.1/32")]


async def login_from(app: Served, forwarded_for: str, email: str, password: str) -> int:
    response = await app.client.post(
        "/v1/auth/login",
        json={"email": email, "password": password},
        headers={"X-Forwarded-For": forwarded_for},
    )
    return response.status_code


def new_email() -> str:
    return f"user-{secrets.token_hex(4)}@example.com"


class TestClientAddress:
    async def test_rotating_forwarded_for_from_an_untrusted_peer_does_not_escape(
        self, scratch: Database
    ) -> None:
        """The default trusts no proxy: the header is ignored and the peer is the client."""
        async with served(scratch, auth_requests_per_minute=3) as app:
            statuses = [
                await login_from(app, f"203.0.113.{i}", new_email(), "some password")
                for i in range(5)
            ]
        assert statuses == [401, 401, 401, 429, 429]

    async def test_a_trusted_proxy_names_the_client(self, scratch: Database) -> None:
        async with served(scratch, auth_requests_per_minute=2, trusted_proxies=LOOPBACK) as app:
            owner = await register(app)  # from 127.0.0.1: the peer, no header
            first = [await login_from(app, "198.51.100.7", new_email(), "x" * 10) for _ in "ab"]
            other = await login_from(app, "198.51.100.8", new_email(), "x" * 10)
            third = await login_from(app, "198.51.100.7", new_email(), "x" * 10)
            # A client that sends its own header through the proxy: the proxy appends the
            # address it saw, and that one counts, whatever the client wrote before it.
            spoofed = [
                await login_from(app, f"10.9.9.{i}, 198.51.100.7", new_email(), "x" * 10)
                for i in range(3)
            ]
            response = await app.client.post(
                "/v1/auth/login",
                json={"email": owner.email, "password": "wrong password"},
                headers={"X-Forwarded-For": "198.51.100.99"},
            )
            await app.core.identity.settle()
            entry = await last_audit(app.database, owner.organization_id)
        assert first == [401, 401]
        assert other == 401
        assert third == 429
        assert spoofed == [429, 429, 429]
        assert response.status_code == 401
        assert (entry.action, entry.ip_address) == ("auth.login_failed", "198.51.100.99")

    async def test_networks_and_chains_of_proxies(self, scratch: Database) -> None:
        proxies = [ip_network("127.0.0.0/8"), ip_network("10.0.0.0/8")]
        async with served(scratch, auth_requests_per_minute=1, trusted_proxies=proxies) as app:
            # Two trusted hops (10.1.1.1, then the peer 127.0.0.1): the client is before them.
            a = await login_from(app, "192.0.2.1, 10.1.1.1", new_email(), "x" * 10)
            b = await login_from(app, "192.0.2.2, 10.1.1.1", new_email(), "x" * 10)
            again = await login_from(app, "192.0.2.1,10.2.2.2", new_email(), "x" * 10)
            garbage = await login_from(app, "not-an-address", new_email(), "x" * 10)
            garbage_again = await login_from(app, "still-not-one", new_email(), "x" * 10)
        assert (a, b, again) == (401, 401, 429)
        # Garbage in the header: the last good hop (the peer) is the client.
        assert (garbage, garbage_again) == (401, 429)


async def last_audit(database: Database, org_id: Any) -> AuditLog:
    async with database.session(readonly=True) as s:
        entry = await s.scalar(
            sa.select(AuditLog)
            .where(AuditLog.organization_id == org_id)
            .order_by(AuditLog.seq.desc())
            .limit(1)
        )
    assert entry is not None
    return entry


class TestPerEmailThrottle:
    async def test_failures_are_limited_per_address_and_per_email(self, scratch: Database) -> None:
        """3 a window from one address, 15 (five times that) from all: an attacker on one
        address does not lock the owner out on another; rotating addresses ends at the
        e-mail's own ceiling; and the refusal expires (a moving window, not a lock)."""
        async with served(
            scratch, login_failures_per_email_per_hour=3, trusted_proxies=LOOPBACK
        ) as app:
            owner = await register(app)
            attacker = [
                await login_from(app, "198.51.100.1", owner.email, "wrong password")
                for _ in range(4)
            ]
            await app.core.identity.settle()
            before = await table_counts(app.database)
            right_from_attacker = await login_from(app, "198.51.100.1", owner.email, owner.password)
            assert await written_since(app.database, before) == {}  # not even tried
            owner_elsewhere = await login_from(app, "203.0.113.7", owner.email, owner.password)
            rotating = [
                await login_from(app, f"192.0.2.{i}", owner.email, "wrong password")
                for i in range(5)
                for _ in range(3)
            ]
            ceiling = await app.client.post(
                "/v1/auth/login",
                json={"email": owner.email, "password": owner.password},
                headers={"X-Forwarded-For": "203.0.113.8"},
            )
            unknown = new_email()
            unknowns = [
                await login_from(app, "198.51.100.2", unknown, "wrong password") for _ in range(4)
            ]
            other = await register(app)
            other_login = await login(app, other.email, other.password)
            await app.core.identity.settle()
        assert attacker == [401, 401, 401, 429]
        assert right_from_attacker == 429
        assert owner_elsewhere == 200
        # The owner's success counted once against the e-mail's 15: 3 + 1 + 11 failures fit.
        assert rotating == [401] * 11 + [429] * 4
        assert ceiling.status_code == 429, ceiling.text
        assert ceiling.json()["error"]["code"] == "rate_limited"
        assert 0 < int(ceiling.headers["Retry-After"]) <= 3600
        assert unknowns == [401, 401, 401, 429]  # an unknown e-mail answers alike
        assert other_login.status_code == 200, other_login.text

    async def test_concurrent_guesses_get_no_more_than_the_limit(self, scratch: Database) -> None:
        """Each attempt is counted before its password is checked: 20 guesses sent at once
        from one address get exactly the 3 tries the window holds."""
        async with served(scratch, login_failures_per_email_per_hour=3) as app:
            owner = await register(app)
            answers = await asyncio.gather(
                *(login(app, owner.email, f"wrong password {i}") for i in range(20))
            )
            await app.core.identity.settle()
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [401] * 3 + [429] * 17

    async def test_a_success_does_not_count(self, scratch: Database) -> None:
        async with served(scratch, login_failures_per_email_per_hour=1) as app:
            owner = await register(app)
            for _ in range(3):
                assert (await login(app, owner.email, owner.password)).status_code == 200


class TestLoginRacingAPasswordChange:
    async def test_the_old_passwords_rehash_never_overwrites_the_new_one(self, app: Served) -> None:
        """A legacy (bcrypt) hash makes a login write a re-hash. Its verification is slow
        (cost 14), and the password change, started while it runs, finishes long before it:
        the login must then fail rather than write the old password back."""
        owner = await register(app)
        email, old = new_email(), "the old passphrase 1"
        user = await app.core.users.create(owner.organization_id, email=email)
        legacy = bcrypt.hashpw(old.encode(), bcrypt.gensalt(rounds=14)).decode()
        async with app.database.transaction() as s:
            await s.execute(sa.update(User).where(User.id == user.id).values(password_hash=legacy))

        racing = asyncio.create_task(login(app, email, old))
        new = "the new passphrase 2"
        await app.core.users.update(owner.organization_id, user.id, password=new)
        response = await racing
        await app.core.identity.settle()

        if response.status_code == 200:  # the login was first after all: then the change won
            assert (await login(app, email, old)).status_code == 401
        assert response.status_code in (200, 401), response.text
        assert (await login(app, email, new)).status_code == 200
        async with app.database.session(readonly=True) as s:
            stored = await s.scalar(sa.select(User.password_hash).where(User.id == user.id))
        assert stored is not None
        assert stored != legacy


class TestManyOrganisations:
    async def test_the_hashing_work_is_capped(
        self, app: Served, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        email, password = new_email(), "shared between shops 9"
        owners = [await register(app) for _ in range(6)]
        for owner in owners:
            await app.core.users.create(owner.organization_id, email=email, password=password)
        verified: list[str | None] = []
        real = passwords.verify_password

        async def counting(given: str, stored: str | None) -> tuple[bool, str | None]:
            verified.append(stored)
            return await real(given, stored)

        monkeypatch.setattr(identity_service, "verify_password", counting)
        wrong = await login(app, email, "not the password")
        assert wrong.status_code == 401
        assert len(verified) == identity_service.MAX_LOGIN_CANDIDATES
        verified.clear()
        # Naming the organisation reaches any of them, with one verification.
        named = await login(app, email, password, organization=str(owners[-1].organization_id))
        assert named.status_code == 200, named.text
        assert named.json()["organization_id"] == str(owners[-1].organization_id)
        assert len(verified) == 1
        await app.core.identity.settle()


class TestFailedLoginsOffTheResponsePath:
    async def test_a_failed_login_does_not_wait_for_the_audit_chain(self, app: Served) -> None:
        """The organisation's audit chain is held by another writer: a failed login still
        answers at once, and its entry is written once the chain is free."""
        owner = await register(app)
        before = await table_counts(app.database)
        async with app.database.transaction() as holder:
            await holder.execute(
                sa.update(AuditChainHead)
                .where(AuditChainHead.organization_id == owner.organization_id)
                .values(seq=AuditChainHead.seq)
            )
            response = await asyncio.wait_for(login(app, owner.email, "wrong password"), timeout=20)
            assert response.status_code == 401
        await app.core.identity.settle()
        assert await written_since(app.database, before) == {"audit_logs": 1}
        assert (await last_audit(app.database, owner.organization_id)).action == (
            "auth.login_failed"
        )

    async def test_known_and_unknown_emails_fail_in_the_same_time(
        self, scratch: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Medians of 30 interleaved samples each, within a factor of 1.5 either way. The
        audit write of a known e-mail's failure is made slow (200 ms, several times the
        hashing): on the response path it would set the two apart; off it, it cannot."""
        record = identity_service.IdentityService._record_failed_login

        async def slow_record(self: Any, *args: Any) -> None:
            await asyncio.sleep(0.2)
            await record(self, *args)

        monkeypatch.setattr(identity_service.IdentityService, "_record_failed_login", slow_record)
        known: list[float] = []
        unknown: list[float] = []
        async with served(scratch, login_failures_per_email_per_hour=None) as app:
            owner = await register(app)
            for _ in range(30):
                for samples, email in ((known, owner.email), (unknown, new_email())):
                    start = time.perf_counter()
                    response = await login(app, email, "wrong password")
                    samples.append(time.perf_counter() - start)
                    assert response.status_code == 401
            await app.core.identity.settle()
            async with app.database.session(readonly=True) as session:
                written = await session.scalar(
                    sa.select(sa.func.count())
                    .select_from(AuditLog)
                    .where(
                        AuditLog.organization_id == owner.organization_id,
                        AuditLog.action == "auth.login_failed",
                    )
                )
        assert written == 30  # every failure audited, after its answer
        ratio = statistics.median(known) / statistics.median(unknown)
        assert 1 / 1.5 < ratio < 1.5, (statistics.median(known), statistics.median(unknown))

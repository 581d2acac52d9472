"""The dispatcher, against a real receiver on loopback that verifies every signature with
`standardwebhooks`: delivered once and signed, retried on the schedule, never sent twice at
once, never lost when killed, rotated secrets, endpoints disabled after 3 days, woken by
commits; on both databases."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
import sqlalchemy as sa

from saascore import Saascore
from saascore.events.catalog import WebhookTest
from saascore.events.dispatcher import (
    JITTER,
    LATER_RETRIES,
    RETRY_FOR,
    RETRY_SCHEDULE,
    USER_AGENT,
    Dispatcher,
    Doorbell,
    next_attempt_at,
    retry_delay,
)
from saascore.events.signing import message_id, signature_headers, signing_secrets
from saascore.kit.db import Database
from saascore.kit.time import utcnow
from saascore.models import (
    AuditLog,
    DeliveryStatus,
    OutboxEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from tests.events.receiver import Receiver, receiving
from tests.factories import create_organization
from tests.helpers import Clock, only_postgresql, settings_env

ASYNC = pytest.mark.asyncio(loop_scope="session")

SAASCORE = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "saascore")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass
class World:
    """A core on the module's scratch database (webhooks to loopback allowed), an organisation
    of the test's own, a receiver, and a clock the test moves."""

    core: Saascore
    org: uuid.UUID
    receiver: Receiver
    clock: Clock

    @property
    def database(self) -> Database:
        return self.core.database

    def dispatcher(self, **options: object) -> Dispatcher:
        options.setdefault("clock", self.clock)
        options.setdefault("jitter", lambda: 0.5)
        return self.core.dispatcher(**options)

    async def endpoint(
        self,
        *,
        secret: str | None = None,
        event_types: Sequence[str] = (),
        previous_secret: str | None = None,
        previous_expires_in: timedelta | None = None,
        name: str = "a",
    ) -> WebhookEndpoint:
        secret = secret or new_secret()
        self.receiver.secrets[name] = secret
        async with self.database.transaction() as s:
            endpoint = WebhookEndpoint(
                organization_id=self.org,
                id=uuid.uuid4(),
                url=self.receiver.url,
                event_types=list(event_types),
                secret=secret,
                previous_secret=previous_secret,
                previous_secret_expires_at=(
                    self.clock() + previous_expires_in if previous_expires_in else None
                ),
            )
            s.add(endpoint)
        return endpoint

    async def outbox(self) -> list[OutboxEvent]:
        async with self.database.session(readonly=True) as s:
            rows = await s.scalars(
                sa.select(OutboxEvent)
                .where(OutboxEvent.organization_id == self.org)
                .order_by(OutboxEvent.occurred_at)
            )
            return list(rows)

    async def deliveries(self) -> list[WebhookDelivery]:
        async with self.database.session(readonly=True) as s:
            rows = await s.scalars(
                sa.select(WebhookDelivery)
                .where(WebhookDelivery.organization_id == self.org)
                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            )
            return list(rows)

    async def attempts(self) -> list[WebhookAttempt]:
        async with self.database.session(readonly=True) as s:
            rows = await s.scalars(
                sa.select(WebhookAttempt)
                .where(WebhookAttempt.organization_id == self.org)
                .order_by(WebhookAttempt.number)
            )
            return list(rows)

    async def endpoint_row(self, endpoint_id: uuid.UUID) -> WebhookEndpoint:
        async with self.database.session(readonly=True) as s:
            row = await s.get(WebhookEndpoint, (self.org, endpoint_id))
            assert row is not None
            return row

    async def grant(self, amount: int = 10) -> None:
        await self.core.credits.grant(self.org, amount)


@pytest_asyncio.fixture(loop_scope="session")
async def world(scratch: Database) -> AsyncIterator[World]:
    settings = scratch.settings.model_copy(update={"webhooks_allow_private": True})
    core = Saascore(settings, database=scratch)
    async with scratch.transaction() as s:
        org = (await create_organization(s)).id
    async with receiving(Receiver()) as receiver:
        yield World(core, org, receiver, Clock(now=utcnow()))


# --- pure parts -----------------------------------------------------------------------------------
class TestSchedule:
    def test_the_nominal_delays(self) -> None:
        assert [retry_delay(n) for n in range(1, 10)] == [
            timedelta(seconds=5),
            timedelta(seconds=30),
            timedelta(minutes=2),
            timedelta(minutes=10),
            timedelta(minutes=30),
            timedelta(hours=1),
            timedelta(hours=2),
            timedelta(hours=5),
            timedelta(hours=5),
        ]

    @pytest.mark.parametrize("attempts", [1, 4, 7, 8, 20])
    def test_jitter_stays_within_20_percent(self, attempts: int) -> None:
        nominal = retry_delay(attempts)
        low, high = retry_delay(attempts, jitter=0.0), retry_delay(attempts, jitter=0.999999)
        assert low == nominal * (1 - JITTER)
        assert nominal * (1 - JITTER) <= high < nominal * (1 + JITTER)
        assert timedelta(hours=4) <= LATER_RETRIES * 0.8  # "every 4 to 6 hours"
        assert timedelta(hours=6) >= LATER_RETRIES * 1.2

    def test_retries_end_three_days_after_the_delivery_was_made(self) -> None:
        created = utcnow()
        now, attempts = created, 0
        while True:
            attempts += 1
            retry = next_attempt_at(created, attempts, now)
            if retry is None:
                break
            assert retry > now
            now = retry
        assert now == created + RETRY_FOR  # the last try falls on the deadline
        assert len(RETRY_SCHEDULE) < attempts < 30

    def test_signatures_verify_with_every_secret_given(self) -> None:
        from standardwebhooks import Webhook

        old, new = new_secret(), new_secret()
        body, now = b'{"type":"x","timestamp":"t","data":{}}', utcnow()
        headers = signature_headers(message_id(uuid.uuid4()), now, body, [new, old])
        assert headers["webhook-timestamp"] == str(int(now.timestamp()))
        assert headers["webhook-signature"].count("v1,") == 2
        for secret in (old, new):
            Webhook(secret).verify(body, headers)
        assert signing_secrets(new, old, now + timedelta(hours=1), now) == [new, old]
        assert signing_secrets(new, old, now, now) == [new]
        assert signing_secrets(new, None, None, now) == [new]

    @ASYNC
    async def test_a_doorbell_rung_before_the_wait_is_not_lost(self) -> None:
        bell = Doorbell()
        bell.ring()
        assert await bell.wait(10)
        assert not await bell.wait(0.01)


# --- delivery ------------------------------------------------------------------------------------
@ASYNC
class TestDelivery:
    async def test_every_event_is_delivered_once_signed_with_a_stable_id(
        self, world: World
    ) -> None:
        every = await world.endpoint(name="every")
        only_revoked = await world.endpoint(name="revoked", event_types=["api_key.revoked"])
        key, _ = await world.core.api_keys.create(world.org, name="ingest", scopes=["usage:read"])
        await world.grant(10)
        await world.grant(20)
        await world.core.api_keys.revoke(world.org, key.id)
        outbox = await world.outbox()
        assert len(outbox) >= 4

        counts = await world.dispatcher().run_once()
        assert counts.succeeded >= len(outbox) + 1
        received = world.receiver.received
        assert world.receiver.rejected == []
        to_every = [item for item in received if item.verified_by == frozenset({"every"})]
        assert Counter(item.webhook_id for item in to_every) == Counter(
            message_id(row.id) for row in outbox
        )
        assert [item.type for item in to_every] == [row.type for row in outbox]
        assert [item.body for item in to_every] == [row.body for row in outbox]
        to_revoked = [item for item in received if item.verified_by == frozenset({"revoked"})]
        revoked = next(row for row in outbox if row.type == "api_key.revoked")
        assert [item.webhook_id for item in to_revoked] == [message_id(revoked.id)]
        first = to_every[0].headers
        assert first["content-type"] == "application/json"
        assert first["user-agent"] == USER_AGENT
        assert first["host"] == world.receiver.url.split("/")[2]

        deliveries = await world.deliveries()
        assert {d.endpoint_id for d in deliveries} == {every.id, only_revoked.id}
        assert all(d.status is DeliveryStatus.SUCCEEDED and d.attempts == 1 for d in deliveries)
        assert all(d.last_status_code == 204 and d.completed_at for d in deliveries)
        attempts = await world.attempts()
        assert len(attempts) == len(deliveries)
        assert all(a.status_code == 204 and a.error is None for a in attempts)
        assert (await world.endpoint_row(every.id)).last_success_at == world.clock()

        before = len(received)
        await world.dispatcher().run_once()  # nothing twice
        assert len(world.receiver.received) == before

    async def test_a_test_event_goes_to_its_endpoint_only(self, world: World) -> None:
        target = await world.endpoint(name="target")
        await world.endpoint(name="other")
        async with world.database.transaction() as s:
            await world.core.events.emit(s, world.org, WebhookTest(endpoint_id=target.id))
        await world.dispatcher().run_once()
        assert [(r.type, r.verified_by) for r in world.receiver.received] == [
            ("webhook.test", frozenset({"target"}))
        ]

    async def test_a_rollback_emits_no_outbox_row_and_no_delivery(self, world: World) -> None:
        await world.endpoint()

        async def failing() -> None:
            async with world.database.transaction() as s:
                await world.core.credits.grant(world.org, 10, session=s)
                raise RuntimeError("the change fails after its event")

        with pytest.raises(RuntimeError):
            await failing()
        await world.dispatcher().run_once()
        assert await world.outbox() == []
        assert await world.deliveries() == []
        assert world.receiver.received == []

    async def test_a_private_address_is_refused_without_the_setting(self, world: World) -> None:
        await world.endpoint()
        await world.grant()
        await world.dispatcher(allow_private=False).run_once()
        assert world.receiver.received == []
        (attempt,) = await world.attempts()
        assert attempt.status_code is None
        assert attempt.error is not None
        assert attempt.error.startswith("refused: ")
        assert "loopback" in attempt.error


@ASYNC
class TestRetries:
    async def test_a_failing_receiver_is_retried_on_the_schedule(self, world: World) -> None:
        world.receiver.mode = "fail"
        endpoint = await world.endpoint()
        await world.grant()
        dispatcher = world.dispatcher()
        for number, delay in enumerate(RETRY_SCHEDULE[:4], start=1):
            await dispatcher.run_once()
            (delivery,) = await world.deliveries()
            assert delivery.status is DeliveryStatus.PENDING
            assert delivery.attempts == number
            assert delivery.next_attempt_at == world.clock() + delay
            assert delivery.last_status_code == 500
            assert delivery.last_error == "the endpoint answered HTTP 500"
            assert delivery.lease_until is None
            await dispatcher.run_once()  # not due yet: nothing sent
            assert len(world.receiver.received) == number
            world.clock.advance(delay)
        attempts = await world.attempts()
        assert [(a.number, a.status_code) for a in attempts] == [(n, 500) for n in range(1, 5)]
        assert all(a.response_body == "receiver says no" for a in attempts)
        failing = await world.endpoint_row(endpoint.id)
        assert failing.failing_since is not None
        assert failing.enabled

        world.receiver.mode = "ok"
        await dispatcher.run_once()
        (delivery,) = await world.deliveries()
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.SUCCEEDED, 5)
        assert delivery.completed_at == world.clock()
        healthy = await world.endpoint_row(endpoint.id)
        assert healthy.failing_since is None
        assert healthy.last_success_at == world.clock()
        ids = set(world.receiver.ids())
        assert len(ids) == 1  # one webhook-id on every retry

    async def test_a_nul_in_the_receivers_answer_is_recorded_as_a_replacement(
        self, world: World
    ) -> None:
        # The receiver's answer is kept on the attempt; PostgreSQL cannot store a NUL, so one
        # in the body made the whole batch's record fail: every attempt of every organisation
        # claimed with it went unrecorded and was sent again when its lease lapsed.
        world.receiver.mode = "fail"
        world.receiver.fail_body = b"no\x00pe \xff"
        await world.endpoint()
        await world.grant()
        await world.dispatcher().run_once()
        (attempt,) = await world.attempts()
        assert (attempt.status_code, attempt.response_body) == (500, "no\ufffdpe \ufffd")
        (delivery,) = await world.deliveries()
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 1)

    async def test_a_receiver_that_times_out_is_retried(self, world: World) -> None:
        world.receiver.mode = "hang"
        await world.endpoint()
        await world.grant()
        await world.dispatcher(timeout=0.3).run_once()
        (delivery,) = await world.deliveries()
        assert delivery.status is DeliveryStatus.PENDING
        assert delivery.next_attempt_at == world.clock() + RETRY_SCHEDULE[0]
        assert delivery.last_status_code is None
        assert delivery.last_error == "timed out after 0.3 s"
        (attempt,) = await world.attempts()
        assert attempt.error == "timed out after 0.3 s"
        assert attempt.duration_ms >= 250

    async def test_a_delivery_fails_after_three_days_and_its_endpoint_is_disabled(
        self, world: World
    ) -> None:
        world.receiver.mode = "fail"
        endpoint = await world.endpoint()
        await world.grant()
        dispatcher = world.dispatcher()
        await dispatcher.run_once()
        assert (await world.endpoint_row(endpoint.id)).failing_since == world.clock()
        world.clock.advance(days=3)
        counts = await dispatcher.run_once()
        assert counts.disabled >= 1  # (others' leftovers in this module's database may be too)
        (delivery,) = await world.deliveries()
        assert delivery.status is DeliveryStatus.FAILED
        assert delivery.attempts == 2
        row = await world.endpoint_row(endpoint.id)
        assert not row.enabled
        assert row.disabled_reason == "failing for 3 days"
        async with world.database.session(readonly=True) as s:
            actions = list(
                await s.scalars(
                    sa.select(AuditLog.action).where(AuditLog.organization_id == world.org)
                )
            )
        assert "webhook_endpoint.disabled" in actions
        disabled = [row for row in await world.outbox() if row.type == "webhook_endpoint.disabled"]
        assert len(disabled) == 1
        assert disabled[0].body["data"]["endpoint_id"] == str(endpoint.id)
        # A disabled endpoint gets nothing more.
        sent = len(world.receiver.received)
        await world.grant()
        await dispatcher.run_once()
        assert len(world.receiver.received) == sent


@ASYNC
class TestRotation:
    async def test_both_secrets_sign_during_the_overlap_then_only_the_new(
        self, world: World
    ) -> None:
        old, new = new_secret(), new_secret()
        world.receiver.secrets["old"] = old
        await world.endpoint(
            secret=new, name="new", previous_secret=old, previous_expires_in=timedelta(hours=24)
        )
        dispatcher = world.dispatcher()
        await world.grant()
        await dispatcher.run_once()
        world.clock.advance(hours=24)
        await world.grant()
        await dispatcher.run_once()
        assert [set(r.verified_by) for r in world.receiver.received] == [{"old", "new"}, {"new"}]
        assert world.receiver.received[0].headers["webhook-signature"].count("v1,") == 2


@ASYNC
class TestConcurrency:
    async def test_two_dispatchers_racing_send_each_attempt_once(self, world: World) -> None:
        await world.endpoint()
        for amount in range(1, 31):
            await world.grant(amount)
        first, second = world.dispatcher(concurrency=4), world.dispatcher(concurrency=4)
        await asyncio.gather(first.run_once(), second.run_once())
        outbox = await world.outbox()
        assert len(outbox) >= 30
        assert Counter(world.receiver.ids()) == Counter(message_id(row.id) for row in outbox)
        assert len(await world.attempts()) == len(outbox)

    @only_postgresql
    async def test_two_processes_racing_send_each_attempt_once(self, world: World) -> None:
        await world.endpoint()
        for amount in range(1, 41):
            await world.grant(amount)
        env = {**os.environ, **settings_env(world.database.settings)}
        env["SAASCORE_WEBHOOKS_ALLOW_PRIVATE"] = "true"
        processes = [
            await asyncio.create_subprocess_exec(
                SAASCORE, "events", "dispatch", "--once", env=env, stderr=subprocess.PIPE
            )
            for _ in range(2)
        ]
        for process in processes:
            _, stderr = await process.communicate()
            assert process.returncode == 0, stderr.decode()
        outbox = await world.outbox()
        assert Counter(world.receiver.ids()) == Counter(message_id(row.id) for row in outbox)


@ASYNC
class TestAtLeastOnce:
    async def test_a_dispatcher_killed_while_sending_is_followed_by_a_resend(
        self, world: World
    ) -> None:
        world.receiver.mode = "hang"
        await world.endpoint()
        await world.grant()
        env = {**os.environ, **settings_env(world.database.settings)}
        env.update(
            SAASCORE_WEBHOOKS_ALLOW_PRIVATE="true",
            SAASCORE_WEBHOOK_LEASE_SECONDS="30",
            SAASCORE_WEBHOOK_POLL_SECONDS="0.2",
        )
        process = await asyncio.create_subprocess_exec(
            SAASCORE, "events", "dispatch", env=env, stderr=subprocess.DEVNULL
        )
        try:
            async with asyncio.timeout(60):
                await world.receiver.arrived.wait()
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        (delivery,) = await world.deliveries()
        assert delivery.status is DeliveryStatus.PENDING
        assert delivery.attempts == 0
        assert delivery.lease_until is not None  # held by the dead dispatcher

        world.receiver.mode = "ok"
        world.receiver.release()
        await world.dispatcher().run_once()  # the lease still holds: not sent again yet
        assert len(world.receiver.received) == 1
        world.clock.set(utcnow() + timedelta(seconds=31))
        await world.dispatcher().run_once()
        first, second = world.receiver.received
        assert first.webhook_id == second.webhook_id
        (delivery,) = await world.deliveries()
        assert delivery.status is DeliveryStatus.SUCCEEDED
        assert delivery.attempts == 1


@ASYNC
class TestWaking:
    async def test_a_commit_wakes_the_dispatcher(self, world: World) -> None:
        await world.endpoint()
        stop = asyncio.Event()
        dispatcher = world.core.dispatcher(poll_interval=60, listen=False)
        task = asyncio.create_task(dispatcher.run(stop))
        try:
            await asyncio.sleep(0.2)  # idle, waiting for 60 s
            await world.grant()
            await world.receiver.wait_for(lambda: len(world.receiver.received) == 1, timeout=10)
        finally:
            stop.set()
            await task
        (delivery,) = await world.deliveries()
        assert delivery.status is DeliveryStatus.SUCCEEDED

    @only_postgresql
    async def test_a_notify_wakes_the_dispatcher_of_another_process(self, world: World) -> None:
        await world.endpoint()
        stop = asyncio.Event()
        # Its own doorbell, which this process's commits do not ring: only LISTEN wakes it.
        dispatcher = Dispatcher(
            world.database, world.core.settings, doorbell=Doorbell(), poll_interval=60
        )
        task = asyncio.create_task(dispatcher.run(stop))
        try:
            await asyncio.sleep(0.5)
            await world.grant()
            await world.receiver.wait_for(lambda: len(world.receiver.received) == 1, timeout=10)
        finally:
            stop.set()
            await task

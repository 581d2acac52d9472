"""The dispatcher: from the outbox to tenants' webhook endpoints, signed, retried, logged.

It runs inside `saascore serve` (every worker may run one) and alone as
`saascore events dispatch [--once]`. Each round has three steps, each its own short
transaction, and no transaction is ever open while a request is on the network:

1. **Fan-out.** Undispatched outbox rows (oldest first, a batch, `FOR UPDATE SKIP LOCKED` on
   PostgreSQL; on SQLite writers are serialized by `BEGIN IMMEDIATE`) become one
   `webhook_deliveries` row per enabled endpoint of the organisation that wants the type (an
   empty `event_types` wants every public type); `webhook.test` goes only to the endpoint named
   in its data. The rows are inserted set-wise and the outbox rows marked dispatched.
2. **Claim.** Due deliveries (pending, `next_attempt_at` passed, no live lease) are leased to
   this dispatcher (`lease_until = now + lease`, longer than the timeout), `FOR UPDATE SKIP
   LOCKED` on PostgreSQL, and the transaction commits. Two dispatchers never send the same
   attempt at once. A delivery whose endpoint has been disabled fails here, unsent.
3. **Send, then record.** The request goes out (see `_send`); its outcome is then recorded in
   a new transaction: an attempt row, and the delivery succeeded, rescheduled or failed. A
   dispatcher that dies between sending and recording leaves its lease to lapse, and the
   delivery is sent again with the same `webhook-id`: at least once, never lost.

Retries follow `retry_delay` (5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, then every 4 to 6 h,
each ±20 %) for up to 3 days after the delivery was made; then it fails. An endpoint whose first
failure since its last success (`failing_since`) is 3 days old when another attempt fails is
disabled, which writes an audit entry and emits `webhook_endpoint.disabled`; its pending
deliveries fail with it (they are not kept for later: a tenant who re-enables the endpoint can
retry the ones they want).

Waking: a commit that publishes an event rings this process's `Doorbell` (an after-commit
handler that only sets a flag, so it never slows a request); on PostgreSQL the dispatcher also
LISTENs on the outbox channel, so dispatchers of other processes wake too. Without either, it
looks every `poll_interval` seconds.

Sending pins the connection to the address the SSRF guard checked (`resolve_public` at every
attempt): the request goes to the IP, with the `Host` header and, over HTTPS, the SNI name and
certificate check of the host name, so a name that later resolves to a private address (DNS
rebinding) gets nothing. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa

from saascore.config import DatabaseBackend, Settings
from saascore.events.bus import OUTBOX_CHANNEL, EventBus
from saascore.events.catalog import WebhookEndpointDisabled, WebhookTest
from saascore.events.errors import WebhookUrlInvalid
from saascore.events.guard import resolve_public, url_target
from saascore.events.signing import message_id, signature_headers, signing_secrets
from saascore.kit.db import Database
from saascore.kit.ids import new_id
from saascore.kit.time import utcnow
from saascore.models import (
    DeliveryStatus,
    OutboxEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

if TYPE_CHECKING:
    # Imported when the first request is sent: building the facade (which names `Doorbell`)
    # needs no HTTP client.
    import httpx

__all__ = [
    "DISABLE_AFTER",
    "RETRY_FOR",
    "RETRY_SCHEDULE",
    "USER_AGENT",
    "DispatchCounts",
    "Dispatcher",
    "Doorbell",
    "next_attempt_at",
    "retry_delay",
]

log = logging.getLogger(__name__)

#: The delay after the 1st, 2nd, ... failed attempt; past the end, `LATER_RETRIES`.
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=2),
)
LATER_RETRIES = timedelta(hours=5)
#: Each delay is scaled by a random factor in [1 - JITTER, 1 + JITTER).
JITTER = 0.2
#: A delivery is retried for this long after it was made, then fails.
RETRY_FOR = timedelta(days=3)
#: An endpoint failing for this long (since its last success) is disabled.
DISABLE_AFTER = timedelta(days=3)


def _user_agent() -> str:
    try:
        release = version("saascore")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        release = "0.0.0"
    return f"saascore-webhooks/{release}"


USER_AGENT = _user_agent()
#: The part of a receiver's answer that is read and kept in the attempt log.
RESPONSE_KEPT = 1000
_RESPONSE_READ = 4096
#: Outbox rows one fan-out transaction takes.
FAN_OUT_BATCH = 500
#: Results one recording transaction takes (the others wait for the next one).
RECORD_BATCH = 500
#: Seconds a stopping dispatcher waits for the requests in flight before abandoning them (they
#: are sent again once their lease lapses).
SHUTDOWN_GRACE = 5.0
#: Hosts that keep a TLS client of their own (see `_Clients`).
TLS_CLIENTS = 256

HttpClientFactory = Callable[[], "httpx.AsyncClient"]


# --- the schedule --------------------------------------------------------------------------------
def retry_delay(attempts: int, *, jitter: float = 0.5) -> timedelta:
    """How long to wait after the `attempts`-th failed attempt (1 for the first).

    `jitter` in [0, 1) picks the point in the ±20 % band (0.5: the nominal delay), so that
    endpoints that failed together do not all come back at the same instant."""
    if attempts < 1:
        raise ValueError("attempts counts from 1")
    base = RETRY_SCHEDULE[attempts - 1] if attempts <= len(RETRY_SCHEDULE) else LATER_RETRIES
    return base * (1 - JITTER + 2 * JITTER * jitter)


def next_attempt_at(
    created_at: datetime, attempts: int, now: datetime, *, jitter: float = 0.5
) -> datetime | None:
    """When to try a delivery made at `created_at` again after its `attempts`-th failure at
    `now`; None once its `RETRY_FOR` is over (it fails). The last try falls on the deadline."""
    deadline = created_at + RETRY_FOR
    if now >= deadline:
        return None
    return min(now + retry_delay(attempts, jitter=jitter), deadline)


# --- waking ---------------------------------------------------------------------------------------
class Doorbell:
    """A flag that wakes a dispatcher: `ring()` from anywhere (an after-commit handler, another
    thread, a NOTIFY callback) never blocks; `wait(timeout)` returns at the first ring since the
    last wake, or after `timeout` seconds."""

    def __init__(self) -> None:
        self._rung = False
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def ring(self) -> None:
        self._rung = True
        event, loop = self._event, self._loop
        if event is None or loop is None or loop.is_closed():
            return
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)

    async def wait(self, timeout: float) -> bool:
        """True if rung, False if the time ran out."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._event is None:
            self._loop, self._event = loop, asyncio.Event()
        event = self._event
        rung = self._rung
        if not rung:
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
                rung = True
            except TimeoutError:
                pass
        self._rung = False
        event.clear()
        return rung


# --- what a round did -----------------------------------------------------------------------------
@dataclass(slots=True)
class DispatchCounts:
    """What the dispatcher did: outbox `events` fanned out into `deliveries`, `attempts` sent,
    of which `succeeded` and `failed`; deliveries that `gave_up` (retries over, or their
    endpoint disabled); endpoints `disabled`."""

    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    succeeded: int = 0
    failed: int = 0
    gave_up: int = 0
    disabled: int = 0

    def add(self, other: DispatchCounts) -> None:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    def __str__(self) -> str:
        return ", ".join(f"{item.name} {getattr(self, item.name)}" for item in fields(self))


@dataclass(frozen=True, slots=True)
class _Job:
    """A claimed delivery, with everything sending it needs."""

    organization_id: uuid.UUID
    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    attempts: int
    created_at: datetime
    url: str
    secrets: tuple[str, ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class _Result:
    job: _Job
    attempted_at: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    response_body: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def compact_json(body: Any) -> bytes:
    """The bytes sent and signed for an outbox body."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


# --- HTTP -----------------------------------------------------------------------------------------
class _Clients:
    """The HTTP clients: one shared by every plain-HTTP receiver, and one per HTTPS host name.

    Requests go to the checked IP address, so a pool keyed by address would let a TLS
    connection made (and verified) for one host name carry requests for another name on the
    same address; a client per name keeps each name on connections made for it."""

    def __init__(self, factory: HttpClientFactory, retire_after: float) -> None:
        self._factory = factory
        self._retire_after = retire_after
        self._plain: httpx.AsyncClient | None = None
        self._tls: OrderedDict[str, httpx.AsyncClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, scheme: str, host: str) -> httpx.AsyncClient:
        if scheme != "https":
            if self._plain is None:
                self._plain = self._factory()
            return self._plain
        client = self._tls.get(host)
        if client is None:
            client = self._tls[host] = self._factory()
            if len(self._tls) > TLS_CLIENTS:
                _, oldest = self._tls.popitem(last=False)
                self._close_later(oldest)
        else:
            self._tls.move_to_end(host)
        return client

    def _close_later(self, client: httpx.AsyncClient) -> None:
        async def close() -> None:  # after any request still using it has timed out
            await asyncio.sleep(self._retire_after)
            await client.aclose()

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        clients = [*self._tls.values(), *([self._plain] if self._plain else [])]
        self._tls.clear()
        self._plain = None
        for task in list(self._closing):
            task.cancel()
        for client in clients:
            await client.aclose()


def _pinned_url(url: str, address: str) -> str:
    """`url` with its host replaced by `address` (and its port kept)."""
    parts = urlsplit(url)
    netloc = f"[{address}]" if ":" in address else address
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


def _storable(text: str) -> str:
    """`text` with each NUL replaced by U+FFFD, as undecodable bytes already are: what a
    receiver answers is kept on the attempt, and PostgreSQL cannot store a NUL (one would fail
    the record of the whole batch, every organisation's attempts in it)."""
    return text.replace("\x00", "\ufffd")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the dispatcher -------------------------------------------------------------------------------
class Dispatcher:
    """Delivers the outbox to webhook endpoints (see the module's docstring).

    `run_once()` fans out and sends everything due now, then returns; `run(stop)` keeps at it
    until `stop` is set. `clock` decides what is due and when to retry (tests move it);
    the `webhook-timestamp` a receiver checks against its own clock is always the real time.
    """

    def __init__(
        self,
        database: Database,
        settings: Settings | None = None,
        *,
        bus: EventBus | None = None,
        doorbell: Doorbell | None = None,
        clock: Callable[[], datetime] = utcnow,
        client_factory: HttpClientFactory | None = None,
        timeout: float | None = None,
        lease_seconds: float | None = None,
        poll_interval: float | None = None,
        concurrency: int | None = None,
        allow_private: bool | None = None,
        listen: bool = True,
        jitter: Callable[[], float] = random.random,
        periodic: Callable[[], Awaitable[object]] | None = None,
        periodic_interval: float = 300.0,
    ) -> None:
        settings = settings if settings is not None else database.settings
        self.database = database
        self.settings = settings
        self.bus = bus if bus is not None else EventBus()
        self.doorbell = doorbell if doorbell is not None else Doorbell()
        self.clock = clock
        self.timeout = timeout if timeout is not None else settings.webhook_timeout_seconds
        self.lease = timedelta(
            seconds=lease_seconds if lease_seconds is not None else settings.webhook_lease_seconds
        )
        if self.lease.total_seconds() <= self.timeout:
            raise ValueError("the lease must be longer than the timeout")
        self.poll_interval = (
            poll_interval if poll_interval is not None else settings.webhook_poll_seconds
        )
        self.concurrency = concurrency if concurrency is not None else settings.webhook_concurrency
        self.allow_private = (
            allow_private if allow_private is not None else settings.webhooks_allow_private
        )
        self.listen = listen and database.backend is DatabaseBackend.POSTGRESQL
        self.jitter = jitter
        self._clients = _Clients(client_factory or self._default_client, self.timeout + 1)
        self._postgres = database.backend is DatabaseBackend.POSTGRESQL
        #: Work run in the loop at most every `periodic_interval` seconds (the billing run, with
        #: `SAASCORE_BILLING_AUTORUN`); a failure is logged and retried at the next interval.
        self.periodic = periodic
        self.periodic_interval = periodic_interval
        self._periodic_due = 0.0

    def _default_client(self) -> httpx.AsyncClient:
        import httpx

        return httpx.AsyncClient(
            timeout=self.timeout,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would undo the address pinning
            limits=httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            ),
        )

    async def aclose(self) -> None:
        await self._clients.aclose()

    # --- running ----------------------------------------------------------------------------------
    async def run_once(self) -> DispatchCounts:
        """Fan out the whole outbox and send every delivery due now (retries that come due
        meanwhile included), then return what was done."""
        counts = DispatchCounts()
        counts.add(await self.fan_out())
        limit = asyncio.Semaphore(self.concurrency)

        async def send(job: _Job) -> _Result:
            async with limit:
                return await self._send(job)

        while True:
            jobs, given_up = await self._claim(self.concurrency * 4)
            counts.gave_up += given_up
            if not jobs:
                break
            results = await asyncio.gather(*(send(job) for job in jobs))
            counts.add(await self._record(list(results)))
        return counts

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; then wait up to `SHUTDOWN_GRACE` seconds for the
        requests in flight and record them (the rest are sent again once their lease lapses)."""
        results: asyncio.Queue[_Result | None] = asyncio.Queue()
        recorder = asyncio.create_task(self._recorder(results))
        helpers = [asyncio.create_task(self._ring_on(stop))]
        if self.listen:
            helpers.append(asyncio.create_task(self._listen(stop)))
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                await self._run_periodic()
                free = self.concurrency - len(in_flight)
                try:
                    await self.fan_out()
                    jobs, _ = await self._claim(free) if free > 0 else ([], 0)
                except Exception:
                    log.exception("the webhook dispatcher failed to read the outbox")
                    await self.doorbell.wait(self.poll_interval)
                    continue
                for job in jobs:
                    task = asyncio.create_task(self._send_to(job, results))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if free > 0 and len(jobs) < free:
                    await self.doorbell.wait(self.poll_interval)
                else:  # more may be due: claim again once half of the slots are free
                    await self._wait_for_slots(in_flight, stop)
        finally:
            if in_flight:
                _, unfinished = await asyncio.wait(in_flight, timeout=SHUTDOWN_GRACE)
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
            results.put_nowait(None)
            await recorder
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.aclose()

    async def _run_periodic(self) -> None:
        """The periodic work, when its interval has passed since it last started."""
        if self.periodic is None or time.monotonic() < self._periodic_due:
            return
        self._periodic_due = time.monotonic() + self.periodic_interval
        try:
            await self.periodic()
        except Exception:
            log.exception("the dispatcher's periodic work failed")

    async def _ring_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.doorbell.ring()

    async def _wait_for_slots(
        self, in_flight: set[asyncio.Task[None]], stop: asyncio.Event
    ) -> None:
        deadline = time.monotonic() + self.poll_interval
        while len(in_flight) > self.concurrency // 2 and not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.wait([*in_flight], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)

    async def _send_to(self, job: _Job, results: asyncio.Queue[_Result | None]) -> None:
        results.put_nowait(await self._send(job))

    async def _recorder(self, results: asyncio.Queue[_Result | None]) -> None:
        done = False
        while not done:
            first = await results.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < RECORD_BATCH and not results.empty():
                item = results.get_nowait()
                if item is None:
                    done = True
                    break
                batch.append(item)
            try:
                await self._record(batch)
            except Exception:  # their leases lapse and they are sent again: never lost
                log.exception("the webhook dispatcher failed to record %d attempts", len(batch))

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN on the outbox channel on a connection of its own, ringing the doorbell at each
        notification; reconnect when the connection is lost."""
        pause = 1.0
        while not stop.is_set():
            try:
                async with self.database.engine.connect() as connection:
                    raw = await connection.get_raw_connection()
                    driver = raw.driver_connection
                    assert driver is not None
                    lost = asyncio.Event()
                    await driver.add_listener(OUTBOX_CHANNEL, lambda *_: self.doorbell.ring())
                    driver.add_termination_listener(functools.partial(_set, lost))
                    self.doorbell.ring()  # what committed while nobody listened
                    pause = 1.0
                    try:
                        while not stop.is_set() and not lost.is_set():
                            with contextlib.suppress(TimeoutError):
                                async with asyncio.timeout(30):
                                    await lost.wait()
                            if not lost.is_set():
                                async with asyncio.timeout(10):
                                    await driver.execute("SELECT 1")
                    finally:
                        await connection.invalidate()  # never back to the pool, listening
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook dispatcher: LISTEN connection lost (%s)", _describe(exc))
            if not stop.is_set():
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)

    # --- 1. fan-out -------------------------------------------------------------------------------
    async def fan_out(self) -> DispatchCounts:
        """Make the deliveries of every undispatched outbox event, a batch per transaction."""
        counts = DispatchCounts()
        while True:
            events, deliveries = await self._fan_out_batch()
            counts.events += events
            counts.deliveries += deliveries
            if events < FAN_OUT_BATCH:
                return counts

    async def _fan_out_batch(self) -> tuple[int, int]:
        now = self.clock()
        query = (
            sa.select(
                OutboxEvent.organization_id, OutboxEvent.id, OutboxEvent.type, OutboxEvent.body
            )
            .where(OutboxEvent.dispatched_at.is_(None))
            .order_by(OutboxEvent.occurred_at)
            .limit(FAN_OUT_BATCH)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        async with self.database.transaction() as session:
            events = (await session.execute(query)).all()
            if not events:
                return 0, 0
            organizations = {event.organization_id for event in events}
            endpoints = (
                await session.execute(
                    sa.select(
                        WebhookEndpoint.organization_id,
                        WebhookEndpoint.id,
                        WebhookEndpoint.event_types,
                    ).where(
                        WebhookEndpoint.organization_id.in_(organizations),
                        WebhookEndpoint.enabled.is_(True),
                    )
                )
            ).all()
            by_organization: dict[uuid.UUID, list[Any]] = defaultdict(list)
            for endpoint in endpoints:
                by_organization[endpoint.organization_id].append(endpoint)
            rows: list[dict[str, Any]] = []
            for event in events:
                for endpoint in by_organization.get(event.organization_id, ()):
                    if not _wants(endpoint.id, endpoint.event_types, event.type, event.body):
                        continue
                    rows.append(
                        {
                            "organization_id": event.organization_id,
                            "id": new_id(),
                            "endpoint_id": endpoint.id,
                            "event_id": event.id,
                            "event_type": event.type,
                            "status": DeliveryStatus.PENDING,
                            "attempts": 0,
                            "next_attempt_at": now,
                            "lease_until": None,
                            "created_at": now,
                        }
                    )
            if rows:
                await session.execute(sa.insert(WebhookDelivery), rows)
            await session.execute(
                sa.update(OutboxEvent)
                .where(
                    sa.tuple_(OutboxEvent.organization_id, OutboxEvent.id).in_(
                        [(event.organization_id, event.id) for event in events]
                    )
                )
                .values(dispatched_at=now)
                .execution_options(synchronize_session=False)
            )
        if rows:
            self.doorbell.ring()
        return len(events), len(rows)

    # --- 2. claim ---------------------------------------------------------------------------------
    async def _claim(self, limit: int) -> tuple[list[_Job], int]:
        """Lease up to `limit` due deliveries; (their jobs, deliveries failed unsent because
        their endpoint is disabled)."""
        now = self.clock()
        due = (
            sa.select(WebhookDelivery.organization_id, WebhookDelivery.id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at <= now,
                sa.or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
        if self._postgres:
            due = due.with_for_update(skip_locked=True)
        async with self.database.transaction() as session:
            claimed = (
                await session.execute(
                    sa.update(WebhookDelivery)
                    .where(sa.tuple_(WebhookDelivery.organization_id, WebhookDelivery.id).in_(due))
                    .values(lease_until=now + self.lease)
                    .returning(WebhookDelivery.organization_id, WebhookDelivery.id)
                    .execution_options(synchronize_session=False)
                )
            ).all()
            if not claimed:
                return [], 0
            keys = [(row.organization_id, row.id) for row in claimed]
            rows = (
                await session.execute(
                    sa.select(
                        WebhookDelivery.organization_id,
                        WebhookDelivery.id,
                        WebhookDelivery.endpoint_id,
                        WebhookDelivery.event_id,
                        WebhookDelivery.attempts,
                        WebhookDelivery.created_at,
                        WebhookEndpoint.url,
                        WebhookEndpoint.enabled,
                        WebhookEndpoint.secret,
                        WebhookEndpoint.previous_secret,
                        WebhookEndpoint.previous_secret_expires_at,
                        OutboxEvent.body,
                    )
                    .join(
                        WebhookEndpoint,
                        sa.and_(
                            WebhookEndpoint.organization_id == WebhookDelivery.organization_id,
                            WebhookEndpoint.id == WebhookDelivery.endpoint_id,
                        ),
                    )
                    .join(
                        OutboxEvent,
                        sa.and_(
                            OutboxEvent.organization_id == WebhookDelivery.organization_id,
                            OutboxEvent.id == WebhookDelivery.event_id,
                        ),
                    )
                    .where(sa.tuple_(WebhookDelivery.organization_id, WebhookDelivery.id).in_(keys))
                    .order_by(WebhookDelivery.next_attempt_at)
                )
            ).all()
            jobs: list[_Job] = []
            disabled: list[tuple[uuid.UUID, uuid.UUID]] = []
            for row in rows:
                if not row.enabled:
                    disabled.append((row.organization_id, row.id))
                    continue
                jobs.append(
                    _Job(
                        organization_id=row.organization_id,
                        delivery_id=row.id,
                        endpoint_id=row.endpoint_id,
                        event_id=row.event_id,
                        attempts=row.attempts,
                        created_at=row.created_at,
                        url=row.url,
                        secrets=tuple(
                            signing_secrets(
                                row.secret,
                                row.previous_secret,
                                row.previous_secret_expires_at,
                                now,
                            )
                        ),
                        body=compact_json(row.body),
                    )
                )
            if disabled:
                await session.execute(
                    sa.update(WebhookDelivery)
                    .where(
                        sa.tuple_(WebhookDelivery.organization_id, WebhookDelivery.id).in_(disabled)
                    )
                    .values(
                        status=DeliveryStatus.FAILED,
                        completed_at=now,
                        lease_until=None,
                        last_error="the endpoint is disabled",
                    )
                    .execution_options(synchronize_session=False)
                )
        return jobs, len(disabled)

    # --- 3. send ----------------------------------------------------------------------------------
    async def _send(self, job: _Job) -> _Result:
        """One attempt: resolve and check the host, POST the signed body to the checked address,
        read the start of the answer. Never raises: a failure is the result's `error`."""
        import httpx

        attempted_at = self.clock()
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        response_body: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                status_code, response_body = await self._post(job)
            if not 200 <= status_code < 300:
                error = f"the endpoint answered HTTP {status_code}"
        except WebhookUrlInvalid as exc:
            error = f"refused: {exc.message}"
        except (TimeoutError, httpx.TimeoutException):
            error = f"timed out after {self.timeout:g} s"
        except httpx.HTTPError as exc:
            error = _describe(exc)
        except OSError as exc:
            error = _describe(exc)
        duration_ms = round((time.perf_counter() - started) * 1000)
        return _Result(
            job=job,
            attempted_at=attempted_at,
            duration_ms=duration_ms,
            status_code=status_code,
            error=_storable(error)[:1000] if error else None,
            response_body=response_body,
        )

    async def _post(self, job: _Job) -> tuple[int, str]:
        parts = urlsplit(job.url)
        host, port = url_target(job.url)
        addresses = await resolve_public(host, port, allow_private=self.allow_private)
        address = addresses[0]
        headers = {
            "host": parts.netloc.rsplit("@", 1)[-1],
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signature_headers(message_id(job.event_id), utcnow(), job.body, job.secrets),
        }
        extensions: dict[str, Any] = {}
        if parts.scheme == "https" and address != host:
            extensions["sni_hostname"] = host
        client = self._clients.get(parts.scheme, host)
        request = client.build_request(
            "POST",
            _pinned_url(job.url, address),
            content=job.body,
            headers=headers,
            extensions=extensions,
        )
        response = await client.send(request, stream=True)
        try:
            read = bytearray()
            async for chunk in response.aiter_raw():
                read += chunk
                if len(read) >= _RESPONSE_READ:
                    break
        finally:
            await response.aclose()
        answer = _storable(bytes(read).decode("utf-8", "replace"))
        return response.status_code, answer[:RESPONSE_KEPT]

    # --- 4. record --------------------------------------------------------------------------------
    async def _record(self, results: Sequence[_Result]) -> DispatchCounts:
        """Record attempts in one transaction: the attempt log, each delivery's outcome, each
        endpoint's health, and the endpoints disabled for failing too long."""
        counts = DispatchCounts(attempts=len(results))
        if not results:
            return counts
        now = self.clock()
        deliveries = cast(sa.Table, WebhookDelivery.__table__)
        endpoints = cast(sa.Table, WebhookEndpoint.__table__)
        outcomes: list[dict[str, Any]] = []
        health: dict[tuple[uuid.UUID, uuid.UUID], _Result] = {}
        for result in results:
            job = result.job
            number = job.attempts + 1
            outcome: dict[str, Any] = {
                "o": job.organization_id,
                "d": job.delivery_id,
                "n": number,
                "code": result.status_code,
                "error": result.error,
                "next": None,
                "done": None,
            }
            if result.ok:
                counts.succeeded += 1
                outcome.update(status=DeliveryStatus.SUCCEEDED, done=now)
            else:
                counts.failed += 1
                retry = next_attempt_at(job.created_at, number, now, jitter=self.jitter())
                if retry is None:
                    counts.gave_up += 1
                    outcome.update(status=DeliveryStatus.FAILED, done=now)
                else:
                    outcome.update(status=DeliveryStatus.PENDING, next=retry)
            outcomes.append(outcome)
            key = (job.organization_id, job.endpoint_id)
            latest = health.get(key)
            if latest is None or result.attempted_at >= latest.attempted_at:
                health[key] = result
        async with self.database.transaction() as session:
            await session.execute(
                sa.insert(WebhookAttempt),
                [
                    {
                        "organization_id": result.job.organization_id,
                        "id": new_id(),
                        "delivery_id": result.job.delivery_id,
                        "endpoint_id": result.job.endpoint_id,
                        "number": result.job.attempts + 1,
                        "status_code": result.status_code,
                        "duration_ms": result.duration_ms,
                        "error": result.error,
                        "response_body": result.response_body,
                        "attempted_at": result.attempted_at,
                    }
                    for result in results
                ],
            )
            await session.execute(
                sa.update(deliveries)
                .where(
                    deliveries.c.organization_id == sa.bindparam("o"),
                    deliveries.c.id == sa.bindparam("d"),
                    deliveries.c.status == DeliveryStatus.PENDING,
                )
                .values(
                    status=sa.bindparam("status"),
                    attempts=sa.bindparam("n"),
                    next_attempt_at=sa.bindparam("next"),
                    lease_until=None,
                    last_status_code=sa.bindparam("code"),
                    last_error=sa.bindparam("error"),
                    completed_at=sa.bindparam("done"),
                ),
                outcomes,
            )
            healthy = [{"o": o, "e": e} for (o, e), r in health.items() if r.ok]
            failing = [{"o": o, "e": e} for (o, e), r in health.items() if not r.ok]
            endpoint_key = (
                endpoints.c.organization_id == sa.bindparam("o"),
                endpoints.c.id == sa.bindparam("e"),
            )
            if healthy:
                await session.execute(
                    sa.update(endpoints)
                    .where(*endpoint_key)
                    .values(last_success_at=now, failing_since=None),
                    healthy,
                )
            if failing:
                await session.execute(
                    sa.update(endpoints)
                    .where(*endpoint_key)
                    .values(failing_since=sa.func.coalesce(endpoints.c.failing_since, now)),
                    failing,
                )
                counts.disabled, given_up = await self._disable_failing(
                    session, [(item["o"], item["e"]) for item in failing], now
                )
                counts.gave_up += given_up
        return counts

    async def _disable_failing(
        self, session: Any, keys: list[tuple[uuid.UUID, uuid.UUID]], now: datetime
    ) -> tuple[int, int]:
        """Disable the endpoints among `keys` failing for `DISABLE_AFTER`; fail their pending
        deliveries; audit and announce each. (endpoints disabled, deliveries failed)"""
        reason = f"failing for {DISABLE_AFTER.days} days"
        disabled = (
            await session.execute(
                sa.update(WebhookEndpoint)
                .where(
                    sa.tuple_(WebhookEndpoint.organization_id, WebhookEndpoint.id).in_(keys),
                    WebhookEndpoint.enabled.is_(True),
                    WebhookEndpoint.failing_since <= now - DISABLE_AFTER,
                )
                .values(enabled=False, disabled_reason=reason)
                .returning(WebhookEndpoint.organization_id, WebhookEndpoint.id, WebhookEndpoint.url)
                .execution_options(synchronize_session=False)
            )
        ).all()
        if not disabled:
            return 0, 0
        failed = await session.execute(
            sa.update(WebhookDelivery)
            .where(
                sa.tuple_(WebhookDelivery.organization_id, WebhookDelivery.endpoint_id).in_(
                    [(row.organization_id, row.id) for row in disabled]
                ),
                WebhookDelivery.status == DeliveryStatus.PENDING,
            )
            .values(
                status=DeliveryStatus.FAILED,
                completed_at=now,
                lease_until=None,
                last_error="the endpoint is disabled",
            )
            .execution_options(synchronize_session=False)
        )
        for row in disabled:
            log.warning("webhook endpoint %s disabled: %s", row.id, reason)
            await self.bus.emit(
                session,
                row.organization_id,
                WebhookEndpointDisabled(endpoint_id=row.id, url=row.url, reason=reason),
                target_id=row.id,
            )
        return len(disabled), int(failed.rowcount or 0)


def _set(event: asyncio.Event, *_: object) -> None:
    event.set()


def _wants(endpoint_id: uuid.UUID, event_types: list[str], event_type: str, body: Any) -> bool:
    """Whether an endpoint gets an event: `webhook.test` only the endpoint it names, any other
    event the endpoints that list its type or list none."""
    if event_type == WebhookTest.type:
        data = body.get("data") if isinstance(body, dict) else None
        target = data.get("endpoint_id") if isinstance(data, dict) else None
        return target is not None and str(target) == str(endpoint_id)
    return not event_types or event_type in event_types

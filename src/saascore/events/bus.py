"""Domain events: what happened, emitted into the unit of work that made it happen.

A service that changes state calls `await bus.emit(session, org_id, SomethingHappened(...),
actor=...)` inside its transaction. Three things follow from that one call:

- **in the transaction**, the handlers that must share the change's fate run at once, on the
  same session (the audit entry): if the transaction rolls back, so does what they wrote;
- **the outbox**: an event meant to leave the process (`EventPayload.public`) is written to
  `outbox_events` in the same transaction, so it is published if and only if the change
  committed, and the dispatcher is woken (on PostgreSQL a NOTIFY sent with the rows; the
  audit log's statement carries both when it can, see `take_publication`; a statement in a
  transaction of its own has it sent after its commit, shared, by a `Wakeup`);
- **after commit**, the in-process handlers run (clearing the principal cache, waking the
  dispatcher); an event whose transaction, or savepoint, rolled back never reaches them.

Nothing else fans a change out by hand: an endpoint, a CLI command and a library call that make
the same change write the same audit entry and publish the same event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from saascore.config import DatabaseBackend
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database, SaascoreSession
from saascore.kit.ids import new_id
from saascore.kit.sql import insert
from saascore.kit.time import utcnow
from saascore.kit.types import UTCDateTime
from saascore.models import OutboxEvent

__all__ = [
    "OUTBOX_CHANNEL",
    "OUTBOX_INSERT",
    "OUTBOX_TIMES",
    "BatchHandler",
    "CommitHandler",
    "Event",
    "EventBus",
    "EventPayload",
    "Publication",
    "TransactionHandler",
    "Wakeup",
    "outbox_parameters",
    "take_publication",
]

log = logging.getLogger(__name__)

#: The PostgreSQL channel notified when outbox rows commit (NOTIFY is transactional).
OUTBOX_CHANNEL = "saascore_outbox"

_PENDING = "saascore.events.pending"
_DEFERRED = "saascore.events.deferred"
#: Set in a session's info while `one_wakeup` holds the dispatchers' wake-up to its end:
#: whether one is owed.
_WAKE_OWED = "saascore.events.wake_owed"
#: Set in a session's info while the in-transaction handlers run: the `Publication` of the
#: events they handle, which one of them may `take_publication`.
_PUBLICATION = "saascore.events.publication"

#: The outbox rows of a publication, on PostgreSQL: one array parameter per column, however
#: many rows, so that the statement is one text that SQLAlchemy compiles once and asyncpg
#: prepares once (a multi-row VALUES is compiled anew for every call). Its parameters are
#: `outbox_parameters`; the audit log embeds it in its own statement (`take_publication`).
OUTBOX_INSERT = """\
INSERT INTO outbox_events (organization_id, id, type, body, occurred_at)
SELECT o.organization_id, o.id, o.type, CAST(o.body AS jsonb), o.occurred_at
FROM unnest(
  CAST(:outbox_organization_id AS uuid[]), CAST(:outbox_id AS uuid[]),
  CAST(:outbox_type AS text[]), CAST(:outbox_body AS text[]),
  CAST(:outbox_occurred_at AS timestamptz[])
) AS o (organization_id, id, type, body, occurred_at)"""
#: `OUTBOX_INSERT`'s times, typed: `UTCDateTime` refuses a naive one, as the ORM does.
OUTBOX_TIMES = sa.bindparam("outbox_occurred_at", type_=postgresql.ARRAY(UTCDateTime()))
#: The outbox rows and the NOTIFY in one statement: one round trip less per publication.
_NOTIFYING_INSERT = sa.text(
    f"WITH written AS ({OUTBOX_INSERT})\nSELECT pg_notify(:channel, '')"
).bindparams(OUTBOX_TIMES, channel=OUTBOX_CHANNEL)


class EventPayload(BaseModel):
    """What an event says. Each event type is a subclass naming its `type`.

    Class settings: `public` events leave the process through the outbox (to tenants' webhook
    endpoints); `audit_action` names the audit entry the event writes (the type by default,
    None for none); `affects_access` events clear the principal cache after commit.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ClassVar[str]
    public: ClassVar[bool] = True
    audit_action: ClassVar[str | None] = ""
    affects_access: ClassVar[bool] = False
    #: The kind of thing the event is about, for the audit entry's `target_type`.
    target_type: ClassVar[str | None] = None

    @classmethod
    def audited_as(cls) -> str | None:
        return cls.type if cls.audit_action == "" else cls.audit_action


@dataclass(frozen=True, slots=True)
class Event:
    """An emitted event: its payload and who, where, when."""

    payload: EventPayload
    #: None for a platform-wide change (a plan of the catalog), which no tenant owns.
    organization_id: uuid.UUID | None
    actor: Actor = SYSTEM
    target_id: str | None = None
    request_data: Mapping[str, Any] | None = None
    id: uuid.UUID = field(default_factory=new_id)
    occurred_at: datetime = field(default_factory=utcnow)

    @property
    def type(self) -> str:
        return self.payload.type

    def data(self) -> dict[str, Any]:
        """The payload as JSON values."""
        return self.payload.model_dump(mode="json", by_alias=True)

    def body(self) -> dict[str, Any]:
        """The webhook body (Standard Webhooks: `type`, `timestamp`, `data`)."""
        return {
            "type": self.type,
            "timestamp": self.occurred_at.isoformat(),
            "data": self.data(),
        }


TransactionHandler = Callable[[AsyncSession, Event], Awaitable[None]]
BatchHandler = Callable[[AsyncSession, Sequence[Event]], Awaitable[None]]
CommitHandler = Callable[[Event], None]


@dataclass(slots=True)
class _Pending:
    event: Event
    transaction: SessionTransaction | None
    bus: EventBus


class EventBus:
    """Emits events and runs their handlers in and after the transaction.

    One bus per `Saascore`; the facade subscribes the audit log (in the transaction), the
    principal cache and the dispatcher's wake-up (after commit).
    """

    def __init__(self, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock
        self._in_transaction: list[tuple[TransactionHandler, BatchHandler | None]] = []
        self._after_commit: list[CommitHandler] = []

    def in_transaction(
        self, handler: TransactionHandler, *, many: BatchHandler | None = None
    ) -> TransactionHandler:
        """Run `handler(session, event)` inside the emitting transaction; `many(session,
        events)`, if given, does the same for the events of a `deferred` block at once."""
        self._in_transaction.append((handler, many))
        return handler

    def handled_only_by(self, handler: TransactionHandler) -> bool:
        """Whether `handler` is the only in-transaction handler. A statement that does its
        work itself, and writes the outbox rows (the audit log's, `append_to_head_sql`), may
        then stand for `emit`: its event's effects are all in it, and `run_after_commit`
        does the rest once it has committed."""
        return [registered for registered, _many in self._in_transaction] == [handler]

    def after_commit(self, handler: CommitHandler) -> CommitHandler:
        """Run `handler(event)` once the emitting transaction has committed."""
        self._after_commit.append(handler)
        return handler

    async def emit(
        self,
        session: AsyncSession,
        organization_id: uuid.UUID | None,
        payload: EventPayload,
        *,
        actor: Actor = SYSTEM,
        target_id: object = None,
        request_data: Mapping[str, Any] | None = None,
    ) -> Event:
        """Emit `payload` into `session`'s unit of work (see the module's docstring)."""
        emitted = self.event(
            organization_id, payload, actor=actor, target_id=target_id, request_data=request_data
        )
        deferred: list[Event] | None = session.sync_session.info.get(_DEFERRED)
        if deferred is not None:
            deferred.append(emitted)
        else:
            await self._handle(session, [emitted])
        self._remember(session, emitted)
        return emitted

    def event(
        self,
        organization_id: uuid.UUID | None,
        payload: EventPayload,
        *,
        actor: Actor = SYSTEM,
        target_id: object = None,
        request_data: Mapping[str, Any] | None = None,
    ) -> Event:
        """The event `emit` emits, now, not yet emitted."""
        return Event(
            payload=payload,
            organization_id=organization_id,
            actor=actor,
            target_id=str(target_id) if target_id is not None else None,
            request_data=request_data,
            occurred_at=self.clock(),
        )

    def written_by_statement(self, session: AsyncSession, handler: TransactionHandler) -> bool:
        """Whether, in `session`, a statement of a domain's own that writes an event's audit
        entry and outbox rows itself (the audit log's `append_to_head_sql`, `handler` its
        handler) may stand for `emit`: `handler` is the only in-transaction handler, and no
        `deferred` block holds the session's events. The caller then sends the wake-up with
        the rows if `wake_with_rows` says so, and has `emitted_by_statement` told of the
        event once its statement wrote it."""
        return (
            _dialect(session) == "postgresql"
            and self.handled_only_by(handler)
            and _DEFERRED not in session.sync_session.info
        )

    def wake_with_rows(self, session: AsyncSession) -> bool:
        """Whether a statement writing outbox rows in `session` sends the dispatchers'
        wake-up with them (not within `one_wakeup`, which is told that one is owed)."""
        return _wake_now(session)

    def emitted_by_statement(self, session: AsyncSession, emitted: Event) -> None:
        """What `emit` does after its handlers, for an event that a statement wrote
        (`written_by_statement`): its after-commit handlers run when `session` commits."""
        self._remember(session, emitted)

    async def _handle(self, session: AsyncSession, events: Sequence[Event]) -> None:
        """The in-transaction handlers and the outbox, for `events` in the order emitted.

        The handlers are offered the outbox rows (`take_publication`): on PostgreSQL the
        audit log writes them, and sends the NOTIFY, in the statement that appends to the
        chain, so that the usual event costs one statement instead of two."""
        public = [e for e in events if e.payload.public and e.organization_id is not None]
        info = session.sync_session.info
        publication = Publication([outbox_row(e) for e in public]) if public else None
        info[_PUBLICATION] = publication
        try:
            for handler, many in self._in_transaction:
                if many is not None:
                    await many(session, events)
                else:
                    for emitted in events:
                        await handler(session, emitted)
        finally:
            del info[_PUBLICATION]
        if publication is not None and not publication.taken:
            await self._write(session, publication.rows)

    @asynccontextmanager
    async def deferred(self, session: AsyncSession) -> AsyncIterator[None]:
        """Hold the in-transaction work of the events emitted in `session` within the block
        and do it set-wise when the block ends without error (still in the same transaction):
        one audit chain advance per organisation, one outbox insert, one dispatcher wake-up,
        however many events. Nothing emitted in the block reads its audit entries or outbox
        rows back before the block ends, so this changes only how many statements are sent.
        On an error nothing is written: the caller's transaction (or savepoint) rolls back.
        Blocks nest: an inner one leaves the work to the outermost, and an error out of it
        drops the events emitted within it (a savepoint per item of a batch: the billing
        run's transaction writes the audit entries and outbox rows of all its organisations
        at once, without those of one that failed)."""
        info = session.sync_session.info
        held: list[Event] | None = info.get(_DEFERRED)
        if held is not None:  # already deferred by an enclosing block, which does the work
            mark = len(held)
            try:
                yield
            except BaseException:
                # The block's savepoint (or transaction) rolls back: its events never were.
                del held[mark:]
                raise
            return
        events: list[Event] = []
        info[_DEFERRED] = events
        try:
            yield
        finally:
            del info[_DEFERRED]
        await self._handle(session, events)

    @asynccontextmanager
    async def one_wakeup(self, session: AsyncSession) -> AsyncIterator[None]:
        """Wake the dispatchers once for all the events published in `session` within the
        block, when it ends without error (still in its transaction), instead of once per
        publication: a batch of many small transactions' worth of events in one (the billing
        run). A wake-up is only a hint (dispatchers also poll), so one sent for events a
        savepoint then rolled back costs a poll, nothing more."""
        info = session.sync_session.info
        if _WAKE_OWED in info:  # already held by an enclosing block
            yield
            return
        info[_WAKE_OWED] = False
        try:
            yield
        finally:
            owed = info.pop(_WAKE_OWED)
        if owed:
            await _notify_dispatchers(session)

    async def publish(self, session: AsyncSession, events: Iterable[Event]) -> None:
        """Write `events` to the outbox in `session`'s transaction (set-wise), and have the
        dispatchers of every process woken when it commits."""
        await self._write(session, [outbox_row(emitted) for emitted in events])

    async def _write(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        """The outbox rows and the wake-up (`publish`)."""
        if not rows:
            return
        if _dialect(session) == "postgresql" and _wake_now(session):
            await session.execute(_NOTIFYING_INSERT, outbox_parameters(rows))
            return
        await session.execute(sa.insert(OutboxEvent), rows)
        await _notify_dispatchers(session)

    async def emit_once(
        self,
        session: AsyncSession,
        organization_id: uuid.UUID,
        payload: EventPayload,
        *,
        key: str,
        actor: Actor = SYSTEM,
    ) -> Event | None:
        """Emit a public event at most once per organisation and `key`, however many
        transactions try (a unique key on the outbox decides); None when one already was."""
        emitted = Event(
            payload=payload, organization_id=organization_id, actor=actor, occurred_at=self.clock()
        )
        row = {**outbox_row(emitted), "dedupe_key": key}
        statement = (
            insert(session, OutboxEvent)
            .values(**row)
            .on_conflict_do_nothing(
                index_elements=[OutboxEvent.organization_id, OutboxEvent.dedupe_key]
            )
            .returning(OutboxEvent.id)
        )
        if (await session.execute(statement)).first() is None:
            return None
        for handler, _many in self._in_transaction:
            await handler(session, emitted)
        await _notify_dispatchers(session)
        self._remember(session, emitted)
        return emitted

    # --- after commit ----------------------------------------------------------------------------
    def _remember(self, session: AsyncSession, emitted: Event) -> None:
        """Hold `emitted` for the after-commit handlers, until the session commits (or rolls
        back what emitted it). `Database`'s sessions are heard by listeners set once on their
        class; another session gets its own."""
        if not self._after_commit:
            return
        sync = session.sync_session
        pending: list[_Pending] | None = sync.info.get(_PENDING)
        if pending is None:
            pending = sync.info[_PENDING] = []
            if not isinstance(sync, SaascoreSession):
                sa_event.listen(sync, "after_commit", _committed)
                sa_event.listen(sync, "after_soft_rollback", _rolled_back)
        transaction = sync.get_nested_transaction() or sync.get_transaction()
        pending.append(_Pending(emitted, transaction, self))

    def run_after_commit(self, emitted: Event) -> None:
        """The after-commit handlers for one committed event; a failing one is logged, never
        raised: the change has committed and its caller must hear so."""
        for handler in self._after_commit:
            try:
                handler(emitted)
            except Exception:
                log.exception("after-commit handler %r failed on %s", handler, emitted.type)


async def _notify_dispatchers(session: AsyncSession) -> None:
    """On PostgreSQL, have every process's dispatcher woken when the transaction commits
    (NOTIFY is transactional); elsewhere they poll, and this process's doorbell rings.
    Within `EventBus.one_wakeup` the wake-up is only noted, and sent at the block's end."""
    if _dialect(session) == "postgresql" and _wake_now(session):
        await session.execute(sa.select(sa.func.pg_notify(OUTBOX_CHANNEL, "")))


class Wakeup:
    """The dispatchers' wake-up on PostgreSQL (a NOTIFY on `OUTBOX_CHANNEL`) for outbox rows
    that statements in transactions of their own have committed, sent after them and shared
    by them. The first commit starts a task that sends one NOTIFY; the commits made while it
    is being sent are covered by one more, sent when it is done; and so on.

    A NOTIFY in the statement itself holds PostgreSQL's lock on the notification queue from
    the commit until its WAL is flushed: every such commit waits for the one before it, with
    no group commit. Sent afterwards and shared, the commits go on together. A wake-up is
    only a hint (dispatchers also poll): one that fails is logged, and costs a poll."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._owed = False
        self._sending: asyncio.Task[None] | None = None

    def owed(self) -> None:
        """Note that outbox rows have committed: a wake-up will be sent after now (on
        PostgreSQL; elsewhere dispatchers poll)."""
        if self.database.backend is not DatabaseBackend.POSTGRESQL:
            return
        self._owed = True
        loop = asyncio.get_running_loop()
        sending = self._sending
        if sending is None or sending.done() or sending.get_loop() is not loop:
            self._sending = loop.create_task(self._send())

    async def settle(self) -> None:
        """Wait for the wake-up being sent, if any (before the database closes)."""
        sending = self._sending
        if sending is not None and sending.get_loop() is asyncio.get_running_loop():
            await sending

    async def _send(self) -> None:
        while self._owed:
            self._owed = False
            try:
                await self._notify()
            except Exception as exc:
                log.warning("dispatchers not woken (they will poll): %s", exc)

    async def _notify(self) -> None:
        async with self.database.driver() as driver:
            await driver.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)


def _wake_now(session: AsyncSession) -> bool:
    """Whether a wake-up is to be sent now: not within `EventBus.one_wakeup`, which is
    told that one is owed instead."""
    info = session.sync_session.info
    if _WAKE_OWED in info:
        info[_WAKE_OWED] = True
        return False
    return True


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind is not None else ""


def _committed(sync: Session) -> None:
    """Run the after-commit handlers of the events a committed session held."""
    pending: list[_Pending] | None = sync.info.get(_PENDING)
    if not pending or sync.in_nested_transaction():  # a savepoint released: the outer one
        return  # may still fail
    sync.info[_PENDING] = []
    for item in pending:
        item.bus.run_after_commit(item.event)


def _rolled_back(sync: Session, previous: SessionTransaction) -> None:
    """Forget the events emitted inside the transaction or savepoint that rolled back."""
    pending: list[_Pending] | None = sync.info.get(_PENDING)
    if pending:
        sync.info[_PENDING] = [item for item in pending if not _within(item.transaction, previous)]


def _within(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


def outbox_row(emitted: Event) -> dict[str, Any]:
    """The `outbox_events` row of an event (for the set-wise writers, such as metering)."""
    return {
        "organization_id": emitted.organization_id,
        "id": emitted.id,
        "type": emitted.type,
        "body": emitted.body(),
        "occurred_at": emitted.occurred_at,
        "dispatched_at": None,
    }


def outbox_parameters(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The parameters of `OUTBOX_INSERT` for `rows` (made by `outbox_row`)."""
    return {
        "outbox_organization_id": [row["organization_id"] for row in rows],
        "outbox_id": [row["id"] for row in rows],
        "outbox_type": [row["type"] for row in rows],
        "outbox_body": [json.dumps(row["body"]) for row in rows],
        "outbox_occurred_at": [row["occurred_at"] for row in rows],
    }


@dataclass(slots=True)
class Publication:
    """The outbox rows of the events that the in-transaction handlers are handling."""

    rows: list[dict[str, Any]]
    #: Whether the rows' writer must send the wake-up with them (`OUTBOX_CHANNEL`); set
    #: when they are taken.
    notify: bool = False
    taken: bool = False


def take_publication(session: AsyncSession) -> Publication | None:
    """The outbox rows of the events being handled in `session`, for the in-transaction
    handler that writes them itself, on PostgreSQL, with `OUTBOX_INSERT` in a statement of
    its own, and that sends the NOTIFY in it too when `notify` is set: the bus then writes
    nothing. Whoever takes them must write them; None when there are none to take."""
    publication: Publication | None = session.sync_session.info.get(_PUBLICATION)
    if publication is None or publication.taken or _dialect(session) != "postgresql":
        return None
    publication.taken = True
    publication.notify = _wake_now(session)
    return publication


sa_event.listen(SaascoreSession, "after_commit", _committed)
sa_event.listen(SaascoreSession, "after_soft_rollback", _rolled_back)

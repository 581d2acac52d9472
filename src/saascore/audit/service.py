"""The audit log: append-only, hash-chained per organisation, and verifiable.

Each entry's `hash` is the SHA-256 of its content and the previous entry's hash, and entries are
numbered 1, 2, 3, ... per organisation (`seq`). `audit_chain_heads` holds each chain's newest
`seq` and `hash`. So an edited entry no longer matches its hash, a deleted, added or reordered
one breaks the numbering or the link to its predecessor, and a deleted newest entry leaves the
head pointing past the end. The chain makes tampering evident, not impossible: whoever can
rewrite the whole table and its heads can forge a new chain, so export `verify`'s head hashes
somewhere else when that matters.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.events.bus import (
    OUTBOX_CHANNEL,
    OUTBOX_INSERT,
    OUTBOX_TIMES,
    Event,
    EventBus,
    outbox_parameters,
    outbox_row,
    take_publication,
)
from saascore.kit.actors import SYSTEM, Actor, Origin
from saascore.kit.db import Database
from saascore.kit.ids import new_id
from saascore.kit.sql import insert
from saascore.kit.time import utcnow
from saascore.kit.types import UTCDateTime
from saascore.kit.validation import canonical_json, checked_json
from saascore.models import AuditChainHead, AuditLog

__all__ = [
    "APPEND_TYPES",
    "CHAINED_SQL",
    "SYSTEM",
    "Actor",
    "AuditService",
    "ChainBreak",
    "ChainReport",
    "Origin",
    "append_to_head_sql",
    "audited_bus",
    "entry_hash",
]

_VERIFY_CHUNK = 1_000


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first broken link of an organisation's chain."""

    organization_id: uuid.UUID
    seq: int
    reason: str


@dataclass(slots=True)
class ChainReport:
    """What `AuditService.check` walked, and the first break of each broken chain."""

    chains: int = 0
    entries: int = 0
    breaks: list[ChainBreak] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.breaks


def entry_hash(entry: AuditLog | _Entry) -> str:
    """The SHA-256 (hex) of an entry's content and its predecessor's hash.

    The content is a JSON array of the entry's fields, in which `request_data` and
    `details` are their stored canonical texts, byte for byte: what is hashed is what is
    stored, so no database's rewriting of JSON numbers can break an untampered chain. (For
    entries written before the texts were stored, this is the same array as before.)"""
    prefix, infix = _hashed_around({name: getattr(entry, name) for name in _HASHED})
    hashed = f"{prefix}{_ENCODER.encode(entry.seq)}{infix}{_ENCODER.encode(entry.prev_hash)}]"
    return hashlib.sha256(hashed.encode()).hexdigest()


#: The attributes of an entry that `_hashed_around` reads.
_HASHED: Final = (
    "organization_id",
    "actor_type",
    "actor_id",
    "user_id",
    "action",
    "target_type",
    "target_id",
    "processing_job_id",
    "ip_address",
    "user_agent",
    "request_id",
    "request_data_text",
    "details_text",
    "created_at",
)


def _hashed_around(values: Mapping[str, Any]) -> tuple[str, str]:
    """What `entry_hash` hashes but for the entry's `seq` and `prev_hash`, from its
    attributes' `values`: the text before the `seq` (the prefix) and the text between it and
    the `prev_hash` (the infix), after which only `]` ends the array. On PostgreSQL the
    chain's statement hashes `prefix || seq || infix || prev_hash || ']'` itself, once it
    holds the chain's head (`append_to_head_sql`)."""
    user_id, job_id = values["user_id"], values["processing_job_id"]
    # The fields between the organisation and the stored texts, as one JSON array's
    # elements: with the encoder's separators, the same text as each encoded on its own.
    middle = _ENCODER.encode(
        [
            values["actor_type"],
            values["actor_id"],
            str(user_id) if user_id else None,
            values["action"],
            values["target_type"],
            values["target_id"],
            str(job_id) if job_id else None,
            values["ip_address"],
            values["user_agent"],
            values["request_id"],
        ]
    )[1:-1]
    created = _ENCODER.encode(values["created_at"].isoformat(timespec="microseconds"))
    return (
        f"[{_ENCODER.encode(str(values['organization_id']))},",
        f",{middle},{values['request_data_text']},{values['details_text']},{created},",
    )


#: The entries' bulk INSERT: NULLs rendered, so rows with and without, say, a target go in
#: one statement (the ORM otherwise groups the rows by which of their values are None).
_BULK_INSERT_ENTRIES = sa.insert(AuditLog).execution_options(render_nulls=True)
#: The entries' columns that `_APPEND_TO_HEAD` takes as arrays, one element per entry,
#: with their PostgreSQL types; it computes `seq`, `prev_hash` and `hash`.
_ITEM_COLUMNS = {
    "id": "uuid",
    "actor_type": "text",
    "actor_id": "text",
    "user_id": "uuid",
    "action": "text",
    "target_type": "text",
    "target_id": "text",
    "processing_job_id": "uuid",
    "ip_address": "text",
    "user_agent": "text",
    "request_id": "text",
    "request_data": "text",
    "details": "text",
    "created_at": "timestamptz",
}
_ITEM_ARRAYS = ",\n  ".join(f"CAST(:{name} AS {type_}[])" for name, type_ in _ITEM_COLUMNS.items())


def append_to_head_sql(when: str = "TRUE") -> str:
    """On PostgreSQL, the CTEs that append to a chain whose head exists (to follow `WITH
    RECURSIVE`; `when` and the f-string pieces are constants): `head` locks the head row and
    reads its newest version (FOR UPDATE waits for a concurrent append to commit and then
    sees its row, where a plain read would see the statement's snapshot); `link` numbers the
    entries after it and hashes them as `entry_hash` does (from `_hashed_around`);
    `advanced` moves the head to the last of them (one change of its row: a statement may
    not change a row twice) and returns its `seq`; `appended` inserts them; `published`
    writes the outbox rows taken from the event bus, if any, and `notified` sends the NOTIFY
    with them if asked. With no head there is no link: nothing is appended, and `advanced`
    has no row. One text whatever the number of entries: compiled once, prepared once per
    connection. Its parameters are `AuditService.append_parameters`'.

    `when`, an SQL condition, lets a statement of another domain append the entries (and
    write the outbox rows) of its own change, only if it made one: the head is locked, and
    the rows written, only where it holds. Reading that statement's earlier CTEs in it also
    makes them run first: the chain's head is then the last row the statement locks."""
    return f"""\
head AS (
  SELECT seq, hash FROM audit_chain_heads
  WHERE organization_id = :organization_id AND {when}
  FOR UPDATE
),
item AS (
  SELECT * FROM unnest(
  {_ITEM_ARRAYS},
  CAST(:hash_infix AS text[])
  ) WITH ORDINALITY AS item ({", ".join(_ITEM_COLUMNS)}, hash_infix, n)
),
link (n, seq, prev_hash, hash) AS (
  SELECT CAST(0 AS bigint), seq, CAST(NULL AS text), CAST(hash AS text) FROM head
  UNION ALL
  SELECT item.n, link.seq + 1, link.hash, encode(sha256(convert_to(
    CAST(:hash_prefix AS text) || (link.seq + 1) || item.hash_infix
    || COALESCE(to_json(link.hash)::text, 'null') || ']', 'UTF8')), 'hex')
  FROM link JOIN item ON item.n = link.n + 1
),
advanced AS (
  UPDATE audit_chain_heads SET seq = last.seq, hash = last.hash
  FROM (SELECT seq, hash FROM link ORDER BY n DESC LIMIT 1) AS last
  WHERE audit_chain_heads.organization_id = :organization_id
  RETURNING audit_chain_heads.seq
),
appended AS (
  INSERT INTO audit_logs (organization_id, seq, prev_hash, hash, {", ".join(_ITEM_COLUMNS)})
  SELECT CAST(:organization_id AS uuid), link.seq, link.prev_hash, link.hash,
    {", ".join(f"item.{name}" for name in _ITEM_COLUMNS)}
  FROM item JOIN link ON link.n = item.n
),
published AS ({OUTBOX_INSERT}
  WHERE {when}),
notified AS (SELECT pg_notify(:channel, '') WHERE :notify AND {when})"""  # noqa: S608


#: On PostgreSQL, the CTEs (to follow `WITH`) that write entries which the caller numbered and
#: hashed itself while holding their chains' heads locked (`AuditService.chained_parameters`):
#: `moved` moves each head to its last entry, `chained` inserts the entries and `chained_out`
#: writes the outbox rows of the events they record. For many organisations' chains in one
#: statement, whose heads were read `FOR UPDATE` earlier in the transaction.
CHAINED_SQL: Final = f"""\
moved AS (
  UPDATE audit_chain_heads AS h SET seq = m.seq, hash = m.hash
  FROM unnest(
    CAST(:head_organization_id AS uuid[]), CAST(:head_seq AS bigint[]),
    CAST(:head_hash AS text[])
  ) AS m (organization_id, seq, hash)
  WHERE h.organization_id = m.organization_id
),
chained AS (
  INSERT INTO audit_logs (organization_id, seq, prev_hash, hash, {", ".join(_ITEM_COLUMNS)})
  SELECT * FROM unnest(
  CAST(:entry_organization_id AS uuid[]), CAST(:entry_seq AS bigint[]),
  CAST(:entry_prev_hash AS text[]), CAST(:entry_hash AS text[]),
  {_ITEM_ARRAYS.replace("CAST(:", "CAST(:entry_")}
  )
),
chained_out AS ({OUTBOX_INSERT})"""  # noqa: S608

#: The bind parameters that a statement using `append_to_head_sql` declares (`.bindparams`).
APPEND_TYPES: Final[tuple[sa.BindParameter[Any], ...]] = (
    sa.bindparam("created_at", type_=postgresql.ARRAY(UTCDateTime())),
    OUTBOX_TIMES,
    sa.bindparam("channel", OUTBOX_CHANNEL),
)
#: On PostgreSQL, the append to a chain whose head exists, in one statement
#: (`append_to_head_sql`); the head's new `seq`, NULL when there is no head (the caller then
#: appends the slow way; the outbox rows were written).
_APPEND_TO_HEAD = sa.text(
    f"""\
WITH RECURSIVE
{append_to_head_sql()}
SELECT (SELECT seq FROM advanced), (SELECT count(*) FROM notified)"""  # noqa: S608
).bindparams(*APPEND_TYPES)
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _stored(value: dict[str, Any] | None, field: str) -> str:
    """The canonical text of an entry's JSON field (`InvalidInput` if it is not JSON)."""
    return canonical_json(checked_json(value or {}, field=field, max_depth=None))


def _items_by_org(events: Sequence[Event]) -> dict[uuid.UUID, list[_Item]]:
    """The entries that `events` write, by organisation, in the events' order."""
    by_org: dict[uuid.UUID, list[_Item]] = {}
    for event in events:
        action = event.payload.audited_as()
        if action is not None and event.organization_id is not None:
            by_org.setdefault(event.organization_id, []).append(_Item.of(event, action))
    return by_org


def _attribute(column: str) -> str:
    """The attribute of `_Entry` that holds an entry's column (the JSON ones' texts)."""
    return column + "_text" if column in ("request_data", "details") else column


def _stored_value(values: Mapping[str, Any], column: str) -> Any:
    """The value of an entry's column from its attributes' `values` (the JSON texts')."""
    return values[_attribute(column)]


@dataclass(slots=True)
class _Entry:
    """An entry's values, by `AuditLog`'s attribute names, before it is written: a plain
    object, as the bulk INSERTs need no more (an `AuditLog` costs its unit of work's
    bookkeeping for every attribute set, several times an entry's hashing)."""

    organization_id: uuid.UUID
    id: uuid.UUID
    actor_type: str
    actor_id: str | None
    user_id: uuid.UUID | None
    action: str
    target_type: str | None
    target_id: str | None
    processing_job_id: uuid.UUID | None
    ip_address: str | None
    user_agent: str | None
    request_id: str | None
    request_data_text: str
    details_text: str
    created_at: datetime
    seq: int = 0
    prev_hash: str | None = None
    hash: str = ""


_ENTRY_FIELDS = tuple(column.name for column in fields(_Entry))


def _row(entry: _Entry) -> dict[str, Any]:
    """An entry's column values, for the bulk INSERTs."""
    return {name: getattr(entry, name) for name in _ENTRY_FIELDS}


def _dialect(s: AsyncSession) -> str:
    return s.bind.dialect.name if s.bind is not None else ""


def _clip(value: str | None, size: int) -> str | None:
    return value[:size] if value is not None else None


@dataclass(frozen=True, slots=True)
class _Item:
    """One entry to append, before its place in the chain is known."""

    action: str
    actor: Actor
    target_type: str | None
    target_id: str | uuid.UUID | None
    details: dict[str, Any] | None
    request_data: dict[str, Any] | None
    processing_job_id: uuid.UUID | None = None

    @classmethod
    def of(cls, event: Event, action: str) -> _Item:
        """The entry that records `event` as `action`."""
        request_data = event.request_data
        return cls(
            action,
            event.actor,
            event.payload.target_type,
            event.target_id,
            event.data(),
            dict(request_data) if request_data is not None else None,
        )


class AuditService:
    def __init__(self, database: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.clock = clock

    async def record(
        self,
        org_id: uuid.UUID,
        action: str,
        *,
        actor: Actor = SYSTEM,
        target_type: str | None = None,
        target_id: str | uuid.UUID | None = None,
        details: dict[str, Any] | None = None,
        request_data: dict[str, Any] | None = None,
        processing_job_id: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> AuditLog:
        """Append an entry to the organisation's chain, in the caller's unit of work.

        Appends to one organisation are serialised by its chain head's row lock, held until
        the transaction ends; `details` and `request_data` must be JSON values.
        """
        async with self.database.scope(session) as s:
            (entry,) = await self._append(
                s,
                org_id,
                [
                    _Item(
                        action,
                        actor,
                        target_type,
                        target_id,
                        details,
                        request_data,
                        processing_job_id,
                    )
                ],
            )
        return entry

    async def _append(
        self, s: AsyncSession, org_id: uuid.UUID, items: Sequence[_Item], *, keep: bool = True
    ) -> list[AuditLog]:
        """Append `items` to the organisation's chain in `s`: the head advances by their
        number in one statement and takes the last hash in another, however many there are.
        With `keep=False` the entries are inserted as rows (one bulk INSERT, no unit of work)
        and none are returned: for callers that never read them."""
        advance = (
            insert(s, AuditChainHead)
            .values(organization_id=org_id, seq=len(items), hash=None)
            .on_conflict_do_update(
                index_elements=[AuditChainHead.organization_id],
                set_={"seq": AuditChainHead.seq + len(items)},
            )
            .returning(AuditChainHead.seq, AuditChainHead.hash)
        )
        last_seq, prev_hash = (await s.execute(advance)).one()
        entries = self._entries(org_id, items, last_seq, prev_hash)
        kept: list[AuditLog] = []
        if keep:
            kept = [AuditLog(**_row(entry)) for entry in entries]
            s.add_all(kept)
            await s.flush()
        else:
            await s.execute(_BULK_INSERT_ENTRIES, [_row(entry) for entry in entries])
        await s.execute(
            sa.update(AuditChainHead)
            .where(AuditChainHead.organization_id == org_id)
            .values(hash=entries[-1].hash)
        )
        return kept

    async def _append_to_head(
        self, s: AsyncSession, org_id: uuid.UUID, items: Sequence[_Item]
    ) -> bool:
        """On PostgreSQL, `_append(keep=False)` in one statement (`_APPEND_TO_HEAD`), which
        also writes the outbox rows of the events being handled, and sends their wake-up,
        if the event bus offers them (`take_publication`). False if the chain has no head
        yet (its first entry), in which case only the outbox rows were written."""
        publication = take_publication(s)
        parameters = self._head_parameters(
            org_id,
            items,
            publication.rows if publication is not None else [],
            notify=publication is not None and publication.notify,
        )
        head_seq, _notified = (await s.execute(_APPEND_TO_HEAD, parameters)).one()
        return head_seq is not None

    def append_parameters(self, event: Event, *, notify: bool = True) -> dict[str, Any]:
        """The parameters of `append_to_head_sql` for an event that a statement of its own
        emits, outside any session: the event's audit entry, its outbox row (if it is public)
        and, with `notify`, the dispatchers' wake-up with it (else the caller sends it after
        the commit, `events.bus.Wakeup`). What `handle` and the event bus would write."""
        action = event.payload.audited_as()
        assert action is not None
        assert event.organization_id is not None
        item = _Item.of(event, action)
        public = event.payload.public
        return self._head_parameters(
            event.organization_id,
            [item],
            [outbox_row(event)] if public else [],
            notify=notify and public,
        )

    def chained_parameters(
        self, heads: Mapping[uuid.UUID, tuple[int, str | None]], events: Sequence[Event]
    ) -> dict[str, list[Any]]:
        """The parameters of `CHAINED_SQL` for `events`, in their order, on chains whose heads
        (`seq`, `hash`, by organisation) the caller read and holds locked: each event's
        audit entry, if it has one, numbered and hashed after its head, and its outbox row,
        if it is public. What `handle_many` and the event bus would write."""
        moved: list[tuple[uuid.UUID, int, str | None]] = []
        entries: list[_Entry] = []
        for org_id, items in _items_by_org(events).items():
            seq, hash_ = heads[org_id]
            chained = self._entries(org_id, items, seq + len(items), hash_)
            entries.extend(chained)
            moved.append((org_id, chained[-1].seq, chained[-1].hash))
        return {
            "head_organization_id": [org_id for org_id, _, _ in moved],
            "head_seq": [seq for _, seq, _ in moved],
            "head_hash": [hash_ for _, _, hash_ in moved],
            "entry_organization_id": [entry.organization_id for entry in entries],
            "entry_seq": [entry.seq for entry in entries],
            "entry_prev_hash": [entry.prev_hash for entry in entries],
            "entry_hash": [entry.hash for entry in entries],
            **{
                f"entry_{name}": [getattr(entry, _attribute(name)) for entry in entries]
                for name in _ITEM_COLUMNS
            },
            **outbox_parameters([outbox_row(event) for event in events if event.payload.public]),
        }

    def _head_parameters(
        self,
        org_id: uuid.UUID,
        items: Sequence[_Item],
        outbox_rows: Sequence[dict[str, Any]],
        *,
        notify: bool,
    ) -> dict[str, Any]:
        entries = [self._columns(org_id, item) for item in items]
        around = [_hashed_around(entry) for entry in entries]
        return {
            "organization_id": org_id,
            "hash_prefix": around[0][0],
            "hash_infix": [infix for _prefix, infix in around],
            **{name: [_stored_value(entry, name) for entry in entries] for name in _ITEM_COLUMNS},
            **outbox_parameters(outbox_rows),
            "notify": notify,
            "channel": OUTBOX_CHANNEL,
        }

    def _entry(self, org_id: uuid.UUID, item: _Item) -> _Entry:
        """The entry of `item`, but for its place in the chain (`seq`, `prev_hash`, `hash`)."""
        return _Entry(**self._columns(org_id, item))

    def _columns(self, org_id: uuid.UUID, item: _Item) -> dict[str, Any]:
        """`_entry`'s attributes, for the statements that insert it without making it."""
        actor = item.actor
        return {
            "organization_id": org_id,
            "id": new_id(),
            "actor_type": actor.type,
            "actor_id": actor.id,
            "user_id": actor.user_id,
            "action": item.action,
            "target_type": item.target_type,
            "target_id": str(item.target_id) if item.target_id is not None else None,
            "processing_job_id": item.processing_job_id,
            "ip_address": _clip(actor.ip_address, 45),
            "user_agent": _clip(actor.user_agent, 512),
            "request_id": _clip(actor.request_id, 64),
            "request_data_text": _stored(item.request_data, "request_data"),
            "details_text": _stored(item.details, "details"),
            "created_at": self.clock(),
        }

    def _entries(
        self, org_id: uuid.UUID, items: Sequence[_Item], last_seq: int, prev_hash: str | None
    ) -> list[_Entry]:
        """The entries of `items`, hash-chained after `prev_hash`, the last numbered
        `last_seq` (the chain head's `seq` once advanced by `len(items)`)."""
        entries: list[_Entry] = []
        for seq, item in enumerate(items, start=last_seq - len(items) + 1):
            entry = self._entry(org_id, item)
            entry.seq, entry.prev_hash = seq, prev_hash
            entry.hash = prev_hash = entry_hash(entry)
            entries.append(entry)
        return entries

    async def _append_many(self, s: AsyncSession, items: dict[uuid.UUID, list[_Item]]) -> None:
        """`_append(keep=False)` for many organisations' chains at once. One chain whose head
        exists takes one statement on PostgreSQL (`_append_to_head`); otherwise three
        executemanys: the heads advance in one upsert (in organisation id order, so two such
        appends lock the heads in the same order), the entries are inserted in one bulk
        INSERT, and the heads take their last hashes in one UPDATE."""
        if len(items) == 1:
            ((org_id, only),) = items.items()
            if _dialect(s) == "postgresql" and await self._append_to_head(s, org_id, only):
                return
            await self._append(s, org_id, only, keep=False)
            return
        upsert = insert(s, AuditChainHead)
        advance = upsert.on_conflict_do_update(
            index_elements=[AuditChainHead.organization_id],
            set_={"seq": AuditChainHead.seq + upsert.excluded.seq},
        ).returning(AuditChainHead.organization_id, AuditChainHead.seq, AuditChainHead.hash)
        # An executemany, which SQLAlchemy sends as few multi-row statements (its
        # "insertmanyvalues") from one compiled form.
        advanced = await s.execute(
            advance,
            [
                {"organization_id": org_id, "seq": len(items[org_id]), "hash": None}
                for org_id in sorted(items)
            ],
        )
        heads = {org_id: (seq, hash_) for org_id, seq, hash_ in advanced}
        rows: list[dict[str, Any]] = []
        last_hashes: list[dict[str, Any]] = []
        for org_id in sorted(items):
            last_seq, prev_hash = heads[org_id]
            entries = self._entries(org_id, items[org_id], last_seq, prev_hash)
            rows.extend(_row(entry) for entry in entries)
            last_hashes.append({"head_org": org_id, "head_hash": entries[-1].hash})
        await s.execute(_BULK_INSERT_ENTRIES, rows)
        heads_table = cast(sa.Table, AuditChainHead.__table__)
        await s.execute(
            sa.update(heads_table)
            .where(heads_table.c.organization_id == sa.bindparam("head_org"))
            .values(hash=sa.bindparam("head_hash")),
            last_hashes,
        )

    async def handle(self, session: AsyncSession, event: Event) -> None:
        """The event bus's in-transaction handler: the event's audit entry, if it has one."""
        await self.handle_many(session, [event])

    async def handle_many(self, session: AsyncSession, events: Sequence[Event]) -> None:
        """The same for events emitted together (`EventBus.deferred`), in the order they were
        emitted: every organisation's chain advanced at once (`_append_many`)."""
        by_org = _items_by_org(events)
        if by_org:
            await self._append_many(session, by_org)

    async def list(
        self,
        org_id: uuid.UUID,
        *,
        limit: int = 50,
        before_seq: int | None = None,
        action: str | None = None,
        session: AsyncSession | None = None,
    ) -> Sequence[AuditLog]:
        """The organisation's entries, newest first; `before_seq` pages on."""
        query = (
            sa.select(AuditLog)
            .where(AuditLog.organization_id == org_id)
            .order_by(AuditLog.seq.desc())
            .limit(limit)
        )
        if before_seq is not None:
            query = query.where(AuditLog.seq < before_seq)
        if action is not None:
            query = query.where(AuditLog.action == action)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    async def verify(
        self, org_id: uuid.UUID | None = None, *, session: AsyncSession | None = None
    ) -> builtins.list[ChainBreak]:
        """Walk each chain (one organisation's, or every one) and report its first broken
        link: an entry whose hash does not match its content, a missing, extra or reordered
        entry, or an end that is not the head. An empty list means every chain is intact."""
        return (await self.check(org_id, session=session)).breaks

    async def check(
        self, org_id: uuid.UUID | None = None, *, session: AsyncSession | None = None
    ) -> ChainReport:
        """`verify`, with how many chains and entries it walked."""
        async with self.database.scope(session, readonly=True) as s:
            heads_query = sa.select(
                AuditChainHead.organization_id, AuditChainHead.seq, AuditChainHead.hash
            )
            logged_query = sa.select(AuditLog.organization_id).distinct()
            if org_id is not None:
                heads_query = heads_query.where(AuditChainHead.organization_id == org_id)
                logged_query = logged_query.where(AuditLog.organization_id == org_id)
            heads: dict[uuid.UUID, tuple[int, str | None]] = {
                org: (seq, hash_) for org, seq, hash_ in (await s.execute(heads_query)).all()
            }
            organizations = set(heads) | set((await s.scalars(logged_query)).all())
            report = ChainReport()
            for organization in sorted(organizations):
                found, entries = await self._verify_chain(s, organization, heads.get(organization))
                report.chains += 1
                report.entries += entries
                if found is not None:
                    report.breaks.append(found)
        return report

    async def _verify_chain(
        self, s: AsyncSession, org_id: uuid.UUID, head: tuple[int, str | None] | None
    ) -> tuple[ChainBreak | None, int]:
        """The chain's first break, if any, and how many entries were read."""
        expected_seq, prev_hash, read = 1, None, 0
        # Every entry is read, from the lowest seq up: one numbered below 1 (slipped in ahead
        # of the chain) is as much a break as a gap.
        last_seen: int | None = None
        while True:
            query = (
                sa.select(AuditLog)
                .where(AuditLog.organization_id == org_id)
                .order_by(AuditLog.seq)
                .limit(_VERIFY_CHUNK)
                # What is stored, not what the caller's session remembers of it.
                .execution_options(populate_existing=True)
            )
            if last_seen is not None:
                query = query.where(AuditLog.seq > last_seen)
            chunk = (await s.scalars(query)).all()
            for entry in chunk:
                read += 1
                if entry.seq < expected_seq:
                    return ChainBreak(org_id, entry.seq, "an entry outside the chain"), read
                if entry.seq != expected_seq:
                    return ChainBreak(org_id, expected_seq, "entry missing"), read
                if entry.prev_hash != prev_hash:
                    return ChainBreak(
                        org_id, entry.seq, "does not link to the entry before it"
                    ), read
                if entry.hash != entry_hash(entry):
                    return ChainBreak(org_id, entry.seq, "content does not match its hash"), read
                prev_hash = entry.hash
                expected_seq += 1
                last_seen = entry.seq
            if len(chunk) < _VERIFY_CHUNK:
                break
        last = expected_seq - 1
        if head is None:
            return (ChainBreak(org_id, last, "the chain has no head") if last else None), read
        if head[0] != last:
            return ChainBreak(
                org_id, last + 1, f"the head is at {head[0]}, the chain ends at {last}"
            ), read
        if head[1] != prev_hash:
            return ChainBreak(org_id, last, "the head's hash is not the last entry's"), read
        return None, read


def audited_bus(audit: AuditService) -> EventBus:
    """An event bus whose events write their audit entries (what a service built on its own,
    outside the facade, emits into)."""
    bus = EventBus(clock=audit.clock)
    bus.in_transaction(audit.handle, many=audit.handle_many)
    return bus

"""Folders and documents, with the organisation's storage gauge kept exact.

A document is metadata: the bytes live in object storage at its `storage_uri`. Registering one
adds its size to metering's gauge (`usage_limits.storage_used_bytes`) in the same transaction as
its row, by metering's conditional UPDATE (`gauge.storage_change`), which refuses to pass a hard
limit, so racing registrations never exceed it together. The row goes first (`INSERT ... ON
CONFLICT DO NOTHING` on a unique index of the content hash in its folder: identical content is
answered with the document already there, and of two racing registrations of it one inserts and
the other waits and finds it), the gauge second, just before the events: the organisation's
gauge row stays locked for the shortest time. On PostgreSQL both are one statement and one round
trip (the UPDATE runs only if the INSERT made a row, and resolves the limit itself); when it
does not count the size, `UsageService.update_storage_used` tries again and says why (and is
what SQLite runs). A refusal removes the row again, so a caller's session is left as it was. A
registration in a transaction of its own (no session given) on PostgreSQL, when the event bus's
only in-transaction work is the audit entry, is a single statement, event and all
(`workspace.postgres.REGISTER`); registrations that arrive together share a transaction of two
statements (group commit, `workspace.postgres.CLAIM` and `WRITE`), decided in arrival order and
each answered after the commit. What either cannot finish it leaves to a session, as above,
having written nothing of it. A registration first locks its organisation and its folder (`FOR
KEY SHARE`, what the document's foreign keys would lock last), so that nothing locking them
against that and then the gauge deadlocks with it. Deleting subtracts what the row says it
added, taken from the deleted row itself (`DELETE ... RETURNING`), so two racing deletions free
the bytes once.

Folders nest. Names are unique among siblings and compared exactly as given (after trimming
spaces, in Unicode's composed form NFC): "Reports" and "reports" are two folders, "Café" typed
with a combining accent is "Café". A name holding an invisible format character (U+200B ZERO
WIDTH SPACE and the other characters of category Cf) is refused (422 `invalid_character`), so
that no name can pass for a sibling's. A folder's `path` is the names from the root,
"/Reports/2026", kept up to date by renames and moves. Moves take the organisation's
`usage_limits` row lock (the same lock credits take), so two moves cannot together make a
cycle. A recursive delete locks the folders it deletes before reading their documents: a
registration into one of them either commits first (and is freed with the rest) or waits and
then finds its folder gone.

`verify_storage` recomputes each organisation's gauge from its documents.
"""

from __future__ import annotations

import functools
import logging
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, make_transient_to_detached

from saascore.audit.service import AuditService, audited_bus
from saascore.config import DatabaseBackend
from saascore.events.bus import Event, EventBus, Wakeup
from saascore.events.catalog import DocumentCreated, DocumentDeleted, StorageRepaired
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database, exact_sum, is_timeout, joined_sum
from saascore.kit.errors import DatabaseUnavailable, DomainError, InvalidInput
from saascore.kit.ids import new_id
from saascore.kit.inputs import INT64_MAX
from saascore.kit.pagination import DEFAULT_LIMIT
from saascore.kit.sql import insert
from saascore.kit.time import utcnow
from saascore.kit.validation import checked_instant, checked_json, checked_name, checked_text
from saascore.metering.accounts import usage_account
from saascore.metering.gauge import RESOLVED_CAP, storage_increment
from saascore.metering.group import GroupCommits, one_by_one
from saascore.metering.service import UsageService
from saascore.models import Document, DocumentStatus, Folder, Organization, UsageLimits
from saascore.workspace.errors import (
    DocumentNotFound,
    FolderCycle,
    FolderNameTaken,
    FolderNotEmpty,
    FolderNotFound,
)
from saascore.workspace.postgres import INSERTED, Gauge, Outcome, claim, run_register, write

__all__ = [
    "DeletedFolder",
    "DocumentService",
    "Registered",
    "StorageDrift",
    "check_file_hash",
]

log = logging.getLogger(__name__)

_HEX: Final = frozenset("0123456789abcdef")
#: How deep folders may nest: deep enough for any tree a person keeps, and a bound on the
#: walks up a tree.
MAX_DEPTH: Final = 64
#: What the bind parameters of `_registration` are named by: a column's name after it (a
#: parameter named as a column would be set by the UPDATE too).
_BIND: Final = "new_"
#: The columns a registration sets (the others keep their defaults: NULL).
_INSERTED: Final = frozenset((*INSERTED, "updated_at"))


@dataclass(frozen=True)
class Registered:
    """A registration's document, and whether this call made it (false: the same content was
    already registered in the folder, and nothing changed)."""

    document: Document
    created: bool


@dataclass(frozen=True)
class DeletedFolder:
    """What deleting a folder removed."""

    folders: int
    documents: int
    freed_bytes: int


@dataclass(frozen=True)
class StorageDrift:
    """An organisation whose gauge differs from the sum of its documents' sizes."""

    organization_id: uuid.UUID
    recorded_bytes: int
    actual_bytes: int
    repaired: bool = False


@dataclass(frozen=True, slots=True)
class _Pending:
    """A registration waiting for its batch (group commit): the document's columns."""

    values: dict[str, Any]
    actor: Actor


@dataclass(frozen=True, slots=True)
class _Refused:
    """A batch's decision that the storage limit refuses a registration (said once the
    batch is over: `UsageService.storage_refused`)."""

    limit: int
    used: int
    size: int


#: A batch's answer to one registration: registered, refused, an error, or None: to be done
#: on its own (the session's path), which says what the batch could not.
_Answer = Registered | Exception | None


def check_file_hash(value: str) -> str:
    """A SHA-256 in hex (64 characters, lower-cased), else `InvalidInput`."""
    lowered = value.lower()
    if len(lowered) != 64 or not set(lowered) <= _HEX:
        raise InvalidInput("file_hash must be a SHA-256 in hex (64 characters)", field="file_hash")
    return lowered


def _name(value: str) -> str:
    # NFC: a name typed with a combining accent ("e" + U+0301) and one typed precomposed
    # ("é") look the same and are the same name, so that siblings cannot be told apart only
    # by how they were encoded.
    name = unicodedata.normalize("NFC", checked_text(value, field="name")).strip()
    if not name or len(name) > 255:
        raise InvalidInput("a folder name takes 1 to 255 characters", field="name")
    if "/" in name:
        raise InvalidInput("a folder name may not hold '/'", field="name")
    # No invisible format character either: "\u200bTop" would sit beside "Top".
    return checked_name(name, field="name")


def _text(value: str | None, field: str, limit: int) -> str | None:
    if value is None:
        return None
    checked_text(value, field=field)
    if len(value) > limit:
        raise InvalidInput(f"{field} takes at most {limit} characters", field=field)
    return value


class DocumentService:
    def __init__(
        self,
        database: Database,
        usage: UsageService | None = None,
        events: EventBus | None = None,
        *,
        audit: AuditService | None = None,
        clock: Callable[[], datetime] = utcnow,
        group_commit: bool = True,
        group_commit_max_events: int = 64,
    ) -> None:
        """`audit` is the audit log that `events` writes its entries with (made with the bus
        when no bus is given): when it is the bus's only in-transaction handler, a
        registration on PostgreSQL is one statement (`workspace.postgres`), and with
        `group_commit`, registrations that arrive together share a transaction, up to
        `group_commit_max_events` at a time."""
        if group_commit_max_events < 1:
            raise ValueError("group_commit_max_events must be at least 1")
        self.database = database
        if events is None:
            audit = audit if audit is not None else AuditService(database)
            events = audited_bus(audit)
        self.events = events
        self.audit = audit
        #: The dispatchers' wake-up after one-statement registrations, shared among them.
        self.wakeup = Wakeup(database)
        self.usage = usage if usage is not None else UsageService(database, events=self.events)
        self.clock = clock
        self.group_commit = group_commit
        self.group_commit_max_events = group_commit_max_events
        self._group = GroupCommits(self._flush, max_events=group_commit_max_events)

    async def settle(self) -> None:
        """Wait for the dispatchers' wake-up being sent, if any (before the database closes)."""
        await self.wakeup.settle()

    # --- folders -------------------------------------------------------------------------------
    async def create_folder(
        self,
        org_id: uuid.UUID,
        name: str,
        *,
        parent_id: uuid.UUID | None = None,
        description: str | None = None,
        created_by: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Folder:
        """A new folder at the root or under `parent_id`; `FolderNameTaken` if a sibling has
        the name."""
        name = _name(name)
        _text(description, "description", 10_000)
        async with self.database.scope(session) as s:
            parent_path = ""
            if parent_id is not None:
                parent = await self._folder(s, org_id, parent_id)
                parent_path = parent.path or ""
                if parent_path.count("/") >= MAX_DEPTH:
                    raise InvalidInput(f"folders nest at most {MAX_DEPTH} deep", field="parent_id")
            now = self.clock()
            folder_id = await s.scalar(
                insert(s, Folder)
                .values(
                    id=new_id(),
                    organization_id=org_id,
                    name=name,
                    parent_id=parent_id,
                    path=f"{parent_path}/{name}",
                    description=description,
                    created_by=created_by,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
                .returning(Folder.id)
            )
            if folder_id is None:
                raise FolderNameTaken(
                    f"a folder named {name!r} is already there", field="name", name=name
                )
            return await self._folder(s, org_id, folder_id)

    async def get_folder(
        self, org_id: uuid.UUID, folder_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> Folder:
        async with self.database.scope(session, readonly=True) as s:
            return await self._folder(s, org_id, folder_id)

    async def list_folders(
        self,
        org_id: uuid.UUID,
        *,
        parent_id: uuid.UUID | None = None,
        root: bool = False,
        after: uuid.UUID | None = None,
        limit: int = DEFAULT_LIMIT,
        session: AsyncSession | None = None,
    ) -> Sequence[Folder]:
        """Folders by id; under `parent_id` only, or at the root only with `root`."""
        query = sa.select(Folder).where(Folder.organization_id == org_id)
        if parent_id is not None:
            query = query.where(Folder.parent_id == parent_id)
        elif root:
            query = query.where(Folder.parent_id.is_(None))
        if after is not None:
            query = query.where(Folder.id > after)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query.order_by(Folder.id).limit(limit))).all()

    async def update_folder(
        self,
        org_id: uuid.UUID,
        folder_id: uuid.UUID,
        *,
        name: str | None = None,
        move: bool = False,
        parent_id: uuid.UUID | None = None,
        description: str | None = None,
        session: AsyncSession | None = None,
    ) -> Folder:
        """Rename and/or (with `move`) move a folder under `parent_id` (None: the root).

        A move into the folder itself or one of its own folders is `FolderCycle`."""
        new_name = _name(name) if name is not None else None
        _text(description, "description", 10_000)
        async with self.database.scope(session) as s:
            await usage_account(s, org_id)  # serializes moves: no two make a cycle together
            folder = await self._folder(s, org_id, folder_id, lock=True)
            parent_path = _parent_path(folder)
            if move:
                parent_path = await self._checked_parent(s, org_id, folder_id, parent_id)
                folder.parent_id = parent_id
            if new_name is not None:
                folder.name = new_name
            if description is not None:
                folder.description = description
            old_path = folder.path or ""
            # Read before the flush: a refused flush rolls the savepoint back and expires the
            # folder, and reading it then would be a query in a transaction being unwound.
            taken = folder.name
            folder.path = f"{parent_path}/{taken}"
            folder.updated_at = self.clock()
            try:
                async with s.begin_nested():
                    await s.flush()
            except IntegrityError:
                raise FolderNameTaken(
                    f"a folder named {taken!r} is already there", field="name", name=taken
                ) from None
            if folder.path != old_path:
                await self._repath(s, org_id, folder)
            return folder

    async def delete_folder(
        self,
        org_id: uuid.UUID,
        folder_id: uuid.UUID,
        *,
        recursive: bool = False,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> DeletedFolder:
        """Delete an empty folder, or with `recursive` the folder, its folders and their
        documents, freeing exactly their sizes (one `document.deleted` each)."""
        async with self.database.scope(session) as s:
            await self._folder(s, org_id, folder_id)
            subtree = await self._locked_subtree(s, org_id, folder_id)
            if not recursive:
                holds = await s.scalar(
                    sa.select(
                        sa.exists().where(
                            Folder.organization_id == org_id, Folder.parent_id == folder_id
                        )
                        | sa.exists().where(
                            Document.organization_id == org_id, Document.folder_id == folder_id
                        )
                    )
                )
                if holds:
                    raise FolderNotEmpty(
                        "the folder is not empty: delete it with recursive=true",
                        folder_id=str(folder_id),
                    )
            deleted = await self._delete_documents(
                s, org_id, Document.folder_id.in_(subtree), actor=actor
            )
            await s.execute(
                sa.delete(Folder).where(Folder.organization_id == org_id, Folder.id.in_(subtree)),
                execution_options={"synchronize_session": False},
            )
            return DeletedFolder(
                folders=len(subtree), documents=len(deleted), freed_bytes=sum(deleted)
            )

    # --- documents -----------------------------------------------------------------------------
    async def register(
        self,
        org_id: uuid.UUID,
        *,
        filename: str,
        size_bytes: int,
        file_hash: str,
        folder_id: uuid.UUID | None = None,
        content_type: str | None = None,
        storage_uri: str | None = None,
        original_filename: str | None = None,
        metadata: dict[str, Any] | None = None,
        uploaded_by: uuid.UUID | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> Registered:
        """Register a stored file, adding its size to the storage gauge (metering's
        `LimitExceeded` past a hard limit, changing nothing); identical content already in
        the folder is answered with `created` false, emitting nothing."""
        file_hash = check_file_hash(file_hash)
        if (
            isinstance(size_bytes, bool)
            or not isinstance(size_bytes, int)
            or not 0 <= size_bytes <= INT64_MAX
        ):
            raise InvalidInput("size_bytes must be 0 to 2**63-1", field="size_bytes")
        filename = checked_text(filename, field="filename").strip()
        if not filename or len(filename) > 512:
            raise InvalidInput("a file name takes 1 to 512 characters", field="filename")
        _text(original_filename, "original_filename", 512)
        _text(content_type, "content_type", 255)
        _text(storage_uri, "storage_uri", 4096)
        if metadata is not None:
            checked_json(metadata, field="metadata", max_bytes=64 * 1024)
        values: dict[str, Any] = {
            "organization_id": org_id,
            "id": new_id(),
            "folder_id": folder_id,
            "filename": filename,
            "original_filename": original_filename,
            "content_type": content_type,
            "size_bytes": size_bytes,
            "file_hash": file_hash,
            "storage_uri": storage_uri,
            "status": DocumentStatus.UPLOADED,
            "uploaded_by": uploaded_by,
            "metadata": metadata or {},
        }
        if session is None and self._in_one_statement():
            registered = await (
                self._group.submit(_Pending(values, actor))
                if self.group_commit
                else self._register_in_one_statement(values, actor)
            )
            if registered is not None:
                return registered
        async with self.database.scope(session) as s:
            # The organisation and the folder first, as every registration locks them (see
            # `workspace.postgres`): their documents' foreign keys would lock them last.
            await s.execute(
                sa.select(Organization.id)
                .where(Organization.id == org_id)
                .with_for_update(read=True, key_share=True)
            )
            if folder_id is not None:
                await self._folder(s, org_id, folder_id, share=True)
            values["created_at"] = values["updated_at"] = self.clock()
            document, counted = await _insert_counted(s, values)
            if document is None:  # the same content is there already (or just won a race)
                found = await self._same_content(s, org_id, folder_id, file_hash)
                assert found is not None
                return Registered(found, created=False)
            if not counted:
                try:
                    await self.usage.update_storage_used(org_id, size_bytes, session=s)
                except DomainError:  # over the limit: leave a caller's session as it was
                    await s.execute(
                        sa.delete(Document).where(
                            Document.organization_id == org_id, Document.id == document.id
                        ),
                        execution_options={"synchronize_session": False},
                    )
                    s.expunge(document)
                    raise
            await self.events.emit(s, org_id, _created(values), actor=actor, target_id=document.id)
            return Registered(document, created=True)

    def _in_one_statement(self) -> bool:
        """Whether a registration may be one statement: on PostgreSQL, with the bus's only
        in-transaction work the audit entry that the statement writes itself."""
        return (
            self.database.backend is DatabaseBackend.POSTGRESQL
            and self.audit is not None
            and self.events.handled_only_by(self.audit.handle)
        )

    async def _register_in_one_statement(
        self, values: dict[str, Any], actor: Actor
    ) -> Registered | None:
        """`register` in a transaction of its own, as one statement (`run_register`); None
        when it is to be done in a session (nothing was written)."""
        assert self.audit is not None
        values["created_at"] = values["updated_at"] = self.clock()
        org_id = values["organization_id"]
        event = self._created_event(values, actor)
        chain = self.audit.append_parameters(event, notify=False)
        async with self.database.driver() as driver:
            outcome = await run_register(driver, values, chain)
        if outcome is Outcome.REGISTERED:
            self.wakeup.owed()
            self.events.run_after_commit(event)
            return Registered(_loaded(values), created=True)
        if outcome is Outcome.REFUSED:  # by the limit, said at once; else for want of a row
            refusal = await self.usage.storage_refusal(org_id, values["size_bytes"])
            if refusal is not None:
                raise refusal
        # The rest (the same content, which a race may have put there after the statement's
        # snapshot; no folder; no row to count on yet) is the session's to answer.
        return None

    def _created_event(self, values: dict[str, Any], actor: Actor) -> Event:
        """The `document.created` event of a registration's `values`, not yet emitted."""
        return self.events.event(
            values["organization_id"], _created(values), actor=actor, target_id=values["id"]
        )

    # --- group commit --------------------------------------------------------------------------
    async def _flush(self, items: list[_Pending], locked: Callable[[], None]) -> list[_Answer]:
        """Group commit's flush: one registration as one statement, more as a batch. If a
        batch fails other than by losing the database, its registrations are done one by one,
        so that whatever failed it fails its own caller alone: a statement timeout too (rows
        of one organisation held too long need not fail the others')."""
        if len(items) > 1:
            try:
                return await self._register_batch(items, locked)
            except DatabaseUnavailable as error:
                if not is_timeout(error):
                    raise
                log.warning("a batch of %d registrations timed out: one by one now", len(items))
            except Exception:
                log.exception("a batch of %d registrations failed: one by one now", len(items))
        locked()  # the next batch need not wait for this one's items, each on its own now
        return await one_by_one(
            items,
            lambda item: self._register_in_one_statement(item.values, item.actor),
            key=lambda item: item.values["organization_id"],
        )

    async def _register_batch(
        self, items: list[_Pending], locked: Callable[[], None]
    ) -> list[_Answer]:
        """Registrations in one transaction (`workspace.postgres`): the documents inserted and
        their organisations' gauges and chain heads locked and read (`claim`), each
        registration decided in arrival order against them (`_decide`), and what that leaves
        written in one statement (`write`); rolled back if it keeps nothing."""
        assert self.audit is not None
        now = self.clock()
        for item in items:
            item.values["created_at"] = item.values["updated_at"] = now
        events: list[Event] = []
        async with self.database.driver() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                gauges, added = await claim(connection, [item.values for item in items])
                locked()
                decided, deltas, gone = _decide(items, gauges, added)
                accepted = [i for i, answer in zip(items, decided, strict=True) if answer is True]
                if accepted:
                    events = [self._created_event(item.values, item.actor) for item in accepted]
                    heads = {org_id: gauges[org_id].head for org_id in deltas}
                    chain = self.audit.chained_parameters(heads, events)
                    await write(connection, gone, deltas, chain, now)
            except BaseException:
                await transaction.rollback()
                raise
            await (transaction.commit() if accepted else transaction.rollback())
        if events:
            self.wakeup.owed()
            for event in events:
                self.events.run_after_commit(event)
        answers: list[_Answer] = []
        for item, answer in zip(items, decided, strict=True):
            if answer is True:
                answers.append(Registered(_loaded(item.values), created=True))
            elif isinstance(answer, _Refused):
                answers.append(self.usage.storage_refused(answer.limit, answer.used, answer.size))
            else:
                answers.append(None)
        return answers

    async def get_document(
        self, org_id: uuid.UUID, document_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> Document:
        async with self.database.scope(session, readonly=True) as s:
            return await self._document(s, org_id, document_id)

    async def find_by_hash(
        self,
        org_id: uuid.UUID,
        file_hash: str,
        *,
        folder_id: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Document | None:
        """The document with this content in the folder (None: the root), if registered."""
        file_hash = check_file_hash(file_hash)
        async with self.database.scope(session, readonly=True) as s:
            return await self._same_content(s, org_id, folder_id, file_hash)

    async def list_documents(
        self,
        org_id: uuid.UUID,
        *,
        folder_id: uuid.UUID | None = None,
        root: bool = False,
        after: uuid.UUID | None = None,
        limit: int = DEFAULT_LIMIT,
        session: AsyncSession | None = None,
    ) -> Sequence[Document]:
        query = sa.select(Document).where(Document.organization_id == org_id)
        if folder_id is not None:
            query = query.where(Document.folder_id == folder_id)
        elif root:
            query = query.where(Document.folder_id.is_(None))
        if after is not None:
            query = query.where(Document.id > after)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query.order_by(Document.id).limit(limit))).all()

    async def mark_parsed(
        self,
        org_id: uuid.UUID,
        document_id: uuid.UUID,
        *,
        parsed_path: str,
        parsed_at: datetime | None = None,
        session: AsyncSession | None = None,
    ) -> Document:
        """Record where the parsed text of a document is, and when it was parsed."""
        _text(parsed_path, "parsed_path", 4096)
        if parsed_at is not None:
            checked_instant(parsed_at, field="parsed_at")
        async with self.database.scope(session) as s:
            document = await self._document(s, org_id, document_id)
            document.parsed_path = parsed_path
            document.parsed_at = parsed_at or self.clock()
            document.status = DocumentStatus.PROCESSED
            document.updated_at = self.clock()
            await s.flush()
            return document

    async def delete_document(
        self,
        org_id: uuid.UUID,
        document_id: uuid.UUID,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> int:
        """Delete a document, freeing its size; returns the bytes freed."""
        async with self.database.scope(session) as s:
            freed = await self._delete_documents(s, org_id, Document.id == document_id, actor=actor)
            if not freed:
                raise DocumentNotFound(f"no document {document_id}", document_id=str(document_id))
            return freed[0]

    # --- the gauge -----------------------------------------------------------------------------
    async def storage_used(
        self, org_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> tuple[int, int]:
        """(the gauge, the sum of the organisation's documents' sizes)."""
        async with self.database.scope(session, readonly=True) as s:
            recorded = await s.scalar(
                sa.select(UsageLimits.storage_used_bytes).where(
                    UsageLimits.organization_id == org_id
                )
            )
            return int(recorded or 0), await _documents_size(s, org_id)

    async def verify_storage(
        self,
        *,
        fix: bool = False,
        org_id: uuid.UUID | None = None,
        actor: Actor = SYSTEM,
    ) -> list[StorageDrift]:
        """Every organisation (or one) whose gauge differs from its documents' sizes; with
        `fix`, each is set right in its own transaction, under its row lock, emitting
        `storage.repaired` (audited)."""
        async with self.database.session(readonly=True) as s:
            query = sa.select(Organization.id).order_by(Organization.id)
            if org_id is not None:
                query = query.where(Organization.id == org_id)
            orgs = (await s.scalars(query)).all()
            drifts = []
            for org in orgs:
                recorded, actual = await self.storage_used(org, session=s)
                if recorded != actual:
                    drifts.append(StorageDrift(org, recorded, actual))
        if not fix:
            return drifts
        repaired = []
        for drift in drifts:
            async with self.database.transaction() as s:
                account = await usage_account(s, drift.organization_id)
                recorded = int(account.storage_used_bytes)
                actual = await _documents_size(s, drift.organization_id)
                if recorded != actual:
                    account.storage_used_bytes = min(actual, INT64_MAX)
                    account.updated_at = self.clock()
                    await s.flush()
                    await self.events.emit(
                        s,
                        drift.organization_id,
                        StorageRepaired.model_validate({"from": recorded, "to": actual}),
                        actor=actor,
                        target_id=drift.organization_id,
                    )
                repaired.append(
                    StorageDrift(drift.organization_id, recorded, actual, repaired=True)
                )
        return repaired

    # --- internals -----------------------------------------------------------------------------
    async def _folder(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        folder_id: uuid.UUID,
        *,
        lock: bool = False,
        share: bool = False,
    ) -> Folder:
        """The organisation's folder (`FolderNotFound`), locked with `lock` for a change of
        it (`FOR NO KEY UPDATE`: a registration into it goes on), or with `share` kept from
        being deleted until the transaction ends (`FOR KEY SHARE`, which is what its
        documents' foreign key takes: taken first, a registration cannot be caught between a
        recursive delete's lock on the folder and its lock on the gauge)."""
        query = sa.select(Folder).where(Folder.organization_id == org_id, Folder.id == folder_id)
        if lock:
            query = query.with_for_update(key_share=True)
        elif share:
            query = query.with_for_update(read=True, key_share=True)
        folder = (await s.scalars(query)).one_or_none()
        if folder is None:
            raise FolderNotFound(f"no folder {folder_id}", folder_id=str(folder_id))
        return folder

    async def _document(
        self, s: AsyncSession, org_id: uuid.UUID, document_id: uuid.UUID
    ) -> Document:
        document = (
            await s.scalars(
                sa.select(Document).where(
                    Document.organization_id == org_id, Document.id == document_id
                )
            )
        ).one_or_none()
        if document is None:
            raise DocumentNotFound(f"no document {document_id}", document_id=str(document_id))
        return document

    async def _same_content(
        self, s: AsyncSession, org_id: uuid.UUID, folder_id: uuid.UUID | None, file_hash: str
    ) -> Document | None:
        where = (
            Document.folder_id.is_(None) if folder_id is None else Document.folder_id == folder_id
        )
        query = sa.select(Document).where(
            Document.organization_id == org_id, where, Document.file_hash == file_hash
        )
        return (await s.scalars(query)).one_or_none()

    async def _checked_parent(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        folder_id: uuid.UUID,
        parent_id: uuid.UUID | None,
    ) -> str:
        """The path of the folder's new parent, refusing one inside the folder itself."""
        if parent_id is None:
            return ""
        if parent_id == folder_id:
            raise FolderCycle("a folder cannot be moved into itself", field="parent_id")
        parent = await self._folder(s, org_id, parent_id)
        ancestor: uuid.UUID | None = parent.parent_id
        for _ in range(MAX_DEPTH + 1):
            if ancestor is None:
                break
            if ancestor == folder_id:
                raise FolderCycle(
                    "a folder cannot be moved into one of its own folders", field="parent_id"
                )
            ancestor = await s.scalar(
                sa.select(Folder.parent_id).where(
                    Folder.organization_id == org_id, Folder.id == ancestor
                )
            )
        depth = (parent.path or "").count("/") + await self._height(s, org_id, folder_id)
        if depth > MAX_DEPTH:
            raise InvalidInput(f"folders nest at most {MAX_DEPTH} deep", field="parent_id")
        return parent.path or ""

    async def _height(self, s: AsyncSession, org_id: uuid.UUID, folder_id: uuid.UUID) -> int:
        """How many levels the folder's subtree has (1: no sub-folders)."""
        tree = _subtree_cte(org_id, folder_id, with_depth=True)
        return int(await s.scalar(sa.select(sa.func.max(tree.c.depth))) or 1)

    async def _repath(self, s: AsyncSession, org_id: uuid.UUID, folder: Folder) -> None:
        """Set the paths below a renamed or moved folder, level by level."""
        parents = {folder.id: folder.path or ""}
        while parents:
            children = (
                await s.execute(
                    sa.select(Folder.id, Folder.parent_id, Folder.name).where(
                        Folder.organization_id == org_id, Folder.parent_id.in_(list(parents))
                    )
                )
            ).all()
            level: dict[uuid.UUID, str] = {}
            for child_id, parent_id, name in children:
                assert parent_id is not None
                level[child_id] = f"{parents[parent_id]}/{name}"
                await s.execute(
                    sa.update(Folder)
                    .where(Folder.organization_id == org_id, Folder.id == child_id)
                    .values(path=level[child_id]),
                    execution_options={"synchronize_session": False},
                )
            parents = level

    async def _locked_subtree(
        self, s: AsyncSession, org_id: uuid.UUID, folder_id: uuid.UUID
    ) -> list[uuid.UUID]:
        """The folder and every folder below it, locked (until the set stops growing: a
        sub-folder made while the locks were being taken is found and locked too)."""
        locked: set[uuid.UUID] = set()
        while True:
            tree = _subtree_cte(org_id, folder_id)
            found = set((await s.scalars(sa.select(tree.c.id))).all())
            if found <= locked:
                return sorted(found)
            await s.execute(
                sa.select(Folder.id)
                .where(Folder.organization_id == org_id, Folder.id.in_(sorted(found - locked)))
                .order_by(Folder.id)
                .with_for_update()
            )
            locked |= found

    async def _delete_documents(
        self,
        s: AsyncSession,
        org_id: uuid.UUID,
        which: sa.ColumnElement[bool],
        *,
        actor: Actor,
    ) -> list[int]:
        """Delete the organisation's documents matching `which`, freeing their sizes and
        emitting `document.deleted` for each; returns the sizes freed."""
        rows = (
            await s.execute(
                sa.delete(Document)
                .where(Document.organization_id == org_id, which)
                .returning(Document.id, Document.folder_id, Document.filename, Document.size_bytes),
                execution_options={"synchronize_session": False},
            )
        ).all()
        sizes = [int(size) for _, _, _, size in rows]
        if sum(sizes):
            await self.usage.update_storage_used(org_id, -sum(sizes), session=s)
        for document_id, folder_id, filename, size in rows:
            await self.events.emit(
                s,
                org_id,
                DocumentDeleted(
                    document_id=document_id,
                    folder_id=folder_id,
                    filename=filename,
                    size_bytes=int(size),
                ),
                actor=actor,
                target_id=document_id,
            )
        return sizes


async def _insert_counted(s: AsyncSession, values: dict[str, Any]) -> tuple[Document | None, bool]:
    """The document inserted with `values` (None if the same content is there already), and
    whether its size is on the gauge already (false: the caller adds it).

    On PostgreSQL one statement does both (`_registration`); elsewhere the insert alone."""
    if s.get_bind().dialect.name != "postgresql":
        document = await s.scalar(
            insert(s, Document).values(values).on_conflict_do_nothing().returning(Document),
            execution_options={"populate_existing": True},
        )
        return document, False
    bound = {_BIND + name: value for name, value in values.items()}
    found = (await s.execute(_registration(), bound)).one_or_none()
    if found is None:
        return None, False
    return found[0], found[1] is not None


@functools.cache
def _registration() -> sa.Select[Any]:
    """PostgreSQL's registration in one statement and one round trip: the document's
    `INSERT ... ON CONFLICT DO NOTHING`, then the gauge's conditional UPDATE by its size, only
    if the insert made a row (`storage_increment`, the limit resolved inside it). Returns the
    document and the new total (NULL: not counted: over the limit, a BIGINT passed, or no
    `usage_limits` row yet; `UsageService.update_storage_used` then says which), or no row for
    content already there. The gauge's row is the last thing locked.

    Built once, its values bound per call (the columns of the INSERT, by name after `_BIND`):
    building it costs more than running it."""
    table = cast(sa.Table, Document.__table__)
    columns = [column for column in table.c if column.name in _INSERTED]
    added = (
        postgresql.insert(table)
        .values(
            {column: sa.bindparam(_BIND + column.name, type_=column.type) for column in columns}
        )
        .on_conflict_do_nothing()
        .returning(*table.c)
        .cte("added")
    )
    counted = (
        storage_increment(
            sa.bindparam(_BIND + "organization_id"),
            sa.bindparam(_BIND + "size_bytes"),
            sa.bindparam(_BIND + "updated_at"),
            RESOLVED_CAP,
        )
        .where(sa.exists(sa.select(added.c.id)))
        .cte("counted")
    )
    return sa.select(aliased(Document, added), counted.c.storage_used_bytes).outerjoin(
        counted, sa.true()
    )


def _created(values: dict[str, Any]) -> DocumentCreated:
    """What a registration's `document.created` says, from its `values`."""
    return DocumentCreated(
        document_id=values["id"],
        folder_id=values["folder_id"],
        filename=values["filename"],
        size_bytes=values["size_bytes"],
        file_hash=values["file_hash"],
    )


def _decide(
    items: Sequence[_Pending], gauges: dict[uuid.UUID, Gauge], added: set[uuid.UUID]
) -> tuple[list[bool | _Refused | None], dict[uuid.UUID, int], list[tuple[uuid.UUID, uuid.UUID]]]:
    """A batch's registrations decided in arrival order, as one `register` after another
    would decide them, against the `gauges` read under their locks (each left as the
    accepted ones leave it), given the documents that were `added`: True (accepted),
    `_Refused` by the hard limit, or None: for its own registration to answer (content there
    already, no gauge row or chain head yet, past a BIGINT). Also, the bytes each
    organisation takes, and the documents to remove again (organisation, id)."""
    decided: list[bool | _Refused | None] = []
    deltas: dict[uuid.UUID, int] = {}
    gone: list[tuple[uuid.UUID, uuid.UUID]] = []
    for item in items:
        values = item.values
        org_id, document_id, size = values["organization_id"], values["id"], values["size_bytes"]
        gauge = gauges.get(org_id)
        if gauge is not None and document_id not in added:
            decided.append(None)
            continue
        # (With no gauge row or head, `claim` could not say whether it went in: removed all
        # the same.)
        if gauge is None or gauge.used + size > INT64_MAX:
            decided.append(None)
        elif size and gauge.cap is not None and gauge.used + size > gauge.cap:
            decided.append(_Refused(gauge.cap, gauge.used, size))
        else:
            gauge.used += size
            deltas[org_id] = deltas.get(org_id, 0) + size
            decided.append(True)
            continue
        gone.append((org_id, document_id))
    return decided, deltas, gone


def _loaded(values: dict[str, Any]) -> Document:
    """The document that a registration inserted with `values`, as if read back: detached,
    every attribute loaded (the columns it did not set are NULL). Filled as a query's rows
    fill theirs, the values set as loaded rather than as changes: a fraction of the cost of
    the constructor, on the path where that cost shows."""
    mapper = Document.__mapper__
    if not mapper.configured:  # (no query has configured the models yet)
        sa.orm.configure_mappers()
    document: Document = mapper.class_manager.new_instance()
    document.__dict__.update(
        {name: value for name, value in values.items() if name != "metadata"},
        metadata_=values["metadata"],
        parsed_path=None,
        parsed_at=None,
        deleted_at=None,
    )
    make_transient_to_detached(document)
    return document


def _parent_path(folder: Folder) -> str:
    path = folder.path or ""
    return path[: len(path) - len(folder.name) - 1] if path.endswith(folder.name) else ""


def _subtree_cte(org_id: uuid.UUID, folder_id: uuid.UUID, *, with_depth: bool = False) -> Any:
    columns: list[Any] = [Folder.id]
    if with_depth:
        columns.append(sa.literal(1, sa.Integer).label("depth"))
    tree = (
        sa.select(*columns)
        .where(Folder.organization_id == org_id, Folder.id == folder_id)
        .cte("tree", recursive=True)
    )
    below: list[Any] = [Folder.id]
    if with_depth:
        below.append((tree.c.depth + 1).label("depth"))
    return tree.union_all(
        sa.select(*below)
        .join(tree, Folder.parent_id == tree.c.id)
        .where(Folder.organization_id == org_id)
    )


async def _documents_size(s: AsyncSession, org_id: uuid.UUID) -> int:
    high, low = (
        await s.execute(
            sa.select(*exact_sum(Document.size_bytes)).where(Document.organization_id == org_id)
        )
    ).one()
    return joined_sum(high, low)

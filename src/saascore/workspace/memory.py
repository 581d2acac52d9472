"""Memory: namespaced key-value entries that may expire, and conversation summaries.

An entry is `(namespace, key) -> value` (a JSON object) per organisation. `put` is one
`INSERT ... ON CONFLICT DO UPDATE`, so racing puts of one key leave one row (the last writer's
value). An expired entry is never returned: every read filters on `expires_at`, whether or not
`sweep` has deleted it yet. Listing by prefix escapes `%`, `_` and the escape character, and
compares the prefix exactly (SQLite's LIKE ignores case).

A conversation summary is an agent's long-term memory of one conversation (`session_id`) of
one user (or of none): `upsert` keeps one row per organisation, user and conversation.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.config import DatabaseBackend
from saascore.kit.db import Database
from saascore.kit.ids import new_id
from saascore.kit.pagination import InvalidCursor
from saascore.kit.sql import insert
from saascore.kit.time import utcnow
from saascore.kit.validation import control_character
from saascore.models import ConversationSummary, MemoryEntry
from saascore.workspace.errors import (
    ConversationNotFound,
    InvalidConversation,
    InvalidMemoryEntry,
    MemoryEntryNotFound,
)

__all__ = ["MAX_VALUE_BYTES", "MAX_VALUE_DEPTH", "MemoryService", "check_value"]

MAX_NAME: Final = 255
#: A value's size as compact JSON, and how deep its objects and arrays may nest.
MAX_VALUE_BYTES: Final = 64 * 1024
MAX_VALUE_DEPTH: Final = 32
#: The longest time to live: ten years (longer is "forever": leave it out).
MAX_TTL_SECONDS: Final = 10 * 365 * 86_400
MAX_SUMMARY: Final = 100_000
MAX_TOPICS: Final = 100


def _name(value: object, field: str, error: type[InvalidMemoryEntry | InvalidConversation]) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NAME
        or control_character(value) is not None
    ):
        raise error(
            f"{field} is 1 to {MAX_NAME} characters without control characters", field=field
        )
    return value


def _new_name(
    value: object, field: str, error: type[InvalidMemoryEntry | InvalidConversation]
) -> str:
    """A name to store: `_name`, and not only spaces (as folder and RAG store names are not).
    Reads and deletes take a blank name still, so that a row stored before this rule stays
    within reach."""
    name = _name(value, field, error)
    if not name.strip():
        raise error(f"{field} may not be blank (only spaces)", field=field)
    return name


def _depth(value: Any, limit: int) -> int:
    """How deep `value` nests (iteratively: a hostile value cannot exhaust the stack)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def check_value(value: object) -> dict[str, Any]:
    """A memory value: a JSON object of at most `MAX_VALUE_BYTES` (compact, UTF-8) nesting at
    most `MAX_VALUE_DEPTH` deep, without NaN or infinities."""
    if not isinstance(value, dict):
        raise InvalidMemoryEntry("value is a JSON object", field="value")
    if _depth(value, MAX_VALUE_DEPTH) > MAX_VALUE_DEPTH:
        raise InvalidMemoryEntry(f"value nests at most {MAX_VALUE_DEPTH} deep", field="value")
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, TypeError):
        raise InvalidMemoryEntry("value is JSON without NaN or infinities", field="value") from None
    if "\x00" in text or len(text.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        raise InvalidMemoryEntry(
            f"value is at most {MAX_VALUE_BYTES} bytes of JSON without NUL", field="value"
        )
    return value


def _expiry(
    now: datetime, ttl_seconds: float | None, expires_at: datetime | None
) -> datetime | None:
    if ttl_seconds is not None and expires_at is not None:
        raise InvalidMemoryEntry("give ttl_seconds or expires_at, not both", field="ttl_seconds")
    if ttl_seconds is not None:
        if (
            isinstance(ttl_seconds, bool)
            or not math.isfinite(ttl_seconds)
            or not 0 < ttl_seconds <= MAX_TTL_SECONDS
        ):
            raise InvalidMemoryEntry(
                f"ttl_seconds is more than 0 and at most {MAX_TTL_SECONDS}", field="ttl_seconds"
            )
        return now + timedelta(seconds=ttl_seconds)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidMemoryEntry("expires_at needs a time zone", field="expires_at")
        if expires_at <= now:
            raise InvalidMemoryEntry("expires_at is in the past", field="expires_at")
        if expires_at > now + timedelta(seconds=MAX_TTL_SECONDS):
            raise InvalidMemoryEntry("expires_at is too far ahead", field="expires_at")
    return expires_at


class MemoryService:
    """`core.memory`: key-value entries and conversation summaries of an organisation."""

    def __init__(self, database: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.clock = clock

    def _live(self, now: datetime) -> sa.ColumnElement[bool]:
        return sa.or_(MemoryEntry.expires_at.is_(None), MemoryEntry.expires_at > now)

    # --- entries ---------------------------------------------------------------------------
    async def put(
        self,
        org_id: uuid.UUID,
        namespace: str,
        key: str,
        value: dict[str, Any],
        *,
        ttl_seconds: float | None = None,
        expires_at: datetime | None = None,
        user_id: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> MemoryEntry:
        """Set the entry (create or replace its value and expiry): one atomic upsert."""
        namespace = _new_name(namespace, "namespace", InvalidMemoryEntry)
        key = _new_name(key, "key", InvalidMemoryEntry)
        value = check_value(value)
        now = self.clock()
        expiry = _expiry(now, ttl_seconds, expires_at)
        async with self.database.scope(session) as s:
            statement = insert(s, MemoryEntry).values(
                organization_id=org_id,
                id=new_id(),
                namespace=namespace,
                key=key,
                value=value,
                user_id=user_id,
                expires_at=expiry,
                created_at=now,
                updated_at=now,
            )
            # A key that expired is put afresh: it was never there as far as a reader knows.
            statement = statement.on_conflict_do_update(
                index_elements=[
                    MemoryEntry.organization_id,
                    MemoryEntry.namespace,
                    MemoryEntry.key,
                ],
                set_={
                    "value": statement.excluded.value,
                    "user_id": statement.excluded.user_id,
                    "expires_at": statement.excluded.expires_at,
                    "updated_at": statement.excluded.updated_at,
                    "created_at": sa.case(
                        (
                            sa.and_(
                                MemoryEntry.expires_at.is_not(None),
                                MemoryEntry.expires_at <= now,
                            ),
                            statement.excluded.created_at,
                        ),
                        else_=MemoryEntry.created_at,
                    ),
                },
            )
            await s.execute(statement)
            entry = await s.scalar(
                sa.select(MemoryEntry)
                .where(
                    MemoryEntry.organization_id == org_id,
                    MemoryEntry.namespace == namespace,
                    MemoryEntry.key == key,
                )
                .execution_options(populate_existing=True)
            )
            assert entry is not None  # written just above, in this transaction
            return entry

    async def get(
        self,
        org_id: uuid.UUID,
        namespace: str,
        key: str,
        *,
        session: AsyncSession | None = None,
    ) -> MemoryEntry:
        """The live entry; `MemoryEntryNotFound` when there is none or it has expired."""
        namespace = _name(namespace, "namespace", InvalidMemoryEntry)
        key = _name(key, "key", InvalidMemoryEntry)
        async with self.database.scope(session, readonly=True) as s:
            entry = await s.scalar(
                sa.select(MemoryEntry).where(
                    MemoryEntry.organization_id == org_id,
                    MemoryEntry.namespace == namespace,
                    MemoryEntry.key == key,
                    self._live(self.clock()),
                )
            )
        if entry is None:
            raise MemoryEntryNotFound(
                f"no memory entry {key!r} in namespace {namespace!r}",
                namespace=namespace,
                key=key,
            )
        return entry

    async def delete(
        self,
        org_id: uuid.UUID,
        namespace: str,
        key: str,
        *,
        session: AsyncSession | None = None,
    ) -> None:
        """Delete the entry; `MemoryEntryNotFound` when there is no live one (an expired one is
        deleted all the same)."""
        namespace = _name(namespace, "namespace", InvalidMemoryEntry)
        key = _name(key, "key", InvalidMemoryEntry)
        now = self.clock()
        async with self.database.scope(session) as s:
            deleted = (
                await s.execute(
                    sa.delete(MemoryEntry)
                    .where(
                        MemoryEntry.organization_id == org_id,
                        MemoryEntry.namespace == namespace,
                        MemoryEntry.key == key,
                    )
                    .returning(MemoryEntry.expires_at),
                    execution_options={"synchronize_session": False},
                )
            ).one_or_none()
        # An expired entry is deleted all the same, but no reader could have seen it.
        if deleted is None or (deleted[0] is not None and deleted[0] <= now):
            raise MemoryEntryNotFound(
                f"no memory entry {key!r} in namespace {namespace!r}",
                namespace=namespace,
                key=key,
            )

    async def list(
        self,
        org_id: uuid.UUID,
        namespace: str,
        *,
        prefix: str = "",
        after: str | None = None,
        limit: int = 50,
        session: AsyncSession | None = None,
    ) -> Sequence[MemoryEntry]:
        """Live entries of the namespace whose key starts with `prefix`, by key, after the key
        `after` (the cursor), at most `limit`."""
        namespace = _name(namespace, "namespace", InvalidMemoryEntry)
        if not isinstance(prefix, str) or len(prefix) > MAX_NAME or control_character(prefix):
            raise InvalidMemoryEntry(f"prefix is at most {MAX_NAME} characters", field="prefix")
        if after is not None and (
            not isinstance(after, str) or len(after) > MAX_NAME or control_character(after)
        ):
            # No key is like that, so no cursor this API gave out is: a forged one holding
            # a NUL would otherwise reach PostgreSQL, which refuses it (a 500).
            raise InvalidCursor("the cursor is not one this API gave out", field="cursor")
        query = (
            sa.select(MemoryEntry)
            .where(
                MemoryEntry.organization_id == org_id,
                MemoryEntry.namespace == namespace,
                self._live(self.clock()),
            )
            .order_by(MemoryEntry.key)
            .limit(limit)
        )
        if prefix:
            query = query.where(
                MemoryEntry.key.startswith(prefix, autoescape=True),
                sa.func.substr(MemoryEntry.key, 1, len(prefix)) == prefix,
            )
        if after is not None:
            query = query.where(MemoryEntry.key > after)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    async def sweep(
        self, *, org_id: uuid.UUID | None = None, session: AsyncSession | None = None
    ) -> int:
        """Delete the expired entries (of one organisation, or all); returns how many."""
        query = sa.delete(MemoryEntry).where(
            MemoryEntry.expires_at.is_not(None), MemoryEntry.expires_at <= self.clock()
        )
        if org_id is not None:
            query = query.where(MemoryEntry.organization_id == org_id)
        async with self.database.scope(session) as s:
            result = await s.execute(query, execution_options={"synchronize_session": False})
            return int(getattr(result, "rowcount", 0) or 0)

    # --- conversation summaries ------------------------------------------------------------
    async def upsert_summary(
        self,
        org_id: uuid.UUID,
        session_id: str,
        summary: str,
        *,
        user_id: uuid.UUID | None = None,
        agent: str | None = None,
        key_topics: Sequence[str] = (),
        message_count: int = 0,
        session: AsyncSession | None = None,
    ) -> ConversationSummary:
        """Create or replace the summary of the user's conversation `session_id`: one row per
        organisation, user and conversation, however many writers race."""
        session_id = _new_name(session_id, "session_id", InvalidConversation)
        if agent is not None:
            agent = _new_name(agent, "agent", InvalidConversation)[:100]
        if not isinstance(summary, str) or len(summary) > MAX_SUMMARY or "\x00" in summary:
            raise InvalidConversation(
                f"summary is at most {MAX_SUMMARY} characters", field="summary"
            )
        topics = list(key_topics)
        if len(topics) > MAX_TOPICS:
            raise InvalidConversation(f"at most {MAX_TOPICS} key topics", field="key_topics")
        for topic in topics:
            _new_name(topic, "key_topics", InvalidConversation)
        if isinstance(message_count, bool) or not 0 <= message_count <= 2**31 - 1:
            raise InvalidConversation("message_count is 0 to 2147483647", field="message_count")
        now = self.clock()
        async with self.database.scope(session) as s:
            if self.database.backend is DatabaseBackend.POSTGRESQL:
                # No unique index can hold a NULL user: writers of one conversation queue here.
                await s.execute(
                    sa.select(
                        sa.func.pg_advisory_xact_lock(
                            sa.func.hashtextextended(f"{org_id}:{user_id}:{session_id}", 0)
                        )
                    )
                )
            row = await s.scalar(
                sa.select(ConversationSummary)
                .where(*self._conversation(org_id, user_id, session_id))
                .execution_options(populate_existing=True)
            )
            if row is None:
                row = ConversationSummary(
                    organization_id=org_id,
                    id=new_id(),
                    user_id=user_id,
                    session_id=session_id,
                    created_at=now,
                )
                s.add(row)
            row.summary = summary
            row.agent = agent
            row.key_topics = topics
            row.message_count = message_count
            row.updated_at = now
            await s.flush()
            return row

    def _conversation(
        self, org_id: uuid.UUID, user_id: uuid.UUID | None, session_id: str
    ) -> tuple[sa.ColumnElement[bool], ...]:
        return (
            ConversationSummary.organization_id == org_id,
            ConversationSummary.session_id == session_id,
            ConversationSummary.user_id.is_(None)
            if user_id is None
            else ConversationSummary.user_id == user_id,
        )

    async def get_summary(
        self, org_id: uuid.UUID, summary_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> ConversationSummary:
        async with self.database.scope(session, readonly=True) as s:
            row = await s.scalar(
                sa.select(ConversationSummary).where(
                    ConversationSummary.organization_id == org_id,
                    ConversationSummary.id == summary_id,
                )
            )
        if row is None:
            raise ConversationNotFound(f"no conversation summary {summary_id}", id=str(summary_id))
        return row

    async def list_summaries(
        self,
        org_id: uuid.UUID,
        *,
        user_id: uuid.UUID | None = None,
        session_id: str | None = None,
        before: uuid.UUID | None = None,
        limit: int = 50,
        session: AsyncSession | None = None,
    ) -> Sequence[ConversationSummary]:
        """The organisation's summaries, newest first (of one user or conversation if given)."""
        query = (
            sa.select(ConversationSummary)
            .where(ConversationSummary.organization_id == org_id)
            .order_by(ConversationSummary.id.desc())
            .limit(limit)
        )
        if user_id is not None:
            query = query.where(ConversationSummary.user_id == user_id)
        if session_id is not None:
            query = query.where(ConversationSummary.session_id == session_id)
        if before is not None:
            query = query.where(ConversationSummary.id < before)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    async def delete_summary(
        self, org_id: uuid.UUID, summary_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> None:
        async with self.database.scope(session) as s:
            deleted = await s.scalar(
                sa.delete(ConversationSummary)
                .where(
                    ConversationSummary.organization_id == org_id,
                    ConversationSummary.id == summary_id,
                )
                .returning(ConversationSummary.id),
                execution_options={"synchronize_session": False},
            )
        if deleted is None:
            raise ConversationNotFound(f"no conversation summary {summary_id}", id=str(summary_id))

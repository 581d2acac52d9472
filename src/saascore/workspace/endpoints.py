"""The workspace's routers. Every route acts on the caller's organisation."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status

from saascore.api.deps import CoreDep, ReadSessionDep, SessionDep, require
from saascore.api.errors import error_responses
from saascore.identity.endpoints import AUTH_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.kit.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidCursor,
    Page,
    decode_cursor,
    paginate,
    uuid_cursor,
)
from saascore.workspace.errors import (
    ConversationNotFound,
    InvalidConversation,
    InvalidMemoryEntry,
    InvalidRagStore,
    MemoryEntryNotFound,
    RagFolderNotFound,
    RagStoreExists,
    RagStoreNotFound,
)
from saascore.workspace.schemas import (
    ConversationSummaryOut,
    ConversationSummaryPut,
    MemoryEntryOut,
    MemoryEntryPut,
    RagFolderCreate,
    RagFolderOut,
    RagStoreCreate,
    RagStoreOut,
)

__all__ = [
    "create_conversations_router",
    "create_memory_router",
    "create_rag_store_router",
]

# --- memory, conversations and RAG stores ------------------------------------------------------
MemoryReader = Annotated[Principal, Depends(require(Permission.USAGE_READ))]
MemoryWriter = Annotated[Principal, Depends(require(Permission.USAGE_WRITE))]
StoreAdmin = Annotated[Principal, Depends(require(Permission.ADMIN))]
Namespace = Annotated[
    str, Path(min_length=1, max_length=255, description="The namespace", examples=["agent"])
]
Key = Annotated[str, Path(min_length=1, max_length=255, description="The key in the namespace")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page")]
Cursor = Annotated[
    str | None, Query(max_length=400, description="`next_cursor` of the previous page")
]


def create_memory_router() -> APIRouter:
    """`/v1/memory/{namespace}/{key}`: namespaced key-value memory that may expire."""
    router = APIRouter(prefix="/v1/memory", tags=["memory"])

    @router.get(
        "/{namespace}",
        summary="List memory entries",
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, InvalidMemoryEntry, InvalidCursor
        ),
    )
    async def list_memory_entries(
        namespace: Namespace,
        principal: MemoryReader,
        core: CoreDep,
        session: ReadSessionDep,
        prefix: Annotated[
            str, Query(max_length=255, description="Only keys starting with this (exactly)")
        ] = "",
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[MemoryEntryOut]:
        """The namespace's live entries whose key starts with `prefix`, by key (`%` and `_`
        in a prefix are plain characters)."""
        after = decode_cursor(cursor) if cursor is not None else None
        entries = await core.memory.list(
            principal.tenant,
            namespace,
            prefix=prefix,
            after=after,
            limit=limit + 1,
            session=session,
        )
        items, next_cursor = paginate(entries, limit, lambda e: e.key)
        return Page(
            items=[MemoryEntryOut.model_validate(e) for e in items], next_cursor=next_cursor
        )

    @router.get(
        "/{namespace}/{key}",
        summary="Get a memory entry",
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, MemoryEntryNotFound, InvalidMemoryEntry
        ),
    )
    async def get_memory_entry(
        namespace: Namespace,
        key: Key,
        principal: MemoryReader,
        core: CoreDep,
        session: ReadSessionDep,
    ) -> MemoryEntryOut:
        """The entry; 404 when there is none or it has expired."""
        entry = await core.memory.get(principal.tenant, namespace, key, session=session)
        return MemoryEntryOut.model_validate(entry)

    @router.put(
        "/{namespace}/{key}",
        summary="Put a memory entry",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidMemoryEntry),
    )
    async def put_memory_entry(
        namespace: Namespace,
        key: Key,
        body: MemoryEntryPut,
        principal: MemoryWriter,
        core: CoreDep,
        session: SessionDep,
    ) -> MemoryEntryOut:
        """Create the entry or replace its value and expiry (racing puts leave one entry)."""
        entry = await core.memory.put(
            principal.tenant,
            namespace,
            key,
            body.value,
            ttl_seconds=body.ttl_seconds,
            expires_at=body.expires_at,
            user_id=principal.user_id,
            session=session,
        )
        return MemoryEntryOut.model_validate(entry)

    @router.delete(
        "/{namespace}/{key}",
        summary="Delete a memory entry",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, MemoryEntryNotFound, InvalidMemoryEntry
        ),
    )
    async def delete_memory_entry(
        namespace: Namespace, key: Key, principal: MemoryWriter, core: CoreDep, session: SessionDep
    ) -> None:
        """Delete the entry; 404 when there is no live one."""
        await core.memory.delete(principal.tenant, namespace, key, session=session)

    return router


def create_conversations_router() -> APIRouter:
    """`/v1/conversations`: agents' summaries of conversations (long-term memory)."""
    router = APIRouter(prefix="/v1/conversations", tags=["memory"])

    @router.get(
        "",
        summary="List conversation summaries",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidCursor),
    )
    async def list_conversations(
        principal: MemoryReader,
        core: CoreDep,
        session: ReadSessionDep,
        user_id: Annotated[uuid.UUID | None, Query(description="Only this user's")] = None,
        session_id: Annotated[
            str | None, Query(max_length=255, description="Only this conversation's")
        ] = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[ConversationSummaryOut]:
        """The organisation's conversation summaries, newest first."""
        rows = await core.memory.list_summaries(
            principal.tenant,
            user_id=user_id,
            session_id=session_id,
            before=uuid_cursor(cursor),
            limit=limit + 1,
            session=session,
        )
        items, next_cursor = paginate(rows, limit, lambda r: r.id)
        return Page(
            items=[ConversationSummaryOut.model_validate(r) for r in items],
            next_cursor=next_cursor,
        )

    @router.put(
        "",
        summary="Put a conversation summary",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidConversation),
    )
    async def put_conversation(
        body: ConversationSummaryPut, principal: MemoryWriter, core: CoreDep, session: SessionDep
    ) -> ConversationSummaryOut:
        """Create or replace the summary of your conversation `session_id` (the caller's
        user's; an API key without a user writes the organisation's)."""
        row = await core.memory.upsert_summary(
            principal.tenant,
            body.session_id,
            body.summary,
            user_id=principal.user_id,
            agent=body.agent,
            key_topics=body.key_topics,
            message_count=body.message_count,
            session=session,
        )
        return ConversationSummaryOut.model_validate(row)

    @router.get(
        "/{summary_id}",
        summary="Get a conversation summary",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, ConversationNotFound),
    )
    async def get_conversation(
        summary_id: uuid.UUID, principal: MemoryReader, core: CoreDep, session: ReadSessionDep
    ) -> ConversationSummaryOut:
        """One conversation summary."""
        row = await core.memory.get_summary(principal.tenant, summary_id, session=session)
        return ConversationSummaryOut.model_validate(row)

    @router.delete(
        "/{summary_id}",
        summary="Delete a conversation summary",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, ConversationNotFound),
    )
    async def delete_conversation(
        summary_id: uuid.UUID, principal: MemoryWriter, core: CoreDep, session: SessionDep
    ) -> None:
        """Forget a conversation summary."""
        await core.memory.delete_summary(principal.tenant, summary_id, session=session)

    return router


def create_rag_store_router() -> APIRouter:
    """`/v1/rag-store`: the organisation's retrieval store and its folders."""
    router = APIRouter(prefix="/v1/rag-store", tags=["rag"])

    @router.get(
        "",
        summary="Get the RAG store",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, RagStoreNotFound),
    )
    async def get_rag_store(
        principal: MemoryReader, core: CoreDep, session: ReadSessionDep
    ) -> RagStoreOut:
        """Your organisation's store; 404 until one is registered."""
        return RagStoreOut.model_validate(await core.rag.get(principal.tenant, session=session))

    @router.post(
        "",
        summary="Register the RAG store",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, RagStoreExists, InvalidRagStore),
    )
    async def create_rag_store(
        body: RagStoreCreate, principal: StoreAdmin, core: CoreDep, session: SessionDep
    ) -> RagStoreOut:
        """Register your organisation's store at a provider (needs `admin`); one each."""
        store = await core.rag.create(
            principal.tenant,
            provider=body.provider,
            provider_store_id=body.provider_store_id,
            display_name=body.display_name,
            session=session,
        )
        return RagStoreOut.model_validate(store)

    @router.delete(
        "",
        summary="Delete the RAG store",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, RagStoreNotFound),
    )
    async def delete_rag_store(principal: StoreAdmin, core: CoreDep, session: SessionDep) -> None:
        """Delete the store's registration and its folders (needs `admin`)."""
        await core.rag.delete(principal.tenant, session=session)

    @router.get(
        "/folders",
        summary="List RAG folders",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidCursor),
    )
    async def list_rag_folders(
        principal: MemoryReader,
        core: CoreDep,
        session: ReadSessionDep,
        parent_id: Annotated[
            uuid.UUID | None, Query(description="Only the folders in this one")
        ] = None,
        top_level: Annotated[bool, Query(description="Only the folders at the top")] = False,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[RagFolderOut]:
        """The store's folders, oldest first."""
        rows = await core.rag.list_folders(
            principal.tenant,
            parent_id=parent_id,
            top_level=top_level,
            after=uuid_cursor(cursor),
            limit=limit + 1,
            session=session,
        )
        items, next_cursor = paginate(rows, limit, lambda r: r.id)
        return Page(items=[RagFolderOut.model_validate(r) for r in items], next_cursor=next_cursor)

    @router.post(
        "/folders",
        summary="Create a RAG folder",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, RagStoreNotFound, RagFolderNotFound, InvalidRagStore
        ),
    )
    async def create_rag_folder(
        body: RagFolderCreate, principal: MemoryWriter, core: CoreDep, session: SessionDep
    ) -> RagFolderOut:
        """A folder in the store, at the top or in `parent_id`."""
        folder = await core.rag.create_folder(
            principal.tenant,
            body.folder_name,
            parent_id=body.parent_id,
            folder_id=body.folder_id,
            session=session,
        )
        return RagFolderOut.model_validate(folder)

    @router.get(
        "/folders/{folder_id}",
        summary="Get a RAG folder",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, RagFolderNotFound),
    )
    async def get_rag_folder(
        folder_id: uuid.UUID, principal: MemoryReader, core: CoreDep, session: ReadSessionDep
    ) -> RagFolderOut:
        """One folder of the store."""
        folder = await core.rag.get_folder(principal.tenant, folder_id, session=session)
        return RagFolderOut.model_validate(folder)

    @router.delete(
        "/folders/{folder_id}",
        summary="Delete a RAG folder",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, RagFolderNotFound),
    )
    async def delete_rag_folder(
        folder_id: uuid.UUID, principal: MemoryWriter, core: CoreDep, session: SessionDep
    ) -> None:
        """Delete the folder and every folder in it."""
        await core.rag.delete_folder(principal.tenant, folder_id, session=session)

    return router

"""The workspace's routers, all on the caller's organisation: `/v1/folders`, `/v1/documents`,
`/v1/jobs` and `/v1/generations` (with `/v1/generations/preferences`), whose reads take
`workspace:read` and changes `workspace:write`; and `/v1/memory`, `/v1/conversations`,
`/v1/rag-store` and `/v1/llm/chat`."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status

from saascore.api.deps import CoreDep, OriginDep, ReadSessionDep, SessionDep, require
from saascore.api.errors import error_responses
from saascore.identity.endpoints import AUTH_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.kit.errors import InvalidInput
from saascore.kit.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidCursor,
    Page,
    decode_cursor,
    paginate,
    uuid_cursor,
)
from saascore.metering.errors import LimitExceeded
from saascore.models import JobStatus
from saascore.workspace.errors import (
    ConversationNotFound,
    DocumentNotFound,
    FolderCycle,
    FolderNameTaken,
    FolderNotEmpty,
    FolderNotFound,
    GenerationNotFound,
    InvalidConversation,
    InvalidMemoryEntry,
    InvalidRagStore,
    JobNotFound,
    JobStateConflict,
    MemoryEntryNotFound,
    PreferencesNeedUser,
    RagFolderNotFound,
    RagStoreExists,
    RagStoreNotFound,
)
from saascore.workspace.schemas import (
    ConversationSummaryOut,
    ConversationSummaryPut,
    DocumentCreate,
    DocumentOut,
    DocumentParsed,
    FolderCreate,
    FolderDeleted,
    FolderOut,
    FolderUpdate,
    GenerationCreate,
    GenerationOut,
    JobCreate,
    JobFail,
    JobOut,
    JobSucceed,
    MemoryEntryOut,
    MemoryEntryPut,
    PreferencesIn,
    PreferencesOut,
    RagFolderCreate,
    RagFolderOut,
    RagStoreCreate,
    RagStoreOut,
)

__all__ = [
    "create_conversations_router",
    "create_documents_router",
    "create_folders_router",
    "create_generations_router",
    "create_jobs_router",
    "create_memory_router",
    "create_rag_store_router",
]

Reader = Annotated[Principal, Depends(require(Permission.WORKSPACE_READ))]
Writer = Annotated[Principal, Depends(require(Permission.WORKSPACE_WRITE))]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page")]
Cursor = Annotated[
    str | None, Query(max_length=400, description="`next_cursor` of the previous page")
]
READ_ERRORS = (*AUTH_ERRORS, PermissionDenied)


def create_folders_router() -> APIRouter:
    """`/v1/folders`: nested folders; names unique among siblings."""
    router = APIRouter(prefix="/v1/folders", tags=["workspace"])

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        summary="Create a folder",
        responses=error_responses(*READ_ERRORS, FolderNotFound, FolderNameTaken, InvalidInput),
    )
    async def create_folder(
        body: FolderCreate, principal: Writer, core: CoreDep, session: SessionDep
    ) -> FolderOut:
        """A folder at the root or under `parent_id`."""
        folder = await core.documents.create_folder(
            principal.tenant,
            body.name,
            parent_id=body.parent_id,
            description=body.description,
            created_by=principal.user_id,
            session=session,
        )
        return FolderOut.of(folder)

    @router.get(
        "",
        summary="List folders",
        responses=error_responses(*READ_ERRORS, InvalidCursor),
    )
    async def list_folders(
        principal: Reader,
        core: CoreDep,
        parent_id: Annotated[uuid.UUID | None, Query(description="Only its children")] = None,
        root: Annotated[bool, Query(description="Only the folders at the root")] = False,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[FolderOut]:
        """Your organisation's folders, oldest first."""
        found = await core.documents.list_folders(
            principal.tenant,
            parent_id=parent_id,
            root=root,
            after=uuid_cursor(cursor),
            limit=limit + 1,
        )
        items, next_cursor = paginate(found, limit, lambda folder: folder.id)
        return Page(items=[FolderOut.of(f) for f in items], next_cursor=next_cursor)

    @router.get(
        "/{folder_id}",
        summary="Get a folder",
        responses=error_responses(*READ_ERRORS, FolderNotFound),
    )
    async def get_folder(folder_id: uuid.UUID, principal: Reader, core: CoreDep) -> FolderOut:
        """One folder, with its path."""
        return FolderOut.of(await core.documents.get_folder(principal.tenant, folder_id))

    @router.patch(
        "/{folder_id}",
        summary="Rename or move a folder",
        responses=error_responses(
            *READ_ERRORS, FolderNotFound, FolderNameTaken, FolderCycle, InvalidInput
        ),
    )
    async def update_folder(
        folder_id: uuid.UUID,
        body: FolderUpdate,
        principal: Writer,
        core: CoreDep,
        session: SessionDep,
    ) -> FolderOut:
        """Rename (`name`) and/or move (`parent_id`, null for the root); a move into the
        folder itself or below it is 422 `folder_cycle`."""
        folder = await core.documents.update_folder(
            principal.tenant,
            folder_id,
            name=body.name,
            move="parent_id" in body.model_fields_set,
            parent_id=body.parent_id,
            description=body.description,
            session=session,
        )
        return FolderOut.of(folder)

    @router.delete(
        "/{folder_id}",
        summary="Delete a folder",
        responses=error_responses(*READ_ERRORS, FolderNotFound, FolderNotEmpty),
    )
    async def delete_folder(
        folder_id: uuid.UUID,
        principal: Writer,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
        recursive: Annotated[
            bool, Query(description="Delete what it holds too, freeing its storage")
        ] = False,
    ) -> FolderDeleted:
        """An empty folder; with `recursive=true` also its folders and documents."""
        deleted = await core.documents.delete_folder(
            principal.tenant,
            folder_id,
            recursive=recursive,
            actor=principal.actor(origin),
            session=session,
        )
        return FolderDeleted(
            folders=deleted.folders, documents=deleted.documents, freed_bytes=deleted.freed_bytes
        )

    return router


def create_documents_router() -> APIRouter:
    """`/v1/documents`: documents registered against the storage limit."""
    router = APIRouter(prefix="/v1/documents", tags=["workspace"])

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        summary="Register a document",
        responses=error_responses(*READ_ERRORS, FolderNotFound, LimitExceeded, InvalidInput),
    )
    async def register_document(
        body: DocumentCreate,
        principal: Writer,
        core: CoreDep,
        origin: OriginDep,
        response: Response,
    ) -> DocumentOut:
        """Register a stored file: its size counts against the storage limit (402
        `limit_exceeded` past it). The same content in the same folder answers the
        document already there, with 200."""
        # In a transaction of its own rather than the request's: concurrent requests then
        # share transactions on PostgreSQL (group commit), as usage events do.
        registered = await core.documents.register(
            principal.tenant,
            filename=body.filename,
            size_bytes=body.size_bytes,
            file_hash=body.file_hash,
            folder_id=body.folder_id,
            content_type=body.content_type,
            storage_uri=body.storage_uri,
            original_filename=body.original_filename,
            metadata=body.metadata,
            uploaded_by=principal.user_id,
            actor=principal.actor(origin),
        )
        if not registered.created:
            response.status_code = status.HTTP_200_OK
        return DocumentOut.of(registered.document)

    @router.get(
        "",
        summary="List documents",
        responses=error_responses(*READ_ERRORS, InvalidCursor),
    )
    async def list_documents(
        principal: Reader,
        core: CoreDep,
        folder_id: Annotated[uuid.UUID | None, Query(description="Only this folder's")] = None,
        root: Annotated[bool, Query(description="Only the documents at the root")] = False,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[DocumentOut]:
        """Your organisation's documents, oldest first."""
        found = await core.documents.list_documents(
            principal.tenant,
            folder_id=folder_id,
            root=root,
            after=uuid_cursor(cursor),
            limit=limit + 1,
        )
        items, next_cursor = paginate(found, limit, lambda document: document.id)
        return Page(items=[DocumentOut.of(d) for d in items], next_cursor=next_cursor)

    @router.get(
        "/{document_id}",
        summary="Get a document",
        responses=error_responses(*READ_ERRORS, DocumentNotFound),
    )
    async def get_document(document_id: uuid.UUID, principal: Reader, core: CoreDep) -> DocumentOut:
        """One document's metadata."""
        return DocumentOut.of(await core.documents.get_document(principal.tenant, document_id))

    @router.put(
        "/{document_id}/parsed",
        summary="Record a document's parsed text",
        responses=error_responses(*READ_ERRORS, DocumentNotFound, InvalidInput),
    )
    async def mark_parsed(
        document_id: uuid.UUID,
        body: DocumentParsed,
        principal: Writer,
        core: CoreDep,
        session: SessionDep,
    ) -> DocumentOut:
        """Where the parsed text is (`parsed_path`) and when it was parsed."""
        document = await core.documents.mark_parsed(
            principal.tenant,
            document_id,
            parsed_path=body.parsed_path,
            parsed_at=body.parsed_at,
            session=session,
        )
        return DocumentOut.of(document)

    @router.delete(
        "/{document_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        summary="Delete a document",
        responses=error_responses(*READ_ERRORS, DocumentNotFound),
    )
    async def delete_document(
        document_id: uuid.UUID,
        principal: Writer,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> None:
        """Delete a document, freeing its size from the storage used."""
        await core.documents.delete_document(
            principal.tenant, document_id, actor=principal.actor(origin), session=session
        )

    return router


def create_jobs_router() -> APIRouter:
    """`/v1/jobs`: processing jobs, answered from the cache when the same work succeeded."""
    router = APIRouter(prefix="/v1/jobs", tags=["workspace"])

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        summary="Submit a job",
        responses=error_responses(*READ_ERRORS, DocumentNotFound, JobStateConflict, InvalidInput),
    )
    async def submit_job(
        body: JobCreate,
        principal: Writer,
        core: CoreDep,
        session: SessionDep,
        response: Response,
    ) -> JobOut:
        """Queue a job (201); the same work on the same content answers the succeeded job
        (200, `cache_hit` true, no tokens) or the one queued or running (200)."""
        submitted = await core.jobs.submit(
            principal.tenant,
            body.document_id,
            body.job_type,
            options=body.options,
            model=body.model,
            created_by=principal.user_id,
            session=session,
        )
        if not submitted.created:
            response.status_code = status.HTTP_200_OK
        return JobOut.of(submitted.job, cache_hit=submitted.cache_hit)

    @router.get(
        "",
        summary="List jobs",
        responses=error_responses(*READ_ERRORS, InvalidCursor),
    )
    async def list_jobs(
        principal: Reader,
        core: CoreDep,
        document_id: Annotated[uuid.UUID | None, Query(description="Only its jobs")] = None,
        job_status: Annotated[
            JobStatus | None, Query(alias="status", description="Only jobs in this status")
        ] = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[JobOut]:
        """Your organisation's jobs, oldest first."""
        found = await core.jobs.list_jobs(
            principal.tenant,
            document_id=document_id,
            status=job_status,
            after=uuid_cursor(cursor),
            limit=limit + 1,
        )
        items, next_cursor = paginate(found, limit, lambda job: job.id)
        return Page(items=[JobOut.of(j) for j in items], next_cursor=next_cursor)

    @router.get(
        "/{job_id}",
        summary="Get a job",
        responses=error_responses(*READ_ERRORS, JobNotFound),
    )
    async def get_job(job_id: uuid.UUID, principal: Reader, core: CoreDep) -> JobOut:
        """One job, with its result or error."""
        return JobOut.of(await core.jobs.get_job(principal.tenant, job_id))

    @router.post(
        "/{job_id}/start",
        summary="Start a job",
        responses=error_responses(*READ_ERRORS, JobNotFound, JobStateConflict),
    )
    async def start_job(
        job_id: uuid.UUID, principal: Writer, core: CoreDep, session: SessionDep
    ) -> JobOut:
        """queued -> running."""
        return JobOut.of(await core.jobs.start(principal.tenant, job_id, session=session))

    @router.post(
        "/{job_id}/succeed",
        summary="Complete a job with its result",
        responses=error_responses(*READ_ERRORS, JobNotFound, JobStateConflict, InvalidInput),
    )
    async def succeed_job(
        job_id: uuid.UUID,
        body: JobSucceed,
        principal: Writer,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> JobOut:
        """queued or running -> succeeded, keeping the result and token counts
        (`job.succeeded`)."""
        job = await core.jobs.succeed(
            principal.tenant,
            job_id,
            body.result,
            input_tokens=body.input_tokens,
            output_tokens=body.output_tokens,
            model=body.model,
            actor=principal.actor(origin),
            session=session,
        )
        return JobOut.of(job)

    @router.post(
        "/{job_id}/fail",
        summary="Fail a job",
        responses=error_responses(*READ_ERRORS, JobNotFound, JobStateConflict, InvalidInput),
    )
    async def fail_job(
        job_id: uuid.UUID,
        body: JobFail,
        principal: Writer,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> JobOut:
        """queued or running -> failed, keeping the error (`job.failed`)."""
        job = await core.jobs.fail(
            principal.tenant, job_id, body.error, actor=principal.actor(origin), session=session
        )
        return JobOut.of(job)

    @router.post(
        "/{job_id}/cancel",
        summary="Cancel a job",
        responses=error_responses(*READ_ERRORS, JobNotFound, JobStateConflict),
    )
    async def cancel_job(
        job_id: uuid.UUID, principal: Writer, core: CoreDep, session: SessionDep
    ) -> JobOut:
        """queued or running -> canceled."""
        return JobOut.of(await core.jobs.cancel(principal.tenant, job_id, session=session))

    return router


def create_generations_router() -> APIRouter:
    """`/v1/generations`: the generation cache, and the caller's generation preferences."""
    router = APIRouter(prefix="/v1/generations", tags=["workspace"])

    @router.get(
        "/preferences",
        summary="Get your generation preferences",
        responses=error_responses(*READ_ERRORS, PreferencesNeedUser),
    )
    async def get_preferences(principal: Reader, core: CoreDep) -> PreferencesOut:
        """The calling user's generation settings (empty until set)."""
        found = await core.jobs.get_preferences(principal.tenant, _user(principal))
        return PreferencesOut.of(found)

    @router.put(
        "/preferences",
        summary="Set your generation preferences",
        responses=error_responses(*READ_ERRORS, PreferencesNeedUser, InvalidInput),
    )
    async def put_preferences(
        body: PreferencesIn, principal: Writer, core: CoreDep, session: SessionDep
    ) -> PreferencesOut:
        """Replace the calling user's generation settings."""
        saved = await core.jobs.put_preferences(
            principal.tenant,
            _user(principal),
            default_model=body.default_model,
            language=body.language,
            preferences=body.preferences,
            session=session,
        )
        return PreferencesOut.of(saved)

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        summary="Get or store a generation",
        responses=error_responses(*READ_ERRORS, DocumentNotFound, InvalidInput),
    )
    async def generate(
        body: GenerationCreate,
        principal: Writer,
        core: CoreDep,
        session: SessionDep,
        response: Response,
    ) -> GenerationOut:
        """The stored generation for the document, type and options (200, nothing
        recorded), or this one stored (201)."""
        generated = await core.jobs.generate(
            principal.tenant,
            body.document_id,
            body.generation_type,
            body.content,
            options=body.options,
            model=body.model,
            input_tokens=body.input_tokens,
            output_tokens=body.output_tokens,
            created_by=principal.user_id,
            session=session,
        )
        if not generated.created:
            response.status_code = status.HTTP_200_OK
        return GenerationOut.of(generated.generation)

    @router.get(
        "",
        summary="List generations",
        responses=error_responses(*READ_ERRORS, InvalidCursor),
    )
    async def list_generations(
        principal: Reader,
        core: CoreDep,
        document_id: Annotated[uuid.UUID | None, Query(description="Only its")] = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> Page[GenerationOut]:
        """Your organisation's generations, oldest first."""
        found = await core.jobs.list_generations(
            principal.tenant, document_id=document_id, after=uuid_cursor(cursor), limit=limit + 1
        )
        items, next_cursor = paginate(found, limit, lambda generation: generation.id)
        return Page(items=[GenerationOut.of(g) for g in items], next_cursor=next_cursor)

    @router.get(
        "/{generation_id}",
        summary="Get a generation",
        responses=error_responses(*READ_ERRORS, GenerationNotFound),
    )
    async def get_generation(
        generation_id: uuid.UUID, principal: Reader, core: CoreDep
    ) -> GenerationOut:
        """One stored generation."""
        return GenerationOut.of(await core.jobs.get_generation(principal.tenant, generation_id))

    return router


def _user(principal: Principal) -> uuid.UUID:
    if principal.user_id is None:
        raise PreferencesNeedUser(
            "generation preferences belong to a user: call as a user, or with a user's key"
        )
    return principal.user_id


MemoryReader = Reader
MemoryWriter = Writer
StoreAdmin = Annotated[Principal, Depends(require(Permission.ADMIN))]
Namespace = Annotated[
    str, Path(min_length=1, max_length=255, description="The namespace", examples=["agent"])
]
Key = Annotated[str, Path(min_length=1, max_length=255, description="The key in the namespace")]


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
        "/folders/{rag_folder_id}",
        summary="Get a RAG folder",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, RagFolderNotFound),
    )
    async def get_rag_folder(
        rag_folder_id: uuid.UUID, principal: MemoryReader, core: CoreDep, session: ReadSessionDep
    ) -> RagFolderOut:
        """One folder of the store."""
        folder = await core.rag.get_folder(principal.tenant, rag_folder_id, session=session)
        return RagFolderOut.model_validate(folder)

    @router.delete(
        "/folders/{rag_folder_id}",
        summary="Delete a RAG folder",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, RagFolderNotFound),
    )
    async def delete_rag_folder(
        rag_folder_id: uuid.UUID, principal: MemoryWriter, core: CoreDep, session: SessionDep
    ) -> None:
        """Delete the folder and every folder in it."""
        await core.rag.delete_folder(principal.tenant, rag_folder_id, session=session)

    return router

"""Processing jobs with result caching, the generation cache and generation preferences.

A job's cache key is the SHA-256 of its document's content hash, its type and its options as
canonical JSON: the same work on the same content has the same key, in any folder. Submitting
a job whose key has a succeeded job answers that job at once as a cache hit: no new job, no
tokens. Otherwise an identical job still queued or running is answered (a partial unique index
allows one per key, so racing submissions make one job), or a new job is queued.

Statuses and the changes allowed between them:

    queued ──> running ──> succeeded, failed or canceled
    queued ──────────────> succeeded, failed or canceled

(a worker that does the work at once may skip `running`).

A finished job (succeeded, failed, canceled) stays as it is; a failed job keeps its error, and
a new submission of its key queues a new job. Each change is one conditional UPDATE on the
status, so two workers cannot both finish one job.

A generation (summary, FAQ, questions) is cached on (document, type, cache key): `generate`
answers the stored one when there is one, or stores the one given.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.audit.service import AuditService, audited_bus
from saascore.events.bus import EventBus
from saascore.events.catalog import JobFailed, JobSucceeded
from saascore.kit.actors import SYSTEM, Actor
from saascore.kit.db import Database
from saascore.kit.errors import InvalidInput
from saascore.kit.ids import new_id
from saascore.kit.inputs import INT64_MAX
from saascore.kit.pagination import DEFAULT_LIMIT
from saascore.kit.sql import insert
from saascore.kit.time import utcnow
from saascore.kit.validation import canonical_json, checked_json, checked_text
from saascore.models import (
    ACTIVE_JOB_STATUSES,
    Document,
    DocumentGeneration,
    GenerationType,
    JobStatus,
    ProcessingJob,
    UserPreference,
)
from saascore.workspace.errors import (
    DocumentNotFound,
    GenerationNotFound,
    JobNotFound,
    JobStateConflict,
)

__all__ = ["Generated", "JobService", "Submitted", "cache_key"]

#: Where each status may go.
TRANSITIONS: Final[dict[JobStatus, frozenset[JobStatus]]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}
    ),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}
MAX_OPTIONS_BYTES: Final = 16 * 1024
MAX_RESULT_BYTES: Final = 1024 * 1024


def cache_key(file_hash: str | None, kind: str, options: dict[str, Any]) -> str:
    """SHA-256 (hex) of the content hash, the job or generation type and the canonical
    options: the same for the same work on the same content."""
    text = "\x1f".join((file_hash or "", kind, canonical_json(options)))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Submitted:
    """A submission's job: a succeeded one answered from the cache (`cache_hit`), one
    already queued or running (`created` false), or a new one."""

    job: ProcessingJob
    created: bool
    cache_hit: bool


@dataclass(frozen=True)
class Generated:
    """A generation, and whether this call stored it (false: answered from the cache)."""

    generation: DocumentGeneration
    created: bool


def _kind(value: str, field: str) -> str:
    checked_text(value, field=field)
    # Not only spaces, as folder names (which are trimmed) are not: " " names no kind.
    if not value.strip() or len(value) > 100:
        raise InvalidInput(f"{field} takes 1 to 100 characters, not only spaces", field=field)
    return value


def _tokens(**counts: int) -> None:
    for field, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= INT64_MAX:
            raise InvalidInput(f"{field} must be 0 to 2**63-1", field=field)


class JobService:
    def __init__(
        self,
        database: Database,
        events: EventBus | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.events = events if events is not None else audited_bus(AuditService(database))
        self.clock = clock

    # --- jobs ----------------------------------------------------------------------------------
    async def submit(
        self,
        org_id: uuid.UUID,
        document_id: uuid.UUID,
        job_type: str,
        *,
        options: dict[str, Any] | None = None,
        model: str | None = None,
        created_by: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Submitted:
        """Queue a job, or answer the cached or active job with the same key."""
        _kind(job_type, "job_type")
        options = checked_json(options or {}, field="options", max_bytes=MAX_OPTIONS_BYTES)
        if model is not None:
            _kind(model, "model")
        async with self.database.scope(session) as s:
            document = await _document(s, org_id, document_id)
            key = cache_key(document.file_hash, job_type, options)
            for _ in range(3):
                if (cached := await self._cached(s, org_id, key)) is not None:
                    return Submitted(cached, created=False, cache_hit=True)
                now = self.clock()
                job_id = await s.scalar(
                    insert(s, ProcessingJob)
                    .values(
                        id=new_id(),
                        organization_id=org_id,
                        document_id=document_id,
                        job_type=job_type,
                        cache_key=key,
                        status=JobStatus.QUEUED,
                        model=model,
                        options=options,
                        created_by=created_by,
                        created_at=now,
                        updated_at=now,
                    )
                    .on_conflict_do_nothing()
                    .returning(ProcessingJob.id)
                )
                if job_id is not None:
                    return Submitted(await self._job(s, org_id, job_id), True, False)
                active = (
                    await s.scalars(
                        sa.select(ProcessingJob).where(
                            ProcessingJob.organization_id == org_id,
                            ProcessingJob.cache_key == key,
                            ProcessingJob.status.in_(ACTIVE_JOB_STATUSES),
                        )
                    )
                ).one_or_none()
                if active is not None:
                    return Submitted(active, created=False, cache_hit=False)
                # The active job finished between the insert and the read: look again.
            raise JobStateConflict("the job's key keeps changing state; try again")

    async def start(
        self, org_id: uuid.UUID, job_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> ProcessingJob:
        """queued -> running."""
        return await self._move(org_id, job_id, JobStatus.RUNNING, {}, session)

    async def succeed(
        self,
        org_id: uuid.UUID,
        job_id: uuid.UUID,
        result: dict[str, Any],
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        model: str | None = None,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> ProcessingJob:
        """queued or running -> succeeded, keeping the result and token counts; emits
        `job.succeeded`."""
        checked_json(result, field="result", max_bytes=MAX_RESULT_BYTES)
        _tokens(input_tokens=input_tokens, output_tokens=output_tokens)
        values: dict[str, Any] = {
            "result": result,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        if model is not None:
            values["model"] = _kind(model, "model")
        async with self.database.scope(session) as s:
            job = await self._move(org_id, job_id, JobStatus.SUCCEEDED, values, s)
            await self.events.emit(
                s,
                org_id,
                JobSucceeded(
                    job_id=job.id,
                    document_id=job.document_id,
                    job_type=job.job_type,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                ),
                actor=actor,
                target_id=job.id,
            )
            return job

    async def fail(
        self,
        org_id: uuid.UUID,
        job_id: uuid.UUID,
        error: str,
        *,
        actor: Actor = SYSTEM,
        session: AsyncSession | None = None,
    ) -> ProcessingJob:
        """queued or running -> failed, keeping the error; emits `job.failed`."""
        checked_text(error, field="error", multiline=True)
        error = error[:10_000]
        async with self.database.scope(session) as s:
            job = await self._move(org_id, job_id, JobStatus.FAILED, {"error_message": error}, s)
            await self.events.emit(
                s,
                org_id,
                JobFailed(
                    job_id=job.id,
                    document_id=job.document_id,
                    job_type=job.job_type,
                    error=error,
                ),
                actor=actor,
                target_id=job.id,
            )
            return job

    async def cancel(
        self, org_id: uuid.UUID, job_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> ProcessingJob:
        """queued or running -> canceled."""
        return await self._move(org_id, job_id, JobStatus.CANCELED, {}, session)

    async def get_job(
        self, org_id: uuid.UUID, job_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> ProcessingJob:
        async with self.database.scope(session, readonly=True) as s:
            return await self._job(s, org_id, job_id)

    async def list_jobs(
        self,
        org_id: uuid.UUID,
        *,
        document_id: uuid.UUID | None = None,
        status: JobStatus | None = None,
        after: uuid.UUID | None = None,
        limit: int = DEFAULT_LIMIT,
        session: AsyncSession | None = None,
    ) -> Sequence[ProcessingJob]:
        query = sa.select(ProcessingJob).where(ProcessingJob.organization_id == org_id)
        if document_id is not None:
            query = query.where(ProcessingJob.document_id == document_id)
        if status is not None:
            query = query.where(ProcessingJob.status == status)
        if after is not None:
            query = query.where(ProcessingJob.id > after)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query.order_by(ProcessingJob.id).limit(limit))).all()

    # --- generations ---------------------------------------------------------------------------
    async def find_generation(
        self,
        org_id: uuid.UUID,
        document_id: uuid.UUID,
        generation_type: GenerationType,
        *,
        options: dict[str, Any] | None = None,
        session: AsyncSession | None = None,
    ) -> DocumentGeneration | None:
        """The cached generation for the document, type and options, if any."""
        options = checked_json(options or {}, field="options", max_bytes=MAX_OPTIONS_BYTES)
        async with self.database.scope(session, readonly=True) as s:
            document = await _document(s, org_id, document_id)
            key = cache_key(document.file_hash, generation_type.value, options)
            return await _generation(s, org_id, document_id, generation_type, key)

    async def generate(
        self,
        org_id: uuid.UUID,
        document_id: uuid.UUID,
        generation_type: GenerationType,
        content: dict[str, Any],
        *,
        options: dict[str, Any] | None = None,
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        created_by: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Generated:
        """Get or create: the cached generation for the document, type and options (its
        content, model and tokens, none recorded again), or store this one."""
        options = checked_json(options or {}, field="options", max_bytes=MAX_OPTIONS_BYTES)
        checked_json(content, field="content", max_bytes=MAX_RESULT_BYTES)
        _tokens(input_tokens=input_tokens, output_tokens=output_tokens)
        if model is not None:
            _kind(model, "model")
        async with self.database.scope(session) as s:
            document = await _document(s, org_id, document_id)
            key = cache_key(document.file_hash, generation_type.value, options)
            found = await _generation(s, org_id, document_id, generation_type, key)
            if found is not None:
                return Generated(found, created=False)
            now = self.clock()
            generation_id = await s.scalar(
                insert(s, DocumentGeneration)
                .values(
                    id=new_id(),
                    organization_id=org_id,
                    document_id=document_id,
                    generation_type=generation_type,
                    cache_key=key,
                    content=content,
                    model=model,
                    options=options,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    created_by=created_by,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
                .returning(DocumentGeneration.id)
            )
            found = await _generation(s, org_id, document_id, generation_type, key)
            assert found is not None
            return Generated(found, created=generation_id is not None)

    async def get_generation(
        self,
        org_id: uuid.UUID,
        generation_id: uuid.UUID,
        *,
        session: AsyncSession | None = None,
    ) -> DocumentGeneration:
        async with self.database.scope(session, readonly=True) as s:
            found = (
                await s.scalars(
                    sa.select(DocumentGeneration).where(
                        DocumentGeneration.organization_id == org_id,
                        DocumentGeneration.id == generation_id,
                    )
                )
            ).one_or_none()
        if found is None:
            raise GenerationNotFound(
                f"no generation {generation_id}", generation_id=str(generation_id)
            )
        return found

    async def list_generations(
        self,
        org_id: uuid.UUID,
        *,
        document_id: uuid.UUID | None = None,
        after: uuid.UUID | None = None,
        limit: int = DEFAULT_LIMIT,
        session: AsyncSession | None = None,
    ) -> Sequence[DocumentGeneration]:
        query = sa.select(DocumentGeneration).where(DocumentGeneration.organization_id == org_id)
        if document_id is not None:
            query = query.where(DocumentGeneration.document_id == document_id)
        if after is not None:
            query = query.where(DocumentGeneration.id > after)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query.order_by(DocumentGeneration.id).limit(limit))).all()

    # --- preferences ---------------------------------------------------------------------------
    async def get_preferences(
        self, org_id: uuid.UUID, user_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> UserPreference | None:
        async with self.database.scope(session, readonly=True) as s:
            return await _preference(s, org_id, user_id)

    async def put_preferences(
        self,
        org_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        default_model: str | None = None,
        language: str | None = None,
        preferences: dict[str, Any] | None = None,
        session: AsyncSession | None = None,
    ) -> UserPreference:
        """Set a user's generation settings (all of them: what is not given is cleared)."""
        if default_model is not None:
            _kind(default_model, "default_model")
        if language is not None and (len(language) > 16 or not language):
            raise InvalidInput("language takes 1 to 16 characters", field="language")
        if language is not None:
            checked_text(language, field="language")
        preferences = checked_json(preferences or {}, field="preferences", max_bytes=16 * 1024)
        now = self.clock()
        values = {
            "default_model": default_model,
            "language": language,
            "preferences": preferences,
            "updated_at": now,
        }
        async with self.database.scope(session) as s:
            statement = insert(s, UserPreference).values(
                id=new_id(), organization_id=org_id, user_id=user_id, created_at=now, **values
            )
            await s.execute(
                statement.on_conflict_do_update(
                    index_elements=[UserPreference.organization_id, UserPreference.user_id],
                    set_=values,
                )
            )
            found = await _preference(s, org_id, user_id, fresh=True)
            assert found is not None
            return found

    # --- internals -----------------------------------------------------------------------------
    async def _job(self, s: AsyncSession, org_id: uuid.UUID, job_id: uuid.UUID) -> ProcessingJob:
        job = (
            await s.scalars(
                sa.select(ProcessingJob)
                .where(ProcessingJob.organization_id == org_id, ProcessingJob.id == job_id)
                .execution_options(populate_existing=True)
            )
        ).one_or_none()
        if job is None:
            raise JobNotFound(f"no job {job_id}", job_id=str(job_id))
        return job

    async def _cached(self, s: AsyncSession, org_id: uuid.UUID, key: str) -> ProcessingJob | None:
        return (
            await s.scalars(
                sa.select(ProcessingJob)
                .where(
                    ProcessingJob.organization_id == org_id,
                    ProcessingJob.cache_key == key,
                    ProcessingJob.status == JobStatus.SUCCEEDED,
                )
                .order_by(ProcessingJob.id)
                .limit(1)
            )
        ).first()

    async def _move(
        self,
        org_id: uuid.UUID,
        job_id: uuid.UUID,
        to: JobStatus,
        values: dict[str, Any],
        session: AsyncSession | None,
    ) -> ProcessingJob:
        sources = [status for status, targets in TRANSITIONS.items() if to in targets]
        now = self.clock()
        stamps: dict[str, Any] = {"updated_at": now}
        if to is JobStatus.RUNNING:
            stamps["started_at"] = now
        else:
            stamps["completed_at"] = now
        async with self.database.scope(session) as s:
            moved = await s.scalar(
                sa.update(ProcessingJob)
                .where(
                    ProcessingJob.organization_id == org_id,
                    ProcessingJob.id == job_id,
                    ProcessingJob.status.in_(sources),
                )
                .values(status=to, **stamps, **values)
                .returning(ProcessingJob.id),
                execution_options={"synchronize_session": False},
            )
            job = await self._job(s, org_id, job_id)
            if moved is None:
                raise JobStateConflict(
                    f"a {job.status.value} job cannot become {to.value}",
                    job_id=str(job_id),
                    status=job.status.value,
                )
            return job


async def _document(s: AsyncSession, org_id: uuid.UUID, document_id: uuid.UUID) -> Document:
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


async def _generation(
    s: AsyncSession,
    org_id: uuid.UUID,
    document_id: uuid.UUID,
    generation_type: GenerationType,
    key: str,
) -> DocumentGeneration | None:
    return (
        await s.scalars(
            sa.select(DocumentGeneration).where(
                DocumentGeneration.organization_id == org_id,
                DocumentGeneration.document_id == document_id,
                DocumentGeneration.generation_type == generation_type,
                DocumentGeneration.cache_key == key,
            )
        )
    ).one_or_none()


async def _preference(
    s: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID, *, fresh: bool = False
) -> UserPreference | None:
    query = sa.select(UserPreference).where(
        UserPreference.organization_id == org_id, UserPreference.user_id == user_id
    )
    if fresh:
        query = query.execution_options(populate_existing=True)
    return (await s.scalars(query)).one_or_none()

"""Processing jobs and generations: identical work is answered from the cache with no new
tokens, racing identical submissions make one job, and statuses move only forward."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest
import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.models import DocumentGeneration, GenerationType, JobStatus, ProcessingJob
from saascore.workspace.documents import DocumentService
from saascore.workspace.errors import JobStateConflict
from saascore.workspace.jobs import JobService, cache_key
from tests.workspace.test_documents import new_org


async def new_document(database: Database, content: str = "text") -> tuple[uuid.UUID, uuid.UUID]:
    org_id = await new_org(database)
    registered = await DocumentService(database).register(
        org_id,
        filename="a.txt",
        size_bytes=len(content),
        file_hash=hashlib.sha256(content.encode()).hexdigest(),
    )
    return org_id, registered.document.id


async def tokens(database: Database, org_id: uuid.UUID, table: type) -> int:
    async with database.session(readonly=True) as session:
        value = await session.scalar(
            sa.select(
                sa.func.coalesce(sa.func.sum(table.input_tokens + table.output_tokens), 0)
            ).where(table.organization_id == org_id)
        )
    return int(value)


class TestCacheKey:
    def test_options_are_compared_canonically(self) -> None:
        assert cache_key("h", "parse", {"a": 1, "b": [1, 2]}) == cache_key(
            "h", "parse", {"b": [1, 2], "a": 1}
        )
        assert cache_key("h", "parse", {}) != cache_key("h", "ocr", {})
        assert cache_key("h", "parse", {}) != cache_key("g", "parse", {})


class TestJobs:
    async def test_the_second_identical_job_is_a_cache_hit_with_no_tokens(
        self, scratch: Database
    ) -> None:
        org_id, document_id = await new_document(scratch)
        jobs = JobService(scratch)
        first = await jobs.submit(org_id, document_id, "parse", options={"lang": "en"})
        assert first.created
        assert not first.cache_hit
        await jobs.start(org_id, first.job.id)
        done = await jobs.succeed(
            org_id, first.job.id, {"pages": 3}, input_tokens=120, output_tokens=30
        )
        assert done.status is JobStatus.SUCCEEDED
        second = await jobs.submit(org_id, document_id, "parse", options={"lang": "en"})
        assert second.cache_hit
        assert not second.created
        assert second.job.id == first.job.id
        assert second.job.result == {"pages": 3}
        assert await tokens(scratch, org_id, ProcessingJob) == 150
        other = await jobs.submit(org_id, document_id, "parse", options={"lang": "fr"})
        assert other.created
        assert not other.cache_hit

    async def test_concurrent_identical_submissions_make_one_job(
        self, race_database: Database
    ) -> None:
        org_id, document_id = await new_document(race_database)
        jobs = JobService(race_database)
        outcomes = await asyncio.gather(
            *(jobs.submit(org_id, document_id, "embed") for _ in range(32))
        )
        assert sum(outcome.created for outcome in outcomes) == 1
        assert len({outcome.job.id for outcome in outcomes}) == 1
        async with race_database.session(readonly=True) as session:
            count = await session.scalar(
                sa.select(sa.func.count()).where(ProcessingJob.organization_id == org_id)
            )
        assert count == 1

    async def test_a_failure_keeps_its_error_and_a_new_submission_queues_anew(
        self, scratch: Database
    ) -> None:
        org_id, document_id = await new_document(scratch)
        jobs = JobService(scratch)
        first = await jobs.submit(org_id, document_id, "parse")
        await jobs.start(org_id, first.job.id)
        failed = await jobs.fail(org_id, first.job.id, "the PDF is encrypted")
        assert (failed.status, failed.error_message) == (JobStatus.FAILED, "the PDF is encrypted")
        again = await jobs.submit(org_id, document_id, "parse")
        assert again.created
        assert again.job.id != first.job.id

    async def test_finished_jobs_stay_finished(self, scratch: Database) -> None:
        org_id, document_id = await new_document(scratch)
        jobs = JobService(scratch)
        job = (await jobs.submit(org_id, document_id, "parse")).job
        await jobs.cancel(org_id, job.id)
        for change in (
            jobs.start(org_id, job.id),
            jobs.succeed(org_id, job.id, {}),
            jobs.fail(org_id, job.id, "late"),
            jobs.cancel(org_id, job.id),
        ):
            with pytest.raises(JobStateConflict):
                await change
        assert (await jobs.get_job(org_id, job.id)).status is JobStatus.CANCELED

    async def test_two_workers_cannot_both_finish_a_job(self, race_database: Database) -> None:
        org_id, document_id = await new_document(race_database)
        jobs = JobService(race_database)
        job = (await jobs.submit(org_id, document_id, "parse")).job
        await jobs.start(org_id, job.id)
        outcomes = await asyncio.gather(
            *(jobs.succeed(org_id, job.id, {"n": n}, input_tokens=1) for n in range(8)),
            return_exceptions=True,
        )
        assert sum(not isinstance(outcome, BaseException) for outcome in outcomes) == 1
        assert all(
            isinstance(outcome, JobStateConflict)
            for outcome in outcomes
            if isinstance(outcome, BaseException)
        )


class TestGenerations:
    async def test_the_second_identical_generation_answers_the_first(
        self, scratch: Database
    ) -> None:
        org_id, document_id = await new_document(scratch)
        jobs = JobService(scratch)
        first = await jobs.generate(
            org_id,
            document_id,
            GenerationType.SUMMARY,
            {"text": "short"},
            options={"length": 3},
            model="m-1",
            input_tokens=100,
            output_tokens=20,
        )
        second = await jobs.generate(
            org_id,
            document_id,
            GenerationType.SUMMARY,
            {"text": "other"},
            options={"length": 3},
            model="m-2",
            input_tokens=999,
            output_tokens=999,
        )
        assert first.created
        assert not second.created
        assert second.generation.id == first.generation.id
        assert (second.generation.content, second.generation.model) == ({"text": "short"}, "m-1")
        assert await tokens(scratch, org_id, DocumentGeneration) == 120
        found = await jobs.find_generation(
            org_id, document_id, GenerationType.SUMMARY, options={"length": 3}
        )
        assert found is not None
        assert found.id == first.generation.id
        assert await jobs.find_generation(org_id, document_id, GenerationType.FAQ) is None

    async def test_concurrent_identical_generations_store_one(
        self, race_database: Database
    ) -> None:
        org_id, document_id = await new_document(race_database)
        jobs = JobService(race_database)
        outcomes = await asyncio.gather(
            *(
                jobs.generate(org_id, document_id, GenerationType.FAQ, {"n": n}, input_tokens=5)
                for n in range(16)
            )
        )
        assert sum(outcome.created for outcome in outcomes) == 1
        assert len({outcome.generation.id for outcome in outcomes}) == 1
        assert await tokens(race_database, org_id, DocumentGeneration) == 5


class TestPreferences:
    async def test_put_then_get(self, scratch: Database) -> None:
        from saascore.models import Organization
        from tests.factories import create_user

        org_id = await new_org(scratch)
        async with scratch.transaction() as session:
            organization = await session.get(Organization, org_id)
            assert organization is not None
            user = await create_user(session, organization)
        jobs = JobService(scratch)
        assert await jobs.get_preferences(org_id, user.id) is None
        await jobs.put_preferences(org_id, user.id, default_model="m-1", language="en")
        updated = await jobs.put_preferences(
            org_id, user.id, default_model="m-2", preferences={"tone": "plain"}
        )
        assert (updated.default_model, updated.language, updated.preferences) == (
            "m-2",
            None,
            {"tone": "plain"},
        )
        found = await jobs.get_preferences(org_id, user.id)
        assert found is not None
        assert found.default_model == "m-2"

"""RAG stores: one per organisation, its folder hierarchy, and isolation between tenants."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.db import Database
from saascore.models import DocumentFolder, FileSearchStore
from saascore.workspace.errors import (
    InvalidRagStore,
    RagFolderNotFound,
    RagStoreExists,
    RagStoreNotFound,
)
from saascore.workspace.rag import RagStoreService
from tests.factories import create_folder, create_organization


@pytest.fixture
def rag(database: Database) -> RagStoreService:
    return RagStoreService(database)


class TestStore:
    async def test_create_get_delete(self, rag: RagStoreService, session: AsyncSession) -> None:
        org = await create_organization(session)
        with pytest.raises(RagStoreNotFound):
            await rag.get(org.id, session=session)
        store = await rag.create(
            org.id, provider="google", provider_store_id="fileSearchStores/abc", session=session
        )
        assert (await rag.get(org.id, session=session)).id == store.id
        with pytest.raises(RagStoreExists):
            await rag.create(org.id, provider="openai", provider_store_id="vs_1", session=session)
        top = await rag.create_folder(org.id, "top", session=session)
        await rag.create_folder(org.id, "child", parent_id=top.id, session=session)
        await rag.delete(org.id, session=session)
        with pytest.raises(RagStoreNotFound):
            await rag.delete(org.id, session=session)
        count = await session.scalar(
            sa.select(sa.func.count()).where(DocumentFolder.organization_id == org.id)
        )
        assert count == 0

    @pytest.mark.parametrize(
        ("provider", "store_id"),
        [("", "x"), ("Google", "x"), ("g" * 51, "x"), ("google", ""), ("google", "a\x00b")],
    )
    async def test_bad_values_are_refused(
        self, rag: RagStoreService, session: AsyncSession, provider: str, store_id: str
    ) -> None:
        org = await create_organization(session)
        with pytest.raises(InvalidRagStore):
            await rag.create(org.id, provider=provider, provider_store_id=store_id, session=session)

    async def test_racing_creations_make_one_store(self, race_database: Database) -> None:
        rag = RagStoreService(race_database)
        async with race_database.transaction() as s:
            org_id = (await create_organization(s)).id
        results = await asyncio.gather(
            *(rag.create(org_id, provider="google", provider_store_id=f"s{i}") for i in range(8)),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        assert all(isinstance(r, RagStoreExists) for r in results if isinstance(r, BaseException))
        async with race_database.session(readonly=True) as s:
            count = await s.scalar(
                sa.select(sa.func.count()).where(FileSearchStore.organization_id == org_id)
            )
        assert count == 1


class TestFolders:
    async def test_hierarchy_and_recursive_delete(
        self, rag: RagStoreService, session: AsyncSession
    ) -> None:
        org = await create_organization(session)
        with pytest.raises(RagStoreNotFound):
            await rag.create_folder(org.id, "no store", session=session)
        await rag.create(org.id, provider="google", provider_store_id="s", session=session)
        workspace_folder = await create_folder(session, org)
        top = await rag.create_folder(org.id, "top", folder_id=workspace_folder.id, session=session)
        mid = await rag.create_folder(org.id, "mid", parent_id=top.id, session=session)
        leaf = await rag.create_folder(org.id, "leaf", parent_id=mid.id, session=session)
        other = await rag.create_folder(org.id, "other", session=session)
        listed = await rag.list_folders(org.id, top_level=True, session=session)
        assert [f.id for f in listed] == [top.id, other.id]
        assert [
            f.id for f in await rag.list_folders(org.id, parent_id=top.id, session=session)
        ] == [mid.id]
        assert await rag.delete_folder(org.id, top.id, session=session) == 3
        with pytest.raises(RagFolderNotFound):
            await rag.get_folder(org.id, leaf.id, session=session)
        assert [f.id for f in await rag.list_folders(org.id, session=session)] == [other.id]

    async def test_another_tenants_folders_and_store_are_out_of_reach(
        self, rag: RagStoreService, session: AsyncSession
    ) -> None:
        org, intruder = await create_organization(session), await create_organization(session)
        await rag.create(org.id, provider="google", provider_store_id="mine", session=session)
        await rag.create(
            intruder.id, provider="google", provider_store_id="theirs", session=session
        )
        folder = await rag.create_folder(org.id, "private", session=session)
        with pytest.raises(RagFolderNotFound):
            await rag.get_folder(intruder.id, folder.id, session=session)
        with pytest.raises(RagFolderNotFound):
            await rag.delete_folder(intruder.id, folder.id, session=session)
        with pytest.raises(RagFolderNotFound):
            await rag.create_folder(intruder.id, "x", parent_id=folder.id, session=session)
        theirs_folder = await create_folder(session, org)
        with pytest.raises(InvalidRagStore):
            await rag.create_folder(intruder.id, "x", folder_id=theirs_folder.id, session=session)
        assert await rag.list_folders(intruder.id, session=session) == []
        assert (await rag.get(intruder.id, session=session)).provider_store_id == "theirs"

"""RAG stores: the organisation's one file-search store at a model provider (seed 000's Gemini
File Search registry), kept as data (`provider`, `provider_store_id`) so that another provider
fits, and the hierarchy of folders inside it (`document_folders`).

Creating a second store is `rag_store_exists` (the unique organisation column decides, so two
racing creations make one store); deleting the store deletes its folders (the foreign key
cascades).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.kit.db import Database
from saascore.kit.ids import new_id
from saascore.kit.validation import control_character, format_character
from saascore.models import DocumentFolder, FileSearchStore, Folder
from saascore.workspace.errors import (
    InvalidRagStore,
    RagFolderNotFound,
    RagStoreExists,
    RagStoreNotFound,
)

__all__ = ["RagStoreService"]

_PROVIDER: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,49}")
MAX_NAME: Final = 255


def _folder_name(value: object) -> str:
    """A RAG folder's name: `_text`, and no invisible format character (category Cf), as a
    workspace folder's name takes none (`checked_name`)."""
    name = _text(value, "folder_name")
    assert name is not None
    character = format_character(name)
    if character is not None:
        raise InvalidRagStore(
            f"folder_name holds the invisible format character U+{ord(character):04X}, "
            "which would let two names look the same",
            field="folder_name",
        )
    return name


def _text(value: object, field: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > MAX_NAME
        or control_character(value) is not None
    ):
        raise InvalidRagStore(
            f"{field} is 1 to {MAX_NAME} characters without control characters", field=field
        )
    return value.strip()


class RagStoreService:
    """`core.rag`: the organisation's RAG store and its folders."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def get(
        self, org_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> FileSearchStore:
        async with self.database.scope(session, readonly=True) as s:
            return await self._store(s, org_id)

    async def _store(self, s: AsyncSession, org_id: uuid.UUID) -> FileSearchStore:
        store = await s.scalar(
            sa.select(FileSearchStore).where(FileSearchStore.organization_id == org_id)
        )
        if store is None:
            raise RagStoreNotFound("this organisation has no RAG store")
        return store

    async def create(
        self,
        org_id: uuid.UUID,
        *,
        provider: str,
        provider_store_id: str,
        display_name: str | None = None,
        session: AsyncSession | None = None,
    ) -> FileSearchStore:
        """Register the organisation's store; `rag_store_exists` when it has one."""
        if not isinstance(provider, str) or not _PROVIDER.fullmatch(provider):
            raise InvalidRagStore(
                "provider is 1 to 50 lower-case letters, digits, '_', '.' or '-'",
                field="provider",
            )
        store_id = _text(provider_store_id, "provider_store_id")
        name = _text(display_name, "display_name", optional=True)
        async with self.database.scope(session) as s:
            store = FileSearchStore(
                organization_id=org_id,
                id=new_id(),
                provider=provider,
                provider_store_id=store_id,
                display_name=name,
            )
            try:
                async with s.begin_nested():
                    s.add(store)
                    await s.flush()
            except IntegrityError:
                raise RagStoreExists("this organisation has a RAG store already") from None
            return store

    async def delete(self, org_id: uuid.UUID, *, session: AsyncSession | None = None) -> None:
        """Delete the store and its folders; `rag_store_not_found` when there is none."""
        async with self.database.scope(session) as s:
            deleted = await s.scalar(
                sa.delete(FileSearchStore)
                .where(FileSearchStore.organization_id == org_id)
                .returning(FileSearchStore.id),
                execution_options={"synchronize_session": False},
            )
            if deleted is None:
                raise RagStoreNotFound("this organisation has no RAG store")
            # SQLite enforces the cascade only with foreign keys on; say it in SQL either way.
            await s.execute(
                sa.delete(DocumentFolder).where(
                    DocumentFolder.organization_id == org_id, DocumentFolder.store_id == deleted
                ),
                execution_options={"synchronize_session": False},
            )

    # --- folders -------------------------------------------------------------------------------
    async def create_folder(
        self,
        org_id: uuid.UUID,
        folder_name: str,
        *,
        parent_id: uuid.UUID | None = None,
        folder_id: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> DocumentFolder:
        """A folder in the organisation's store, under `parent_id` (a folder of the same store)
        and mirroring the workspace folder `folder_id` if given."""
        name = _folder_name(folder_name)
        async with self.database.scope(session) as s:
            store = await self._store(s, org_id)
            if parent_id is not None:
                await self._folder(s, org_id, parent_id, field="parent_id")
            if folder_id is not None:
                found = await s.scalar(
                    sa.select(Folder.id).where(
                        Folder.organization_id == org_id, Folder.id == folder_id
                    )
                )
                if found is None:
                    raise InvalidRagStore(
                        f"no workspace folder {folder_id}", field="folder_id", stateful=True
                    )
            folder = DocumentFolder(
                organization_id=org_id,
                id=new_id(),
                store_id=store.id,
                folder_name=name,
                parent_id=parent_id,
                folder_id=folder_id,
            )
            s.add(folder)
            await s.flush()
            return folder

    async def _folder(
        self, s: AsyncSession, org_id: uuid.UUID, folder_id: uuid.UUID, *, field: str = "id"
    ) -> DocumentFolder:
        folder = await s.scalar(
            sa.select(DocumentFolder).where(
                DocumentFolder.organization_id == org_id, DocumentFolder.id == folder_id
            )
        )
        if folder is None:
            raise RagFolderNotFound(f"no RAG folder {folder_id}", id=str(folder_id), field=field)
        return folder

    async def get_folder(
        self, org_id: uuid.UUID, folder_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> DocumentFolder:
        async with self.database.scope(session, readonly=True) as s:
            return await self._folder(s, org_id, folder_id)

    async def list_folders(
        self,
        org_id: uuid.UUID,
        *,
        parent_id: uuid.UUID | None = None,
        top_level: bool = False,
        after: uuid.UUID | None = None,
        limit: int = 50,
        session: AsyncSession | None = None,
    ) -> Sequence[DocumentFolder]:
        """Folders of the store, oldest first: all of them, the children of `parent_id`, or
        (`top_level`) those without a parent."""
        query = (
            sa.select(DocumentFolder)
            .where(DocumentFolder.organization_id == org_id)
            .order_by(DocumentFolder.id)
            .limit(limit)
        )
        if parent_id is not None:
            query = query.where(DocumentFolder.parent_id == parent_id)
        elif top_level:
            query = query.where(DocumentFolder.parent_id.is_(None))
        if after is not None:
            query = query.where(DocumentFolder.id > after)
        async with self.database.scope(session, readonly=True) as s:
            return (await s.scalars(query)).all()

    async def delete_folder(
        self, org_id: uuid.UUID, folder_id: uuid.UUID, *, session: AsyncSession | None = None
    ) -> int:
        """Delete the folder and every folder under it; returns how many were deleted."""
        async with self.database.scope(session) as s:
            await self._folder(s, org_id, folder_id)
            doomed = [folder_id]
            frontier = [folder_id]
            while frontier:
                children = (
                    await s.scalars(
                        sa.select(DocumentFolder.id).where(
                            DocumentFolder.organization_id == org_id,
                            DocumentFolder.parent_id.in_(frontier),
                        )
                    )
                ).all()
                frontier = list(children)
                doomed.extend(frontier)
            for start in range(0, len(doomed), 500):
                await s.execute(
                    sa.delete(DocumentFolder).where(
                        DocumentFolder.organization_id == org_id,
                        DocumentFolder.id.in_(doomed[start : start + 500]),
                    ),
                    execution_options={"synchronize_session": False},
                )
            return len(doomed)

"""Workspace documents: sibling folder names, content found by hash, one active job per key.

- `folders`: a name is unique among its siblings (`uq_folders_sibling_name`, and
  `uq_folders_root_name` at the root, where `parent_id` is null).
- `documents`: the same content (`file_hash`) is registered once per folder
  (`uq_documents_folder_file_hash`, `uq_documents_root_file_hash`), so two racing
  registrations of one file cannot both count against the storage limit.
- `processing_jobs.status`: queued, running, succeeded, failed, canceled (were pending and
  completed for the first and third); at most one queued or running job per cache key
  (`uq_processing_jobs_active_cache_key`).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-16 10:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NEW = ("queued", "running", "succeeded", "failed", "canceled")
_OLD = ("pending", "running", "completed", "failed", "canceled")
_RENAMED = {"pending": "queued", "completed": "succeeded"}


def _statuses(values: Sequence[str]) -> str:
    return "status IN (" + ", ".join(f"'{value}'" for value in values) + ")"


def _partial(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(
        name,
        table,
        columns,
        unique=True,
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )


def _set_statuses(renamed: dict[str, str], allowed: Sequence[str]) -> None:
    jobs = sa.table("processing_jobs", sa.column("status", sa.String()))
    with op.batch_alter_table("processing_jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_processing_jobs_status"), type_="check")
    for old, new in renamed.items():
        op.execute(jobs.update().where(jobs.c.status == old).values(status=new))
    with op.batch_alter_table("processing_jobs", schema=None) as batch_op:
        batch_op.create_check_constraint(op.f("ck_processing_jobs_status"), _statuses(allowed))


def upgrade() -> None:
    _set_statuses(_RENAMED, _NEW)
    _partial(
        "uq_folders_sibling_name",
        "folders",
        ["organization_id", "parent_id", "name"],
        "parent_id IS NOT NULL",
    )
    _partial("uq_folders_root_name", "folders", ["organization_id", "name"], "parent_id IS NULL")
    _partial(
        "uq_documents_folder_file_hash",
        "documents",
        ["organization_id", "folder_id", "file_hash"],
        "folder_id IS NOT NULL AND file_hash IS NOT NULL",
    )
    _partial(
        "uq_documents_root_file_hash",
        "documents",
        ["organization_id", "file_hash"],
        "folder_id IS NULL AND file_hash IS NOT NULL",
    )
    _partial(
        "uq_processing_jobs_active_cache_key",
        "processing_jobs",
        ["organization_id", "cache_key"],
        "status IN ('queued', 'running')",
    )


def downgrade() -> None:
    op.drop_index("uq_processing_jobs_active_cache_key", table_name="processing_jobs")
    op.drop_index("uq_documents_root_file_hash", table_name="documents")
    op.drop_index("uq_documents_folder_file_hash", table_name="documents")
    op.drop_index("uq_folders_root_name", table_name="folders")
    op.drop_index("uq_folders_sibling_name", table_name="folders")
    _set_statuses({new: old for old, new in _RENAMED.items()}, _OLD)

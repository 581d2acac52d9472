"""The declarative base, the naming convention and the tenant mixin every tenant table uses."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

from saascore.kit.ids import new_id
from saascore.kit.time import utcnow
from saascore.kit.types import JSONType, UTCDateTime

__all__ = [
    "ORGANIZATION_ID",
    "Base",
    "GlobalMixin",
    "TenantMixin",
    "TimestampMixin",
    "non_negative",
    "tenant_fk",
]

ORGANIZATION_ID = "organization_id"


def _fk_columns(constraint: sa.Constraint, table: sa.Table) -> str:
    """The columns of a foreign key other than `organization_id`, which every tenant FK has."""
    names = [column.name for column in constraint.columns]  # type: ignore[attr-defined]
    own = [name for name in names if name != ORGANIZATION_ID]
    return "_".join(own or names)


NAMING_CONVENTION: dict[str, Any] = {
    "fk_columns": _fk_columns,
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(fk_columns)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
        list[str]: JSONType,
        uuid.UUID: sa.Uuid(),
    }

    def __repr__(self) -> str:
        keys = [key for key in ("organization_id", "id", "code", "name") if hasattr(self, key)]
        shown = ", ".join(f"{key}={getattr(self, key, None)!r}" for key in keys)
        return f"{type(self).__name__}({shown})"


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(
        default=utcnow, server_default=sa.func.now(), sort_order=90
    )
    updated_at: Mapped[datetime] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=sa.func.now(), sort_order=91
    )


class GlobalMixin:
    """A catalog table shared by every organisation (plans, prices, meters)."""

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id, sort_order=-10)


class TenantMixin:
    """A table owned by one organisation, keyed `(organization_id, id)`.

    `organization_id` is the first primary-key column, so the primary key and every unique
    constraint start with the tenant and the table can be distributed by it (Citus).
    Deleting an organisation deletes its rows.
    """

    @declared_attr
    @classmethod
    def organization_id(cls) -> Mapped[uuid.UUID]:
        return mapped_column(
            sa.ForeignKey("organizations.id", ondelete="CASCADE"),
            primary_key=True,
            sort_order=-20,
        )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id, sort_order=-10)


def tenant_fk(
    columns: str | list[str],
    table: str,
    *,
    ondelete: str | None = None,
    name: str | None = None,
) -> sa.ForeignKeyConstraint:
    """A composite foreign key `(organization_id, <columns>) -> table(organization_id, id)`.

    Including `organization_id` means a row can only ever point at a row of its own tenant.
    """
    own = [columns] if isinstance(columns, str) else columns
    remote = ["id"] if len(own) == 1 else own
    return sa.ForeignKeyConstraint(
        [ORGANIZATION_ID, *own],
        [f"{table}.{ORGANIZATION_ID}", *(f"{table}.{column}" for column in remote)],
        ondelete=ondelete,
        name=name,
    )


def non_negative(*columns: str) -> list[sa.CheckConstraint]:
    """CHECK constraints `column >= 0`, one per column, named `<column>_non_negative`."""
    return [
        sa.CheckConstraint(f"{column} >= 0", name=f"{column}_non_negative") for column in columns
    ]

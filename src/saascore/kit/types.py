"""Column types that behave the same on PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

__all__ = ["JSONType", "UTCDateTime", "str_enum"]

#: JSON that is JSONB on PostgreSQL (indexable, compact) and JSON text on SQLite.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both databases.

    PostgreSQL stores `timestamptz`; SQLite stores the UTC wall time as text. Naive values are
    refused on the way in, so a local time can never be stored as if it were UTC, and every
    value read back is aware and in UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def str_enum(enum: type[StrEnum], name: str) -> sa.Enum:
    """A `StrEnum` stored as a short string with a CHECK constraint listing its values.

    Not a native PostgreSQL enum: adding a value is then a constraint change, not an
    `ALTER TYPE` that cannot run inside a transaction.
    """
    return sa.Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        validate_strings=True,
        values_callable=_values,
    )


def _values(enum: Any) -> list[str]:
    return [member.value for member in enum]

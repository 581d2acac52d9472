"""Cursor pagination: `?limit=50&cursor=...`, answered with `{"items": [...], "next_cursor": ...}`.

A cursor is opaque to clients: the position after the last item of a page (an id or a sequence
number), base64url-encoded. Paging on a position, unlike an offset, neither skips nor repeats
items when rows are added meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from pydantic import BaseModel, Field

from saascore.kit.errors import InvalidInput

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "InvalidCursor",
    "Page",
    "decode_cursor",
    "encode_cursor",
    "int_cursor",
    "paginate",
    "uuid_cursor",
]

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class InvalidCursor(InvalidInput):
    """The cursor is not one this API gave out."""

    code = "invalid_cursor"


class Page(BaseModel, Generic[T]):
    items: list[T] = Field(description="This page's items")
    #: Pass as `cursor` for the next page; null on the last one.
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last one."
    )


def encode_cursor(position: str | int | uuid.UUID) -> str:
    return base64.urlsafe_b64encode(str(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.urlsafe_b64decode(padded.encode("ascii")).decode()
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidCursor("the cursor is not one this API gave out", field="cursor") from None


def uuid_cursor(cursor: str | None) -> uuid.UUID | None:
    """The id a cursor points after, or None for the first page."""
    if cursor is None:
        return None
    try:
        return uuid.UUID(decode_cursor(cursor))
    except ValueError:
        raise InvalidCursor("the cursor is not one this API gave out", field="cursor") from None


def int_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        return int(decode_cursor(cursor))
    except ValueError:
        raise InvalidCursor("the cursor is not one this API gave out", field="cursor") from None


def paginate(
    rows: Sequence[T], limit: int, position: Callable[[T], str | int | uuid.UUID]
) -> tuple[list[T], str | None]:
    """A page from `rows` fetched with `limit + 1` (to learn whether more follow), and the
    cursor after it (None on the last page)."""
    items = list(rows[:limit])
    if len(rows) <= limit or not items:
        return items, None
    return items, encode_cursor(position(items[-1]))

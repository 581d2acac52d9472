"""Identifiers: UUIDv7, time-ordered so that new rows land together in an index."""

from __future__ import annotations

import uuid

from uuid_utils.compat import uuid7

__all__ = ["new_id"]


def new_id() -> uuid.UUID:
    """A new UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits."""
    return uuid7()

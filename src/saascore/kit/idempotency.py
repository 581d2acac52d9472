"""Fingerprints of requests, to tell a retry from a different request that reuses a key."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

__all__ = ["payload_hash"]


def payload_hash(payload: dict[str, Any]) -> str:
    """SHA-256 of the payload as canonical JSON (sorted keys; UUIDs, datetimes as strings)."""
    return hashlib.sha256(_CANONICAL.encode(payload).encode()).hexdigest()


def _plain(value: Any) -> str:
    """A datetime as the same instant in UTC (so a time zone is not a different request),
    written as `str()` writes it, as before; anything else as `str()`."""
    if isinstance(value, datetime) and value.utcoffset() is not None:
        value = value.astimezone(UTC)
    return str(value)


#: One encoder for every call (`json.dumps` with options builds a new one each time).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_plain)

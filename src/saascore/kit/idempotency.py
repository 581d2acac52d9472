"""Fingerprints of requests, to tell a retry from a different request that reuses a key."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["payload_hash"]


def payload_hash(payload: dict[str, Any]) -> str:
    """SHA-256 of the payload as canonical JSON (sorted keys; UUIDs, datetimes as strings)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()

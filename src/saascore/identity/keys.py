"""API key material: `sk_live_<random>`, `sk_test_<random>` and operators' `sk_op_<random>`.

Only a key's SHA-256 is stored, with its first characters as a visible prefix. A key is 32
random bytes, so a plain (unsalted, fast) hash is enough: there is nothing to guess.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Final

__all__ = ["OPERATOR", "KeyMaterial", "hash_key", "new_key"]

OPERATOR: Final = "op"
_VISIBLE = 8  # random characters kept in the prefix


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    raw: str
    prefix: str
    hash: str


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def new_key(kind: str) -> KeyMaterial:
    """A new key of `kind` (`live`, `test` or `op`)."""
    head = f"sk_{kind}_"
    raw = head + secrets.token_urlsafe(32)
    return KeyMaterial(raw=raw, prefix=raw[: len(head) + _VISIBLE], hash=hash_key(raw))

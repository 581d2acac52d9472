"""Password hashing: argon2id with OWASP's parameters, through pwdlib.

bcrypt hashes (seed 004 deployments) are still verified, and `verify` hands back an argon2id
hash to store in their place. Hashing takes milliseconds of CPU by design, so it runs in a
worker thread (argon2 and bcrypt release the GIL) instead of stalling the event loop.
"""

from __future__ import annotations

import asyncio
import secrets
from functools import cache

from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from saascore.tenancy.errors import WeakPassword

__all__ = ["MAX_PASSWORD", "check_password", "hash_password", "verify_password"]

MAX_PASSWORD = 256

#: OWASP Password Storage Cheat Sheet: argon2id, 19 MiB of memory, 2 iterations, 1 lane.
_HASHER = PasswordHash(
    (Argon2Hasher(time_cost=2, memory_cost=19_456, parallelism=1), BcryptHasher())
)


@cache
def _decoy() -> str:
    """A hash to verify against when there is no account, so that a missing e-mail takes as
    long to refuse as a wrong password."""
    return _HASHER.hash(secrets.token_urlsafe(16))


def check_password(password: str, minimum: int) -> None:
    """`WeakPassword` unless the password has `minimum` to `MAX_PASSWORD` characters."""
    if len(password) < minimum:
        raise WeakPassword(f"a password needs at least {minimum} characters", minimum=minimum)
    if len(password) > MAX_PASSWORD:
        raise WeakPassword(f"a password has at most {MAX_PASSWORD} characters")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, password)


async def verify_password(password: str, stored: str | None) -> tuple[bool, str | None]:
    """Whether `password` matches `stored`, and a new hash to store when `stored` uses an
    older scheme or weaker parameters (else None). `stored=None` (no account, or an account
    without a password) takes the same time and never matches."""
    if stored is None:
        await asyncio.to_thread(_HASHER.verify, password, _decoy())
        return False, None
    try:
        return await asyncio.to_thread(_HASHER.verify_and_update, password, stored)
    except UnknownHashError:
        return False, None

"""Password rules and hashing: argon2id with OWASP's parameters, through pwdlib.

`check_password` follows NIST SP 800-63B (5.1.1.2): a minimum length and a maximum, and no
composition rules (no "one digit, one symbol"); instead a password is refused when it is one
character or pattern repeated, a run such as `1234567890` or `zyxwvutsrq`, a common or
breached password or an English word (the frequency lists that zxcvbn ships: 30,000 passwords
from breaches and 30,000 words, read offline), such a password with digits or symbols around
it (`password2024!`), or the user's e-mail or a part of it.

bcrypt hashes (seed 004 deployments) are still verified, and `verify` hands back an argon2id
hash to store in their place. Hashing takes milliseconds of CPU by design, so it runs in a
worker thread (argon2 and bcrypt release the GIL) instead of stalling the event loop.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import unicodedata
from functools import cache
from itertools import pairwise

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


#: What may surround a common password and still leave it common (`password2024!`).
_DECORATION = re.compile(r"^[\W\d_]*(.*?)[\W\d_]*$", re.DOTALL)
_ONLY_DECORATION = re.compile(r"^[\W\d_]*$")
#: The pieces of an e-mail's local part that count as guessable (`ada` of `ada.lovelace`).
_LOCAL_PARTS = re.compile(r"[._+\-]+")
#: Fewer distinct characters than this is a repetition (`aaaaaaaaab`, `1212121212`).
_DISTINCT = 3
#: The shortest core (word, e-mail part) worth refusing when decorated with digits or symbols.
_SHORTEST_CORE = 4


@cache
def _common() -> tuple[frozenset[str], frozenset[str]]:
    """Breached passwords, and words (read from zxcvbn's lists once, on first use)."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    passwords = frozenset(p.casefold() for p in FREQUENCY_LISTS["passwords"])
    words = frozenset(w.casefold() for w in FREQUENCY_LISTS["english_wikipedia"])
    return passwords, words


def _repeated(text: str) -> bool:
    """One character, or a short pattern, over and over."""
    if len(set(text)) < _DISTINCT:
        return True
    size = len(text)
    return any(
        size % period == 0 and text == text[:period] * (size // period)
        for period in range(1, size // 2 + 1)
    )


def _sequential(text: str) -> bool:
    """Each character one after (or before) the last: `abcdefghij`, `9876543210`, and digits
    round the end (`1234567890`)."""
    steps = {ord(b) - ord(a) for a, b in pairwise(text)}
    if steps in ({1}, {-1}):
        return True
    if text.isdigit():
        return len({(int(b) - int(a)) % 10 for a, b in pairwise(text)}) == 1
    return False


def check_password(password: str, minimum: int, *, email: str | None = None) -> None:
    """`WeakPassword` unless the password has `minimum` to `MAX_PASSWORD` characters and is
    none of what NIST SP 800-63B says to refuse (see the module's docstring). `email` is the
    account's, which the password must not be built on."""
    if len(password) < minimum:
        raise WeakPassword(f"a password needs at least {minimum} characters", minimum=minimum)
    if len(password) > MAX_PASSWORD:
        raise WeakPassword(f"a password has at most {MAX_PASSWORD} characters")
    text = unicodedata.normalize("NFKC", password).casefold()
    if _repeated(text):
        raise WeakPassword("a password must not be one character or pattern repeated")
    if _sequential(text):
        raise WeakPassword("a password must not be a run of characters such as 1234567890")
    core = _DECORATION.match(text)
    stripped = core.group(1) if core is not None else text
    passwords, words = _common()
    if (
        text in passwords
        or text in words
        or (len(stripped) >= _SHORTEST_CORE and stripped in passwords)
    ):
        raise WeakPassword("this password is too common: a leaked password or a dictionary word")
    if email is not None and _built_on_email(text, email.casefold()):
        raise WeakPassword("a password must not be built on the e-mail address")


def _built_on_email(text: str, email: str) -> bool:
    """The e-mail, its local part or a piece of it (`ada` of `ada.lovelace`), alone or with
    only digits and symbols around it, with or without its dots."""
    local = email.partition("@")[0]
    context = {email, local, *(p for p in _LOCAL_PARTS.split(local) if len(p) >= _SHORTEST_CORE)}
    context |= {_LOCAL_PARTS.sub("", word) for word in context}
    for candidate in {text, _LOCAL_PARTS.sub("", text)}:
        for word in context:
            rest = candidate.replace(word, "", 1)
            if word and word in candidate and _ONLY_DECORATION.match(rest):
                return True
    return False


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

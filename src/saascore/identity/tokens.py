"""Access and refresh tokens: JWTs signed with HS256 through PyJWT.

Every token carries `iss`, `aud`, `sub` (the user), `org`, `typ` (`access` or `refresh`),
`iat`, `nbf`, `exp` and `jti`, and decoding requires all of them, pins the algorithm (so
`alg: none` and algorithm swaps are refused), checks the times against the clock that issues
tokens, and checks the type, so a refresh token is never accepted as an access token. A
refresh token's `jti` is its row in `refresh_tokens`, and `fam` names the family that rotation
grows.

`iat` carries microseconds (a JSON number such as `1765616400.123456`, which NumericDate
allows), so that a token issued just after a user's `tokens_valid_after` is told apart from one
issued just before it in the same second. Times outside 1970 to 9999 are refused as invalid.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

# PyJWT (with `cryptography`, which it loads) is imported where a token is made or read: building
# the facade, as every CLI command does, needs neither.
from saascore.config import Settings
from saascore.identity.errors import InvalidToken
from saascore.kit.errors import ConfigurationError
from saascore.kit.time import utcnow

__all__ = ["ALGORITHM", "Claims", "IssuedToken", "TokenCodec", "TokenType"]

logger = logging.getLogger("saascore.identity")

ALGORITHM: Final = "HS256"
TokenType = Literal["access", "refresh"]
_REQUIRED: Final = ["iss", "aud", "sub", "org", "typ", "iat", "nbf", "exp", "jti"]
#: Seconds of clock skew tolerated between the processes that issue and check tokens.
_LEEWAY: Final = 5
_SECRET_FILE: Final = "jwt-secret"  # noqa: S105 - a file name
#: The latest time a token may name: 9999-12-31T23:59:59Z, the end of `datetime`'s range.
_LAST_TIMESTAMP: Final = 253_402_300_799
_MICROSECOND: Final = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: uuid.UUID
    organization_id: uuid.UUID
    type: TokenType
    token_id: uuid.UUID
    family_id: uuid.UUID | None
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: Claims


class TokenCodec:
    """Signs and checks tokens with the settings' key, issuer, audience and lifetimes."""

    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self.access_ttl = timedelta(minutes=settings.access_token_minutes)
        self.refresh_ttl = timedelta(days=settings.refresh_token_days)
        self._key: str | None = None

    @property
    def key(self) -> str:
        if self._key is None:
            self._key = signing_key(self.settings)
        return self._key

    def issue(
        self,
        type_: TokenType,
        user_id: uuid.UUID,
        organization_id: uuid.UUID,
        *,
        token_id: uuid.UUID | None = None,
        family_id: uuid.UUID | None = None,
        after: datetime | None = None,
    ) -> IssuedToken:
        """A signed token. `after` (the user's `tokens_valid_after`) makes `iat` later than
        it, even on a clock that has not moved since (a frozen test clock, or a coarse one)."""
        now = self.clock()
        if after is not None and now <= after:
            now = after + _MICROSECOND
        claims = Claims(
            user_id=user_id,
            organization_id=organization_id,
            type=type_,
            token_id=token_id or uuid.uuid4(),
            family_id=family_id,
            issued_at=now,
            # Whole seconds, as `exp` carries it.
            expires_at=(now + (self.access_ttl if type_ == "access" else self.refresh_ttl)).replace(
                microsecond=0
            ),
        )
        payload: dict[str, Any] = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": str(user_id),
            "org": str(organization_id),
            "typ": type_,
            "iat": now.timestamp(),
            "nbf": math.floor(now.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
            "jti": str(claims.token_id),
        }
        if family_id is not None:
            payload["fam"] = str(family_id)
        import jwt

        return IssuedToken(jwt.encode(payload, self.key, algorithm=ALGORITHM), claims)

    def decode(self, token: str, expected: TokenType) -> Claims:
        """The claims of a valid token of the expected type; `InvalidToken` for anything else
        (the reason goes to the debug log, not to the client)."""
        import jwt

        try:
            payload = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                # PyJWT would check the times against the wall clock, and tokens are issued by
                # `self.clock`: both sides must read the same clock (`_check_times`).
                options={
                    "require": _REQUIRED,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
            self._check_times(payload)
            if payload["typ"] != expected:
                raise jwt.InvalidTokenError(f"a {payload['typ']!r} token, not {expected!r}")
            family = payload.get("fam")
            if expected == "refresh" and family is None:
                raise jwt.InvalidTokenError("a refresh token without a family")
            return Claims(
                user_id=uuid.UUID(payload["sub"]),
                organization_id=uuid.UUID(payload["org"]),
                type=expected,
                token_id=uuid.UUID(payload["jti"]),
                family_id=uuid.UUID(family) if family is not None else None,
                issued_at=datetime.fromtimestamp(payload["iat"], UTC),
                expires_at=datetime.fromtimestamp(payload["exp"], UTC),
            )
        except (jwt.InvalidTokenError, ValueError, TypeError, KeyError, OverflowError) as exc:
            logger.debug("token refused: %s", exc)
            raise InvalidToken("the token is invalid or has expired") from None

    def _check_times(self, payload: dict[str, Any]) -> None:
        """`exp` passed, `nbf` or `iat` still ahead: refused, with `_LEEWAY` for clock skew
        between the processes that issue and check tokens. A time that is not a finite number
        from 1970 to 9999 (`2**70`, `1e308`, NaN) is refused before any date is made of it."""
        import jwt

        now = self.clock().timestamp()
        times = {}
        for claim in ("exp", "nbf", "iat"):
            value = payload[claim]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise jwt.InvalidTokenError(f"{claim} is not a number")
            if not (0 <= value <= _LAST_TIMESTAMP):  # also false for NaN
                raise jwt.InvalidTokenError(f"{claim} is out of range")
            times[claim] = value
        if times["exp"] <= now - _LEEWAY:
            raise jwt.ExpiredSignatureError("expired")
        if times["nbf"] > now + _LEEWAY:
            raise jwt.ImmatureSignatureError("not yet valid (nbf)")
        if times["iat"] > now + _LEEWAY:
            raise jwt.ImmatureSignatureError("issued in the future (iat)")


def signing_key(settings: Settings) -> str:
    """`SAASCORE_JWT_SECRET`, or outside production a random key kept in `data_dir`."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    if settings.environment == "production":
        raise ConfigurationError(
            "SAASCORE_JWT_SECRET is required in production (32 characters or more, the same "
            "in every process)"
        )
    path = Path(settings.data_dir) / _SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    draft = path.with_name(f"{_SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    draft.touch(mode=0o600)
    draft.write_text(key)
    try:  # a link is atomic: of two processes starting together, both end with the first key
        os.link(draft, path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        draft.unlink()
    logger.warning("SAASCORE_JWT_SECRET is not set: tokens are signed with a key kept in %s", path)
    return key

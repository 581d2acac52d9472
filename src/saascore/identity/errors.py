"""Identity's refusals. Authentication failures are deliberately vague: they never say whether
an e-mail exists, or which check a token failed."""

from __future__ import annotations

from typing import ClassVar

from saascore.kit.errors import AlreadyExists, Conflict, DomainError, InvalidInput, NotFound

__all__ = [
    "AccountDisabled",
    "ApiKeyNotFound",
    "InvalidCredentials",
    "InvalidToken",
    "LastOwner",
    "OrganizationRequired",
    "OrganizationSuspended",
    "PermissionDenied",
    "TokenReused",
    "Unauthenticated",
    "UserExists",
    "UserNotFound",
    "WeakPassword",
]


class Unauthenticated(DomainError):
    """(401) No credentials, or credentials that do not hold."""

    code: ClassVar[str] = "unauthenticated"
    status_code: ClassVar[int] = 401
    headers = {"WWW-Authenticate": "Bearer"}


class InvalidCredentials(Unauthenticated):
    """The e-mail and password do not match an active account (which one is not said)."""

    code = "invalid_credentials"


class InvalidToken(Unauthenticated):
    """A token or API key that is malformed, expired, revoked, of the wrong type or forged."""

    code = "invalid_token"


class TokenReused(Unauthenticated):
    """A refresh token came back after it was rotated: its whole family is now revoked."""

    code = "token_reused"


class PermissionDenied(DomainError):
    """(403) The principal is known but may not do this."""

    code: ClassVar[str] = "permission_denied"
    status_code: ClassVar[int] = 403


class AccountDisabled(PermissionDenied):
    code = "account_disabled"


class OrganizationSuspended(PermissionDenied):
    code = "organization_suspended"


class OrganizationRequired(Conflict):
    """The e-mail and password match accounts in several organisations: name one."""

    code = "organization_required"


class WeakPassword(InvalidInput):
    code = "weak_password"


class UserExists(AlreadyExists):
    code = "user_exists"


class UserNotFound(NotFound):
    code = "user_not_found"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"


class LastOwner(Conflict):
    """The change would leave the organisation without an active owner."""

    code = "last_owner"

"""Identity's refusals. Authentication failures are deliberately vague: they never say whether
an e-mail exists, or which check a token failed."""

from __future__ import annotations

from typing import ClassVar

from saascore.kit.errors import Conflict, DomainError, NotFound, PermissionDenied
from saascore.tenancy.errors import LastOwner, UserExists, UserNotFound, WeakPassword

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


class AccountDisabled(PermissionDenied):
    """The user's account is disabled: the credentials sent no longer work."""

    code = "account_disabled"


class OrganizationSuspended(PermissionDenied):
    """The organisation is suspended: its users and keys are refused until an operator
    resumes it."""

    code = "organization_suspended"


class OrganizationRequired(Conflict):
    """The e-mail and password match accounts in several organisations: name one."""

    code = "organization_required"


class ApiKeyNotFound(NotFound):
    """No API key with this id in the caller's organisation."""

    code = "api_key_not_found"

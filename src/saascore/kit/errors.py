"""saascore's exceptions. Domain code raises these; the API maps them to HTTP in one place.

SaascoreError                   every error saascore raises on purpose
├── ConfigurationError          a setting is missing or invalid (fails at start)
├── DatabaseUnavailable         the database cannot be reached
├── RateLimiterUnavailable      the rate-limit storage (Redis) cannot be reached
└── DomainError                 a request that the domain refuses; has a stable `code`
    ├── PermissionDenied            (403) the caller is known but may not do this
    ├── NotFound                    (404) the object does not exist in the caller's organisation
    ├── AlreadyExists               (409) a unique value is taken
    ├── Conflict                    (409) the request conflicts with the current state
    └── InvalidInput                (422) the request is well-formed but its values are wrong
        └── InvalidCharacter            (422) a text holds a character no field takes
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "AlreadyExists",
    "ConfigurationError",
    "Conflict",
    "DatabaseUnavailable",
    "DomainError",
    "IdempotencyConflict",
    "InvalidCharacter",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "RateLimiterUnavailable",
    "SaascoreError",
]


class SaascoreError(Exception):
    """Base class of every error saascore raises on purpose."""


class ConfigurationError(SaascoreError):
    """A setting is missing or invalid. The message is one line naming the variable."""


class DatabaseUnavailable(SaascoreError):
    """(503) The database cannot be reached (refused, timed out, authentication failed):
    retry after `Retry-After` seconds."""

    code: ClassVar[str] = "database_unavailable"
    status_code: ClassVar[int] = 503


class RateLimiterUnavailable(SaascoreError):
    """(503) The rate-limit storage cannot be reached (Redis refused, failed or timed out).
    Requests that must be counted are refused, never let through uncounted."""

    code: ClassVar[str] = "rate_limiter_unavailable"
    status_code: ClassVar[int] = 503


class DomainError(SaascoreError):
    """A refusal by the domain. `code` is stable: clients switch on it."""

    code: ClassVar[str] = "domain_error"
    status_code: ClassVar[int] = 400
    #: HTTP headers the API adds to the error response (e.g. `Retry-After`).
    headers: Mapping[str, str] = {}

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(DomainError):
    """(404) The object does not exist in the caller's organisation."""

    code = "not_found"
    status_code = 404


class PermissionDenied(DomainError):
    """(403) The principal is known but may not do this."""

    code = "permission_denied"
    status_code = 403


class AlreadyExists(DomainError):
    """(409) A value that must be unique is taken."""

    code = "already_exists"
    status_code = 409


class Conflict(DomainError):
    """(409) The request conflicts with the current state."""

    code = "conflict"
    status_code = 409


class IdempotencyConflict(Conflict):
    """An idempotency key came back with a request different from the one it first carried."""

    code = "idempotency_conflict"


class InvalidInput(DomainError):
    """(422) The request is well-formed but one of its values is refused."""

    code = "invalid_input"
    status_code = 422
    #: True where the refusal depends on what is stored (a balance, a counter, the meters or
    #: users of the organisation, a plan's prices), not on the input alone: the CLI answers
    #: those with exit 1, a refusal, and every other invalid input with exit 2, a usage error.
    stateful: ClassVar[bool] = False


class InvalidCharacter(InvalidInput):
    """(422) A text holds a character no field of its kind takes: a control character in a
    name or a note (which would reach an operator's terminal as an escape sequence), a NUL
    anywhere in the request, or half a surrogate pair."""

    code = "invalid_character"

"""Tenancy's refusals: organisations and their users."""

from __future__ import annotations

from saascore.kit.errors import AlreadyExists, Conflict, InvalidInput, NotFound

__all__ = [
    "LastOwner",
    "OrganizationDeleted",
    "OrganizationExists",
    "OrganizationNotFound",
    "UserExists",
    "UserNotFound",
    "WeakPassword",
]


class OrganizationNotFound(NotFound):
    code = "organization_not_found"


class OrganizationExists(AlreadyExists):
    code = "organization_exists"


class OrganizationDeleted(Conflict):
    """The organisation is deleted: it can no longer be changed."""

    code = "organization_deleted"


class UserNotFound(NotFound):
    code = "user_not_found"


class UserExists(AlreadyExists):
    code = "user_exists"


class LastOwner(Conflict):
    """The change would leave the organisation without an active owner."""

    code = "last_owner"


class WeakPassword(InvalidInput):
    code = "weak_password"

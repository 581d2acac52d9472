"""Tenancy's refusals: organisations and their users."""

from __future__ import annotations

from saascore.kit.errors import AlreadyExists, Conflict, InvalidInput, NotFound

__all__ = [
    "CurrencyInUse",
    "LastOwner",
    "OrganizationDeleted",
    "OrganizationExists",
    "OrganizationNotFound",
    "UserExists",
    "UserNotFound",
    "WeakPassword",
]


class OrganizationNotFound(NotFound):
    """No organisation with this id."""

    code = "organization_not_found"


class OrganizationExists(AlreadyExists):
    """An organisation with this slug, domain or external id exists already."""

    code = "organization_exists"


class OrganizationDeleted(Conflict):
    """The organisation is deleted: it can no longer be changed."""

    code = "organization_deleted"


class CurrencyInUse(Conflict):
    """The organisation's currency cannot change while it is billed in it: a live
    subscription, or an unpaid invoice (open, overdue or uncollectible), in the current
    currency. End the subscription and settle or void the invoices first."""

    code = "currency_in_use"


class UserNotFound(NotFound):
    """No user with this id in the caller's organisation."""

    code = "user_not_found"


class UserExists(AlreadyExists):
    """A user with this e-mail (or external id) exists already in the organisation."""

    code = "user_exists"


class LastOwner(Conflict):
    """The change would leave the organisation without an active owner."""

    code = "last_owner"


class WeakPassword(InvalidInput):
    """The password is too short, too long, or one character or pattern repeated."""

    code = "weak_password"

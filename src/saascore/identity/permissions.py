"""What each role and each API-key scope may do.

| Permission        | owner | admin | member | viewer | What it covers                            |
| ----------------- | ----- | ----- | ------ | ------ | ----------------------------------------- |
| `usage:read`      | yes   | yes   | yes    | yes    | limits, checks, usage summaries           |
| `usage:write`     | yes   | yes   | yes    |        | usage events, reservations, LLM calls     |
| `billing:read`    | yes   | yes   | yes    | yes    | credits, subscription, invoices, payments |
| `billing:write`   | yes   | yes   |        |        | checkout, plan changes, packs, billing    |
| `credits:write`   | yes   | yes   | yes    |        | drawing credits                           |
| `workspace:read`  | yes   | yes   | yes    | yes    | folders, documents, jobs, memory          |
| `workspace:write` | yes   | yes   | yes    |        | changing them                             |
| `admin`           | yes   | yes   |        |        | users, everyone's keys, settings, audit   |

The endpoints of each are listed in docs/api.md.

Only an owner may make or unmake an owner. An API key's scopes are permissions; a key that acts
for a user is also held to what that user's role allows *now*, so demoting a user demotes their
keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Final

from saascore.kit.errors import InvalidInput
from saascore.models import UserRole

__all__ = ["ROLE_PERMISSIONS", "Permission", "parse_scopes"]


class Permission(StrEnum):
    USAGE_READ = "usage:read"
    USAGE_WRITE = "usage:write"
    BILLING_READ = "billing:read"
    BILLING_WRITE = "billing:write"
    CREDITS_WRITE = "credits:write"
    WORKSPACE_READ = "workspace:read"
    WORKSPACE_WRITE = "workspace:write"
    ADMIN = "admin"


_ALL: Final = frozenset(Permission)
_READ: Final = frozenset(
    {Permission.USAGE_READ, Permission.BILLING_READ, Permission.WORKSPACE_READ}
)

ROLE_PERMISSIONS: Final[dict[UserRole, frozenset[Permission]]] = {
    UserRole.OWNER: _ALL,
    UserRole.ADMIN: _ALL,
    UserRole.MEMBER: _READ
    | {Permission.USAGE_WRITE, Permission.CREDITS_WRITE, Permission.WORKSPACE_WRITE},
    UserRole.VIEWER: _READ,
}


def parse_scopes(scopes: Iterable[str]) -> frozenset[Permission]:
    """Scope names as permissions; an unknown name is an `InvalidInput`."""
    parsed = set()
    for scope in scopes:
        try:
            parsed.add(Permission(scope))
        except ValueError:
            known = ", ".join(p.value for p in Permission)
            raise InvalidInput(f"unknown scope {scope!r}; known: {known}", scope=scope) from None
    return frozenset(parsed)

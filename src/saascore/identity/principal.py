"""Who is calling: a user (access token), an API key, or an operator (the platform's staff)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from saascore.audit.service import Actor, Origin
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.metering.ratelimit import PlanRateLimits
from saascore.models import UserRole

__all__ = ["Principal", "PrincipalKind"]


class PrincipalKind(StrEnum):
    USER = "user"
    API_KEY = "api_key"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `id` is the user's, the key's or the operator key's id.

    A tenant principal (user or API key) has an `organization_id`, which is the only
    organisation it can ever see: the API takes it from here, never from the request.
    """

    kind: PrincipalKind
    id: uuid.UUID
    organization_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    role: UserRole | None = None
    permissions: frozenset[Permission] = frozenset()
    rate_limits: PlanRateLimits = field(default_factory=PlanRateLimits)
    #: "live" or "test" for API keys.
    environment: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.kind is PrincipalKind.OPERATOR

    @property
    def tenant(self) -> uuid.UUID:
        """The principal's organisation; operators have none."""
        if self.organization_id is None:
            raise PermissionDenied("this endpoint is for an organisation's users and keys")
        return self.organization_id

    @property
    def rate_limit_key(self) -> str:
        return f"{self.kind.value}:{self.id}"

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    def require(self, permission: Permission) -> None:
        if permission not in self.permissions:
            raise PermissionDenied(
                f"this needs the {permission.value!r} permission", permission=permission.value
            )

    def actor(self, origin: Origin | None = None) -> Actor:
        """The principal as the audit log names it, with where the request came from."""
        return (origin or Origin()).actor(self.kind.value, self.id, self.user_id)

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
        """The key of the plan's rate limits: the organisation's, which all its users and keys
        share (an operator key, which has none, is its own)."""
        if self.organization_id is not None:
            return f"org:{self.organization_id}"
        return self.credential_key

    @property
    def credential_key(self) -> str:
        """This one user, API key or operator key: `<kind>:<id>`."""
        return f"{self.kind.value}:{self.id}"

    def rate_limits_by_key(
        self, per_credential_per_minute: int | None = None
    ) -> dict[str, PlanRateLimits]:
        """The windows a request of this principal counts in (`RateLimiter.hit_many`): the
        plan's limits under `rate_limit_key`, and for a tenant principal, when
        `per_credential_per_minute` is set, that many a minute under `credential_key`."""
        limits = {self.rate_limit_key: self.rate_limits}
        if per_credential_per_minute is not None and self.organization_id is not None:
            limits[self.credential_key] = PlanRateLimits(per_minute=per_credential_per_minute)
        return limits

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

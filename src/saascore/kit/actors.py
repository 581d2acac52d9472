"""Who did something, and from where: the actor every event and audit entry carries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

__all__ = ["SYSTEM", "Actor", "Origin"]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request came from, as the audit log keeps it."""

    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None

    def actor(self, type_: str, id_: object = None, user_id: uuid.UUID | None = None) -> Actor:
        return Actor(
            type=type_,
            id=str(id_) if id_ is not None else None,
            user_id=user_id,
            ip_address=self.ip_address,
            user_agent=self.user_agent,
            request_id=self.request_id,
        )


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it, and from where: a user, an API key, an operator or saascore itself."""

    type: str
    id: str | None = None
    user_id: uuid.UUID | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


SYSTEM = Actor("system")

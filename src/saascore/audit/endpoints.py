"""Router factory: `create_audit_router()` (`GET /v1/audit-logs`, for admins)."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Depends, Query

from saascore.api.deps import CoreDep, SessionDep, require
from saascore.api.errors import error_responses
from saascore.audit.schemas import AuditEntryOut
from saascore.identity.endpoints import AUTH_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.kit.inputs import INT64_MAX
from saascore.kit.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidCursor,
    Page,
    int_cursor,
    paginate,
)

__all__ = ["create_audit_router"]

#: `seq` is a BIGINT: a cursor past it is not one this API gave out.
_MAX_SEQ: Final = INT64_MAX

AdminDep = Annotated[Principal, Depends(require(Permission.ADMIN))]


def _before_seq(cursor: str | None) -> int | None:
    position = int_cursor(cursor)
    if position is not None and not 0 < position <= _MAX_SEQ:
        raise InvalidCursor("the cursor is not one this API gave out", field="cursor")
    return position


def create_audit_router() -> APIRouter:
    """The organisation's audit trail, newest first, for principals with `admin`."""
    router = APIRouter(prefix="/v1/audit-logs", tags=["audit"])

    @router.get(
        "",
        summary="List audit log entries",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidCursor),
    )
    async def list_audit_logs(
        principal: AdminDep,
        core: CoreDep,
        session: SessionDep,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        action: Annotated[
            str | None, Query(min_length=1, max_length=100, examples=["auth.login_failed"])
        ] = None,
    ) -> Page[AuditEntryOut]:
        """Your organisation's audit entries, newest first, optionally of one action (`admin`)."""
        entries = await core.audit.list(
            principal.tenant,
            limit=limit + 1,
            before_seq=_before_seq(cursor),
            action=action,
            session=session,
        )
        items, next_cursor = paginate(entries, limit, lambda entry: entry.seq)
        return Page(
            items=[AuditEntryOut.model_validate(entry) for entry in items],
            next_cursor=next_cursor,
        )

    return router

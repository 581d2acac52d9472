"""`create_credits_router()`: `/v1/credits`, the caller's organisation's credit balance, grants
and ledger. Reads run in read-only sessions of their own (no SQLite write lock)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from saascore.api.deps import CoreDep, require
from saascore.api.errors import error_responses
from saascore.credits.schemas import CreditsResponse, CreditTransactionOut
from saascore.identity.endpoints import AUTH_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.kit.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidCursor,
    Page,
    paginate,
    uuid_cursor,
)

__all__ = ["create_credits_router"]

BillingReader = Annotated[Principal, Depends(require(Permission.BILLING_READ))]


def create_credits_router() -> APIRouter:
    """`/v1/credits`: the balance with its grants, and the ledger of transactions."""
    router = APIRouter(prefix="/v1/credits", tags=["credits"])

    @router.get("", responses=error_responses(*AUTH_ERRORS, PermissionDenied))
    async def get_credits(principal: BillingReader, core: CoreDep) -> CreditsResponse:
        """Your organisation's credit balance and the grants that still hold credits."""
        return CreditsResponse.of(await core.credits.account(principal.tenant))

    @router.get(
        "/transactions",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidCursor),
    )
    async def list_credit_transactions(
        principal: BillingReader,
        core: CoreDep,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Page[CreditTransactionOut]:
        """The credit ledger, newest first: grants, consumptions, expiries, refunds and
        adjustments, each with the balance it left."""
        transactions = await core.credits.transactions(
            principal.tenant, limit=limit + 1, before=uuid_cursor(cursor)
        )
        items, next_cursor = paginate(transactions, limit, lambda t: t.id)
        return Page(
            items=[CreditTransactionOut.model_validate(t) for t in items], next_cursor=next_cursor
        )

    return router

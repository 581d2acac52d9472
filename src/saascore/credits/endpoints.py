"""`create_credits_router()`: `/v1/credits`, the caller's organisation's credit balance, grants
and ledger. Reads run in read-only sessions of their own (no SQLite write lock)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from saascore.api.deps import CoreDep, OperatorDep, OriginDep, SessionDep, require
from saascore.api.errors import error_responses
from saascore.credits.errors import BalanceOverflow, InsufficientCredits
from saascore.credits.schemas import (
    CreditConsume,
    CreditGrantCreate,
    CreditsResponse,
    CreditTransactionOut,
    LowThreshold,
)
from saascore.identity.endpoints import AUTH_ERRORS, OPERATOR_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.kit.errors import IdempotencyConflict, InvalidInput
from saascore.kit.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidCursor,
    Page,
    paginate,
    uuid_cursor,
)
from saascore.tenancy.errors import OrganizationNotFound

__all__ = [
    "create_credit_grants_admin_router",
    "create_credits_router",
]

BillingReader = Annotated[Principal, Depends(require(Permission.BILLING_READ))]
BillingWriter = Annotated[Principal, Depends(require(Permission.BILLING_WRITE))]
CreditsWriter = Annotated[Principal, Depends(require(Permission.CREDITS_WRITE))]


def create_credits_router() -> APIRouter:
    """`/v1/credits`: the balance with its grants, and the ledger of transactions."""
    router = APIRouter(prefix="/v1/credits", tags=["credits"])

    @router.get(
        "",
        summary="Get the credit balance",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied),
    )
    async def get_credits(principal: BillingReader, core: CoreDep) -> CreditsResponse:
        """Your organisation's credit balance and the grants that still hold credits."""
        return CreditsResponse.of(await core.credits.account(principal.tenant))

    @router.get(
        "/transactions",
        summary="List credit transactions",
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

    @router.post(
        "/consume",
        summary="Consume credits",
        status_code=status.HTTP_201_CREATED,
        responses={
            200: {
                "description": "A retry: the consumption its key made before",
                "model": CreditTransactionOut,
            },
            **error_responses(
                *AUTH_ERRORS, PermissionDenied, InsufficientCredits, IdempotencyConflict
            ),
        },
    )
    async def consume_credits(
        body: CreditConsume,
        principal: CreditsWriter,
        core: CoreDep,
        session: SessionDep,
        response: Response,
    ) -> CreditTransactionOut:
        """Draw credits from your organisation's balance (needs `credits:write`), from the
        grants in draw order. A balance short of `amount` is 402 `insufficient_credits` and
        draws nothing; racing requests never draw past the balance. Idempotent on
        `idempotency_key`: a retry answers 200 with the first consumption and draws nothing;
        the same key with another amount or reference is 409 `idempotency_conflict`."""
        consumed = await core.credits.consume_once(
            principal.tenant,
            body.amount,
            idempotency_key=body.idempotency_key,
            reference=body.reference,
            description=body.description,
            session=session,
        )
        if consumed.replayed:
            response.status_code = status.HTTP_200_OK
        return CreditTransactionOut.model_validate(consumed.transaction)

    @router.put(
        "/low-threshold",
        summary="Set the low-balance threshold",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidInput),
    )
    async def set_low_threshold(
        body: LowThreshold,
        principal: BillingWriter,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> LowThreshold:
        """Have `credits.low` sent to your webhook endpoints when the balance falls below
        `threshold` (null: never)."""
        threshold = await core.credits.set_low_threshold(
            principal.tenant, body.threshold, actor=principal.actor(origin), session=session
        )
        return LowThreshold(threshold=threshold)

    return router


def create_credit_grants_admin_router() -> APIRouter:
    """`/v1/admin/organizations/{org_id}/credits/grants`, for operators: grant credits,
    idempotently on a key (audited with the operator as actor)."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.post(
        "/organizations/{org_id}/credits/grants",
        summary="Grant credits",
        status_code=status.HTTP_201_CREATED,
        responses={
            200: {
                "description": "A retry: the grant its key made before",
                "model": CreditTransactionOut,
            },
            **error_responses(
                *OPERATOR_ERRORS,
                OrganizationNotFound,
                InvalidInput,
                BalanceOverflow,
                IdempotencyConflict,
            ),
        },
    )
    async def grant_credits(
        org_id: uuid.UUID,
        body: CreditGrantCreate,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
        response: Response,
    ) -> CreditTransactionOut:
        """Grant credits to the organisation (audited as `credits.granted`). Idempotent on
        `idempotency_key`: a retry answers 200 with the first grant's transaction and grants
        nothing; the same key with other values is 409 `idempotency_conflict`."""
        await core.orgs.get(org_id, session=session)
        granted = await core.credits.grant_once(
            org_id,
            body.amount,
            source=body.source,
            priority=body.priority,
            expires_at=body.expires_at,
            idempotency_key=body.idempotency_key,
            description=body.description,
            actor=operator.actor(origin),
            session=session,
        )
        if granted.replayed:
            response.status_code = status.HTTP_200_OK
        return CreditTransactionOut.model_validate(granted.transaction)

    # --- plans ---------------------------------------------------------------------------------

    return router

"""The routes of coupons and credit packs. Operators, under `/v1/admin`: the coupon catalog
(create, list, deactivate), redemptions for an organisation, and the credit-pack catalog.
Tenants: `GET /v1/credit-packs` (the packs on sale) and `POST /v1/credit-packs/purchase`
(an open invoice for a pack; its full payment grants the credits)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, status

from saascore.api.deps import CoreDep, OperatorDep, OriginDep, SessionDep, require
from saascore.api.errors import error_responses
from saascore.billing.catalog_schemas import (
    CouponCreate,
    CouponOut,
    CouponRedeem,
    CouponRedemptionOut,
    CreditPackCreate,
    CreditPackOut,
    CreditPackPurchase,
)
from saascore.billing.errors import (
    CouponAlreadyApplied,
    CouponCurrencyMismatch,
    CouponExhausted,
    CouponExists,
    CouponExpired,
    CouponInactive,
    CouponNotFound,
    CreditPackExists,
    CreditPackNotFound,
    InvalidCoupon,
    InvalidCreditPack,
    InvoiceNotDraft,
    InvoiceNotFound,
    SubscriptionNotFound,
)
from saascore.billing.schemas import InvoiceOut
from saascore.identity.endpoints import AUTH_ERRORS, OPERATOR_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.kit.errors import InvalidInput
from saascore.kit.money import AmountOutOfRange, Money, UnknownCurrency
from saascore.tenancy.errors import OrganizationNotFound

__all__ = [
    "create_coupons_admin_router",
    "create_credit_packs_admin_router",
    "create_credit_packs_router",
]

_CODE = Path(min_length=1, max_length=64, description="The coupon's code")
_ACTIVE = Query(description="Only active (true) or inactive (false) ones; all when left out")


def create_coupons_admin_router() -> APIRouter:
    """`/v1/admin/coupons` and `/v1/admin/organizations/{org_id}/coupons`, for operators."""
    router = APIRouter(prefix="/v1/admin", tags=["coupons"])

    @router.post(
        "/coupons",
        summary="Create a coupon",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(
            *OPERATOR_ERRORS, CouponExists, InvalidCoupon, InvalidInput, UnknownCurrency
        ),
    )
    async def create_coupon(
        body: CouponCreate, _operator: OperatorDep, core: CoreDep, session: SessionDep
    ) -> CouponOut:
        """A coupon of the catalog: a percentage (basis points) or a fixed amount in one
        currency, for once, repeating N invoices or forever, with an optional redemption
        limit and expiry. 409 `coupon_exists` when the code is taken."""
        coupon = await core.coupons.create(
            body.code,
            name=body.name,
            percent_off=body.percent_off,
            amount_off=body.amount_off,
            currency=body.currency,
            duration=body.duration,
            duration_periods=body.duration_periods,
            max_redemptions=body.max_redemptions,
            expires_at=body.expires_at,
            session=session,
        )
        return CouponOut.of(coupon)

    @router.get("/coupons", summary="List coupons", responses=error_responses(*OPERATOR_ERRORS))
    async def list_coupons(
        _operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        active: Annotated[bool | None, _ACTIVE] = None,
    ) -> list[CouponOut]:
        """Every coupon of the catalog by code, with how many times each was redeemed."""
        return [CouponOut.of(c) for c in await core.coupons.list(active=active, session=session)]

    @router.post(
        "/coupons/{code}/deactivate",
        summary="Deactivate a coupon",
        responses=error_responses(*OPERATOR_ERRORS, CouponNotFound),
    )
    async def deactivate_coupon(
        code: Annotated[str, _CODE], _operator: OperatorDep, core: CoreDep, session: SessionDep
    ) -> CouponOut:
        """Stop new redemptions of the coupon; those already made keep applying for their
        duration. Deactivating twice changes nothing."""
        return CouponOut.of(await core.coupons.deactivate(code, session=session))

    @router.post(
        "/organizations/{org_id}/coupons",
        summary="Redeem a coupon for an organisation",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(
            *OPERATOR_ERRORS,
            OrganizationNotFound,
            CouponNotFound,
            SubscriptionNotFound,
            InvoiceNotFound,
            InvoiceNotDraft,
            CouponInactive,
            CouponExpired,
            CouponExhausted,
            CouponAlreadyApplied,
            CouponCurrencyMismatch,
        ),
    )
    async def redeem_coupon(
        org_id: uuid.UUID,
        body: CouponRedeem,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> CouponRedemptionOut:
        """Redeem the coupon on one of the organisation's draft invoices (`invoice_id`) or,
        without one, on its live subscription: each of its invoices is then discounted
        while the coupon's duration lasts. The discount is taken before tax."""
        await core.orgs.get(org_id, session=session)
        redemption = await core.coupons.redeem(
            org_id,
            body.code,
            invoice_id=body.invoice_id,
            actor=operator.actor(origin),
            session=session,
        )
        return CouponRedemptionOut.of(redemption, body.code.upper())

    return router


def create_credit_packs_admin_router() -> APIRouter:
    """`/v1/admin/credit-packs`, for operators: the credit-pack catalog."""
    router = APIRouter(prefix="/v1/admin", tags=["coupons"])

    @router.post(
        "/credit-packs",
        summary="Create a credit pack",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(
            *OPERATOR_ERRORS, CreditPackExists, InvalidCreditPack, UnknownCurrency
        ),
    )
    async def create_credit_pack(
        body: CreditPackCreate, _operator: OperatorDep, core: CoreDep, session: SessionDep
    ) -> CreditPackOut:
        """A pack of `credits` for `price` minor units of `currency`. 409
        `credit_pack_exists` when the code is taken."""
        pack = await core.credit_packs.create(
            body.code,
            credits=body.credits,
            price=Money(body.price, body.currency),
            name=body.name,
            session=session,
        )
        return CreditPackOut.of(pack)

    @router.get(
        "/credit-packs",
        summary="List every credit pack",
        responses=error_responses(*OPERATOR_ERRORS),
    )
    async def list_all_credit_packs(
        _operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        active: Annotated[bool | None, _ACTIVE] = None,
    ) -> list[CreditPackOut]:
        """Every credit pack by code, on sale or not."""
        packs = await core.credit_packs.list(active=active, session=session)
        return [CreditPackOut.of(pack) for pack in packs]

    return router


BillingReader = Annotated[Principal, Depends(require(Permission.BILLING_READ))]
BillingWriter = Annotated[Principal, Depends(require(Permission.BILLING_WRITE))]


def create_credit_packs_router() -> APIRouter:
    """`/v1/credit-packs`: the packs on sale, and buying one."""
    router = APIRouter(prefix="/v1/credit-packs", tags=["credits"])

    @router.get(
        "",
        summary="List credit packs on sale",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied),
    )
    async def list_credit_packs(principal: BillingReader, core: CoreDep) -> list[CreditPackOut]:
        """The credit packs on sale, by code."""
        return [CreditPackOut.of(pack) for pack in await core.credit_packs.list(active=True)]

    @router.post(
        "/purchase",
        summary="Buy a credit pack",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, CreditPackNotFound, AmountOutOfRange
        ),
    )
    async def purchase_credit_pack(
        body: CreditPackPurchase,
        principal: BillingWriter,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> InvoiceOut:
        """Buy a pack on sale: an open invoice with its one line, numbered and due. The
        credits are granted, once, when the invoice is paid in full."""
        invoice = await core.credit_packs.purchase(
            principal.tenant, body.code, actor=principal.actor(origin), session=session
        )
        return InvoiceOut.of(invoice, core.invoices.clock().date())

    return router

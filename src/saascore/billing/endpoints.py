"""Billing's routes. Tenants: `GET /v1/subscription`, `/v1/invoices` (with the upcoming
invoice's preview), `/v1/payments` and `/v1/billing/overview` (`billing:read`); the credit
packs on sale, and buying one (`/v1/credit-packs`). Operators, under `/v1/admin`: an
organisation's subscription (create, change the plan, cancel, resume), invoices (drafts with
lines, finalise, void, mark uncollectible), payments and refunds, an organisation's tax rate,
the coupon catalog with redemptions, and the credit-pack catalog. Every change is an event of
its service, audited with the operator as the actor."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse

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
    CreditPackCurrencyMismatch,
    CreditPackExists,
    CreditPackNotFound,
    DraftNotDeletable,
    EmptyInvoice,
    InvalidCoupon,
    InvalidCreditPack,
    InvalidInvoiceLine,
    InvalidPayment,
    InvalidTransition,
    InvoiceHasPayments,
    InvoiceNotDraft,
    InvoiceNotFound,
    InvoiceNotPayable,
    NaiveDatetime,
    NegativeInvoiceTotal,
    NoUpcomingInvoice,
    OutsidePeriod,
    Overpayment,
    PaymentExists,
    PaymentNotFound,
    PaymentNotRefundable,
    PeriodEnded,
    PeriodOutOfRange,
    PlanPriceMissing,
    RefundExceedsPayment,
    RenderAbandoned,
    RenderBusy,
    SubscriptionExists,
    SubscriptionNotFound,
    TooManyOpenPurchases,
    TooManyRefunds,
)
from saascore.billing.invoices import LineItem
from saascore.billing.render import filename
from saascore.billing.schemas import (
    BillingOverviewOut,
    InvoiceDraftCreate,
    InvoiceOut,
    PaymentOut,
    PaymentRecord,
    RefundCreate,
    SubscriptionCancel,
    SubscriptionCreate,
    SubscriptionOut,
    SubscriptionPlanChange,
    SubscriptionResume,
    TaxRate,
    UpcomingInvoiceOut,
)
from saascore.identity.endpoints import AUTH_ERRORS, OPERATOR_ERRORS
from saascore.identity.errors import PermissionDenied
from saascore.identity.permissions import Permission
from saascore.identity.principal import Principal
from saascore.kit.errors import IdempotencyConflict, InvalidCharacter, InvalidInput
from saascore.kit.money import (
    AmountOutOfRange,
    CurrencyMismatch,
    InvalidRate,
    Money,
    UnknownCurrency,
    UnknownLocale,
)
from saascore.kit.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidCursor,
    Page,
    paginate,
    uuid_cursor,
)
from saascore.models import InvoiceStatus, PaymentStatus
from saascore.plans.errors import PlanNotFound
from saascore.tenancy.errors import OrganizationNotFound

__all__ = [
    "create_billing_router",
    "create_coupons_admin_router",
    "create_credit_packs_admin_router",
    "create_credit_packs_router",
    "create_invoices_admin_router",
    "create_invoices_router",
    "create_payments_admin_router",
    "create_payments_router",
    "create_subscription_admin_router",
    "create_subscription_router",
]

BillingReader = Annotated[Principal, Depends(require(Permission.BILLING_READ))]
LocaleQuery = Annotated[
    str | None,
    Query(
        description="The locale of the page (`en`, `ar-YE`); the invoice's own by default",
        examples=["ar-YE"],
    ),
]
_PDF_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The invoice as a PDF document",
        "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_HTML_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The invoice as a printable HTML page",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
}


def _disposition(kind: str, name: str) -> str:
    """`Content-Disposition` with the file name, ASCII-safe and in full (RFC 6266)."""
    ascii_name = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name
    )
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


_PATH = "/organizations/{org_id}/subscription"


def create_subscription_router() -> APIRouter:
    """`/v1/subscription`: the caller's organisation's subscription."""
    router = APIRouter(prefix="/v1/subscription", tags=["billing"])

    @router.get(
        "",
        summary="Get the subscription",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, SubscriptionNotFound),
    )
    async def get_subscription(principal: BillingReader, core: CoreDep) -> SubscriptionOut:
        """Your organisation's subscription: the live one, else the last that ended (404
        `subscription_not_found` when there never was one)."""
        return SubscriptionOut.of(await core.subscriptions.get(principal.tenant))

    return router


def create_billing_router() -> APIRouter:
    """`/v1/billing/overview`: your organisation's billing at a glance."""
    router = APIRouter(prefix="/v1/billing", tags=["billing"])

    @router.get(
        "/overview",
        summary="Get the billing overview",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied),
    )
    async def get_billing_overview(principal: BillingReader, core: CoreDep) -> BillingOverviewOut:
        """Your organisation's plan, subscription (status, cycle, current period, cancellation,
        trial, scheduled change), usage this period against the plan's included amounts,
        credit balance, the upcoming invoice's preview and the latest payments, read at one
        moment (seed 004's `get_billing_overview`)."""
        return BillingOverviewOut.of(await core.billing.overview(principal.tenant))

    return router


def create_subscription_admin_router() -> APIRouter:
    """`/v1/admin/organizations/{org_id}/subscription`, for operators."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.get(
        _PATH,
        summary="Get an organisation's subscription",
        responses=error_responses(*OPERATOR_ERRORS, OrganizationNotFound, SubscriptionNotFound),
    )
    async def get_organization_subscription(
        org_id: uuid.UUID, operator: OperatorDep, core: CoreDep, session: SessionDep
    ) -> SubscriptionOut:
        """The organisation's subscription: the live one, else the last that ended."""
        await core.orgs.get(org_id, session=session)
        return SubscriptionOut.of(await core.subscriptions.get(org_id, session=session))

    @router.post(
        _PATH,
        summary="Subscribe an organisation to a plan",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(
            *OPERATOR_ERRORS,
            OrganizationNotFound,
            PlanNotFound,
            SubscriptionExists,
            PlanPriceMissing,
            PeriodOutOfRange,
            NaiveDatetime,
            InvalidInput,
        ),
    )
    async def create_subscription(
        org_id: uuid.UUID,
        body: SubscriptionCreate,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> SubscriptionOut:
        """Subscribe the organisation to `plan` for `cycle`, at the plan's price in the
        organisation's currency (422 `plan_price_missing` without one). With trial days (the
        plan's by default) it starts `trialing`, else `active`; the organisation moves to the
        plan. A second live subscription is 409 `subscription_exists`."""
        subscription = await core.subscriptions.create(
            org_id,
            body.plan,
            body.cycle,
            trial_days=body.trial_days,
            at=body.at,
            actor=operator.actor(origin),
            session=session,
        )
        return SubscriptionOut.of(subscription)

    @router.post(
        f"{_PATH}/change-plan",
        summary="Change a subscription's plan",
        responses=error_responses(
            *OPERATOR_ERRORS,
            OrganizationNotFound,
            SubscriptionNotFound,
            PlanNotFound,
            InvalidTransition,
            PlanPriceMissing,
            OutsidePeriod,
            NaiveDatetime,
            InvalidInput,
        ),
    )
    async def change_subscription_plan(
        org_id: uuid.UUID,
        body: SubscriptionPlanChange,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> SubscriptionOut:
        """An upgrade (a higher price per period) applies at once, its proration (a credit
        for the unused time, a charge for the new plan's) going on the upcoming invoice; a
        downgrade waits for the period's end (`scheduled_plan`)."""
        await core.orgs.get(org_id, session=session)
        subscription = await core.subscriptions.change_plan(
            org_id, body.plan, at=body.at, actor=operator.actor(origin), session=session
        )
        return SubscriptionOut.of(subscription)

    @router.post(
        f"{_PATH}/cancel",
        summary="Cancel a subscription",
        responses=error_responses(
            *OPERATOR_ERRORS,
            OrganizationNotFound,
            SubscriptionNotFound,
            InvalidTransition,
            OutsidePeriod,
            NaiveDatetime,
            InvalidInput,
        ),
    )
    async def cancel_subscription(
        org_id: uuid.UUID,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
        body: SubscriptionCancel | None = None,
    ) -> SubscriptionOut:
        """Cancel at the current period's end (the default) or now. The organisation keeps
        its plan until the end of what was paid (`ends_at`). The body may be left out."""
        body = body or SubscriptionCancel()
        await core.orgs.get(org_id, session=session)
        subscription = await core.subscriptions.cancel(
            org_id,
            at_period_end=body.at_period_end,
            at=body.at,
            actor=operator.actor(origin),
            session=session,
        )
        return SubscriptionOut.of(subscription)

    @router.post(
        f"{_PATH}/resume",
        summary="Resume a canceled subscription",
        responses=error_responses(
            *OPERATOR_ERRORS,
            OrganizationNotFound,
            SubscriptionNotFound,
            InvalidTransition,
            PeriodEnded,
            OutsidePeriod,
            NaiveDatetime,
            InvalidInput,
        ),
    )
    async def resume_subscription(
        org_id: uuid.UUID,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
        body: SubscriptionResume | None = None,
    ) -> SubscriptionOut:
        """Withdraw a cancellation at the period's end, before that end (409 `period_ended`
        after it). The body may be left out."""
        body = body or SubscriptionResume()
        await core.orgs.get(org_id, session=session)
        subscription = await core.subscriptions.resume(
            org_id, at=body.at, actor=operator.actor(origin), session=session
        )
        return SubscriptionOut.of(subscription)

    return router


def create_invoices_router() -> APIRouter:
    """`/v1/invoices`: your organisation's invoices, drafts included."""
    router = APIRouter(prefix="/v1/invoices", tags=["invoices"])

    @router.get(
        "",
        summary="List invoices",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidCursor),
    )
    async def list_invoices(
        principal: BillingReader,
        core: CoreDep,
        invoice_status: Annotated[
            InvoiceStatus | None,
            Query(
                alias="status",
                description="Only invoices in this status; `overdue`: open and past due",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Page[InvoiceOut]:
        """Your organisation's invoices, newest first, with their lines. `status=overdue`
        lists open invoices past their due date (overdue is computed, never stored)."""
        overdue = True if invoice_status is InvoiceStatus.OVERDUE else None
        found = await core.invoices.list(
            principal.tenant,
            status=None if overdue else invoice_status,
            overdue=overdue,
            limit=limit + 1,
            before=uuid_cursor(cursor),
        )
        items, next_cursor = paginate(found, limit, lambda invoice: invoice.id)
        today = core.invoices.clock().date()
        return Page(items=[InvoiceOut.of(i, today) for i in items], next_cursor=next_cursor)

    # Before "/{invoice_id}", which would take "upcoming" for an id and answer 422.
    @router.get(
        "/upcoming",
        summary="Preview the upcoming invoice",
        responses=error_responses(
            *AUTH_ERRORS, PermissionDenied, SubscriptionNotFound, NoUpcomingInvoice
        ),
    )
    async def get_upcoming_invoice(principal: BillingReader, core: CoreDep) -> UpcomingInvoiceOut:
        """The invoice the billing run will issue next for your organisation's subscription
        (at its period's end, or its trial's): the plan's fee, the usage above the included
        amounts, the proration lines waiting, the coupon and the tax, computed as the run
        computes them. Nothing is stored. 404 `subscription_not_found` without a live
        subscription, `no_upcoming_invoice` when none will be issued."""
        return UpcomingInvoiceOut.of(await core.billing.upcoming(principal.tenant))

    # Before "/{invoice_id}", which would take "<id>.html" for its id and answer 422.
    @router.get(
        "/{invoice_id}.html",
        summary="Get an invoice as an HTML page",
        response_class=HTMLResponse,
        responses={
            **_HTML_RESPONSE,
            **error_responses(*AUTH_ERRORS, PermissionDenied, InvoiceNotFound, UnknownLocale),
        },
    )
    async def get_invoice_html(
        invoice_id: uuid.UUID, principal: BillingReader, core: CoreDep, locale: LocaleQuery = None
    ) -> HTMLResponse:
        """One of your organisation's invoices as a printable page: amounts and dates in the
        locale, right to left for Arabic, Hebrew, Persian and Urdu, the notes in that locale
        (422 `unknown_locale` for a locale Babel does not know)."""
        invoice = await core.invoices.get(principal.tenant, invoice_id)
        page = await core.invoice_renderer.html(invoice, locale=locale)
        return HTMLResponse(
            page, headers={"Content-Disposition": _disposition("inline", filename(invoice, "html"))}
        )

    @router.get(
        "/{invoice_id}.pdf",
        summary="Get an invoice as a PDF",
        response_class=Response,
        responses={
            **_PDF_RESPONSE,
            **error_responses(
                *AUTH_ERRORS,
                PermissionDenied,
                InvoiceNotFound,
                UnknownLocale,
                RenderBusy,
                RenderAbandoned,
            ),
        },
    )
    async def get_invoice_pdf(
        invoice_id: uuid.UUID,
        principal: BillingReader,
        core: CoreDep,
        request: Request,
        locale: LocaleQuery = None,
    ) -> Response:
        """The printable page of the invoice (`GET /v1/invoices/{invoice_id}.html`) as a PDF
        document, named after the invoice's number. Your organisation's PDFs are rendered one
        at a time: a few more wait their turn, beyond them 429 `render_busy`."""
        invoice = await core.invoices.get(principal.tenant, invoice_id)
        document = await core.invoice_renderer.pdf(
            invoice, locale=locale, gone=request.is_disconnected
        )
        return Response(
            document,
            media_type="application/pdf",
            headers={"Content-Disposition": _disposition("attachment", filename(invoice, "pdf"))},
        )

    @router.get(
        "/{invoice_id}",
        summary="Get an invoice",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvoiceNotFound),
    )
    async def get_invoice(
        invoice_id: uuid.UUID, principal: BillingReader, core: CoreDep
    ) -> InvoiceOut:
        """One of your organisation's invoices with its lines, tax per line and totals;
        another organisation's invoice is 404 `invoice_not_found`."""
        invoice = await core.invoices.get(principal.tenant, invoice_id)
        return InvoiceOut.of(invoice, core.invoices.clock().date())

    return router


def create_invoices_admin_router() -> APIRouter:
    """`/v1/admin/...invoices`, for operators: drafts with lines, the changes of status and
    an organisation's tax rate (audited with the operator as actor)."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.post(
        "/organizations/{org_id}/invoices",
        summary="Create a draft invoice",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(
            *OPERATOR_ERRORS,
            OrganizationNotFound,
            InvalidInput,
            InvalidInvoiceLine,
            UnknownCurrency,
            AmountOutOfRange,
        ),
    )
    async def create_invoice(
        org_id: uuid.UUID,
        body: InvoiceDraftCreate,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> InvoiceOut:
        """A draft invoice for the organisation with one-off lines (a negative
        `unit_amount` is a credit), taxed at its rate. It has no number until finalised."""
        invoice = await core.invoices.create_draft(
            org_id,
            body.currency,
            [LineItem(line.description, line.unit_amount, line.quantity) for line in body.lines],
            notes=body.notes,
            notes_localized=body.notes_localized,
            actor=operator.actor(origin),
            session=session,
        )
        return InvoiceOut.of(invoice, core.invoices.clock().date())

    @router.get(
        "/organizations/{org_id}/invoices",
        summary="List an organisation's invoices",
        responses=error_responses(*OPERATOR_ERRORS, OrganizationNotFound, InvalidCursor),
    )
    async def list_organization_invoices(
        org_id: uuid.UUID,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        invoice_status: Annotated[
            InvoiceStatus | None,
            Query(
                alias="status",
                description="Only invoices in this status; `overdue`: open and past due",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Page[InvoiceOut]:
        """Any organisation's invoices, drafts included, newest first, with their lines, as
        `GET /v1/invoices` gives them to the organisation (404 for an unknown organisation)."""
        await core.orgs.get(org_id, session=session)
        overdue = True if invoice_status is InvoiceStatus.OVERDUE else None
        found = await core.invoices.list(
            org_id,
            status=None if overdue else invoice_status,
            overdue=overdue,
            limit=limit + 1,
            before=uuid_cursor(cursor),
            session=session,
        )
        items, next_cursor = paginate(found, limit, lambda invoice: invoice.id)
        today = core.invoices.clock().date()
        return Page(items=[InvoiceOut.of(i, today) for i in items], next_cursor=next_cursor)

    @router.get(
        "/invoices/{invoice_id}",
        summary="Get any organisation's invoice",
        responses=error_responses(*OPERATOR_ERRORS, InvoiceNotFound),
    )
    async def get_any_invoice(
        invoice_id: uuid.UUID, operator: OperatorDep, core: CoreDep, session: SessionDep
    ) -> InvoiceOut:
        """An invoice of any organisation, drafts included, with its lines, tax per line and
        totals (its organisation is `GET /v1/admin/organizations/{id}`'s to look up)."""
        invoice = await core.invoices.get(None, invoice_id, session=session)
        return InvoiceOut.of(invoice, core.invoices.clock().date())

    @router.delete(
        "/invoices/{invoice_id}",
        summary="Delete a draft invoice",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=error_responses(
            *OPERATOR_ERRORS, InvoiceNotFound, InvoiceNotDraft, DraftNotDeletable
        ),
    )
    async def delete_draft_invoice(
        invoice_id: uuid.UUID,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> Response:
        """Discard a draft: it has no number, so no gap is left (`invoice.draft_deleted`,
        audited). An issued invoice is 409 `invoice_not_draft` (void it instead); a draft
        carrying a subscription's proration or a redeemed coupon is 409
        `draft_not_deletable`."""
        found = await core.invoices.get(None, invoice_id, session=session)
        await core.invoices.delete_draft(
            found.organization_id, invoice_id, actor=operator.actor(origin), session=session
        )
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    async def _change(
        action: str,
        invoice_id: uuid.UUID,
        operator: Principal,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> InvoiceOut:
        found = await core.invoices.get(None, invoice_id, session=session)
        change = {
            "finalize": core.invoices.finalize,
            "void": core.invoices.void,
            "uncollectible": core.invoices.mark_uncollectible,
        }[action]
        invoice = await change(
            found.organization_id, invoice_id, actor=operator.actor(origin), session=session
        )
        return InvoiceOut.of(invoice, core.invoices.clock().date())

    @router.post(
        "/invoices/{invoice_id}/finalize",
        summary="Finalize an invoice",
        responses=error_responses(
            *OPERATOR_ERRORS,
            InvoiceNotFound,
            InvalidTransition,
            EmptyInvoice,
            NegativeInvoiceTotal,
        ),
    )
    async def finalize_invoice(
        invoice_id: uuid.UUID,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> InvoiceOut:
        """`draft -> open`: the totals are frozen at the organisation's tax rate, the invoice
        takes its gapless number and its due date (`invoice.finalized`)."""
        return await _change("finalize", invoice_id, operator, core, session, origin)

    @router.post(
        "/invoices/{invoice_id}/void",
        summary="Void an invoice",
        responses=error_responses(
            *OPERATOR_ERRORS, InvoiceNotFound, InvalidTransition, InvoiceHasPayments
        ),
    )
    async def void_invoice(
        invoice_id: uuid.UUID,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> InvoiceOut:
        """`open -> void` (or `uncollectible -> void`): nothing is owed; the invoice keeps
        its number (`invoice.voided`). An invoice with payments on it is refused
        (`invoice_has_payments`): refund the payments first."""
        return await _change("void", invoice_id, operator, core, session, origin)

    @router.post(
        "/invoices/{invoice_id}/uncollectible",
        summary="Mark an invoice uncollectible",
        responses=error_responses(*OPERATOR_ERRORS, InvoiceNotFound, InvalidTransition),
    )
    async def mark_invoice_uncollectible(
        invoice_id: uuid.UUID,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> InvoiceOut:
        """`open -> uncollectible`: written off, yet it may still be paid or voided."""
        return await _change("uncollectible", invoice_id, operator, core, session, origin)

    @router.put(
        "/organizations/{org_id}/tax-rate",
        summary="Set an organisation's tax rate",
        responses=error_responses(
            *OPERATOR_ERRORS, OrganizationNotFound, InvalidInput, InvalidRate, AmountOutOfRange
        ),
    )
    async def set_tax_rate(
        org_id: uuid.UUID,
        body: TaxRate,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> TaxRate:
        """The tax rate of the organisation's invoices, in basis points: its drafts are
        recomputed at it at once; issued invoices keep theirs. A rate that would overflow a
        draft's totals is 422 `amount_out_of_range`, with nothing changed."""
        organization = await core.invoices.set_tax_rate(
            org_id, body.tax_rate_bps, actor=operator.actor(origin), session=session
        )
        return TaxRate(tax_rate_bps=organization.tax_rate_bps)

    return router


def create_payments_router() -> APIRouter:
    """`/v1/payments`: your organisation's payment history."""
    router = APIRouter(prefix="/v1/payments", tags=["payments"])

    @router.get(
        "",
        summary="List payments",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, InvalidCursor),
    )
    async def list_payments(
        principal: BillingReader,
        core: CoreDep,
        payment_status: Annotated[
            PaymentStatus | None, Query(alias="status", description="Only payments in this status")
        ] = None,
        invoice_id: Annotated[
            uuid.UUID | None, Query(description="Only the payments of this invoice")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Page[PaymentOut]:
        """Your organisation's payments, newest first: succeeded, failed and refunded ones."""
        found = await core.payments.list(
            principal.tenant,
            invoice_id=invoice_id,
            status=payment_status,
            limit=limit + 1,
            before=uuid_cursor(cursor),
        )
        items, next_cursor = paginate(found, limit, lambda payment: payment.id)
        return Page(items=[PaymentOut.of(p) for p in items], next_cursor=next_cursor)

    @router.get(
        "/{payment_id}",
        summary="Get a payment",
        responses=error_responses(*AUTH_ERRORS, PermissionDenied, PaymentNotFound),
    )
    async def get_payment(
        payment_id: uuid.UUID, principal: BillingReader, core: CoreDep
    ) -> PaymentOut:
        """One of your organisation's payments; another organisation's is 404
        `payment_not_found`."""
        return PaymentOut.of(await core.payments.get(principal.tenant, payment_id))

    return router


def create_payments_admin_router() -> APIRouter:
    """`/v1/admin/invoices/{id}/payments` and `/v1/admin/payments/{id}/refunds`, for
    operators: manual payments and refunds (audited with the operator as actor)."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.post(
        "/invoices/{invoice_id}/payments",
        summary="Record a payment",
        status_code=status.HTTP_201_CREATED,
        responses=error_responses(
            *OPERATOR_ERRORS,
            InvoiceNotFound,
            InvoiceNotPayable,
            Overpayment,
            IdempotencyConflict,
            PaymentExists,
            InvalidPayment,
            InvalidCharacter,
            AmountOutOfRange,
            CurrencyMismatch,
        ),
    )
    async def record_payment(
        invoice_id: uuid.UUID,
        body: PaymentRecord,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> PaymentOut:
        """A payment received for the invoice (partial payments allowed), or one that failed
        (`failure_reason`, the invoice unchanged). Above the amount due is 409 `overpayment`;
        when nothing is left due the invoice is paid, its credit packs grant their credits,
        and a past-due subscription is active again. Idempotent on `idempotency_key`."""
        invoice = await core.invoices.get(None, invoice_id, session=session)
        payment = await core.payments.record(
            invoice.organization_id,
            invoice_id,
            body.amount,
            body.method,
            key=body.idempotency_key,
            status=body.status,
            failure_reason=body.failure_reason,
            provider_payment_id=body.provider_payment_id,
            actor=operator.actor(origin),
            session=session,
        )
        return PaymentOut.of(payment)

    @router.get(
        "/invoices/{invoice_id}/payments",
        summary="List an invoice's payments",
        responses=error_responses(*OPERATOR_ERRORS, InvoiceNotFound),
    )
    async def list_invoice_payments(
        invoice_id: uuid.UUID, operator: OperatorDep, core: CoreDep, session: SessionDep
    ) -> list[PaymentOut]:
        """The invoice's payments, newest first (at most the page limit's maximum)."""
        invoice = await core.invoices.get(None, invoice_id, session=session)
        found = await core.payments.list(
            invoice.organization_id, invoice_id=invoice_id, limit=MAX_LIMIT, session=session
        )
        return [PaymentOut.of(payment) for payment in found]

    @router.post(
        "/payments/{payment_id}/refunds",
        summary="Refund a payment",
        responses=error_responses(
            *OPERATOR_ERRORS,
            PaymentNotFound,
            PaymentNotRefundable,
            RefundExceedsPayment,
            TooManyRefunds,
            IdempotencyConflict,
            InvalidPayment,
            InvalidCharacter,
        ),
    )
    async def refund_payment(
        payment_id: uuid.UUID,
        body: RefundCreate,
        operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
        origin: OriginDep,
    ) -> PaymentOut:
        """Refund part or all of a succeeded payment, up to what is left of it (409
        `refund_exceeds_payment`); its invoice's amount paid goes down by as much, and a paid
        invoice refunded in full is `refunded`. Idempotent on `idempotency_key`."""
        found = await core.payments.get(None, payment_id, session=session)
        payment = await core.payments.refund(
            found.organization_id,
            payment_id,
            body.amount,
            key=body.idempotency_key,
            reason=body.reason,
            actor=operator.actor(origin),
            session=session,
        )
        return PaymentOut.of(payment)

    return router


# --- coupons and credit packs -------------------------------------------------------------------
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
            stripe_price_id=body.stripe_price_id,
            lemon_squeezy_variant_id=body.lemon_squeezy_variant_id,
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

    @router.post(
        "/credit-packs/{code}/deactivate",
        summary="Take a credit pack off sale",
        responses=error_responses(*OPERATOR_ERRORS, CreditPackNotFound),
    )
    async def deactivate_credit_pack(
        code: Annotated[str, Path(min_length=1, max_length=64, description="The pack's code")],
        _operator: OperatorDep,
        core: CoreDep,
        session: SessionDep,
    ) -> CreditPackOut:
        """No new purchases of the pack (idempotent); invoices already issued for it stay
        payable and grant its credits when paid. 404 `credit_pack_not_found` for an unknown
        code."""
        return CreditPackOut.of(await core.credit_packs.deactivate(code, session=session))

    return router


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
            *AUTH_ERRORS,
            PermissionDenied,
            CreditPackNotFound,
            CreditPackCurrencyMismatch,
            TooManyOpenPurchases,
            AmountOutOfRange,
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
        credits are granted, once, when the invoice is paid in full. Only a pack in the
        organisation's currency is sold to it (`credit_pack_currency_mismatch`). While a
        purchase of the same pack is unpaid, buying it again answers that invoice; at most
        five purchases are unpaid at once (409 `too_many_open_purchases`)."""
        invoice = await core.credit_packs.purchase(
            principal.tenant, body.code, actor=principal.actor(origin), session=session
        )
        return InvoiceOut.of(invoice, core.invoices.clock().date())

    return router

"""Billing's refusals.

DomainError
├── NotFound
│   ├── SubscriptionNotFound    (404) the organisation has no subscription
│   ├── InvoiceNotFound         (404) no such invoice in the organisation
│   ├── PaymentNotFound         (404) no such payment in the organisation
│   ├── CouponNotFound          (404) no coupon with this code
│   ├── NoUpcomingInvoice       (404) the billing run would issue no invoice next
│   └── CreditPackNotFound      (404) no (active) credit pack with this code
├── AlreadyExists
│   ├── SubscriptionExists      (409) the organisation already has a live subscription
│   ├── PaymentExists           (409) the provider's payment id is already recorded
│   ├── CouponExists            (409) a coupon with this code exists
│   └── CreditPackExists        (409) a credit pack with this code exists
├── Conflict
│   ├── InvalidTransition       (409) a subscription's or invoice's status may not go there
│   ├── PeriodEnded             (409) too late: the period the request is about has ended
│   ├── InvoiceNotDraft         (409) only a draft's lines may change
│   ├── DraftNotDeletable       (409) a draft carrying a proration or a coupon stays
│   ├── EmptyInvoice            (409) a draft without lines cannot be finalised
│   ├── NegativeInvoiceTotal    (409) a draft whose credits exceed its charges
│   ├── InvoiceHasPayments      (409) an invoice with payments on it is not voided
│   ├── InvoiceNotPayable       (409) only an open or uncollectible invoice takes payments
│   ├── Overpayment             (409) a payment above the invoice's amount due
│   ├── PaymentNotRefundable    (409) only a succeeded payment is refunded
│   ├── RefundExceedsPayment    (409) a refund above what is left of the payment
│   ├── TooManyRefunds          (409) the payment has taken its last refund
│   ├── TooManyOpenPurchases    (409) the organisation has too many unpaid pack purchases
│   ├── CouponInactive          (409) the coupon was deactivated
│   ├── CouponExpired           (409) the coupon's last day of redemption has passed
│   ├── CouponExhausted         (409) the coupon reached its redemption limit
│   ├── CouponAlreadyApplied    (409) the subscription or draft already has a coupon
│   ├── CustomerLinkedElsewhere (409) a provider's customer belongs to another organisation
│   └── RenderAbandoned         (409) the client left before its queued rendering started
├── RenderBusy                  (429) the organisation has too many renderings waiting
└── InvalidInput
    ├── PlanPriceMissing        (422) the plan has no price for that cycle and currency
    ├── NaiveDatetime           (422) a timestamp without a time zone
    ├── PeriodOutOfRange        (422) a period or trial before its anchor or past 9999-12-31
    ├── OutsidePeriod           (422) a moment outside the period it is prorated in
    ├── InvalidInvoiceLine      (422) a line's description, amount or quantity is refused
    ├── InvalidPayment          (422) a payment's amount, method, key or texts are refused
    ├── InvalidCoupon           (422) a coupon's code, discount or duration is refused
    ├── CouponCurrencyMismatch  (422) a fixed-amount coupon in another currency
    ├── InvalidCreditPack       (422) a credit pack's code, credits or price is refused
    └── CreditPackCurrencyMismatch (422) a pack in another currency than the organisation's

A payment or refund key reused for different content is the kit's `IdempotencyConflict`
(409, `idempotency_conflict`), as for credits and usage.
"""

from __future__ import annotations

from saascore.kit.errors import AlreadyExists, Conflict, DomainError, InvalidInput, NotFound

__all__ = [
    "CouponAlreadyApplied",
    "CouponCurrencyMismatch",
    "CouponExhausted",
    "CouponExists",
    "CouponExpired",
    "CouponInactive",
    "CouponNotFound",
    "CreditPackCurrencyMismatch",
    "CreditPackExists",
    "CreditPackNotFound",
    "CustomerLinkedElsewhere",
    "DraftNotDeletable",
    "EmptyInvoice",
    "InvalidCoupon",
    "InvalidCreditPack",
    "InvalidInvoiceLine",
    "InvalidPayment",
    "InvalidTransition",
    "InvoiceHasPayments",
    "InvoiceNotDraft",
    "InvoiceNotFound",
    "InvoiceNotPayable",
    "NaiveDatetime",
    "NegativeInvoiceTotal",
    "NoUpcomingInvoice",
    "OutsidePeriod",
    "Overpayment",
    "PaymentExists",
    "PaymentNotFound",
    "PaymentNotRefundable",
    "PeriodEnded",
    "PeriodOutOfRange",
    "PlanPriceMissing",
    "RefundExceedsPayment",
    "RenderAbandoned",
    "RenderBusy",
    "SubscriptionExists",
    "SubscriptionNotFound",
    "TooManyOpenPurchases",
    "TooManyRefunds",
]


class InvalidTransition(Conflict):
    """(409) The status (of a subscription, or of an invoice) may not change to the one asked
    for; nothing changed."""

    code = "invalid_transition"

    def __init__(
        self,
        current: str,
        target: str,
        trigger: str | None = None,
        *,
        subject: str = "subscription",
    ) -> None:
        how = f" on {trigger!r}" if trigger is not None else ""
        # "from open to open" reads as a riddle: a refusal to stay put says where it stands.
        message = (
            f"the {subject} is already {current}"
            if current == target
            else f"{'an' if subject[0] in 'aeiou' else 'a'} {subject} cannot go from {current} "
            f"to {target}{how}"
        )
        super().__init__(
            message,
            current=current,
            target=target,
            **({"trigger": trigger} if trigger is not None else {}),
        )
        self.current = current
        self.target = target
        self.trigger = trigger


class NaiveDatetime(InvalidInput):
    """(422) A timestamp has no time zone; billing computes only with aware UTC times."""

    code = "naive_datetime"


class PeriodOutOfRange(InvalidInput):
    """(422) The period (or trial) would start before its anchor or end after 9999-12-31."""

    code = "period_out_of_range"


class OutsidePeriod(InvalidInput):
    """(422) The moment of a plan change lies outside the period being prorated."""

    code = "outside_period"
    stateful = True


class SubscriptionNotFound(NotFound):
    """(404) The organisation has no subscription (or is not the caller's)."""

    code = "subscription_not_found"


class NoUpcomingInvoice(NotFound):
    """(404) The live subscription renews into no invoice: it ends at its period's end, it is
    past due, or its plan is free with nothing waiting on its upcoming draft."""

    code = "no_upcoming_invoice"


class SubscriptionExists(AlreadyExists):
    """(409) The organisation already has a live subscription: one at a time."""

    code = "subscription_exists"


class PeriodEnded(Conflict):
    """(409) The period the request is about has ended (a resume after the period's end)."""

    code = "period_ended"


class PlanPriceMissing(InvalidInput):
    """(422) The plan has no active price for that billing cycle and currency."""

    code = "plan_price_missing"
    stateful = True


class InvoiceNotFound(NotFound):
    """(404) No invoice with this id (or number) in the organisation."""

    code = "invoice_not_found"


class InvoiceNotDraft(Conflict):
    """(409) Lines are added and removed on a draft only; a finalised invoice is frozen."""

    code = "invoice_not_draft"


class DraftNotDeletable(Conflict):
    """(409) The draft carries what deleting it would lose: a subscription's proration lines
    (owed on its next invoice), or a coupon redeemed on it (which counts against the coupon's
    redemptions)."""

    code = "draft_not_deletable"


class EmptyInvoice(Conflict):
    """(409) A draft without lines cannot be finalised."""

    code = "empty_invoice"


class NegativeInvoiceTotal(Conflict):
    """(409) The draft's credits exceed its charges: a finalised invoice is never negative."""

    code = "negative_invoice_total"


class InvoiceHasPayments(Conflict):
    """(409) The invoice has payments on it (`amount_paid > 0`): voiding it would leave the
    rest owed on a void invoice. Refund the payments first, then void it."""

    code = "invoice_has_payments"


class InvalidInvoiceLine(InvalidInput):
    """(422) An invoice line's description, amount or quantity is refused, or too many lines."""

    code = "invalid_invoice_line"


class PaymentNotFound(NotFound):
    """(404) No payment with this id in the organisation."""

    code = "payment_not_found"


class PaymentExists(AlreadyExists):
    """(409) The provider's payment id is already recorded for another payment."""

    code = "payment_exists"


class InvoiceNotPayable(Conflict):
    """(409) Payments go to an open (or uncollectible) invoice only: a draft is not owed yet,
    a paid, void or refunded invoice is closed."""

    code = "invoice_not_payable"


class Overpayment(Conflict):
    """(409) The payment is above the invoice's amount due; nothing was written."""

    code = "overpayment"


class PaymentNotRefundable(Conflict):
    """(409) Only a succeeded (or partially refunded) payment is refunded."""

    code = "payment_not_refundable"


class RefundExceedsPayment(Conflict):
    """(409) The refund is above what is left of the payment (paid minus refunded)."""

    code = "refund_exceeds_payment"


class TooManyRefunds(Conflict):
    """(409) The payment has taken `MAX_REFUNDS` refunds: it takes no more, whatever the
    amount (refund what is left in one go)."""

    code = "too_many_refunds"


class InvalidPayment(InvalidInput):
    """(422) A payment's or refund's amount, method, key or texts are refused."""

    code = "invalid_payment"


class CouponNotFound(NotFound):
    """(404) No coupon with this code."""

    code = "coupon_not_found"


class CouponExists(AlreadyExists):
    """(409) A coupon with this code exists: codes are unique, and never reused."""

    code = "coupon_exists"


class CouponInactive(Conflict):
    """(409) The coupon was deactivated: no new redemptions."""

    code = "coupon_inactive"


class CouponExpired(Conflict):
    """(409) The coupon's `expires_at` has passed: no new redemptions."""

    code = "coupon_expired"


class CouponExhausted(Conflict):
    """(409) The coupon has been redeemed `max_redemptions` times."""

    code = "coupon_exhausted"


class CouponAlreadyApplied(Conflict):
    """(409) The subscription (or draft) already applies a coupon: one at a time, and one
    organisation redeems a coupon once per subscription."""

    code = "coupon_already_applied"


class InvalidCoupon(InvalidInput):
    """(422) A coupon's code, name, discount, duration, limit or expiry is refused."""

    code = "invalid_coupon"


class CouponCurrencyMismatch(InvalidInput):
    """(422) A fixed-amount coupon in a currency other than the invoice's or subscription's."""

    code = "coupon_currency_mismatch"
    stateful = True


class CreditPackNotFound(NotFound):
    """(404) No credit pack with this code (or, for a purchase, no active one)."""

    code = "credit_pack_not_found"


class CreditPackExists(AlreadyExists):
    """(409) A credit pack with this code exists."""

    code = "credit_pack_exists"


class InvalidCreditPack(InvalidInput):
    """(422) A credit pack's code, name, credits or price is refused."""

    code = "invalid_credit_pack"


class CreditPackCurrencyMismatch(InvalidInput):
    """(422) The pack is priced in another currency than the buying organisation's
    (`Organization.currency`, the currency its subscription is billed in): an organisation
    pays in one currency, and exchange rates are not saascore's business."""

    code = "credit_pack_currency_mismatch"
    stateful = True


class TooManyOpenPurchases(Conflict):
    """(409) The organisation has `MAX_OPEN_PURCHASES` unpaid (open) credit-pack purchase
    invoices: pay or void one before buying another pack."""

    code = "too_many_open_purchases"


class CustomerLinkedElsewhere(Conflict):
    """(409) The payment provider's customer is another organisation's (or the organisation
    is another customer already): a customer is never moved between organisations."""

    code = "provider_customer_conflict"


class RenderBusy(DomainError):
    """(429) The organisation already has a rendering running and as many waiting as it may
    (`MAX_WAITING_RENDERS`): its renderings take their turn one at a time, so that one
    organisation never holds up the others'. Retry after `Retry-After` seconds."""

    code = "render_busy"
    status_code = 429
    headers = {"Retry-After": "5"}


class RenderAbandoned(Conflict):
    """(409) The client went away while its rendering waited for its turn: it was not
    started. Nobody is left to read this answer; it ends the request."""

    code = "render_abandoned"

"""Invoices as documents: a printable HTML page, and a PDF made from that same page with
WeasyPrint (docs/billing.md, "Renderings").

- Every text that comes from the database (descriptions, notes, names, even the number) is
  hostile: the Jinja2 template escapes everything it prints.
- Amounts are formatted by `format_money`, quantities, the tax rate and dates by Babel, in the
  rendering's locale (the locale asked for, else the invoice's own), and every one of them in
  the locale's default numbering system, as `format_money` writes amounts: Arabic-Indic digits
  for `ar-YE`, never a page of mixed digits. The invoice's number is an identifier: it stays
  as issued. A right-to-left locale (Arabic, Hebrew, Persian,
  Urdu: Babel's `character_order`) gives `dir="rtl"`.
- The notes are the invoice's notes in that locale (`notes_localized`, by the locale as given,
  then its language), else its plain `notes`.
- A draft reads "DRAFT" (in the page's language) and shows no number; an open invoice past its
  due date reads overdue.
- The amount due is shown only where it is owed (`amount_owed`: open or uncollectible): a
  draft, a paid, void or refunded invoice owes nothing, whatever its stored `amount_due`.
- PDFs are rendered fairly: an organisation has one rendering running at a time (the others of
  its requests wait for its turn, at most `MAX_WAITING_RENDERS` of them, `RenderBusy` beyond),
  and the process runs `SAASCORE_PDF_CONCURRENCY` at once across organisations, so one
  organisation holds at most one of those. A request whose client went away while it waited
  is not rendered (`RenderAbandoned`). A rendering's work is bounded by the invoice's
  `MAX_LINES` lines.
- The PDF needs Pango (Debian's `libpango-1.0-0`) and a font that covers Arabic script;
  `make setup` installs both. WeasyPrint is imported on first use, so that the rest of
  saascore works where they are missing.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any, Final

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_decimal, format_percent
from sqlalchemy.ext.asyncio import AsyncSession

from saascore.billing.errors import RenderAbandoned, RenderBusy
from saascore.billing.invoices import OWED_STATUSES, InvoiceService, amount_owed, is_overdue
from saascore.config import Settings
from saascore.kit.money import (
    BASIS_POINTS_PER_UNIT,
    Money,
    UnknownLocale,
    format_money,
    localize_digits,
)
from saascore.kit.time import utcnow
from saascore.models import Invoice, InvoiceStatus, Organization
from saascore.tenancy.errors import OrganizationNotFound

if TYPE_CHECKING:
    # Imported when first needed: jinja2 by the first rendering (`_template`), anyio by the
    # first PDF, so that building the facade (every CLI command) loads neither.
    import anyio
    import jinja2

__all__ = [
    "MAX_LOCALE_LENGTH",
    "MAX_WAITING_RENDERS",
    "InvoiceRenderer",
    "Issuer",
    "checked_locale",
    "filename",
    "html_to_pdf",
    "invoice_html",
    "invoice_pdf",
]

#: The longest locale a rendering accepts (`ar-YE`, `zh-Hant-TW`, ...).
MAX_LOCALE_LENGTH: Final = 16
_LOCALE_TEXT: Final = re.compile(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8}){0,3}")
_FALLBACK_LOCALE: Final = "en"
#: How many PDF requests of one organisation wait for its turn behind the one rendering.
MAX_WAITING_RENDERS: Final = 4

# The words of the page. English is the fallback for every other language.
_LABELS: Final[Mapping[str, Mapping[str, str]]] = {
    "en": {
        "invoice": "Invoice",
        "draft": "DRAFT",
        "bill_to": "Bill to",
        "issue_date": "Issue date",
        "due_date": "Due date",
        "currency": "Currency",
        "description": "Description",
        "quantity": "Quantity",
        "unit": "Unit price",
        "amount": "Amount",
        "discount": "Discount",
        "tax": "Tax",
        "subtotal": "Subtotal",
        "total": "Total",
        "paid": "Paid",
        "due": "Amount due",
        "status_draft": "draft",
        "status_open": "open",
        "status_overdue": "overdue",
        "status_paid": "paid",
        "status_void": "void",
        "status_uncollectible": "uncollectible",
        "status_refunded": "refunded",
    },
    "ar": {
        "invoice": "فاتورة",
        "draft": "مسودة",
        "bill_to": "إلى",
        "issue_date": "تاريخ الإصدار",
        "due_date": "تاريخ الاستحقاق",
        "currency": "العملة",
        "description": "الوصف",
        "quantity": "الكمية",
        "unit": "سعر الوحدة",
        "amount": "المبلغ",
        "discount": "الخصم",
        "tax": "الضريبة",
        "subtotal": "المجموع الفرعي",
        "total": "الإجمالي",
        "paid": "المدفوع",
        "due": "المبلغ المستحق",
        "status_draft": "مسودة",
        "status_open": "مفتوحة",
        "status_overdue": "متأخرة",
        "status_paid": "مدفوعة",
        "status_void": "ملغاة",
        "status_uncollectible": "غير قابلة للتحصيل",
        "status_refunded": "مستردة",
    },
}


@dataclass(frozen=True, slots=True)
class Issuer:
    """The seller printed on every invoice (`SAASCORE_INVOICE_ISSUER_NAME` and `_ADDRESS`)."""

    name: str
    address: str = ""

    @classmethod
    def of(cls, settings: Settings) -> Issuer:
        return cls(settings.invoice_issuer_name, settings.invoice_issuer_address)


def checked_locale(locale: object) -> Locale:
    """`locale` (`ar`, `ar-YE`, `en_US`) as a Babel locale, or `UnknownLocale` (422
    `unknown_locale`) for anything else: too long, control characters, unknown to CLDR."""
    if (
        isinstance(locale, str)
        and len(locale) <= MAX_LOCALE_LENGTH
        and _LOCALE_TEXT.fullmatch(locale)
    ):
        try:
            return Locale.parse(locale.replace("-", "_"))
        except (UnknownLocaleError, ValueError, TypeError):
            pass
    shown = str(locale)[:MAX_LOCALE_LENGTH]
    raise UnknownLocale(f"{shown!r} is not a known locale (e.g. en, ar-YE)", locale=shown)


def _stored_locale(text: str) -> Locale:
    """The invoice's own locale; a stored value Babel no longer knows falls back to English."""
    try:
        return checked_locale(text)
    except UnknownLocale:
        return Locale.parse(_FALLBACK_LOCALE)


def _notes(invoice: Invoice, asked: str | None, locale: Locale) -> str | None:
    localized: Mapping[str, Any] = invoice.notes_localized or {}
    wanted = [
        asked,
        str(locale),
        str(locale).replace("_", "-"),
        locale.language,
    ]
    for key in wanted:
        if key is not None and isinstance(localized.get(key), str):
            text: str = localized[key]
            return text
    return invoice.notes


def invoice_html(
    invoice: Invoice,
    organization: Organization,
    *,
    locale: str | None = None,
    issuer: Issuer | None = None,
    today: date | None = None,
) -> str:
    """The invoice as a printable HTML page in `locale` (the invoice's own by default).

    `invoice` has its lines loaded; `organization` is its customer. `today` decides whether
    an open invoice reads overdue (the current UTC day by default)."""
    babel_locale = checked_locale(locale) if locale is not None else _stored_locale(invoice.locale)
    labels = {**_LABELS[_FALLBACK_LOCALE], **_LABELS.get(babel_locale.language, {})}
    if today is None:
        today = utcnow().date()
    issuer = issuer or Issuer("saascore")

    def money(minor: int) -> str:
        return format_money(Money(minor, invoice.currency), babel_locale)

    system = babel_locale.default_numbering_system

    def day(value: date | None) -> str | None:
        if value is None:
            return None
        return localize_digits(format_date(value, "long", locale=babel_locale), babel_locale)

    def decimal(value: int) -> str:
        return localize_digits(
            format_decimal(value, locale=babel_locale, numbering_system=system), babel_locale
        )

    def rate(basis_points: int) -> str:
        fraction = Decimal(basis_points) / BASIS_POINTS_PER_UNIT
        text = format_percent(
            fraction, locale=babel_locale, numbering_system=system, decimal_quantization=False
        )
        return localize_digits(text, babel_locale)

    draft = invoice.status is InvoiceStatus.DRAFT
    overdue = is_overdue(invoice, today)
    status = "overdue" if overdue else InvoiceStatus(invoice.status).value
    number = None if draft else invoice.number
    country = organization.country
    context = {
        "lang": str(babel_locale).replace("_", "-"),
        "direction": "rtl" if babel_locale.character_order == "right-to-left" else "ltr",
        "title": f"{labels['invoice']} {number}" if number else labels["draft"],
        "labels": labels,
        "draft": draft,
        "number": number,
        "overdue": overdue,
        "status": labels.get(f"status_{status}", status),
        "issuer_name": issuer.name,
        "issuer_address": issuer.address,
        "customer_name": organization.name,
        "customer_email": organization.billing_email,
        "customer_country": (
            babel_locale.territories.get(country.upper(), country) if country else None
        ),
        "issue_date": day(invoice.issue_date),
        "due_date": day(invoice.due_date),
        "currency": invoice.currency,
        "lines": [
            {
                "description": line.description,
                "quantity": decimal(line.quantity),
                "unit": money(line.unit_amount),
                "amount": money(line.amount),
                "discount": money(line.discount_amount),
                "tax": money(line.tax_amount),
            }
            for line in invoice.lines
        ],
        "tax_rate": rate(invoice.tax_rate_bps),
        "totals": {
            "subtotal": money(invoice.subtotal),
            "discount": money(invoice.discount_amount),
            "tax": money(invoice.tax_amount),
            "total": money(invoice.total),
            "paid": money(invoice.amount_paid),
        },
        # Nothing is due on a draft, a paid, void or refunded invoice: no line says otherwise.
        "due": money(amount_owed(invoice)) if invoice.status in OWED_STATUSES else None,
        "notes": _notes(invoice, locale, babel_locale),
        "notes_lang": str(babel_locale).replace("_", "-"),
    }
    return _template().render(context)


def html_to_pdf(html: str) -> bytes:
    """A PDF of the page `html` by WeasyPrint. CPU-bound: async callers run it in a thread."""
    import weasyprint

    pdf: bytes = weasyprint.HTML(string=html).write_pdf()
    return pdf


def invoice_pdf(
    invoice: Invoice,
    organization: Organization,
    *,
    locale: str | None = None,
    issuer: Issuer | None = None,
    today: date | None = None,
) -> bytes:
    """The invoice as a PDF, made from `invoice_html` (same arguments)."""
    return html_to_pdf(
        invoice_html(invoice, organization, locale=locale, issuer=issuer, today=today)
    )


def _new_lock() -> anyio.Lock:
    import anyio

    return anyio.Lock()


@dataclass
class _Turn:
    """One organisation's renderings: one runs (holding `lock`), the rest wait on it."""

    lock: anyio.Lock = field(default_factory=_new_lock)
    #: The requests holding or waiting for `lock`.
    requests: int = 0


class InvoiceRenderer:
    """Renders an invoice of `InvoiceService` with its organisation, the configured issuer and
    the service's clock (`core.invoice_renderer`)."""

    def __init__(self, invoices: InvoiceService) -> None:
        self.invoices = invoices
        settings = invoices.settings
        #: At most `SAASCORE_PDF_CONCURRENCY` renderings at once, in worker threads (made by
        #: the first PDF: in the event loop, anyio loads its asyncio backend for it).
        self._pdf_concurrency = settings.pdf_concurrency
        self._limiter: anyio.CapacityLimiter | None = None
        #: The last `SAASCORE_PDF_CACHE_SIZE` PDFs by the SHA-256 of their page: the same page
        #: (same invoice, amounts, status, locale and day) is the same document.
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_size = settings.pdf_cache_size
        self._turns: dict[uuid.UUID, _Turn] = {}

    async def html(
        self, invoice: Invoice, *, locale: str | None = None, session: AsyncSession | None = None
    ) -> str:
        """`invoice_html` of `invoice` (loaded with its lines, e.g. by `InvoiceService.get`)."""
        if locale is not None:
            checked_locale(locale)
        async with self.invoices.database.scope(session, readonly=True) as s:
            organization = await s.get(Organization, invoice.organization_id)
        if organization is None:
            raise OrganizationNotFound(
                f"no organisation {invoice.organization_id}",
                organization=str(invoice.organization_id),
            )
        return invoice_html(
            invoice,
            organization,
            locale=locale,
            issuer=Issuer.of(self.invoices.settings),
            today=self.invoices.clock().date(),
        )

    async def pdf(
        self,
        invoice: Invoice,
        *,
        locale: str | None = None,
        session: AsyncSession | None = None,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> bytes:
        """`invoice_pdf` of `invoice`. WeasyPrint runs in a worker thread, off the event loop,
        at most `SAASCORE_PDF_CONCURRENCY` at once and one per organisation (module
        docstring); a page rendered lately is not rendered again. `gone` tells whether the
        client went away: asked when the rendering's turn comes, it is then not started."""
        html = await self.html(invoice, locale=locale, session=session)
        digest = hashlib.sha256(html.encode("utf-8")).digest()
        if (cached := self._cached(digest)) is not None:
            return cached
        async with self._turn(invoice.organization_id):
            # An earlier request of the organisation may have rendered this very page.
            if (cached := self._cached(digest)) is not None:
                return cached
            import anyio.to_thread

            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(self._pdf_concurrency)
            async with self._limiter:
                if gone is not None and await gone():
                    raise RenderAbandoned(
                        "the client went away before its rendering started",
                        invoice=str(invoice.id),
                    )
                document = await anyio.to_thread.run_sync(html_to_pdf, html)
        if self._cache_size:
            self._cache[digest] = document
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return document

    def queued(self, org_id: uuid.UUID) -> int:
        """The organisation's PDF renderings running or waiting for their turn."""
        turn = self._turns.get(org_id)
        return turn.requests if turn is not None else 0

    def _cached(self, digest: bytes) -> bytes | None:
        cached = self._cache.get(digest)
        if cached is not None:
            self._cache.move_to_end(digest)
        return cached

    @asynccontextmanager
    async def _turn(self, org_id: uuid.UUID) -> AsyncIterator[None]:
        """The organisation's turn to render: one at a time, `MAX_WAITING_RENDERS` waiting."""
        turn = self._turns.setdefault(org_id, _Turn())
        if turn.requests > MAX_WAITING_RENDERS:
            raise RenderBusy(
                f"this organisation already has {turn.requests} invoice renderings running or "
                "waiting: retry when they are done",
                organization=str(org_id),
                waiting=turn.requests - 1,
            )
        turn.requests += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.requests -= 1
            if turn.requests == 0:
                del self._turns[org_id]


def filename(invoice: Invoice, extension: str) -> str:
    """The file name of a rendering: the number (`INV-2026-0001.pdf`), `draft-<id>` for a draft."""
    stem = invoice.number if invoice.number else f"draft-{invoice.id}"
    return f"{stem}.{extension}"


@cache
def _template() -> jinja2.Template:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("saascore.billing", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return environment.get_template("invoice.html")

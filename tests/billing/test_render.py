"""Invoices rendered: the printable HTML page and its PDF, by the renderer, over HTTP and by
the CLI. A YER invoice with Arabic notes reads right to left with Arabic digits, and its PDF's
text holds the number and the notes; every text from the database is escaped."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import subprocess
import threading
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import anyio
import pytest
import sqlalchemy as sa
from pypdf import PdfReader

import saascore.billing.render as render_module
from saascore.billing.errors import RenderAbandoned, RenderBusy
from saascore.billing.invoices import InvoiceService
from saascore.billing.render import InvoiceRenderer
from saascore.config import Settings
from saascore.kit.db import Database
from saascore.kit.money import UnknownLocale
from saascore.models import Invoice, Organization
from saascore.testing import TestTenant
from tests.admin import Admin, customer_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOTES_AR = "شكرا لكم على ثقتكم. يرجى الدفع خلال أسبوعين"
ARABIC_DIGITS = {chr(0x0660 + digit) for digit in range(10)}
# ASCII digits and separators as Arabic-Indic ones: `arabic("1,234.50")`.
_ARABIC = str.maketrans(
    {**{str(d): chr(0x0660 + d) for d in range(10)}, ",": "\u066c", ".": "\u066b"}
)


def arabic(text: str) -> str:
    return text.translate(_ARABIC)


def pdf_unavailable() -> str | None:
    """Why WeasyPrint cannot make a PDF with Arabic text here, or None when it can."""
    try:
        import weasyprint  # noqa: F401
    except OSError as error:  # Pango missing
        return f"WeasyPrint cannot load its system libraries: {error}"
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return "fontconfig is not installed"
    families = subprocess.run(
        [fc_list, ":lang=ar", "family"], capture_output=True, text=True, check=False
    ).stdout
    if not families.strip():
        return "no installed font covers Arabic (make setup installs them)"
    return None


def needs_pdf() -> None:
    """Skip without the PDF libraries (run `make setup`), except on CI, where it fails."""
    reason = pdf_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def pdf_text(document: bytes) -> str:
    """The text of every page, NFKC-normalised: extraction may give Arabic letters as their
    presentation forms (the shaped glyphs), which NFKC maps back to the letters."""
    reader = PdfReader(io.BytesIO(document))
    text = "\n".join(page.extract_text() for page in reader.pages)
    return unicodedata.normalize("NFKC", text)


async def set_customer(
    database: Database, org_id: uuid.UUID, *, locale: str, country: str, email: str
) -> None:
    async with database.transaction() as s:
        await s.execute(
            sa.update(Organization)
            .where(Organization.id == org_id)
            .values(locale=locale, country=country, billing_email=email, tax_rate_bps=500)
        )


async def _yer_invoice(admin: Admin, org_id: uuid.UUID) -> Invoice:
    await set_customer(admin.database, org_id, locale="ar-YE", country="YE", email="pay@example.ye")
    core = admin.core
    draft = await core.invoices.create_draft(
        org_id,
        "YER",
        [("اشتراك شهري", 12345), ("<script>alert(1)</script>", 500, 2)],
        notes="Thank you <script>alert('notes')</script>",
        notes_localized={"ar": NOTES_AR},
    )
    await core.invoices.finalize(org_id, draft.id)
    return await core.invoices.get(org_id, draft.id)


async def _usd_invoice(admin: Admin, org_id: uuid.UUID, *, finalize: bool = True) -> Invoice:
    await set_customer(admin.database, org_id, locale="en-US", country="US", email="ap@example.com")
    core = admin.core
    draft = await core.invoices.create_draft(org_id, "USD", [("Consulting", 123450)])
    if finalize:
        await core.invoices.finalize(org_id, draft.id)
    return await core.invoices.get(org_id, draft.id)


class TestHtml:
    async def test_yer_invoice_in_arabic(self, admin: Admin, customer: TestTenant) -> None:
        invoice = await _yer_invoice(admin, customer.organization_id)
        assert invoice.number is not None
        page = await admin.core.invoice_renderer.html(invoice)
        assert 'dir="rtl"' in page
        assert 'lang="ar-YE"' in page
        assert NOTES_AR in page
        assert invoice.number in page
        # YER has no decimals (Babel); ar-YE writes Arabic-Indic digits: 12 345 + 2 x 500 + 5 %.
        assert arabic("12,345") in page
        assert invoice.total == 12345 + 1000 + 617 + 50
        assert arabic("14,012") in page
        assert "pay@example.ye" in page
        assert "اليمن" in page  # the country, named in the locale

    async def test_every_number_in_the_locales_digits(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        invoice = await _yer_invoice(admin, customer.organization_id)
        assert invoice.issue_date is not None
        page = await admin.core.invoice_renderer.html(invoice)
        # Everything the page formats (not the database's text, isolated in <bdi>, nor
        # markup): no Latin digit.
        body = re.sub(r"<bdi[^>]*>.*?</bdi>", "", page.split("<body>", 1)[1], flags=re.S)
        text = re.sub(r"<[^>]*>", "", body)
        assert not re.search(r"[0-9]", text), re.findall(r".{0,20}[0-9].{0,20}", text)
        assert f">{arabic('2')}<" in page  # the second line's quantity
        # The tax rate: 5 % in Arabic-Indic digits.
        assert re.search(r"\(\u0665\u200f?[%\u066a]", page)
        assert arabic(str(invoice.issue_date.year)) in page
        # The draft's header is one label in the page's language.
        draft = await admin.core.invoices.create_draft(customer.organization_id, "YER", [("x", 1)])
        draft_page = await admin.core.invoice_renderer.html(
            await admin.core.invoices.get(customer.organization_id, draft.id)
        )
        assert '<span class="draft">مسودة</span>' in draft_page
        assert "DRAFT" not in draft_page
        # A locale whose default digits are Latin keeps them: ar-MA.
        moroccan = await admin.core.invoice_renderer.html(invoice, locale="ar-MA")
        assert not ARABIC_DIGITS & set(moroccan)

    async def test_database_text_is_escaped(self, admin: Admin, customer: TestTenant) -> None:
        invoice = await _yer_invoice(admin, customer.organization_id)
        english = await admin.core.invoice_renderer.html(invoice, locale="en")
        for page in (english, await admin.core.invoice_renderer.html(invoice)):
            assert "<script" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in english
        # English has no localized notes: the plain notes, escaped.
        assert "Thank you &lt;script&gt;alert(&#39;notes&#39;)&lt;/script&gt;" in english
        assert NOTES_AR not in english

    async def test_usd_invoice_left_to_right(self, admin: Admin, customer: TestTenant) -> None:
        invoice = await _usd_invoice(admin, customer.organization_id)
        page = await admin.core.invoice_renderer.html(invoice)
        assert 'dir="ltr"' in page
        assert 'lang="en-US"' in page
        assert "$1,234.50" in page
        assert not ARABIC_DIGITS & set(page)
        # The same invoice in Arabic, asked for: right to left, and ar-SA's Arabic digits.
        in_arabic = await admin.core.invoice_renderer.html(invoice, locale="ar-SA")
        assert 'dir="rtl"' in in_arabic
        assert arabic("1,234.50") in in_arabic

    async def test_draft_and_overdue(self, admin: Admin, customer: TestTenant) -> None:
        draft = await _usd_invoice(admin, customer.organization_id, finalize=False)
        page = await admin.core.invoice_renderer.html(draft)
        assert "DRAFT" in page
        assert 'class="number"' not in page
        invoice = await _usd_invoice(admin, customer.organization_id)
        assert invoice.due_date is not None
        renderer = admin.core.invoice_renderer
        clock = renderer.invoices.clock
        days_late = (invoice.due_date - clock().date()).days + 1
        renderer.invoices.clock = lambda: clock() + timedelta(days=days_late)
        try:
            late = await renderer.html(invoice)
        finally:
            renderer.invoices.clock = clock
        assert 'class="status overdue"' in late
        assert 'class="status overdue"' not in await renderer.html(invoice)

    async def test_bad_locales_are_refused(self, admin: Admin, customer: TestTenant) -> None:
        invoice = await _usd_invoice(admin, customer.organization_id)
        for locale in ("xx-XX", "en\x00", "ar\nYE", "e" * 17, "", "../en", "en-US-POSIX-x-y-z"):
            with pytest.raises(UnknownLocale):
                await admin.core.invoice_renderer.html(invoice, locale=locale)


class TestPdf:
    async def test_yer_invoice_pdf_holds_number_and_arabic_notes(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        needs_pdf()
        invoice = await _yer_invoice(admin, customer.organization_id)
        assert invoice.number is not None
        document = await admin.core.invoice_renderer.pdf(invoice)
        assert document.startswith(b"%PDF-")
        text = pdf_text(document)
        assert invoice.number in text
        # The notes word for word (not merely some Arabic letters), in logical order.
        assert unicodedata.normalize("NFKC", NOTES_AR) in text
        assert "Thank you" not in text  # the Arabic notes, not the plain ones

    async def test_pdfs_are_cached_by_page_and_rendered_few_at_once(
        self, admin: Admin, customer: TestTenant, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        needs_pdf()
        invoice = await _usd_invoice(admin, customer.organization_id)
        renderer = InvoiceRenderer(
            InvoiceService(admin.database, Settings(pdf_concurrency=2, pdf_cache_size=2))
        )
        rendered: list[str] = []
        running = peak = 0
        real = render_module.html_to_pdf

        def counting(html: str) -> bytes:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                rendered.append(html)
                return real(html)
            finally:
                running -= 1

        monkeypatch.setattr(render_module, "html_to_pdf", counting)
        first = await renderer.pdf(invoice)
        assert await renderer.pdf(invoice) == first  # the same page: not rendered again
        assert len(rendered) == 1
        arabic_page = await renderer.pdf(invoice, locale="ar-YE")  # another page
        assert arabic_page != first
        assert len(rendered) == 2
        # Five other pages at once: one organisation's render one at a time, all come back.
        locales = ["fr", "de", "es", "it", "nl"]
        documents = await asyncio.gather(*(renderer.pdf(invoice, locale=lc) for lc in locales))
        assert all(document.startswith(b"%PDF-") for document in documents)
        assert len(rendered) == 7
        assert peak == 1
        # The cache keeps the last two pages: the first page is rendered again.
        await renderer.pdf(invoice)
        assert len(rendered) == 8


async def until(condition: Callable[[], bool]) -> None:
    """Wait for `condition`, set by other tasks and worker threads (no event to wait on): at
    most a minute, a guard against hanging, not a measure (no timing is asserted)."""
    for _ in range(6000):
        if condition():
            return
        await anyio.sleep(0.01)
    pytest.fail("the condition never held")


class TestFairness:
    """Renderings blocked by a gate in place of WeasyPrint: what runs, what waits."""

    @pytest.fixture
    def gate(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
        gate = Gate()
        monkeypatch.setattr(render_module, "html_to_pdf", gate.render)
        try:
            yield gate
        finally:
            gate.open.set()

    async def test_one_organisation_cannot_hold_up_another(
        self, admin: Admin, customer: TestTenant, gate: Gate
    ) -> None:
        other = await customer_of(admin)
        mine = await _usd_invoice(admin, customer.organization_id)
        theirs = await _usd_invoice(admin, other.organization_id)
        renderer = InvoiceRenderer(
            InvoiceService(admin.database, Settings(pdf_concurrency=2, pdf_cache_size=0))
        )
        org = customer.organization_id
        locales = ["fr", "de", "es", "it", "nl"]
        waiting = [asyncio.create_task(renderer.pdf(mine, locale=lc)) for lc in locales]
        await until(lambda: renderer.queued(org) == len(locales))
        await until(lambda: len(gate.blocked) == 1)
        # Past its turn and the few waiting for it, the organisation is told to come back.
        with pytest.raises(RenderBusy) as caught:
            await renderer.pdf(mine, locale="pt")
        assert (caught.value.status_code, caught.value.headers["Retry-After"]) == (429, "5")
        # The other organisation's rendering starts and ends while the first one's wait.
        with anyio.fail_after(60):
            assert await renderer.pdf(theirs, locale="ja") == b"%PDF-free"
        assert (len(gate.blocked), renderer.queued(org)) == (1, len(locales))
        gate.open.set()
        assert await asyncio.gather(*waiting) == [b"%PDF-gated"] * len(locales)
        assert len(gate.blocked) == len(locales)
        assert renderer.queued(org) == 0

    async def test_a_client_gone_while_waiting_is_not_rendered(
        self, admin: Admin, customer: TestTenant, gate: Gate
    ) -> None:
        invoice = await _usd_invoice(admin, customer.organization_id)
        renderer = InvoiceRenderer(InvoiceService(admin.database, Settings(pdf_cache_size=0)))

        async def gone() -> bool:
            return True

        first = asyncio.create_task(renderer.pdf(invoice, locale="fr"))
        await until(lambda: len(gate.blocked) == 1)
        left = asyncio.create_task(renderer.pdf(invoice, locale="de", gone=gone))
        await until(lambda: renderer.queued(customer.organization_id) == 2)
        gate.open.set()
        assert await first == b"%PDF-gated"
        with pytest.raises(RenderAbandoned):
            await left
        assert len(gate.blocked) == 1  # the page in "de" was never rendered


class Gate:
    """Stands in for WeasyPrint: a page in Japanese renders at once, any other blocks until
    `open` is set (in the worker thread)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.blocked: list[str] = []

    def render(self, html: str) -> bytes:
        if 'lang="ja"' in html:
            return b"%PDF-free"
        self.blocked.append(html)
        self.open.wait(120)
        return b"%PDF-gated"


class TestHttp:
    async def test_html_and_pdf_routes(self, admin: Admin, customer: TestTenant) -> None:
        invoice = await _yer_invoice(admin, customer.organization_id)
        path = f"/v1/invoices/{invoice.id}"
        page = await admin.client.get(f"{path}.html", headers=customer.headers)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert f'filename="{invoice.number}.html"' in page.headers["content-disposition"]
        assert 'dir="rtl"' in page.text
        assert NOTES_AR in page.text
        english = await admin.client.get(
            f"{path}.html", params={"locale": "en"}, headers=customer.headers
        )
        assert 'dir="ltr"' in english.text
        # The JSON route is still the JSON route.
        assert (await admin.client.get(path, headers=customer.headers)).json()["id"] == str(
            invoice.id
        )

        bad = await admin.client.get(
            f"{path}.html", params={"locale": "zz\u202e"}, headers=customer.headers
        )
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "unknown_locale"

        needs_pdf()
        pdf = await admin.client.get(f"{path}.pdf", headers=customer.headers)
        assert pdf.status_code == 200, pdf.text
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.headers["content-disposition"].startswith(
            f'attachment; filename="{invoice.number}.pdf"'
        )
        text = pdf_text(pdf.content)
        assert invoice.number is not None
        assert invoice.number in text
        assert unicodedata.normalize("NFKC", NOTES_AR) in text

    async def test_another_tenants_invoice_is_not_found(
        self, admin: Admin, customer: TestTenant
    ) -> None:
        other = await customer_of(admin)
        theirs = await _usd_invoice(admin, other.organization_id)
        for suffix in (".html", ".pdf"):
            answer = await admin.client.get(
                f"/v1/invoices/{theirs.id}{suffix}", headers=customer.headers
            )
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "invoice_not_found"
        missing = await admin.client.get(
            f"/v1/invoices/{uuid.uuid4()}.html", headers=customer.headers
        )
        assert missing.status_code == 404

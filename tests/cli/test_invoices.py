"""`saascore invoices`, through the console script: a one-off draft, finalised, shown, listed
and voided; bad lines are usage errors and refusals exit 1 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_asyncio

from saascore.kit.db import Database
from saascore.plans import PlanService, read_catalog
from saascore.tenancy import OrganizationService
from tests.billing.test_render import pdf_text, pdf_unavailable, set_customer
from tests.cli.runner import Cli


@pytest_asyncio.fixture(loop_scope="session")
async def org_cli(migrated_cli: Cli, empty_database: Database) -> Cli:
    """A migrated database with the default catalog and organisation `acme`."""
    plans = PlanService(empty_database)
    await plans.load_catalog(read_catalog())
    await OrganizationService(empty_database, plans).create(
        name="Acme", plan="free", external_id="acme"
    )
    return migrated_cli


def test_create_finalize_show_list_void(org_cli: Cli) -> None:
    cli = org_cli
    created = cli(
        "invoices", "create", "acme", "--line", "Setup: fee:29.99", "--line", "Credit:-5"
    ).ok()
    assert created.stdout.startswith("draft (")
    assert "total 24.99" in created.stdout
    draft = json.loads(cli("invoices", "list", "--org", "acme", "--json").ok().stdout)
    assert [(row["number"], row["status"], row["total"]) for row in draft] == [
        (None, "draft", 2499)
    ]
    invoice_id = draft[0]["id"]

    finalized = cli("invoices", "finalize", invoice_id).ok()
    number = finalized.stdout.split()[0]
    assert number.startswith("INV-")
    assert "open: total 24.99 USD" in finalized.stdout

    shown = json.loads(cli("invoices", "show", number, "--json").ok().stdout)
    assert shown["id"] == invoice_id
    assert [line["description"] for line in shown["lines"]] == ["Setup: fee", "Credit"]
    assert [line["amount"] for line in shown["lines"]] == [2999, -500]

    assert cli("invoices", "list", "--status", "open", "--ids").ok().stdout.split() == [invoice_id]
    assert cli("invoices", "void", number).ok().stdout.strip() == f"{number} void"
    again = cli("invoices", "void", number)
    assert again.returncode == 1
    assert again.stderr.strip() == "saascore: the invoice is already void"


def test_delete_a_draft_and_nothing_due_once_void(org_cli: Cli) -> None:
    cli = org_cli
    cli("invoices", "create", "acme", "--line", "Setup:17.25").ok()
    [draft_id] = _only_draft(cli)
    assert cli("invoices", "delete", draft_id).ok().stdout.strip() == f"draft {draft_id} deleted"
    assert _only_draft(cli) == []
    missing = cli("invoices", "delete", draft_id)
    assert missing.error_line(1) == f"saascore: no invoice {draft_id}"
    cli("invoices", "create", "acme", "--line", "Setup:17.25").ok()
    number = cli("invoices", "finalize", *_only_draft(cli)).ok().stdout.split()[0]
    assert "due 17.25 by " in cli("invoices", "show", number).ok().stdout
    issued = cli("invoices", "delete", number)
    assert issued.error_line(1).endswith("only a draft is deleted (void an issued invoice)")
    cli("invoices", "void", number).ok()
    shown = cli("invoices", "show", number).ok().stdout
    assert "total 17.25" in shown
    assert "due" not in shown.splitlines()[-1]
    row = json.loads(cli("invoices", "show", number, "--json").ok().stdout)
    assert (row["amount_due"], row["amount_owed"]) == (1725, 0)


def test_bad_input(org_cli: Cli) -> None:
    cli = org_cli
    for line in ("no amount", "Setup:12,50", ":5"):
        bad = cli("invoices", "create", "acme", "--line", line)
        assert bad.returncode == 2, line
        assert bad.stderr.startswith("saascore: --line"), bad.stderr
    too_fine = cli("invoices", "create", "acme", "--line", "Setup:0.001")
    assert too_fine.returncode == 2
    assert "USD amounts have 2 decimals at most" in too_fine.stderr
    missing = cli("invoices", "show", "INV-1999-0001")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "saascore: no invoice INV-1999-0001"
    empty = cli("invoices", "create", "acme", "--line", "Credit:-1").ok()
    draft_id = empty.stdout.split("(")[1].split(")")[0]
    refused = cli("invoices", "finalize", draft_id)
    assert refused.returncode == 1
    assert refused.stderr.startswith("saascore: the draft's credits exceed its charges")


@pytest_asyncio.fixture(loop_scope="session")
async def arabic_cli(org_cli: Cli, empty_database: Database) -> Cli:
    """`org_cli`, with `acme` billed in Yemen, in ar-YE."""
    org = await OrganizationService(empty_database, PlanService(empty_database)).resolve("acme")
    await set_customer(empty_database, org.id, locale="ar-YE", country="YE", email="a@ye.example")
    return org_cli


def test_show_writes_the_renderings(arabic_cli: Cli, tmp_path: Path) -> None:
    cli = arabic_cli
    cli("invoices", "create", "acme", "--line", "Setup:1500", "--currency", "YER").ok()
    number = cli("invoices", "finalize", *_only_draft(cli)).ok().stdout.split()[0]
    html, pdf = tmp_path / "invoice.html", tmp_path / "invoice.pdf"
    cli("invoices", "show", number, "--html", str(html)).ok()
    page = html.read_text(encoding="utf-8")
    assert 'dir="rtl"' in page
    assert number in page
    english = tmp_path / "en.html"
    cli("invoices", "show", number, "--html", str(english), "--locale", "en").ok()
    assert 'dir="ltr"' in english.read_text(encoding="utf-8")
    bad = cli("invoices", "show", number, "--html", str(english), "--locale", "xx-QQ")
    assert bad.returncode == 2
    assert "is not a known locale" in bad.stderr
    # Without a rendering to write the locale is checked all the same.
    unknown = cli("invoices", "show", number, "--locale", "zz")
    assert unknown.returncode == 2
    assert "'zz' is not a known locale" in unknown.stderr
    assert unknown.stdout == ""
    unwritable = cli("invoices", "show", number, "--html", str(tmp_path / "no" / "x.html"))
    assert unwritable.returncode == 1
    assert unwritable.stderr.startswith("saascore: cannot write the rendering")
    if pdf_unavailable() is None:
        cli("invoices", "show", number, "--pdf", str(pdf)).ok()
        assert number in pdf_text(pdf.read_bytes())


def _only_draft(cli: Cli) -> list[str]:
    return (
        cli("invoices", "list", "--org", "acme", "--status", "draft", "--ids").ok().stdout.split()
    )

"""A newcomer's trial of the billing commands: every total shown, JSON in the HTTP shapes,
major units for people, one time-zone rule for every `--at`, errors that name what was typed,
and the surfaces that were missing (ids in the invoice list, `packs deactivate`, `orgs create
--country`, `invoices tax-rate`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from saascore.cli._output import instant
from saascore.kit.db import Database
from saascore.plans import PlanService, read_catalog
from saascore.tenancy import OrganizationService
from tests.cli.runner import Cli

#: The commands' own behaviour (arguments, output, exit codes) is the same on both databases,
#: and the billing services beneath are tested on both: these run once, on PostgreSQL (CI's
#: database), as each command costs a process start.
pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@pytest_asyncio.fixture(loop_scope="session")
async def org_cli(migrated_cli: Cli, empty_database: Database) -> Cli:
    """A migrated database with the default catalog and organisation `acme`."""
    plans = PlanService(empty_database)
    await plans.load_catalog(read_catalog())
    await OrganizationService(empty_database, plans).create(
        name="Acme", plan="free", external_id="acme"
    )
    return migrated_cli


def _draft(cli: Cli) -> str:
    [draft] = (
        cli("invoices", "list", "--org", "acme", "--status", "draft", "--ids").ok().stdout.split()
    )
    return draft


def test_show_prints_every_total_and_json_is_the_http_document(org_cli: Cli) -> None:
    cli = org_cli
    assert (
        cli("invoices", "tax-rate", "acme", "1000").ok().stdout.strip() == "tax rate 10% (1000 bp)"
    )
    cli("coupons", "create", "TWENTY", "--percent", "20").ok()
    cli("invoices", "create", "acme", "--line", "Work:90.00").ok()
    draft = _draft(cli)
    cli("coupons", "redeem", "acme", "TWENTY", "--invoice", draft).ok()
    number = cli("invoices", "finalize", draft).ok().stdout.split()[0]
    cli("payments", "record", number, "--amount", "50", "--method", "cash").ok()

    shown = cli("invoices", "show", number).ok().stdout
    # 90 - 18 + 7.20 = 79.20; 79.20 - 50 = 29.20: the page adds up.
    assert (
        "subtotal 90.00  discount 18.00  tax 7.20 (10%, 1000 bp)  total 79.20  paid 50.00  "
        "due 29.20"
    ) in shown
    header = next(line for line in shown.splitlines() if "description" in line)
    assert header.split() == [
        "description",
        "quantity",
        "unit",
        "amount",
        "amount",
        "discount",
        "tax",
        "total",
    ]

    document = json.loads(cli("invoices", "show", number, "--json").ok().stdout)
    assert (
        document["subtotal"],
        document["discount_amount"],
        document["tax_amount"],
        document["tax_rate_bps"],
        document["total"],
        document["amount_paid"],
        document["amount_due"],
        document["currency"],
    ) == (9000, 1800, 720, 1000, 7920, 5000, 2920, "USD")
    [line] = document["lines"]
    assert (line["amount"], line["discount_amount"], line["tax_amount"], line["total"]) == (
        9000,
        1800,
        720,
        7920,
    )
    [listed] = json.loads(cli("invoices", "list", "--json").ok().stdout)
    assert listed == document


def test_the_invoice_list_shows_ids(org_cli: Cli) -> None:
    cli = org_cli
    cli("invoices", "create", "acme", "--line", "Work:1").ok()
    table = cli("invoices", "list").ok().stdout
    assert _draft(cli) in table


def test_subscriptions_print_major_units_and_one_json_object(org_cli: Cli) -> None:
    cli = org_cli
    table = cli("subscriptions", "create", "acme", "--plan", "starter", "--trial-days", "0").ok()
    assert "9.99" in table.stdout
    assert " 999 " not in table.stdout
    shown = json.loads(cli("subscriptions", "show", "acme", "--json").ok().stdout)
    assert isinstance(shown, dict)
    assert (shown["plan"], shown["unit_amount"], shown["currency"]) == ("starter", 999, "USD")


def test_a_moment_without_a_time_zone_is_refused_everywhere(org_cli: Cli) -> None:
    cli = org_cli
    for args in (
        ("subscriptions", "create", "acme", "--plan", "starter", "--at", "2026-01-01"),
        ("subscriptions", "cancel", "acme", "--at", "2026-01-01T00:00:00"),
        ("billing", "run", "--at", "2026-01-01T00:00:00", "--dry-run"),
        ("coupons", "create", "LATER", "--percent", "5", "--expires", "2099-01-01T00:00"),
    ):
        line = cli(*args).error_line(2)
        assert "needs a time zone" in line, args
    assert "--at 'yesterday': not an ISO 8601 timestamp" in cli(
        "billing", "run", "--at", "yesterday"
    ).error_line(2)
    assert cli("coupons", "list", "--ids").ok().stdout.split() == []
    cli("billing", "run", "--at", "2026-01-01T00:00:00+03:00", "--dry-run").ok()


def test_the_time_zone_hint_is_accepted(org_cli: Cli) -> None:
    """The hint of a date without a zone ("e.g. 2099-01-01Z or +03:00") is accepted: a date
    with a zone is midnight there."""
    cli = org_cli
    line = cli("coupons", "create", "SOON", "--percent", "5", "--expires", "2099-01-01").error_line(
        2
    )
    assert "2099-01-01Z or +03:00" in line
    cli("coupons", "create", "SOON", "--percent", "5", "--expires", "2099-01-01Z").ok()
    cli("coupons", "create", "LATE", "--percent", "5", "--expires", "2099-01-01+03:00").ok()
    assert instant("2099-01-01Z") == datetime(2099, 1, 1, tzinfo=UTC)
    assert instant("2099-01-01+03:00") == datetime(2098, 12, 31, 21, tzinfo=UTC)
    assert instant(" 2099-01-01-0530 ") == datetime(2099, 1, 1, 5, 30, tzinfo=UTC)


def test_errors_name_the_option_as_typed(org_cli: Cli) -> None:
    cli = org_cli
    cli("invoices", "create", "acme", "--line", "Work:10").ok()
    number = cli("invoices", "finalize", _draft(cli)).ok().stdout.split()[0]

    negative = cli("payments", "record", number, "--amount", "-5", "--method", "cash")
    assert negative.error_line(2) == "saascore: --amount '-5': an amount is more than 0"
    for percent in ("101", "0", "20.555", "ten"):
        refused = cli("coupons", "create", "BIG", "--percent", percent).error_line(2)
        assert refused.startswith(f"saascore: --percent '{percent}': a percentage above 0"), refused
    made = cli("coupons", "create", "HALFPOINT", "--percent", "20.5").ok()
    assert made.stdout.strip() == "coupon HALFPOINT: 20.5% off, once"
    listed = json.loads(cli("coupons", "list", "--json").ok().stdout)
    assert [c["percent_off"] for c in listed] == [2050]

    again = cli("invoices", "finalize", number).error_line(1)
    assert again == "saascore: the invoice is already open"
    currency = cli("invoices", "create", "acme", "--line", "Work:10", "--currency", "ABC")
    assert currency.error_line(2).startswith("saascore: --currency: 'ABC' is not a known")

    paid = cli("payments", "record", number, "--amount", "10", "--method", "cash").ok()
    payment_id = paid.stdout.split()[1].rstrip(":")
    cli("payments", "refund", payment_id, "--amount", "10").ok()
    refunded = cli("payments", "refund", payment_id, "--amount", "1").error_line(1)
    assert refunded == f"saascore: payment {payment_id} is already refunded in full"

    cli("subscriptions", "create", "acme", "--plan", "starter", "--trial-days", "0").ok()
    cli("subscriptions", "cancel", "acme", "--now").ok()
    canceled = cli("subscriptions", "change-plan", "acme", "--plan", "pro").error_line(1)
    assert canceled == "saascore: the subscription is already canceled"


def test_packs_deactivate_country_and_tax_rate(org_cli: Cli) -> None:
    cli = org_cli
    cli("packs", "create", "credits-1k", "--credits", "1000", "--price", "9.99").ok()
    [pack] = json.loads(cli("packs", "list", "--json").ok().stdout)
    assert (pack["price"], pack["currency"], pack["active"]) == (999, "USD", True)
    assert (
        cli("packs", "deactivate", "credits-1k").ok().stdout.strip() == "pack credits-1k inactive"
    )
    assert cli("packs", "list", "--active", "--ids").ok().stdout.split() == []
    assert cli("packs", "deactivate", "nope").error_line(1).startswith("saascore: ")

    riyadh = cli("orgs", "create", "Riyadh Dates", "--country", "SA", "--external-id", "ry").ok()
    assert riyadh.stdout.strip()
    cli("invoices", "create", "ry", "--line", "Dates:100", "--currency", "SAR").ok()
    [draft] = json.loads(cli("invoices", "list", "--org", "ry", "--json").ok().stdout)
    assert (draft["tax_rate_bps"], draft["tax_amount"]) == (1500, 1500)
    bad = cli("invoices", "tax-rate", "ry", "100001")
    assert bad.returncode == 2
    assert cli("invoices", "tax-rate", "nobody", "10").returncode == 1

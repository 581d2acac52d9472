"""`saascore coupons` and `saascore packs`, through the console script: a coupon created,
listed, redeemed on a draft and deactivated; a pack created and listed; bad input is a usage
error (exit 2) and refusals exit 1 with one line."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio

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


def test_create_list_redeem_deactivate(org_cli: Cli) -> None:
    cli = org_cli
    made = cli("coupons", "create", "welcome", "--percent", "20", "--max-redemptions", "3").ok()
    assert made.stdout.strip() == "coupon WELCOME: 20% off, once"
    fixed = cli(
        "coupons",
        "create",
        "FIVE",
        "--amount",
        "5.00",
        "--currency",
        "USD",
        "--duration",
        "repeating",
        "--periods",
        "3",
        "--expires",
        "2099-01-01T00:00:00Z",
    ).ok()
    assert fixed.stdout.strip() == "coupon FIVE: 5.00 USD off, repeating 3"
    listed = json.loads(cli("coupons", "list", "--json").ok().stdout)
    assert [(c["code"], c["percent_off"], c["amount_off"]) for c in listed] == [
        ("FIVE", None, 500),
        ("WELCOME", 2000, None),
    ]
    assert cli("coupons", "list", "--ids").ok().stdout.split() == ["FIVE", "WELCOME"]

    cli("invoices", "create", "acme", "--line", "Work:100.00").ok()
    [invoice_id] = cli("invoices", "list", "--org", "acme", "--ids").ok().stdout.split()
    redeemed = cli("coupons", "redeem", "acme", "welcome", "--invoice", invoice_id).ok()
    assert redeemed.stdout.startswith(f"coupon WELCOME redeemed on invoice {invoice_id}")
    shown = json.loads(cli("invoices", "show", invoice_id, "--json").ok().stdout)
    assert (shown["subtotal"], shown["discount_amount"], shown["total"]) == (10000, 2000, 8000)
    assert shown["amount_paid"] == 0
    assert shown["lines"][0]["discount_amount"] == 2000

    again = cli("coupons", "redeem", "acme", "FIVE", "--invoice", invoice_id)
    assert again.returncode == 1
    assert again.stderr.strip() == f"saascore: invoice {invoice_id} already applies a coupon"
    no_subscription = cli("coupons", "redeem", "acme", "FIVE")
    assert no_subscription.returncode == 1
    assert cli("coupons", "deactivate", "welcome").ok().stdout.strip() == "coupon WELCOME inactive"
    assert cli("coupons", "list", "--active", "--ids").ok().stdout.split() == ["FIVE"]


def test_bad_coupons(org_cli: Cli) -> None:
    cli = org_cli
    for args in (
        ("X",),
        ("X", "--percent", "10", "--amount", "1", "--currency", "USD"),
        ("X", "--amount", "1"),
        ("X", "--percent", "ten"),
        ("X", "--amount", "1.001", "--currency", "USD"),
        ("X", "--percent", "10", "--duration", "weekly"),
        ("bad code", "--percent", "10"),
        ("X", "--percent", "10", "--duration", "repeating"),
    ):
        result = cli("coupons", "create", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("saascore: ") or "Usage" in result.stderr
    cli("coupons", "create", "TAKEN", "--percent", "10").ok()
    taken = cli("coupons", "create", "taken", "--percent", "10")
    assert taken.returncode == 1
    assert taken.stderr.strip() == "saascore: a coupon TAKEN exists"
    assert cli("coupons", "deactivate", "NOPE").returncode == 1


def test_packs(org_cli: Cli) -> None:
    cli = org_cli
    made = cli("packs", "create", "credits-1k", "--credits", "1000", "--price", "9.99").ok()
    assert made.stdout.strip() == "pack credits-1k: 1000 credits for 9.99 USD"
    listed = json.loads(cli("packs", "list", "--json").ok().stdout)
    assert [(p["code"], p["credits"], p["currency"]) for p in listed] == [
        ("credits-1k", 1000, "USD")
    ]
    table = cli("packs", "list").ok().stdout
    assert "yes" in table.split()  # active
    assert "True" not in table
    assert cli("packs", "create", "credits-1k", "--credits", "1", "--price", "1").returncode == 1
    assert cli("packs", "create", "x", "--credits", "0", "--price", "1").returncode == 2
    assert cli("packs", "create", "x", "--credits", "1", "--price", "abc").returncode == 2

"""`saascore payments`, through the console script: partial payments then the rest, a replayed
key, an overpayment and a refund; bad amounts are usage errors and refusals exit 1 with one
line."""

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


def _open_invoice(cli: Cli) -> str:
    cli("invoices", "create", "acme", "--line", "Setup:20.00").ok()
    draft = json.loads(cli("invoices", "list", "--org", "acme", "--json").ok().stdout)[0]
    return cli("invoices", "finalize", draft["id"]).ok().stdout.split()[0]


def test_record_replay_refund_list(org_cli: Cli) -> None:
    cli = org_cli
    number = _open_invoice(cli)
    pay = ("payments", "record", number, "--method", "card", "--org", "acme")
    first = cli(*pay, "--amount", "12.50", "--key", "k1").ok()
    assert "succeeded: 12.50 USD" in first.stdout
    payment_id = first.stdout.split()[1]
    again = cli(*pay, "--amount", "12.50", "--key", "k1").ok()
    assert again.stdout.split()[1] == payment_id
    over = cli(*pay, "--amount", "7.51")
    assert over.returncode == 1
    assert over.stderr.startswith("saascore: 7.51 USD is above the 7.50 USD due")
    cli(*pay[:3], "--method", "tharwatt", "--amount", "7.50").ok()
    shown = json.loads(cli("invoices", "show", number, "--json").ok().stdout)
    assert (shown["status"], shown["amount_due"]) == ("paid", 0)

    refunded = cli("payments", "refund", payment_id, "--amount", "2.50", "--reason", "goodwill")
    assert "partially_refunded: 2.50 of 12.50 USD refunded" in refunded.ok().stdout
    too_much = cli("payments", "refund", payment_id, "--amount", "10.01")
    assert too_much.returncode == 1
    assert "above the 10.00 USD left" in too_much.stderr

    listed = json.loads(cli("payments", "list", "--org", "acme", "--json").ok().stdout)
    assert [(row["method"], row["method_name"], row["amount"]) for row in listed] == [
        ("other", "tharwatt", 750),
        ("credit_card", None, 1250),
    ]
    assert [row["refunded_amount"] for row in listed] == [0, 250]
    assert cli("payments", "list", "--ids").ok().stdout.split()[-1] == payment_id


def test_bad_input(org_cli: Cli) -> None:
    cli = org_cli
    number = _open_invoice(cli)
    for amount in ("12,50", "0.001", "abc"):
        bad = cli("payments", "record", number, "--amount", amount, "--method", "card")
        assert bad.returncode == 2, amount
        assert bad.stderr.startswith("saascore: --amount"), bad.stderr
    zero = cli("payments", "record", number, "--amount", "0", "--method", "card")
    assert zero.returncode == 2
    bad_method = cli("payments", "record", number, "--amount", "1", "--method", "a;b")
    assert bad_method.returncode == 2
    missing = cli("payments", "record", "INV-1999-0001", "--amount", "1", "--method", "card")
    assert (missing.returncode, missing.stderr.strip()) == (1, "saascore: no invoice INV-1999-0001")
    not_an_id = cli("payments", "refund", "nope", "--amount", "1")
    assert not_an_id.returncode == 2
    assert cli("payments", "list", "--json").ok().stdout.strip() == "[]"

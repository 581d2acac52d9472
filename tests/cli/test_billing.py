"""`saascore billing run`, through the console script."""

from __future__ import annotations

import json
import re

import pytest_asyncio

from saascore.kit.db import Database
from saascore.plans import PlanService, read_catalog
from saascore.tenancy import OrganizationService
from tests.cli.runner import Cli


@pytest_asyncio.fixture(loop_scope="session")
async def org_cli(migrated_cli: Cli, empty_database: Database) -> Cli:
    plans = PlanService(empty_database)
    await plans.load_catalog(read_catalog())
    await OrganizationService(empty_database, plans).create(
        name="Acme", plan="free", external_id="acme"
    )
    return migrated_cli


def test_dry_run_then_run_then_nothing_left(org_cli: Cli) -> None:
    cli = org_cli
    cli(
        "subscriptions",
        "create",
        "acme",
        "--plan",
        "starter",
        "--trial-days",
        "0",
        "--at",
        "2024-04-01T00:00:00Z",
    ).ok()
    dry = json.loads(
        cli("billing", "run", "--at", "2024-05-01T00:00:00Z", "--dry-run", "--json").ok().stdout
    )
    assert (dry["dry_run"], dry["renewed"], dry["invoices_issued"]) == (True, 1, 1)
    done = json.loads(cli("billing", "run", "--at", "2024-05-01T00:00:00Z", "--json").ok().stdout)
    assert (done["renewed"], done["invoices_issued"]) == (1, 1)
    table = cli("billing", "run", "--at", "2024-05-01T00:00:00Z").ok().stdout
    # Each row says what it counts: subscriptions, organisations, invoices (done already: 0).
    for label in ("subscriptions renewed", "invoices issued", "organizations suspended"):
        assert re.search(rf"^\s*{label}\s+0\s*$", table, re.MULTILINE), table
    assert re.search(r"^\s*organizations looked at\s+1\s*$", table, re.MULTILINE), table
    again = json.loads(cli("billing", "run", "--at", "2024-05-01T00:00:00Z", "--json").ok().stdout)
    assert again["renewed"] == 0
    assert again["invoices_issued"] == 0


def test_a_bad_moment_is_one_line(org_cli: Cli) -> None:
    result = org_cli("billing", "run", "--at", "yesterday")
    assert result.returncode != 0


def test_overview_and_upcoming(org_cli: Cli) -> None:
    cli = org_cli
    cli("subscriptions", "create", "acme", "--plan", "starter", "--trial-days", "0").ok()
    upcoming = json.loads(cli("invoices", "upcoming", "acme", "--json").ok().stdout)
    assert [line["kind"] for line in upcoming["lines"]] == ["plan"]
    overview = json.loads(cli("billing", "overview", "acme", "--json").ok().stdout)
    assert overview["upcoming_invoice"] == upcoming
    assert overview["subscription"]["status"] == "active"
    per = {meter["metric"]: meter["included_per"] for meter in overview["usage"]}
    assert per == {"api_calls": "day", "storage_bytes": "none", "tokens": "month"}
    text = cli("billing", "overview", "acme").ok().stdout
    assert "upcoming invoice" in text
    assert "1000 a day" in text  # starter's API calls: an allowance per day, not per period
    missing = cli("invoices", "upcoming", "nobody")
    assert missing.returncode != 0

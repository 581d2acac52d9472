"""`saascore subscriptions`, through the console script."""

from __future__ import annotations

import json

import pytest_asyncio

from saascore.kit.db import Database
from saascore.plans import PlanService, read_catalog
from saascore.tenancy import OrganizationService
from tests.cli.runner import Cli


@pytest_asyncio.fixture(loop_scope="session")
async def org_cli(migrated_cli: Cli, empty_database: Database) -> Cli:
    """A migrated database with the default catalog and one organisation (external id acme)."""
    plans = PlanService(empty_database)
    await plans.load_catalog(read_catalog())
    await OrganizationService(empty_database, plans).create(
        name="Acme", plan="free", external_id="acme"
    )
    return migrated_cli


def test_create_change_cancel_resume_show(org_cli: Cli) -> None:
    cli = org_cli
    created = cli(
        "subscriptions",
        "create",
        "acme",
        "--plan",
        "starter",
        "--cycle",
        "monthly",
        "--trial-days",
        "0",
        "--at",
        "2024-04-01T00:00:00Z",
        "--json",
    ).ok()
    row = json.loads(created.stdout)
    assert (row["plan"], row["status"], row["unit_amount"]) == ("starter", "active", 999)
    assert row["current_period_end"].startswith("2024-05-01T00:00:00Z")

    cli(
        "subscriptions", "change-plan", "acme", "--plan", "pro", "--at", "2024-04-16T00:00:00Z"
    ).ok()
    cli("subscriptions", "cancel", "acme", "--at", "2024-04-17T00:00:00Z").ok()
    row = json.loads(cli("subscriptions", "show", "acme", "--json").ok().stdout)
    assert (row["plan"], row["cancel_at_period_end"]) == ("pro", True)
    canceling = cli("subscriptions", "show", "acme").ok().stdout
    assert "yes" in canceling.split()  # "cancels": yes or no, as every table says it
    assert "True" not in canceling
    cli("subscriptions", "resume", "acme", "--at", "2024-04-18T00:00:00Z").ok()
    table = cli("subscriptions", "show", "acme").ok().stdout
    assert "pro" in table
    assert "active" in table


def test_refusals(org_cli: Cli) -> None:
    cli = org_cli
    missing = cli("subscriptions", "show", "acme")
    assert missing.returncode == 1
    assert "subscription" in missing.error_line(1)
    no_price = cli("subscriptions", "create", "acme", "--plan", "pro", "--cycle", "quarterly")
    assert no_price.returncode == 1
    assert "quarterly" in no_price.error_line(1)
    bad_time = cli("subscriptions", "create", "acme", "--plan", "pro", "--at", "0001-01-01")
    assert bad_time.returncode == 2
    cli("subscriptions", "create", "acme", "--plan", "pro").ok()
    twice = cli("subscriptions", "create", "acme", "--plan", "pro")
    assert twice.returncode == 1
    assert "already has a live subscription" in twice.error_line(1)
    cli("subscriptions", "cancel", "acme", "--now").ok()
    again = cli("subscriptions", "cancel", "acme", "--now")
    assert again.returncode == 1
    assert "the subscription is already canceled" in again.error_line(1)

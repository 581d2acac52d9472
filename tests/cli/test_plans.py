"""`saascore plans`: loading the catalog (idempotently) and listing it."""

from __future__ import annotations

import json

import pytest_asyncio

from saascore.cli.serve import demo_catalog
from saascore.kit.db import Database
from saascore.plans import PlanService
from tests.cli.runner import Cli

CODES = ["free", "starter", "pro", "business", "enterprise"]


def test_load_twice_then_list(migrated_cli: Cli) -> None:
    first = migrated_cli("plans", "load").ok()
    assert first.stdout.startswith("Loaded the default catalog:\n")
    assert f"plans:  5 created ({', '.join(CODES)}), 0 updated, 0 already applied" in first.stdout
    assert "meters: 3 created (tokens, api_calls, storage_bytes), 0 updated" in first.stdout

    # The list sees five plans whether it reads before or after the second load commits.
    second, listed, as_json, codes = migrated_cli.run_together(
        ["plans", "load"],
        ["plans", "list"],
        ["plans", "list", "--json"],
        ["plans", "list", "--ids"],
    )
    assert second.ok().stdout.startswith("the default catalog: already applied (nothing changed)")
    assert f"plans:  0 created, 0 updated, 5 already applied ({', '.join(CODES)})" in second.stdout
    assert "meters: 0 created, 0 updated, 3 already applied" in second.stdout
    assert codes.ok().stdout.split() == CODES
    plans = {plan["code"]: plan for plan in json.loads(as_json.ok().stdout)}
    assert list(plans) == CODES
    assert {"billing_cycle": "monthly", "currency": "USD", "amount": 2999} in plans["pro"]["prices"]
    assert plans["enterprise"]["monthly_token_limit"] is None  # unlimited
    assert plans["free"]["credits_per_period"] == 10
    rows = [line.split() for line in listed.ok().stdout.splitlines() if line.strip()]
    assert [row[0] for row in rows if row[0] in CODES] == CODES  # each once, in catalog order
    pro = next(row for row in rows if row[0] == "pro")
    assert pro[1:4] == ["Pro", "USD", "29.99"]
    assert "unlimited" in next(row for row in rows if row[0] == "enterprise")


def test_load_says_what_a_changed_catalog_updates(migrated_cli: Cli) -> None:
    catalog = migrated_cli.cwd / "catalog.toml"
    catalog.write_text('[plans.solo]\nname = "Solo"\n')
    migrated_cli("plans", "load", str(catalog)).ok()
    catalog.write_text('[plans.solo]\nname = "Solo"\ncredits_per_period = 5\n')
    changed = migrated_cli("plans", "load", str(catalog)).ok()
    assert changed.stdout.startswith("Loaded ")
    assert "plans:  0 created, 1 updated (solo), 0 already applied" in changed.stdout


@pytest_asyncio.fixture(loop_scope="session")
async def demo_plans_cli(migrated_cli: Cli, empty_database: Database) -> Cli:
    """`saascore` on a database with the demo's catalog: the default one and the hidden
    `demo` plan."""
    async with empty_database.transaction() as session:
        await PlanService(empty_database).load_catalog(demo_catalog(), session=session)
    return migrated_cli


def test_list_shows_the_public_plans_as_the_api_does(demo_plans_cli: Cli) -> None:
    public, every, table = demo_plans_cli.run_together(
        ["plans", "list", "--ids"], ["plans", "list", "--all", "--json"], ["plans", "list", "--all"]
    )
    assert public.ok().stdout.split() == CODES  # GET /v1/plans leaves the hidden plan out
    plans = {plan["code"]: plan for plan in json.loads(every.ok().stdout)}
    assert list(plans) == [*CODES, "demo"]
    assert plans["demo"]["is_public"] is False
    assert plans["pro"]["is_public"] is True
    demo_row = next(line for line in table.ok().stdout.splitlines() if line.split()[:1] == ["demo"])
    assert demo_row.split()[-2:] == ["yes", "no"]  # active, not public

"""`saascore orgs`: creating organisations and listing them."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest
import pytest_asyncio

from saascore.kit.db import Database
from saascore.plans import PlanService, read_catalog
from tests.cli.runner import Cli
from tests.factories import create_organization


@pytest_asyncio.fixture(loop_scope="session")
async def catalog_cli(migrated_cli: Cli, empty_database: Database) -> Cli:
    """`saascore` on a migrated database with the default catalog loaded."""
    async with empty_database.transaction() as session:
        await PlanService(empty_database).load_catalog(read_catalog(), session=session)
    return migrated_cli


def test_create_and_list(catalog_cli: Cli) -> None:
    created, unknown_plan = catalog_cli.run_together(
        ["orgs", "create", "Acme", "--plan", "pro", "--external-id", "x1"],
        ["orgs", "create", "Nobody", "--plan", "nope"],
    )
    organization_id = uuid.UUID(created.ok().stdout.strip())  # only the id, for scripts
    assert created.stdout == f"{organization_id}\n"
    assert unknown_plan.error_line(1) == (
        "saascore: unknown plan 'nope': valid plans are free, starter, pro, business, enterprise"
    )

    taken, listed, as_json, ids = catalog_cli.run_together(
        ["orgs", "create", "Acme again", "--plan", "pro", "--external-id", "x1"],
        ["orgs", "list"],
        ["orgs", "list", "--json"],
        ["orgs", "list", "--ids"],
    )
    assert taken.error_line(1) == "saascore: an organisation with external id 'x1' exists"
    rows = [line.split() for line in listed.ok().stdout.splitlines()]
    assert [str(organization_id), "Acme", "acme", "pro", "x1", "active"] in [
        row[:6] for row in rows
    ]
    assert "Nobody" not in listed.stdout
    assert "again" not in listed.stdout
    [acme] = json.loads(as_json.ok().stdout)  # a JSON array of typed objects
    assert {key: acme[key] for key in ("id", "name", "plan", "external_id", "status")} == {
        "id": str(organization_id),
        "name": "Acme",
        "plan": "pro",
        "external_id": "x1",
        "status": "active",
    }
    assert acme["domain"] is None
    assert datetime.fromisoformat(acme["created_at"]).utcoffset() == timedelta(0)
    assert ids.ok().stdout == f"{organization_id}\n"


@pytest.mark.asyncio(loop_scope="session")
async def test_control_characters_are_refused_and_listed_escaped(
    catalog_cli: Cli, empty_database: Database
) -> None:
    """A name with ESC is refused (exit 2: invalid input, one line); one stored before the check, or
    behind saascore's back, is listed with its ESC written out, and `--json` stays JSON."""
    refused = catalog_cli("orgs", "create", "evil\x1b[31mRED")
    line = refused.error_line(2)
    assert line.startswith("saascore: NAME holds the control character '\\x1b'"), line
    async with empty_database.transaction() as session:
        await create_organization(session, name="old\x1b[31mname\x01")
    listed, as_json = catalog_cli.run_together(["orgs", "list"], ["orgs", "list", "--json"])
    assert "old\\x1b[31mname\\x01" in listed.ok().stdout
    assert "\x1b" not in listed.stdout
    assert "evil" not in listed.stdout
    assert [org["name"] for org in json.loads(as_json.ok().stdout)] == ["old\x1b[31mname\x01"]

"""`saascore usage` and `saascore credits`, through the console script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_asyncio

from saascore.kit.db import Database
from saascore.metering import UsageService
from saascore.plans import PlanService, read_catalog
from saascore.tenancy import OrganizationService
from tests.cli.runner import Cli


@pytest_asyncio.fixture(loop_scope="session")
async def org_cli(migrated_cli: Cli, empty_database: Database) -> tuple[Cli, str]:
    """A migrated database with the default catalog and one organisation (external id acme)
    whose api_calls limit is 5."""
    plans = PlanService(empty_database)
    await plans.load_catalog(read_catalog())
    organization = await OrganizationService(empty_database, plans).create(
        name="Acme", plan="free", external_id="acme"
    )
    await UsageService(empty_database).set_limit(organization.id, "api_calls", 5)
    return migrated_cli, str(organization.id)


def events_file(directory: Path, org: str, count: int, *extra: str) -> Path:
    lines = [
        json.dumps({"organization_id": org, "id": f"e{n}", "metric": "api_calls", "quantity": 1})
        for n in range(count)
    ]
    path = directory / "events.jsonl"
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


def test_import_is_idempotent_and_reports_each_line(org_cli: tuple[Cli, str]) -> None:
    cli, org = org_cli
    path = events_file(cli.cwd, org, 7, "not json")
    first = cli("usage", "import", str(path))
    assert first.returncode == 1  # a refused and an invalid line
    assert first.stdout.strip() == "5 accepted, 0 already applied, 2 refused, 1 invalid"
    assert "line 6: limit_exceeded" in first.stderr
    assert "line 8: not JSON" in first.stderr
    assert not Path(str(path) + ".saascore-progress").exists()  # done: no checkpoint left

    again = cli("usage", "import", str(path))
    assert again.stdout.strip() == "0 accepted, 5 already applied, 2 refused, 1 invalid"

    report = cli("usage", "report", "--org", "acme", "--by", "metric").ok()
    row = next(line.split() for line in report.stdout.splitlines() if "api_calls" in line)
    assert row[:4] == ["api_calls", "5", "call", "5"]  # quantity 5 from 5 events, counted once


def test_import_counts_a_line_nested_too_deep_as_invalid(org_cli: tuple[Cli, str]) -> None:
    # Python's JSON parser raised RecursionError, which ended the whole import as an
    # "unexpected error" with the lines before it unrecorded.
    cli, org = org_cli
    path = events_file(cli.cwd, org, 2, "[" * 100_000 + "]" * 100_000)
    result = cli("usage", "import", str(path))
    assert result.returncode == 1
    assert result.stdout.strip() == "2 accepted, 0 already applied, 0 refused, 1 invalid"
    assert result.stderr.strip() == "line 3: not JSON: it nests too deeply"


def test_grant_refuses_a_key_the_ledger_cannot_hold(org_cli: tuple[Cli, str]) -> None:
    # A long key was a database error on PostgreSQL and stored as given on SQLite.
    cli, _ = org_cli
    before = json.loads(cli("credits", "balance", "acme", "--json").ok().stdout)
    for key in ("", "k" * 256):
        refused = cli("credits", "grant", "acme", "5", "--key", key)
        assert refused.returncode == 2
        assert refused.stderr == "saascore: an idempotency key is text of 1 to 255 characters\n"
    assert json.loads(cli("credits", "balance", "acme", "--json").ok().stdout) == before


def test_an_organisation_named_in_bytes_that_are_not_utf8_is_not_found(
    org_cli: tuple[Cli, str],
) -> None:
    # Python hands such bytes on as half surrogate pairs, which went to the database: an
    # unexpected error on SQLite, a database error on PostgreSQL.
    cli, _ = org_cli
    result = cli("credits", "balance", "acme\udcff")
    assert result.returncode == 1
    assert result.stderr == "saascore: no organisation 'acme\\udcff'\n"


def test_grant_refuses_a_description_in_bytes_that_are_not_utf8(org_cli: tuple[Cli, str]) -> None:
    cli, _ = org_cli
    refused = cli("credits", "grant", "acme", "5", "--description", "caf\udce9")
    assert refused.returncode == 2
    assert refused.stderr == "saascore: --description holds text that is not valid Unicode\n"


def test_a_look_up_in_bytes_that_are_not_utf8_is_one_usage_error(
    org_cli: tuple[Cli, str],
) -> None:
    # A look-up passes its text to the database: an unexpected UnicodeEncodeError on SQLite,
    # a "database error" on PostgreSQL.
    cli, org = org_cli
    for args in (
        ("usage", "report", "--org", org, "--metric", "caf\udce9"),
        ("audit", "list", "--org", org, "--action", "caf\udce9"),
    ):
        result = cli(*args)
        assert result.returncode == 2
        assert result.stderr == "saascore: an argument holds bytes that are not UTF-8 text\n"


def test_import_resumes_after_the_last_committed_batch(org_cli: tuple[Cli, str]) -> None:
    cli, org = org_cli
    path = events_file(cli.cwd, org, 3)
    # An interrupted import left a checkpoint after the first two lines.
    first_two = len("\n".join(path.read_text().splitlines()[:2])) + 1
    Path(str(path) + ".saascore-progress").write_text(str(first_two))
    resumed = cli("usage", "import", str(path)).ok()
    assert resumed.stdout.strip() == "1 accepted, 0 already applied, 0 refused, 0 invalid"
    restarted = cli("usage", "import", "--restart", str(path)).ok()
    assert restarted.stdout.strip() == "2 accepted, 1 already applied, 0 refused, 0 invalid"


def test_import_backfills_other_periods(org_cli: tuple[Cli, str]) -> None:
    cli, org = org_cli
    dated = [
        {"organization_id": org, "id": f"old-{n}", "metric": "tokens", "quantity": 3, **when}
        for n, when in enumerate(
            [{"occurred_at": "1970-01-01T00:00:00+00:00"}, {"occurred_at": "2020-02-29T12:00Z"}]
        )
    ]
    path = cli.cwd / "backfill.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in dated))
    imported = cli("usage", "import", str(path)).ok()
    assert imported.stdout.strip() == "2 accepted, 0 already applied, 0 refused, 0 invalid"


def test_credits_grant_balance_verify(org_cli: tuple[Cli, str]) -> None:
    cli, _ = org_cli
    granted = cli("credits", "grant", "acme", "100", "--key", "k1").ok()
    assert granted.stdout.strip() == "granted 100; balance 100"
    again = cli("credits", "grant", "acme", "100", "--key", "k1").ok()
    assert again.stdout.strip() == "already applied: key 'k1' granted 100; nothing granted now"
    balance, verify, sweep, nobody, as_json, ids = cli.run_together(
        ["credits", "balance", "acme"],
        ["credits", "verify"],
        ["usage", "sweep"],
        ["credits", "balance", "nobody"],
        ["credits", "balance", "acme", "--json"],
        ["credits", "balance", "acme", "--ids"],
    )
    assert balance.ok().stdout.splitlines()[0] == "balance 100"
    account = json.loads(as_json.ok().stdout)
    assert account["balance"] == 100  # a number, not text
    [grant] = account["grants"]
    assert (grant["amount"], grant["remaining"], grant["source"]) == (100, 100, "manual")
    assert ids.ok().stdout == f"{grant['id']}\n"
    assert verify.ok().stdout.strip() == "credit ledger consistent"
    assert sweep.ok().stdout.strip() == "0 reservations expired"
    assert nobody.error_line(1) == "saascore: no organisation nobody"


def test_credits_refill_grants_the_months_plan_credits_once(org_cli: tuple[Cli, str]) -> None:
    cli, org = org_cli
    first = cli("credits", "refill", "--org", "acme").ok()
    assert first.stdout.strip() == f"{org}: granted 10; balance 10"  # the free plan's 10
    again = cli("credits", "refill", "--org", org).ok()
    assert again.stdout.strip() == f"{org}: already applied"
    every = cli("credits", "refill", "--all").ok()
    assert every.stdout.splitlines() == [
        f"{org}: already applied",
        "0 of 1 organisations granted credits",
    ]
    assert cli("credits", "balance", "acme").ok().stdout.splitlines()[0] == "balance 10"
    neither, both, nobody = cli.run_together(
        ["credits", "refill"],
        ["credits", "refill", "--all", "--org", "acme"],
        ["credits", "refill", "--org", "nobody"],
    )
    assert neither.error_line(2) == "saascore: name the organisations: --org ID or --all"
    assert both.error_line(2) == "saascore: name the organisations: --org ID or --all"
    assert nobody.error_line(1) == "saascore: no organisation nobody"


def test_report_never_adds_different_metrics(org_cli: tuple[Cli, str]) -> None:
    cli, org = org_cli
    events = [
        {"organization_id": org, "id": f"m{n}", "metric": metric, "quantity": quantity, **when}
        for n, (metric, quantity, when) in enumerate(
            [
                ("api_calls", 2, {"occurred_at": "2026-01-05T10:00:00Z"}),
                ("tokens", 700, {"occurred_at": "2026-01-05T11:00:00Z"}),
                ("tokens", 300, {"occurred_at": "2026-01-06T11:00:00Z"}),
            ]
        )
    ]
    path = cli.cwd / "two-metrics.jsonl"
    path.write_text("".join(json.dumps(event) + "\n" for event in events))
    cli("usage", "import", str(path)).ok()
    window = ["--org", "acme", "--from", "2026-01-01", "--to", "2026-01-31"]
    table, as_json = cli.run_together(
        ["usage", "report", *window], ["usage", "report", *window, "--json"]
    )
    rows = [line.split() for line in table.ok().stdout.splitlines()]
    # Per day and metric (never 702 on the 5th), then a total per metric with its unit.
    assert [row[:4] for row in rows if row and row[0].startswith("2026-")] == [
        ["2026-01-05", "api_calls", "2", "call"],
        ["2026-01-05", "tokens", "700", "token"],
        ["2026-01-06", "tokens", "300", "token"],
    ]
    assert [row[:4] for row in rows if row and row[0] == "total"] == [
        ["total", "api_calls", "2", "call"],
        ["total", "tokens", "1,000", "token"],
    ]
    assert [
        (r["day"], r["metric"], r["quantity"], r["unit"]) for r in json.loads(as_json.stdout)
    ] == [
        ("2026-01-05", "api_calls", 2, "call"),
        ("2026-01-05", "tokens", 700, "token"),
        ("2026-01-06", "tokens", 300, "token"),
    ]


def test_report_refuses_an_unknown_metric(org_cli: tuple[Cli, str]) -> None:
    """It said "no usage in that range" with exit 0, where the API answers unknown_metric."""
    cli, _ = org_cli
    unknown = cli("usage", "report", "--org", "acme", "--metric", "nosuch")
    assert unknown.error_line(1) == "saascore: no meter 'nosuch'"
    assert unknown.stdout == ""
    quiet = cli("usage", "report", "--org", "acme", "--metric", "tokens").ok()
    assert "no usage in that range" in quiet.stdout + quiet.stderr

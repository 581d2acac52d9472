"""The command line at its edges: 64-bit numbers, negative numbers, invalid values (exit 2)
against refusals (exit 1), past the end of a list, and the layout of the help."""

from __future__ import annotations

import pytest
import pytest_asyncio

from saascore.credits.errors import BalanceOverflow
from saascore.kit.db import Database
from saascore.kit.inputs import INT64_MAX, PRIORITY_MAX
from saascore.plans import PlanService, read_catalog
from tests.cli.runner import Cli

TOO_BIG = str(INT64_MAX + 1)
TOO_SMALL = str(-(INT64_MAX + 2))
PAST_PRIORITY = str(PRIORITY_MAX + 1)


@pytest_asyncio.fixture(loop_scope="session")
async def acme_cli(migrated_cli: Cli, empty_database: Database) -> Cli:
    """`saascore` on a migrated database with the default catalog and the organisation
    `acme-42`."""
    async with empty_database.transaction() as session:
        await PlanService(empty_database).load_catalog(read_catalog(), session=session)
    migrated_cli("orgs", "create", "Acme", "--external-id", "acme-42").ok()
    return migrated_cli


class TestNumbersAtTheEdges:
    @pytest.mark.parametrize(
        ("args", "option"),
        [
            (("orgs", "list", "--offset", TOO_BIG), "'--offset'"),
            (("orgs", "list", "--limit", TOO_BIG), "'--limit'"),
            (("credits", "grant", "acme-42", "5", "--priority", TOO_BIG), "'--priority'"),
            (("credits", "grant", "acme-42", "5", "--priority", TOO_SMALL), "'--priority'"),
            # The API's bound: the column is a 32-bit integer on PostgreSQL.
            (("credits", "grant", "acme-42", "5", "--priority", PAST_PRIORITY), "'--priority'"),
            (("credits", "grant", "acme-42", TOO_BIG), "'AMOUNT'"),
            (("credits", "grant", "acme-42", "-1"), "'AMOUNT'"),
            (("credits", "grant", "acme-42", "0"), "'AMOUNT'"),
            (("serve", "--workers", TOO_BIG), "'--workers'"),
            (("demo", "--port", TOO_BIG), "'--port'"),
        ],
        ids=lambda value: " ".join(value) if isinstance(value, tuple) else value,
    )  # fmt: skip
    def test_out_of_range_is_one_line_and_exit_2(
        self, cli: Cli, args: tuple[str, ...], option: str
    ) -> None:
        line = cli(*args).error_line(2)
        assert f"invalid value for {option}" in line
        assert "unexpected error" not in line
        assert not (cli.cwd / ".saascore").exists()  # refused before the database

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("webhooks", "list", "--outcome", "bogus"), "'--outcome': 'bogus' is not one"),
            (("billing", "reconcile", "--provider", "mock"), "'--provider': 'mock' is not one"),
        ],
        ids=lambda value: " ".join(value) if isinstance(value, tuple) else value,
    )  # fmt: skip
    def test_a_refused_choice_has_no_pydantic_prefix(
        self, cli: Cli, args: tuple[str, ...], message: str
    ) -> None:
        line = cli(*args).error_line(2)
        assert message in line
        assert "Value error" not in line

    def test_the_largest_values_are_taken(self, acme_cli: Cli) -> None:
        past_end, priority = acme_cli.run_together(
            ["orgs", "list", "--offset", str(INT64_MAX), "--limit", str(INT64_MAX)],
            ["credits", "grant", "acme-42", "5", "--priority", str(PRIORITY_MAX)],
        )
        assert past_end.ok().stdout == ""
        assert priority.ok().stdout.startswith("granted 5;")
        lowest = acme_cli("credits", "grant", "acme-42", "5", "--priority", str(-PRIORITY_MAX))
        assert lowest.ok().stdout.startswith("granted 5;")

    def test_a_negative_number_is_a_value_not_an_option(self, cli: Cli) -> None:
        line = cli("credits", "grant", "acme-42", "-1").error_line(2)
        assert line.startswith("saascore: invalid value for 'AMOUNT': ")
        assert "no such option" not in line
        # Options still are options; an unknown one is still a usage error.
        assert cli("credits", "grant", "acme-42", "5", "--bogus").returncode == 2


class TestInvalidIsTwoRefusedIsOne:
    def test_values_invalid_by_themselves_exit_2_naming_the_option(self, acme_cli: Cli) -> None:
        empty, long, scope, past = acme_cli.run_together(
            ["orgs", "create", ""],
            ["orgs", "create", "x" * 100_000],
            ["keys", "create", "--name", "w", "--org", "acme-42", "--scopes", "usage:write,bogus"],
            ["keys", "create", "--name", "w", "--org", "acme-42", "--expires", "0d"],
        )
        assert empty.error_line(2) == (
            "saascore: NAME: an organisation needs a name of 1 to 255 characters"
        )
        assert long.error_line(2) == empty.error_line(2)
        assert scope.error_line(2).startswith("saascore: unknown scope 'bogus'")
        assert past.error_line(2) == "saascore: --expires is in the past"

    def test_refusals_that_depend_on_what_is_stored_exit_1(self, acme_cli: Cli) -> None:
        first = acme_cli("credits", "grant", "acme-42", str(INT64_MAX))
        # The organisation's plan credits are already in its balance: the grant would pass
        # the largest balance, which depends on the balance, not on the command line.
        assert "would take the balance past" in first.error_line(1)
        assert BalanceOverflow.stateful
        unknown = acme_cli("credits", "grant", "nobody", "5")
        assert unknown.error_line(1) == "saascore: no organisation nobody"


class TestPastTheEnd:
    def test_an_offset_past_the_end_says_how_many_there_are(self, acme_cli: Cli) -> None:
        listed = acme_cli("orgs", "list", "--offset", str(INT64_MAX)).ok()
        assert listed.stderr == f"no organisations at offset {INT64_MAX:,} (1 in all)\n"

    def test_no_organisations_at_all_says_how_to_create_one(self, migrated_cli: Cli) -> None:
        listed = migrated_cli("orgs", "list", "--offset", "5").ok()
        assert listed.stderr == "no organisations; create one with 'saascore orgs create NAME'\n"


class TestHelpLayout:
    def test_paragraphs_wrap_to_the_terminal(self, cli: Cli) -> None:
        wide = cli.with_env({"COLUMNS": "200"})
        # Each phrase spans a line break of the docstring: on one line only once reflowed.
        text = wide("usage", "import", "--help").ok().stdout
        assert "Events may be dated in any period" in text
        text = wide("events", "dispatch", "--help").ok().stdout
        assert "instead of its own dispatcher (SAASCORE_DISPATCH=false)" in text

    def test_flags_show_no_type_and_arguments_are_in_capitals(self, cli: Cli) -> None:
        grant = cli("credits", "grant", "--help").ok().stdout
        assert "{ORG} {AMOUNT}" in grant
        assert "<bool>" not in grant
        assert "<bool>" not in cli("orgs", "list", "--help").ok().stdout
        assert "<bool>" not in cli("--help").ok().stdout
        assert "{NAME}" in cli("orgs", "create", "--help").ok().stdout

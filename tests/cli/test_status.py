"""`saascore status`, the note on a new embedded database, and migrating at start safely."""

from __future__ import annotations

import json

from saascore.migrations import migrate
from tests.cli.runner import Cli

NOTE = "created the embedded database at .saascore/saascore.db (set DATABASE_URL for another)"


class TestStatus:
    def test_a_new_embedded_database_is_reported_not_created(self, cli: Cli) -> None:
        text, as_json = cli.run_together(["status"], ["status", "--json"])
        assert text.ok().stdout.splitlines() == [
            "database:       .saascore/saascore.db (sqlite, embedded)",
            "exists:         no: the first command that needs it creates it",
        ]
        found = json.loads(as_json.ok().stdout)
        assert (found["exists"], found["reachable"], found["revision"]) == (False, False, None)
        assert not (cli.cwd / ".saascore").exists()  # status never creates it

    def test_a_migrated_database(self, migrated_cli: Cli) -> None:
        migrated_cli("plans", "load").ok()
        migrated_cli("orgs", "create", "Acme").ok()
        text, as_json = migrated_cli.run_together(["status"], ["status", "--json"])
        found = json.loads(as_json.ok().stdout)
        head = migrate.head()
        assert (found["reachable"], found["revision"], found["head"], found["at_head"]) == (
            True,
            head,
            head,
            True,
        )
        assert (found["plans"], found["organizations"]) == (5, 1)
        assert found["embedded"] is False
        lines = text.ok().stdout.splitlines()
        assert lines[1:] == [
            "reachable:      yes",
            f"schema:         {head} (head)",
            "plans:          5",
            "organisations:  1",
        ]

    def test_the_password_is_masked_and_unreachable_is_1(self, cli: Cli) -> None:
        unreachable = cli.with_env({"DATABASE_URL": "postgresql://ops:s3cret@127.0.0.1:1/x"})
        text, as_json = unreachable.run_together(["status"], ["status", "--json"])
        assert text.returncode == 1, text
        assert (
            text.stdout.splitlines()[0]
            == "database:       postgresql://ops:***@127.0.0.1:1/x (postgresql)"
        )
        assert text.stdout.splitlines()[1].startswith(
            "reachable:      no: cannot reach the database"
        )
        assert "s3cret" not in text.stdout + as_json.stdout
        assert as_json.returncode == 1
        assert json.loads(as_json.stdout)["reachable"] is False


class TestStartingTogether:
    def test_commands_started_at_once_on_a_new_embedded_database(self, cli: Cli) -> None:
        results = cli.run_together(*[["plans", "list"]] * 4, ["orgs", "list", "--json"])
        for result in results:
            assert result.returncode == 0, result
            assert "Traceback" not in result.stderr, result
        notes = [line for result in results for line in result.stderr.splitlines() if line == NOTE]
        assert len(notes) == 1  # said once, by the command that created it
        found = json.loads(cli("status", "--json").ok().stdout)
        assert found["revision"] == found["head"] == migrate.head()

    def test_upgrades_started_at_once(self, empty_cli: Cli) -> None:
        """On SQLite a file lock, on PostgreSQL an advisory lock: one migrates, the others wait
        and find the schema at head."""
        results = empty_cli.run_together(*[["db", "upgrade"]] * 4)
        for result in results:
            assert result.returncode == 0, result
        assert empty_cli("db", "current").ok().stdout.strip() == f"{migrate.head()} (head)"

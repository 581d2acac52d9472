"""`saascore db`: upgrade, check, current, downgrade and history, on SQLite and PostgreSQL."""

from __future__ import annotations

from saascore.migrations import migrate
from tests.cli.runner import Cli

NO_SCHEMA = "saascore: the database has no saascore schema; run 'saascore db upgrade'"


def test_upgrade_check_current_downgrade(empty_cli: Cli) -> None:
    """One database through its life; commands that do not depend on each other run together."""
    head = migrate.head()

    # Before the first migration; a configured database is never migrated behind one's back.
    listed, checked = empty_cli.run_together(["plans", "list"], ["db", "check"])
    assert listed.error_line(1) == NO_SCHEMA
    assert checked.returncode == 1, checked
    lines = checked.stdout.splitlines()
    assert "differs from the models" in lines[0]
    assert "  + table organizations" in lines
    assert lines[-1] == "the database is at base; run 'saascore db upgrade'"

    upgraded = empty_cli("db", "upgrade").ok()
    assert upgraded.stdout.endswith(f"from base to {head} (head)\n")

    current, checked = empty_cli.run_together(["db", "current"], ["db", "check"])
    assert current.ok().stdout == f"{head} (head)\n"
    assert checked.ok().stdout.endswith("is in sync with the models\n")

    downgraded = empty_cli("db", "downgrade", "base").ok()
    assert downgraded.stdout.endswith(f"from {head} (head) to base\n")

    current = empty_cli("db", "current").ok()
    assert current.stdout == ""


def test_history_lists_the_initial_revision(cli: Cli) -> None:
    lines = cli("db", "history").ok().stdout.splitlines()
    assert f" -> {migrate.head()} (head), " in lines[0]  # newest first
    assert lines[-1].startswith("<base> -> 0001")


def test_concurrent_upgrades_say_from_base_once(empty_cli: Cli) -> None:
    """The starting revision is read under the migration lock: of several processes that
    upgrade a new database at once, one migrates it from base, the others find it at head."""
    results = empty_cli.run_together(*[["db", "upgrade"]] * 3)
    lines = [result.ok().stdout for result in results]
    assert sum(" from base to " in line for line in lines) == 1, lines
    assert sum(" is already at " in line for line in lines) == 2, lines

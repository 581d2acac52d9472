"""The application as a whole: help, version, and how errors are reported."""

from __future__ import annotations

from pathlib import Path

import saascore
from tests.cli.runner import Cli

COMMANDS = {
    "serve": [],
    "demo": [],
    "db": ["upgrade", "downgrade", "current", "history", "check", "revision"],
    "plans": ["load", "list"],
    "orgs": ["create", "list"],
    "keys": ["create", "list", "revoke"],
    "audit": ["verify", "list"],
}


class TestHelp:
    def test_help_lists_every_command(self, cli: Cli) -> None:
        result = cli("--help").ok()
        text = " ".join(result.stdout.replace("│", " ").split())  # unwrapped, without the boxes
        for command, subcommands in COMMANDS.items():
            assert f" {command} " in text, result
            if subcommands:  # each group's line names its commands
                assert f": {', '.join(subcommands)}." in text, result

    def test_version(self, cli: Cli) -> None:
        assert cli("--version").ok().stdout == f"saascore {saascore.__version__}\n"


class TestErrors:
    """Every failure is one line on stderr and a non-zero exit: never a traceback."""

    def test_unreachable_database(self, cli: Cli) -> None:
        unreachable = cli.with_env({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"})
        line = unreachable("db", "upgrade").error_line(1)
        assert line.startswith("saascore: cannot reach the database: ")

    def test_bad_catalog_file(self, cli: Cli, tmp_path: Path) -> None:
        (tmp_path / "bad.toml").write_text("[plans.x]\nname = 3\n")
        line = cli("plans", "load", "bad.toml").error_line(1)
        assert line == "saascore: bad.toml: plans.x.name: Input should be a valid string"
        assert not (cli.cwd / ".saascore").exists()  # read before the database is opened

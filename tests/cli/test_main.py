"""The application as a whole: help, version, and how errors are reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import saascore
import saascore.cli
from tests.cli.runner import Cli, clean_environment

COMMANDS = {
    "serve": [],
    "demo": [],
    "status": [],
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


#: What `saascore --help` and `--version` must not load: each costs a tenth of a second or more.
HEAVY = ("fastapi", "starlette", "sqlalchemy", "alembic", "uvicorn", "pydantic", "saascore.core")

#: Runs the CLI in-process as the console script does, then prints which heavy modules it loaded.
LOADED = """
import json, sys
sys.argv = ["saascore", *sys.argv[1:]]
if len(sys.argv) > 1:
    from saascore.cli import main
    try:
        main()
    except SystemExit:
        pass
else:
    import saascore.cli
heavy = json.loads(%r)
loaded = [m for m in heavy if m in sys.modules]
sys.stderr.write("LOADED " + json.dumps(loaded))
"""


def loaded_modules(tmp_path: Path, *args: str) -> list[str]:
    process = subprocess.run(
        [sys.executable, "-c", LOADED % json.dumps(HEAVY), *args],
        cwd=tmp_path,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    _, _, loaded = process.stderr.rpartition("LOADED ")
    modules: list[str] = json.loads(loaded)
    return modules


class TestStartup:
    """`saascore --help` and `--version` import neither FastAPI nor SQLAlchemy: the groups'
    modules load when a group runs (a check of what is imported, not a timing)."""

    @pytest.mark.parametrize("args", [(), ("--help",), ("-h",), ("--version",)])
    def test_nothing_heavy_is_imported(self, tmp_path: Path, args: tuple[str, ...]) -> None:
        assert loaded_modules(tmp_path, *args) == []

    def test_a_group_loads_what_it_needs(self, tmp_path: Path) -> None:
        assert "sqlalchemy" in loaded_modules(tmp_path, "db", "history")

    @pytest.mark.parametrize("name", list(saascore.cli.GROUPS))
    def test_a_groups_line_is_its_help(self, name: str) -> None:
        assert saascore.cli.load_group(name).help == saascore.cli.GROUPS[name][1]

    def test_every_group_is_listed(self) -> None:
        import typer.main
        from typer.core import TyperGroup

        root = typer.main.get_command(saascore.cli.app)
        assert isinstance(root, TyperGroup)
        names = root.list_commands(typer.Context(root))
        assert names == ["serve", "demo", "status", *saascore.cli.GROUPS]


class TestErrors:
    """Every failure is one line on stderr and a non-zero exit: never a traceback."""

    def test_unreachable_database(self, cli: Cli) -> None:
        unreachable = cli.with_env({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"})
        line = unreachable("db", "upgrade").error_line(1)
        assert line.startswith("saascore: cannot reach the database: ")

    def test_bad_catalog_file(self, cli: Cli, tmp_path: Path) -> None:
        (tmp_path / "bad.toml").write_text("[plans.x]\nname = 3\n")
        # Invalid by itself, whatever the database holds: a usage error.
        line = cli("plans", "load", "bad.toml").error_line(2)
        assert line == "saascore: bad.toml: plans.x.name: Input should be a valid string"
        assert not (cli.cwd / ".saascore").exists()  # read before the database is opened


class TestExitCodes:
    """2 for a mistake on the command line (nothing is asked of the database), 1 for a refusal."""

    @pytest.mark.parametrize(
        "args",
        [
            ("bogus",),
            ("orgs", "list", "--limit", "0"),
            ("keys", "list"),  # neither --org nor --operator
            ("keys", "revoke", "not-a-uuid"),
            ("keys", "create", "--org", "acme", "--name", "x", "--expires", "1969-01-01"),
            ("credits", "grant", "acme", "10", "--expires-at", "1969-01-01"),
            ("plans", "load", "missing.toml"),
            ("usage", "import", "missing.jsonl"),
            ("usage", "report", "--org", "acme", "--from", "2026-02-01", "--to", "2026-01-01"),
            ("orgs", "list", "--json", "--ids"),
            ("keys", "list", "--org", "acme", "--json", "--ids"),
            ("credits", "balance", "acme", "--json", "--ids"),
        ],
        ids=lambda args: " ".join(args),
    )
    def test_a_usage_error_is_2(self, cli: Cli, args: tuple[str, ...]) -> None:
        result = cli(*args)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr, result
        assert not (cli.cwd / ".saascore").exists()  # the database was never opened

    def test_a_refusal_is_1(self, cli: Cli) -> None:
        # One after the other: the first creates and migrates the embedded database, and says
        # so (only the first).
        unknown_plan = cli("orgs", "create", "Acme", "--plan", "nope")
        unknown_org = cli("credits", "grant", "nobody", "10")
        assert unknown_plan.returncode == 1
        assert unknown_plan.stderr.splitlines() == [
            "created the embedded database at .saascore/saascore.db (set DATABASE_URL for another)",
            "saascore: unknown plan 'nope': no plans are loaded",
        ]
        assert unknown_org.error_line(1) == "saascore: no organisation nobody"

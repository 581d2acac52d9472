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
        assert names == ["serve", "demo", *saascore.cli.GROUPS]


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

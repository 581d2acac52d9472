"""The layers of DESIGN.md, as the import-linter contracts in pyproject.toml: they hold for the
source tree, and an import against them (or a top-level package they do not place) breaks them.

Each check runs `lint-imports` in a subprocess, on the repository or on a copy of `src/saascore`
with one module added, so that the package it analyses is the one on its PYTHONPATH and not the
one this process imported. No cache: nothing is written to the repository, and xdist workers
share nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with `root`'s pyproject.toml, on the saascore in `root/src`."""
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-c", _LINT, "--no-cache", "--no-logo", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the repository's package and contracts, to add a module to."""
    shutil.copytree(
        ROOT / "src" / "saascore",
        tmp_path / "src" / "saascore",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        pytest.param(
            "kit/wrong_way.py",
            "from saascore.tenancy.service import OrganizationService\n",
            ("Layers:", "saascore.kit is not allowed to import saascore.tenancy"),
            id="kit-imports-a-domain",
        ),
        pytest.param(
            "models/wrong_way.py",
            "from typing import TYPE_CHECKING\n\n"
            "if TYPE_CHECKING:\n"
            "    from saascore.plans.service import PlanService\n",
            ("Layers:", "saascore.models is not allowed to import saascore.plans"),
            id="models-import-a-domain-for-typing",
        ),
        pytest.param(
            "metering/wrong_way.py",
            "from saascore.api.deps import SessionDep\n",
            ("Layers:", "saascore.metering is not allowed to import saascore.api"),
            id="a-service-imports-api",
        ),
        pytest.param(
            "audit/wrong_way.py",
            "from saascore import NotFound\n",  # saascore/__init__.py imports core
            ("Layers:", "saascore.audit is not allowed to import saascore.core"),
            id="a-domain-imports-the-public-api",
        ),
        pytest.param(
            "plans/wrong_way.py",
            "import saascore.metering\n",
            ("Domains:", "saascore.plans is not allowed to import saascore.metering"),
            id="a-domain-imports-one-above-it",
        ),
        pytest.param(
            "credits/wrong_way.py",
            "from saascore.identity.service import IdentityService\n",
            ("Domains:", "saascore.credits is not allowed to import saascore.identity"),
            id="a-service-imports-identity",
        ),
        pytest.param(
            "credits/endpoints.py",
            "from saascore.identity.service import IdentityService\n",
            ("Domains:", "saascore.credits is not allowed to import saascore.identity"),
            id="a-router-imports-more-of-identity-than-the-principal",
        ),
        pytest.param(
            "gadgets/__init__.py",
            "",
            ("Layers:", "saascore.gadgets"),
            id="a-new-package-has-no-layer",
        ),
    ],
)
def test_an_import_against_the_layers_breaks_them(
    tree: Path, module: str, source: str, broken: tuple[str, str]
) -> None:
    path = tree / "src" / "saascore" / module
    path.parent.mkdir(exist_ok=True)
    if path.exists():  # one import more at the end of an existing module
        path.write_text(f"{path.read_text()}\n{source}")
    else:
        path.write_text(f'"""Against the layers."""\n\n{source}')

    result = lint_imports(tree)

    assert result.returncode == 1, result.stdout + result.stderr
    contract, message = broken
    report = result.stdout.partition("Broken contracts")[2]
    assert contract in report, result.stdout
    assert message in report, result.stdout

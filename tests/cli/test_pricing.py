"""`saascore pricing`: loading price lists (idempotently, as versions) and listing them with the
day each price was taken and where."""

from __future__ import annotations

import json
from pathlib import Path

from saascore.cli.pricing import format_per_million
from saascore.plans import read_default_pricing
from tests.cli.runner import Cli

PRICES = len(read_default_pricing().model_pricing)


def test_format_per_million() -> None:
    assert format_per_million(2_500_000) == "2.50"
    assert format_per_million(75_000) == "0.075"
    assert format_per_million(15_000_000_000) == "15,000.00"
    assert format_per_million(1) == "0.000001"


def test_load_twice_then_list(migrated_cli: Cli) -> None:
    first = migrated_cli("pricing", "load").ok()
    assert f"Loaded the default price list: {PRICES} created, 0 updated, 0 unchanged" in (
        first.stdout
    )
    again = migrated_cli("pricing", "load").ok()
    assert f"already applied ({PRICES} unchanged)" in again.stdout

    listed = migrated_cli("pricing", "list", "--provider", "openai").ok()
    header = next(line for line in listed.stdout.splitlines() if "provider" in line)
    assert "effective from" in header
    assert "as of" in header
    assert "source" in header
    gpt4o = next(line.split() for line in listed.stdout.splitlines() if " gpt-4o " in line)
    assert gpt4o[2:6] == ["2.50", "1.25", "10.00", "USD"]
    assert gpt4o[-1] == "https://openai.com/api/pricing/"
    assert "anthropic" not in listed.stdout

    rows = json.loads(migrated_cli("pricing", "list", "--json").ok().stdout)
    assert len(rows) == PRICES
    claude = next(r for r in rows if r["model"] == "claude-sonnet-4-5")
    assert claude["input_micros_per_million"] == 3_000_000
    assert claude["as_of"] == "2025-10-15"
    assert claude["source"].startswith("https://www.anthropic.com/")


def test_a_later_price_is_a_new_version(migrated_cli: Cli, tmp_path: Path) -> None:
    def entry(start: str, output: int) -> str:
        return (
            "[[model_pricing]]\nprovider = 'acme'\nmodel = 'm1'\n"
            f"input_micros_per_million = 1_000_000\noutput_micros_per_million = {output}\n"
            f"effective_from = {start}\nsource = 'https://acme.example/p'\nas_of = {start}\n"
        )

    path = tmp_path / "acme.toml"
    path.write_text(entry("2025-01-01", 2_000_000), encoding="utf-8")
    assert (
        "1 created, 0 updated, 0 unchanged"
        in migrated_cli("pricing", "load", str(path)).ok().stdout
    )
    path.write_text(entry("2025-01-01", 2_000_000) + entry("2025-06-01", 3_000_000), "utf-8")
    second = migrated_cli("pricing", "load", str(path)).ok()
    assert "1 created, 0 updated, 1 unchanged" in second.stdout
    assert "created acme/m1 from 2025-06-01" in second.stdout
    rows = json.loads(migrated_cli("pricing", "list", "--json", "--model", "m1").ok().stdout)
    assert [(r["effective_from"][:10], r["output_micros_per_million"]) for r in rows] == [
        ("2025-06-01", 3_000_000),
        ("2025-01-01", 2_000_000),
    ]


def test_plans_load_brings_the_prices(migrated_cli: Cli) -> None:
    first = migrated_cli("plans", "load").ok()
    assert f"model prices: {PRICES} created, 0 updated, 0 already applied" in first.stdout
    assert "already applied" in migrated_cli("pricing", "load").ok().stdout


def test_bad_input_is_one_line_and_an_exit_code(migrated_cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[[model_pricing]]\nprovider = 'acme'\nmodel = 'm'\ninput_micros_per_million = -5\n"
        "output_micros_per_million = 1\neffective_from = 2025-01-01\n",
        encoding="utf-8",
    )
    assert "model_pricing.0.input_micros_per_million" in migrated_cli(
        "pricing", "load", str(bad)
    ).error_line(2)  # invalid by itself: a usage error
    assert migrated_cli("pricing", "load", str(tmp_path / "missing.toml")).returncode == 2
    empty = tmp_path / "empty.toml"
    empty.write_text("version = 1\n", encoding="utf-8")
    nothing = migrated_cli("pricing", "load", str(empty))
    assert "no [[model_pricing]] entries" in nothing.error_line(2)

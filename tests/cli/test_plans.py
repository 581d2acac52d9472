"""`saascore plans`: loading the catalog (idempotently) and listing it."""

from __future__ import annotations

from tests.cli.runner import Cli

CODES = ["free", "starter", "pro", "business", "enterprise"]


def test_load_twice_then_list(migrated_cli: Cli) -> None:
    first = migrated_cli("plans", "load").ok()
    assert f"plans:  5 created ({', '.join(CODES)}), 0 updated" in first.stdout
    assert "meters: 3 created (tokens, api_calls, storage_bytes), 0 updated" in first.stdout

    # The list sees five plans whether it reads before or after the second load commits.
    second, listed = migrated_cli.run_together(["plans", "load"], ["plans", "list"])
    assert f"plans:  0 created, 5 updated ({', '.join(CODES)})" in second.ok().stdout
    assert "meters: 0 created, 3 updated" in second.stdout
    rows = [line.split() for line in listed.ok().stdout.splitlines() if line.strip()]
    assert [row[0] for row in rows if row[0] in CODES] == CODES  # each once, in catalog order
    pro = next(row for row in rows if row[0] == "pro")
    assert pro[1:4] == ["Pro", "USD", "29.99"]
    assert "unlimited" in next(row for row in rows if row[0] == "enterprise")

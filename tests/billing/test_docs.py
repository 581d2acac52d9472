"""docs/billing.md shows the state table as it is: its diagram is what the table draws."""

from __future__ import annotations

import re
from pathlib import Path

from saascore.billing import TRANSITIONS, mermaid_diagram

DOC = Path(__file__).resolve().parents[2] / "docs" / "billing.md"


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section, up to the next `## `."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/billing.md has no section {heading!r}"
    return match.group(1)


def mermaid_blocks(text: str) -> list[str]:
    return re.findall(r"^```mermaid\n(.*?)^```", text, re.M | re.S)


def test_the_diagram_in_the_docs_is_the_one_the_table_draws() -> None:
    blocks = mermaid_blocks(section(DOC.read_text(encoding="utf-8"), "Subscription states"))
    assert blocks == [mermaid_diagram()], (
        "docs/billing.md's diagram differs from the table: paste "
        "saascore.billing.mermaid_diagram()'s output into the section 'Subscription states'"
    )


def test_the_diagram_has_an_arrow_per_allowed_pair_and_nothing_else() -> None:
    arrows = [line.strip() for line in mermaid_diagram().splitlines()[1:]]
    pairs = {tuple(arrow.split(":")[0].split(" --> ")) for arrow in arrows if "[*]" not in arrow}
    table = {(current, target) for current, targets in TRANSITIONS.items() for target in targets}
    assert pairs == {(current.value, target.value) for current, target in table}
    assert "    trialing --> canceled: cancel now or period end after cancel" in (
        mermaid_diagram().splitlines()
    )

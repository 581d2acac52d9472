"""`cli._output`: whatever a table's cells hold, control characters reach the terminal escaped
(`\\x1b`, four characters), so a name stored with ESC cannot recolour or rewrite it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from saascore.cli._output import Column, Output, new_table, print_rows, print_table, visible

#: An ESC sequence that would turn the terminal red, a bell, a C1 CSI and a line break.
NASTY = "evil\x1b[31mRED\x07\x9b2J\nnext"


@dataclass
class Row:
    id: str
    name: str


COLUMNS = [Column[Row]("id", lambda r: r.id), Column[Row]("name", lambda r: r.name)]


def test_visible_writes_each_control_character_out() -> None:
    assert visible(NASTY) == "evil\\x1b[31mRED\\x07\\x9b2J\\x0anext"
    assert visible("Ünïcødé 日本語 🚀") == "Ünïcødé 日本語 🚀"


def test_a_table_of_rows_shows_them_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    print_rows([Row("1", NASTY)], COLUMNS, title=f"orgs {NASTY}")
    out = capsys.readouterr().out
    assert "evil\\x1b[31mRED\\x07\\x9b2J\\x0anext" in out
    assert "orgs evil\\x1b" in out
    assert not any(ch in out for ch in "\x1b\x07\x9b")


def test_a_table_built_by_hand_is_escaped_too(capsys: pytest.CaptureFixture[str]) -> None:
    table = new_table("key", "value")
    table.add_row("name", NASTY)
    print_table(table)
    out = capsys.readouterr().out
    assert "evil\\x1b[31mRED" in out
    assert "\x1b" not in out


def test_json_stays_json(capsys: pytest.CaptureFixture[str]) -> None:
    print_rows([Row("1", NASTY)], COLUMNS, Output.JSON)
    out = capsys.readouterr().out
    assert "\x1b" not in out  # json.dumps escapes it as \u001b
    assert json.loads(out) == [{"id": "1", "name": NASTY}]

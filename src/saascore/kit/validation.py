"""Checks of the input values every domain stores: JSON values and instants.

One place decides what a JSON column can hold and which datetimes saascore can compute
with, so that a value it cannot store or convert is a 422 where it comes in, never a 500
where it is used:

- `JSONObject` (a Pydantic type for request bodies) and `checked_json` (for services and the
  library) refuse NaN and infinities (`1e400` parses to infinity), NUL characters and lone
  surrogates (PostgreSQL refuses them), nesting deeper than `MAX_JSON_DEPTH`, and values
  that are not JSON at all; `checked_json` can also cap the size.
- `canonical_json` is the one text of a JSON value (sorted keys, no spaces, UTF-8): what the
  audit chain stores and hashes.
- `Label` and `Note` (Pydantic types for request bodies) and `checked_text` (for services and
  the library) refuse control characters in the names and notes people choose: an
  organisation's name, a key's name, a grant's description. Printed on an operator's
  terminal, ESC starts an escape sequence that can recolour, move or rewrite what is shown.
  They also refuse half a surrogate pair, which no database stores.
  A `Label` is one line and takes no C0 or C1 control character at all (nor DEL); a `Note`
  is free text that may run over lines, and takes line feeds and tabs only. Neither takes
  the bidirectional overrides and isolates (U+202A..U+202E, U+2066..U+2069): they reorder
  how the text around them is shown, so that an invoice line or a name can display as
  something else than what it says ("Trojan Source"). The marks (U+200E, U+200F, U+061C),
  which right-to-left text needs, stay allowed.
- `checked_name` (for services) is `checked_text` for a name that must be told apart from
  its siblings (a folder's name): it also refuses the Unicode format characters (category
  Cf: U+200B ZERO WIDTH SPACE, U+200C/U+200D, U+2060 WORD JOINER, U+FEFF, U+00AD SOFT
  HYPHEN, the marks, tags), which show as nothing, so that "\u200bTop" could sit beside
  "Top" and pass for it. `format_character` finds them.
- `Instant` (a Pydantic type) is an aware datetime between `EARLIEST` and `LATEST`, so that
  converting it to UTC, or stepping to a period's end, cannot overflow the calendar.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final

from pydantic import AfterValidator, AwareDatetime, BeforeValidator
from pydantic_core import PydanticCustomError

from saascore.kit.errors import InvalidCharacter, InvalidInput

__all__ = [
    "EARLIEST",
    "LATEST",
    "MAX_JSON_DEPTH",
    "Day",
    "Instant",
    "JSONObject",
    "Label",
    "Note",
    "canonical_json",
    "checked_instant",
    "checked_json",
    "checked_name",
    "checked_text",
    "control_character",
    "format_character",
    "json_problem",
]

#: How deep JSON values may nest (an object holding an object is 2 deep).
MAX_JSON_DEPTH: Final = 32
#: The instants saascore accepts: from 1970 to the end of 9998 (UTC), a year short of the
#: calendar's end, so that periods and expiries computed from them stay inside it.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)


def json_problem(value: Any, *, max_depth: int | None = MAX_JSON_DEPTH) -> str | None:
    """Why `value` cannot be stored as JSON, or None if it can.

    Walks the value without recursion, so a value nested past Python's recursion limit is
    refused, not a crash."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if item is None or isinstance(item, bool | int):
            continue
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return problem
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "holds a number that is not finite (NaN, Infinity or too large)"
        elif isinstance(item, dict | list | tuple):
            if max_depth is not None and depth > max_depth:
                return f"nests deeper than {max_depth} levels"
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        return "has an object key that is not text"
                    problem = _text_problem(key)
                    if problem:
                        return problem
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        else:
            return f"holds a {type(item).__name__}, which is not a JSON value"
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "holds a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds text that is not valid Unicode"
    return None


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a value: keys sorted, no spaces, non-ASCII as itself.

    Reading the text back and writing it again gives the same text, which is what makes it
    fit to be stored and hashed."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def checked_json(
    value: Any,
    *,
    field: str,
    max_depth: int | None = MAX_JSON_DEPTH,
    max_bytes: int | None = None,
    mapping: bool = True,
) -> Any:
    """`value` if it can be stored as JSON (an object, unless `mapping` is false), else
    `InvalidInput` (422 `invalid_input`) naming `field`."""
    if mapping and not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object", field=field)
    problem = json_problem(value, max_depth=max_depth)
    if problem is None and max_bytes is not None:
        try:
            size = len(canonical_json(value).encode())
        except ValueError:  # an integer of more digits than Python writes
            problem = "holds a number too long to write"
        else:
            if size > max_bytes:
                problem = f"takes {size} bytes as JSON; at most {max_bytes}"
    if problem is not None:
        raise InvalidInput(f"{field} {problem}", field=field)
    return value


#: The bidirectional embeddings, overrides (U+202A..U+202E) and isolates (U+2066..U+2069).
_BIDI: Final = "\u202a-\u202e\u2066-\u2069"
#: The C0 controls, DEL, the C1 controls and `_BIDI`; a multi-line text keeps line feeds
#: and tabs.
_CONTROL: Final = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
_CONTROL_BUT_LINES: Final = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
_BIDI_CHARACTER: Final = re.compile(f"[{_BIDI}]")


def control_character(text: str, *, multiline: bool = False) -> str | None:
    """The first control character in `text` that it may not hold, or None. A one-line text
    takes none; a `multiline` one takes line feeds and tabs. Bidirectional overrides and
    isolates count as control characters (module docstring)."""
    found = (_CONTROL_BUT_LINES if multiline else _CONTROL).search(text)
    return found.group() if found else None


def _character_problem(text: str, multiline: bool) -> str | None:
    character = control_character(text, multiline=multiline)
    if character is None:
        # Half a surrogate pair: what Python makes of bytes that are not UTF-8 on a command
        # line. No database takes it (SQLite's driver cannot encode it, PostgreSQL refuses it).
        return _text_problem(text) if not text.isascii() else None
    if _BIDI_CHARACTER.fullmatch(character):
        return (
            f"holds the bidirectional control character U+{ord(character):04X}, which can "
            "make it display as something else"
        )
    allowed = " (line feeds and tabs are)" if multiline else ""
    return f"holds the control character {character!r}, which it may not{allowed}"


def checked_text(value: str, *, field: str, multiline: bool = False) -> str:
    """`value` if it holds no control character (but line feeds and tabs, when `multiline`),
    else `InvalidCharacter` (422 `invalid_character`) naming `field`. For the names and notes
    the library and the CLI take, as `Label` and `Note` check them in request bodies."""
    problem = _character_problem(value, multiline)
    if problem is not None:
        raise InvalidCharacter(f"{field} {problem}", field=field)
    return value


def format_character(text: str) -> str | None:
    """The first Unicode format character (category Cf) in `text`, or None: a character that
    shows as nothing (or only steers how the text around it is shown)."""
    for character in text:
        if unicodedata.category(character) == "Cf":
            return character
    return None


def checked_name(value: str, *, field: str) -> str:
    """`value` if `checked_text` takes it and it holds no format character (category Cf),
    else `InvalidCharacter` (422 `invalid_character`) naming `field`. For the names that must
    be told apart from their siblings: an invisible character would make two of them look
    the same. Even the marks (U+200E, U+200F, U+061C) that a `Label` takes are refused here:
    a name in one direction shows right without them, and at its start a mark is as
    invisible as a zero-width space."""
    checked_text(value, field=field)
    character = format_character(value)
    if character is not None:
        raise InvalidCharacter(
            f"{field} holds the invisible format character U+{ord(character):04X} "
            f"({unicodedata.name(character, 'unnamed')}), which would let two names look "
            "the same",
            field=field,
        )
    return value


def _text_validator(multiline: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        problem = _character_problem(value, multiline)
        if problem is not None:
            raise PydanticCustomError(
                "invalid_character", "the text {problem}", {"problem": problem}
            )
        return value

    return check


#: A name or label in a request body: one line, no control character (422
#: `invalid_character`).
Label = Annotated[str, AfterValidator(_text_validator(multiline=False))]

#: Free text in a request body that may run over lines: no control character but line feeds
#: and tabs (422 `invalid_character`).
Note = Annotated[str, AfterValidator(_text_validator(multiline=True))]


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    problem = json_problem(value)
    if problem is not None:
        raise PydanticCustomError("invalid_json", "the JSON value {problem}", {"problem": problem})
    return value


#: A JSON object a request may carry into a JSON column (422 `validation_error`, error type
#: `invalid_json`, for what `json_problem` refuses).
JSONObject = Annotated[dict[str, Any], AfterValidator(_json_object)]


def checked_instant(value: datetime, *, field: str) -> datetime:
    """`value` if it is an aware datetime between `EARLIEST` and `LATEST`, else
    `InvalidInput` naming `field` (for the library and the CLI)."""
    problem = _instant_problem(value)
    if problem is not None:
        raise InvalidInput(f"{field} {problem}", field=field)
    return value


def _instant_problem(value: datetime) -> str | None:
    if value.tzinfo is None or value.utcoffset() is None:
        return "needs a time zone"
    # Comparing aware datetimes subtracts their offsets without building the UTC value, so
    # it cannot overflow even where the UTC value would.
    if not EARLIEST <= value < LATEST:
        return "must lie between 1970 and 9998 (UTC)"
    return None


def _instant(value: datetime) -> datetime:
    problem = _instant_problem(value)
    if problem is not None:
        raise PydanticCustomError("instant_range", "the datetime {problem}", {"problem": problem})
    return value


def _not_unix_time(kind: str, example: str) -> Callable[[Any], Any]:
    """A validator that passes a date or date-time string on (or, from the library, a `date`
    or `datetime`), as the OpenAPI document's `date` and `date-time` say: Pydantic's lax
    mode would read a number, or a string of digits, as Unix time."""

    def check(value: Any) -> Any:
        if isinstance(value, date):  # a datetime is a date too
            return value
        if isinstance(value, str) and not _UNIX_TIME.fullmatch(value.strip()):
            return value
        raise PydanticCustomError(
            f"{kind}_type", f"Input should be an RFC 3339 {kind} string such as {example}"
        )

    return check


_UNIX_TIME = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?")

#: An aware datetime from 1970 to the end of 9998 (UTC), given as a date-time string: every
#: datetime a request carries.
Instant = Annotated[
    AwareDatetime,
    BeforeValidator(_not_unix_time("datetime", "2026-01-31T12:00Z")),
    AfterValidator(_instant),
]

#: A day given as a date string (`2026-01-31`), in a query or a body.
Day = Annotated[date, BeforeValidator(_not_unix_time("date", "2026-01-31"))]

"""Fingerprints of requests, to tell a retry from a different request that reuses a key."""

from __future__ import annotations

import hashlib
import json
import operator
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

__all__ = ["attributes_hash", "payload_hash"]


def payload_hash(payload: dict[str, Any]) -> str:
    """SHA-256 of the payload as canonical JSON (sorted keys; UUIDs, datetimes as strings)."""
    return hashlib.sha256(_CANONICAL.encode(payload).encode()).hexdigest()


def attributes_hash(names: Iterable[str]) -> Callable[[object], str]:
    """A function giving an object's `payload_hash({name: getattr(obj, name) for name in
    names})`: the same text hashed, several times faster for the flat values events carry.

    The text is a template per shape (the types of the values, in order), in which a None
    is written once and for all and an int goes in as it is; only the other values are
    written one by one."""
    ordered = sorted(names)
    if len(ordered) < 2:
        raise ValueError("attributes_hash needs two names or more")
    values = operator.attrgetter(*ordered)
    keys = [_ASCII(name).replace("%", "%%") for name in ordered]
    plans: dict[tuple[type, ...], tuple[str, Callable[[Any], Any], tuple[int, ...]]] = {}

    def plan(shape: tuple[type, ...]) -> tuple[str, Callable[[Any], Any], tuple[int, ...]]:
        kept = [position for position, kind in enumerate(shape) if kind is not type(None)]
        template = "{%s}" % ",".join(  # noqa: UP031 (the template is itself %-formatted)
            f"{key}:{'null' if kind is type(None) else '%s'}"
            for key, kind in zip(keys, shape, strict=True)
        )
        written = tuple(index for index, position in enumerate(kept) if shape[position] is not int)
        keep: Callable[[Any], Any] = (
            operator.itemgetter(*kept)
            if len(kept) > 1
            else lambda row: tuple(row[position] for position in kept)
        )
        made = (template, keep, written)
        if len(plans) < _PLANS:
            plans[shape] = made
        return made

    def fingerprint(obj: object) -> str:
        row = values(obj)
        shape = tuple(map(type, row))
        template, keep, written = plans.get(shape) or plan(shape)
        kept = list(keep(row))
        for index in written:
            kept[index] = _fragment(kept[index])
        return hashlib.sha256((template % tuple(kept)).encode()).hexdigest()

    return fingerprint


def _fragment(value: Any) -> str:
    """`value` as `_CANONICAL` writes it inside a payload: the plain types directly, the rest
    through the encoder."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is str:
        return _ASCII(value)
    if kind is int:
        return int.__repr__(value)
    if kind is uuid.UUID or kind is datetime:
        return f'"{_plain(value)}"'  # ASCII without quotes or backslashes: nothing to escape
    if kind is dict and not value:
        return "{}"
    return _CANONICAL.encode(value)


def _plain(value: Any) -> str:
    """A datetime as the same instant in UTC (so a time zone is not a different request),
    written as `str()` writes it, as before; anything else as `str()`.

    An instant that UTC cannot write (`0001-01-01T00:00+03:00` is in year 0 there) keeps
    its own offset: no API accepts it, and a fingerprint must never raise."""
    if isinstance(value, datetime) and value.utcoffset() is not None:
        try:  # noqa: SIM105 (cheaper than contextlib.suppress on this hot path)
            value = value.astimezone(UTC)
        except OverflowError:
            pass
    return str(value)


#: Shapes remembered per `attributes_hash` (a few are seen in practice).
_PLANS = 256
_ASCII = json.encoder.encode_basestring_ascii
#: One encoder for every call (`json.dumps` with options builds a new one each time).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_plain)

"""Event fingerprints (`UsageEventIn.fingerprint`): stored with each event as `payload_hash`, and
compared with a retry's, so their text may never change. They are built from a template per
shape of the values, which must give exactly what `payload_hash` of the fields gives."""

from __future__ import annotations

import uuid
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from saascore.kit.idempotency import attributes_hash, payload_hash
from saascore.metering.values import UsageEventIn
from tests.helpers import examples


def by_payload_hash(event: UsageEventIn) -> str:
    """The fingerprint as it was first defined: the fields but the key and the organisation."""
    content = {f.name: getattr(event, f.name) for f in fields(event)}
    del content["idempotency_key"], content["organization_id"]
    return payload_hash(content)


def test_stored_fingerprints_keep_their_text() -> None:
    # Hashes written by earlier versions: a retry of a stored event must still match.
    assert UsageEventIn("api_calls", 1, "k-1").fingerprint() == (
        "c338d06658b30c0b151b042509e416892ebb8eee894f20f1628b3ad943eae151"
    )
    event = UsageEventIn(
        "tokens",
        1500,
        "k-2",
        organization_id=uuid.UUID(int=1),
        occurred_at=datetime(2026, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))),
        user_id=uuid.UUID(int=7),
        model='gpt-\u00fc "x" %s',
        provider="openai",
        input_tokens=1000,
        output_tokens=500,
        cached_tokens=10,
        response_time_ms=12,
        properties={"b": [1, 2.5, None, True], "a": "\u00e9"},
    )
    assert event.fingerprint() == (
        "1b700914ee67f84f52de8c2812f02eef9e3035a6d14576bfc8c136dc74a49daa"
    )


texts = st.none() | st.text(max_size=12)
numbers = st.integers(min_value=-(2**70), max_value=2**70)
values: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | numbers
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.uuids()
    | st.datetimes(timezones=st.none() | st.just(UTC) | st.just(timezone(timedelta(hours=-5))))
    | st.lists(st.integers() | st.text(max_size=4), max_size=3)
    | st.dictionaries(st.text(max_size=4), st.integers() | st.none(), max_size=3)
)


@settings(max_examples=examples(300))
@given(
    metric=st.text(max_size=10),
    quantity=values,
    occurred_at=st.none() | st.datetimes(timezones=st.just(timezone(timedelta(hours=3)))),
    user_id=st.none() | st.uuids(),
    subscription_id=values,
    feature=texts,
    model=texts,
    provider=values,
    input_tokens=numbers,
    output_tokens=values,
    cached_tokens=numbers,
    credits_used=values,
    request_id=texts,
    batch_id=values,
    endpoint=texts,
    response_time_ms=st.none() | numbers,
    properties=values,
)
# Found by CI: the UTC instant of these lies outside the calendar (years 0 and 10000).
@example(
    metric="",
    quantity=0,
    occurred_at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=3))),
    user_id=None,
    subscription_id=datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))),
    feature=None,
    model=None,
    provider=None,
    input_tokens=0,
    output_tokens=0,
    cached_tokens=0,
    credits_used=None,
    request_id=None,
    batch_id=None,
    endpoint=None,
    response_time_ms=None,
    properties={},
)
def test_fingerprint_is_payload_hash_of_the_fields(**content: Any) -> None:
    event = UsageEventIn(idempotency_key="k", organization_id=uuid.uuid4(), **content)
    assert event.fingerprint() == by_payload_hash(event)
    assert event.fingerprint() == by_payload_hash(event)  # the template remembered


def test_attributes_hash_of_names_with_percent_signs_and_one_value() -> None:
    class Thing:
        pass

    fingerprint = attributes_hash(["c%", "a%s", "b"])
    for content in ({"a%s": "x", "b": None, "c%": 3}, {"a%s": None, "b": None, "c%": 3}):
        thing = Thing()
        vars(thing).update(content)
        assert fingerprint(thing) == payload_hash(content)
    with pytest.raises(ValueError, match="two names"):
        attributes_hash(["a%s"])

"""The event checks: `plainly_valid` (the common case, without loops) may only pass an event
that the field-by-field checks (`check_fields`) pass too, and it passes the plain ones."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from saascore.metering.decision import check_fields, plainly_valid
from saascore.metering.values import BIGINT_MAX, UsageEventIn
from tests.helpers import examples

edges = st.sampled_from([-1, 0, 1, 2**31 - 1, 2**31, BIGINT_MAX, BIGINT_MAX + 1])
numbers: st.SearchStrategy[Any] = (
    edges | st.integers() | st.none() | st.booleans() | st.floats(allow_nan=False)
)
texts: st.SearchStrategy[Any] = st.none() | st.text(max_size=2) | st.text(min_size=49, max_size=300)


@settings(max_examples=examples(500))
@given(
    quantity=numbers,
    input_tokens=numbers,
    output_tokens=numbers,
    cached_tokens=numbers,
    credits_used=numbers,
    response_time_ms=numbers,
    idempotency_key=texts,
    feature=texts,
    model=texts,
    provider=texts,
    request_id=texts,
    batch_id=texts,
    endpoint=texts,
)
def testplainly_valid_only_passes_what_the_checks_pass(**content: Any) -> None:
    event = UsageEventIn(metric="api_calls", **content)
    if plainly_valid(event):
        check_fields(event)


def test_plain_events_areplainly_valid() -> None:
    assert plainly_valid(UsageEventIn("api_calls", 1, "k"))
    assert plainly_valid(
        UsageEventIn(
            "tokens",
            BIGINT_MAX,
            "k" * 255,
            input_tokens=BIGINT_MAX - 1,
            output_tokens=1,
            cached_tokens=BIGINT_MAX,
            credits_used=BIGINT_MAX,
            response_time_ms=2**31 - 1,
            feature="f" * 100,
            model="m" * 255,
            provider="p" * 50,
            request_id="r" * 255,
            batch_id="b" * 255,
            endpoint="e" * 255,
        )
    )
    assert not plainly_valid(UsageEventIn("api_calls", 1, ""))
    assert not plainly_valid(UsageEventIn("api_calls", 1, "k", response_time_ms=2**31))

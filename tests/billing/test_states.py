"""The subscription state machine: every pair of statuses is allowed or refused as written here.

`ALLOWED` is the specification, written out by hand rather than read from the table, so that a
change to `TRANSITIONS` fails here until the change is made on purpose in both places.
"""

from __future__ import annotations

import itertools

import pytest

from saascore.billing import (
    FINAL_STATUSES,
    INITIAL_STATUSES,
    TRANSITIONS,
    InvalidTransition,
    Trigger,
    allowed_targets,
    check_transition,
)
from saascore.models.enums import SubscriptionStatus as S

T = Trigger

ALLOWED: dict[tuple[S, S], set[Trigger]] = {
    (S.INCOMPLETE, S.ACTIVE): {T.FIRST_PAYMENT_SUCCEEDS},
    (S.INCOMPLETE, S.EXPIRED): {T.FIRST_PAYMENT_WINDOW_CLOSES},
    (S.INCOMPLETE, S.CANCELED): {T.CANCEL_NOW},
    (S.TRIALING, S.ACTIVE): {T.TRIAL_ENDS_PAID},
    (S.TRIALING, S.PAST_DUE): {T.TRIAL_ENDS_PAYMENT_FAILS},
    (S.TRIALING, S.CANCELED): {T.CANCEL_NOW, T.PERIOD_END_AFTER_CANCEL},
    (S.ACTIVE, S.ACTIVE): {T.RENEWAL},
    (S.ACTIVE, S.PAST_DUE): {T.PAYMENT_FAILS},
    (S.ACTIVE, S.CANCELED): {T.CANCEL_NOW, T.PERIOD_END_AFTER_CANCEL},
    (S.PAST_DUE, S.ACTIVE): {T.PAYMENT_SUCCEEDS},
    (S.PAST_DUE, S.SUSPENDED): {T.GRACE_PERIOD_OVER},
    (S.PAST_DUE, S.CANCELED): {T.CANCEL_NOW, T.PERIOD_END_AFTER_CANCEL},
    (S.SUSPENDED, S.ACTIVE): {T.PAYMENT_SUCCEEDS},
    (S.SUSPENDED, S.EXPIRED): {T.PERIOD_ENDS_UNPAID},
    (S.SUSPENDED, S.CANCELED): {T.CANCEL_NOW},
    (S.UNPAID, S.ACTIVE): {T.PAYMENT_SUCCEEDS},
    (S.UNPAID, S.CANCELED): {T.CANCEL_NOW},
    (S.PAUSED, S.ACTIVE): {T.RESUME},
    (S.PAUSED, S.CANCELED): {T.CANCEL_NOW},
}

PAIRS = [
    pytest.param(current, target, id=f"{current.value}->{target.value}")
    for current, target in itertools.product(S, S)
]


class TestTheTable:
    @pytest.mark.parametrize(("current", "target"), PAIRS)
    def test_a_pair_is_allowed_or_refused_as_specified(self, current: S, target: S) -> None:
        expected = ALLOWED.get((current, target))

        if expected is None:
            with pytest.raises(InvalidTransition) as refused:
                check_transition(current, target)
            assert refused.value.code == "invalid_transition"
            assert refused.value.status_code == 409
            assert refused.value.details == {"current": current.value, "target": target.value}
            assert target not in allowed_targets(current)
        else:
            assert set(check_transition(current, target)) == expected
            assert target in allowed_targets(current)

    def test_every_status_has_a_row(self) -> None:
        assert set(TRANSITIONS) == set(S)

    def test_the_table_has_no_pair_beyond_the_specification(self) -> None:
        table = {
            (current, target): set(triggers)
            for current, targets in TRANSITIONS.items()
            for target, triggers in targets.items()
        }
        assert table == ALLOWED

    def test_the_table_cannot_be_changed_at_run_time(self) -> None:
        with pytest.raises(TypeError):
            TRANSITIONS[S.CANCELED][S.ACTIVE] = (T.RESUME,)  # type: ignore[index]


class TestTriggers:
    @pytest.mark.parametrize(
        ("current", "target", "trigger"),
        [
            (S.ACTIVE, S.CANCELED, T.CANCEL_NOW),
            (S.ACTIVE, S.CANCELED, T.PERIOD_END_AFTER_CANCEL),
            (S.PAST_DUE, S.SUSPENDED, T.GRACE_PERIOD_OVER),
            (S.TRIALING, S.ACTIVE, T.TRIAL_ENDS_PAID),
        ],
    )
    def test_a_named_trigger_of_the_pair_is_allowed(
        self, current: S, target: S, trigger: Trigger
    ) -> None:
        assert trigger in check_transition(current, target, trigger)

    @pytest.mark.parametrize(
        ("current", "target", "trigger"),
        [
            # Cancelling at the period end does not apply to a subscription not yet paid.
            (S.SUSPENDED, S.CANCELED, T.PERIOD_END_AFTER_CANCEL),
            (S.PAUSED, S.ACTIVE, T.PAYMENT_SUCCEEDS),
            (S.TRIALING, S.ACTIVE, T.PAYMENT_SUCCEEDS),
        ],
    )
    def test_another_trigger_of_an_allowed_pair_is_refused(
        self, current: S, target: S, trigger: Trigger
    ) -> None:
        with pytest.raises(InvalidTransition) as refused:
            check_transition(current, target, trigger)
        assert refused.value.details["trigger"] == trigger.value
        assert str(refused.value) == (
            f"a subscription cannot go from {current.value} to {target.value} on {trigger.value!r}"
        )

    def test_plain_strings_are_read_as_statuses(self) -> None:
        assert check_transition("past_due", "suspended") == (T.GRACE_PERIOD_OVER,)  # type: ignore[arg-type]


class TestShape:
    def test_a_subscription_starts_trialing_active_or_incomplete(self) -> None:
        assert {S.TRIALING, S.ACTIVE, S.INCOMPLETE} == INITIAL_STATUSES

    def test_canceled_and_expired_are_final(self) -> None:
        assert {S.CANCELED, S.EXPIRED, S.INCOMPLETE_EXPIRED} == FINAL_STATUSES

    @pytest.mark.parametrize("legacy", [S.UNPAID, S.PAUSED, S.INCOMPLETE_EXPIRED])
    def test_saascore_never_enters_stripes_extra_statuses(self, legacy: S) -> None:
        assert not any(legacy in targets for targets in TRANSITIONS.values())
        assert legacy not in INITIAL_STATUSES

    def test_every_status_is_reachable_from_a_start(self) -> None:
        seen, todo = set(INITIAL_STATUSES), list(INITIAL_STATUSES)
        while todo:
            for target in TRANSITIONS[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        assert seen == set(S) - {S.UNPAID, S.PAUSED, S.INCOMPLETE_EXPIRED}

    def test_every_live_status_can_be_canceled_now(self) -> None:
        live = set(S) - FINAL_STATUSES
        assert all(T.CANCEL_NOW in TRANSITIONS[status].get(S.CANCELED, ()) for status in live)

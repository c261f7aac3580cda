"""The transition rule as a table: every (current, target) pair and its result."""
import pytest

from core.states import FORWARD_ORDER, TERMINAL_STATES, CallState, next_state

S = CallState

# (current, target, expected)
TABLE = [
    (S.INITIATED, S.RINGING, S.RINGING),
    (S.INITIATED, S.ANSWERED, S.ANSWERED),
    (S.INITIATED, S.LISTENING, S.LISTENING),
    (S.RINGING, S.INITIATED, S.RINGING),  # backward ignored
    (S.ANSWERED, S.RINGING, S.ANSWERED),
    (S.ACTIVE, S.ANSWERED, S.ACTIVE),
    (S.ANSWERED, S.ACTIVE, S.ACTIVE),
    (S.ACTIVE, S.SPEAKING, S.SPEAKING),
    (S.SPEAKING, S.LISTENING, S.LISTENING),
    (S.LISTENING, S.SPEAKING, S.SPEAKING),  # the one allowed backward move
    (S.LISTENING, S.ACTIVE, S.LISTENING),
    (S.SPEAKING, S.ANSWERED, S.SPEAKING),
    (S.SPEAKING, S.SPEAKING, S.SPEAKING),
    (S.RINGING, S.COMPLETED, S.COMPLETED),
    (S.INITIATED, S.FAILED, S.FAILED),
    (S.LISTENING, S.HANGUP_USER, S.HANGUP_USER),
    (S.COMPLETED, S.LISTENING, S.COMPLETED),  # terminal is final
    (S.COMPLETED, S.HANGUP_BOT, S.COMPLETED),
    (S.TIMEOUT, S.INITIATED, S.TIMEOUT),
]


@pytest.mark.parametrize("current,target,expected", TABLE)
def test_transition_table(current, target, expected):
    assert next_state(current, target) == expected


@pytest.mark.parametrize("current", list(FORWARD_ORDER))
@pytest.mark.parametrize("target", sorted(TERMINAL_STATES))
def test_any_live_state_can_end_with_any_reason(current, target):
    assert next_state(current, target) == target


@pytest.mark.parametrize("current", sorted(TERMINAL_STATES))
@pytest.mark.parametrize("target", list(S))
def test_terminal_states_never_change(current, target):
    assert next_state(current, target) == current


def test_full_forward_matrix():
    for i, current in enumerate(FORWARD_ORDER):
        for j, target in enumerate(FORWARD_ORDER):
            conversation = {current, target} <= {S.SPEAKING, S.LISTENING}
            expected = target if (j > i or conversation) else current
            assert next_state(current, target) == expected, (current, target)


def test_unknown_state_is_an_error():
    with pytest.raises(ValueError):
        next_state("initiated", "dancing")

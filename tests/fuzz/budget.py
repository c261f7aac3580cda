"""How many examples each fuzz test runs, and how many inputs the fuzz tests sent in all.

FUZZ_EXAMPLES is the total number of hypothesis examples shared by the fuzz tests (by weight); unset,
the tests run a short version (DEFAULT_TOTAL) in the normal suite. `make fuzz` sets it to 100,000.
"""
from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

DEFAULT_TOTAL = 700
# Relative weights of the fuzz tests: webhooks (mock, Telnyx, Twilio and Plivo forms), the RPC envelope, media frames.
WEIGHTS = {"mock": 2, "telnyx": 2, "forms": 4, "rpc": 3, "media": 3}

inputs_sent = 0  # requests and frames sent by the fuzz tests in this process
outcomes: Counter[str] = Counter()  # how the application answered them, for the summary


def total() -> int:
    raw = os.environ.get("FUZZ_EXAMPLES", "").strip()
    return int(raw) if raw else DEFAULT_TOTAL


def examples(name: str, parts: int = 1) -> int:
    """The examples of one fuzz test (one of `parts` parametrized cases of it)."""
    return max(10, total() * WEIGHTS[name] // sum(WEIGHTS.values()) // parts)


def fuzz_settings(name: str, parts: int = 1) -> settings:
    # No example database (CI starts afresh) and no deadline (a loaded machine is slow, not wrong).
    return settings(
        max_examples=examples(name, parts), deadline=None, database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


def sent(count: int = 1) -> None:
    global inputs_sent
    inputs_sent += count


def outcome(surface: str, answer: object) -> None:
    outcomes[f"{surface} {answer}"] += 1

"""The data migration that moves call facts out of `metadata` into columns, and back."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from calls.models import Call
from calls.selectors import call_metadata

BEFORE = [("calls", "0006_continue_operations"), ("routing", "0002_pairing_codes")]
AFTER = [("calls", "0008_move_call_facts_from_metadata")]
STARTED = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)
LAST_TURN_AT = STARTED + timedelta(minutes=2)
ROUTE_KEY = "+15550009999"


def migrate(target):
    """Migrate the test database to `target`; the models as they were there."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(target)
    return executor.loader.project_state(target).apps


@pytest.fixture
def old_apps(transactional_db):
    apps = migrate(BEFORE)
    yield apps
    migrate(latest())  # later tests need the current schema


def latest():
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def old_calls(apps) -> dict[str, tuple[str, dict]]:
    """One call of each kind the code before the migration wrote, by name: (id, its metadata)."""
    Call = apps.get_model("calls", "Call")
    CallTurn = apps.get_model("calls", "CallTurn")
    CallEvent = apps.get_model("calls", "CallEvent")
    code = apps.get_model("routing", "PairingCode").objects.create(code="123456")

    def create(name, direction="inbound", state="listening", route=None, **metadata):
        call = Call.objects.create(
            provider="mock", direction=direction, state=state, from_number="+15550001111", to_number=ROUTE_KEY,
            started_at=STARTED, metadata=metadata, route=route,
        )
        made[name] = (str(call.pk), metadata)
        return call

    made: dict[str, tuple[str, dict]] = {}
    dialed = create(
        "dialed", direction="outbound", mode="conversation", dtmfSequence="ww12#", initialMessage="Hi there",
        requesterSessionKey="agent:main:chat", answeredBy="machine_end_beep", answeredByFirst="machine_start",
        hangupReason="hangup-bot", turnCount=2, lastTurnLatencyMs=1200, lastTurnListenWaitMs=800,
        lastTurnCompletedAt=int(LAST_TURN_AT.timestamp() * 1000), carrierLeg="leg-7",
    )
    for minutes, latency, wait in ((1, 900, 500), (2, 1200, 800)):
        CallTurn.objects.create(
            call=dialed, token=f"t{minutes}", status="completed", started_at=STARTED,
            completed_at=STARTED + timedelta(minutes=minutes), turn_latency_ms=latency, listen_wait_ms=wait,
        )
    create("notify", direction="outbound", state="completed", mode="notify")
    create("routed", initialMessage="Route hello", numberRouteKey=ROUTE_KEY,
           route={"key": ROUTE_KEY, "inboundGreeting": "Route hello", "agentId": "sales"})
    create("pairing", initialMessage="Please enter or say your pairing code.", pairing={"attempts": 1, "digits": "12"})
    create("paired", initialMessage="Thank you, your number is now registered. Hello!", pairedWithCode=code.pk)
    create("paired_with_deleted_code", pairedWithCode=code.pk + 1000)
    create("pairing_failed", state="hangup-bot", rejectionReason="pairing-failed")
    create("rejected", state="hangup-bot", rejectionReason="not-allowlisted")
    create("unknown_outbound", direction="outbound")
    create("odd_values", direction="outbound", mode="shout", turnCount="three", initialMessage=["not", "text"])
    failed = create("carrier_error", direction="outbound", state="error", mode="conversation")
    CallEvent.objects.create(call=failed, type="call.error", payload={"type": "call.error", "error": "busy circuits", "retryable": False},
                             occurred_at=STARTED)
    CallEvent.objects.create(call=failed, type="call.error", payload={"type": "call.error", "error": "try again", "retryable": True},
                             occurred_at=STARTED)
    return made


def test_facts_move_into_columns_and_the_status_record_keeps_the_reference_shape(old_apps):
    made = old_calls(old_apps)
    migrate(AFTER)
    migrate(latest())  # the current model reads the columns later migrations added as well
    calls = {name: Call.objects.get(pk=pk) for name, (pk, _) in made.items()}

    dialed = calls["dialed"]
    assert (dialed.mode, dialed.pending_dtmf, dialed.initial_message, dialed.requester_session_key) == (
        "conversation", "ww12#", "Hi there", "agent:main:chat")
    assert (dialed.answered_by, dialed.answered_by_first, dialed.hangup_reason, dialed.turn_count) == (
        "machine_end_beep", "machine_start", "hangup-bot", 2)
    assert dialed.metadata == {"carrierLeg": "leg-7"}  # only the carrier's extra stays
    assert calls["notify"].mode == "notify" and calls["notify"].metadata == {}

    routed = calls["routed"]
    assert (routed.mode, routed.route_key, routed.initial_message) == ("conversation", ROUTE_KEY, "Route hello")
    assert routed.route == {"inboundGreeting": "Route hello", "agentId": "sales"} and routed.metadata == {}

    pairing = calls["pairing"]
    assert (pairing.pairing, pairing.pairing_attempts, pairing.pairing_digits) == ("waiting", 1, "12")
    paired = calls["paired"]
    assert (paired.pairing, paired.paired_code.code, paired.metadata) == ("paired", "123456", {})
    gone = calls["paired_with_deleted_code"]
    assert (gone.pairing, gone.paired_code, gone.metadata) == ("paired", None, made["paired_with_deleted_code"][1])
    failed_pairing = calls["pairing_failed"]
    assert (failed_pairing.pairing, failed_pairing.rejection_reason, failed_pairing.metadata) == ("failed", "pairing-failed", {})
    assert (calls["rejected"].rejection_reason, calls["rejected"].pairing) == ("not-allowlisted", "")

    assert calls["unknown_outbound"].mode == ""  # the gateway did not place it: no automatic replies
    odd = calls["odd_values"]
    assert (odd.mode, odd.turn_count, odd.initial_message) == ("", 0, "")
    assert odd.metadata == made["odd_values"][1]  # values that fit no column stay where they were
    assert calls["carrier_error"].last_error == "busy circuits"

    # What `voicecall status` prints under "metadata" is what the rows held before.
    for name, (_, metadata) in made.items():
        expected = {**metadata, "lastError": "busy circuits"} if name == "carrier_error" else metadata
        assert call_metadata(calls[name]) == expected, name


def test_reversing_puts_the_facts_back_into_metadata(old_apps):
    made = old_calls(old_apps)
    migrate(AFTER)
    apps = migrate(BEFORE)
    Call = apps.get_model("calls", "Call")
    for name, (pk, metadata) in made.items():
        assert Call.objects.get(pk=pk).metadata == metadata, name
    assert Call.objects.get(pk=made["routed"][0]).route == {"key": ROUTE_KEY, "inboundGreeting": "Route hello", "agentId": "sales"}

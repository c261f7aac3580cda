"""Move call facts out of `Call.metadata` (the reference's camelCase keys) into their columns.

Forward: each known key whose value fits its column is moved and removed from `metadata`; a value
that does not fit (wrong type, too long) stays in `metadata`, so nothing is lost and the status
record shows it as before. The route key leaves the route snapshot for `route_key`. The last
turn's latencies are dropped where the call's latest completed turn row holds the same values
(the status record reads them from there). Calls that ended in a carrier error get that error.

Backward: the columns are written back under their keys (as the code before this migration
wrote them), the last turn's latencies from the turn rows, and the key into the route snapshot.

Self-contained on purpose: it uses the historical models and no app code, which may change.
"""
from django.db import migrations

BATCH = 500

# metadata key → text column
TEXT_KEYS = {
    "initialMessage": "initial_message",
    "dtmfSequence": "pending_dtmf",
    "requesterSessionKey": "requester_session_key",
    "numberRouteKey": "route_key",
    "answeredBy": "answered_by",
    "answeredByFirst": "answered_by_first",
    "hangupReason": "hangup_reason",
    "rejectionReason": "rejection_reason",
}
MODES = ("notify", "conversation")
LAST_TURN_KEYS = ("lastTurnLatencyMs", "lastTurnListenWaitMs", "lastTurnCompletedAt")


def _batches(model):
    """The calls in batches of BATCH rows (ids read first: rows are updated while we go)."""
    ids = list(model.objects.order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(ids), BATCH):
        yield list(model.objects.filter(pk__in=ids[start:start + BATCH]))


def _fits(call, column, value) -> bool:
    limit = call._meta.get_field(column).max_length
    return isinstance(value, str) and (limit is None or len(value) <= limit)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 32767


def _last_turn(CallTurn, call) -> dict:
    turn = (
        CallTurn.objects.filter(call_id=call.pk, status="completed").order_by("-completed_at", "-id").first()
    )
    if turn is None:
        return {}
    return {
        "lastTurnLatencyMs": turn.turn_latency_ms,
        "lastTurnListenWaitMs": turn.listen_wait_ms,
        "lastTurnCompletedAt": int(turn.completed_at.timestamp() * 1000),
    }


def _ending_error(CallEvent, call) -> str:
    """The error of the carrier's last non-retryable `call.error` event (what ended the call)."""
    for payload in CallEvent.objects.filter(call_id=call.pk, type="call.error").order_by("-id").values_list("payload", flat=True):
        if isinstance(payload, dict) and not payload.get("retryable") and isinstance(payload.get("error"), str):
            return payload["error"]
    return ""


def facts_to_columns(apps, schema_editor):
    Call = apps.get_model("calls", "Call")
    models = (apps.get_model("calls", "CallTurn"), apps.get_model("calls", "CallEvent"), apps.get_model("routing", "PairingCode"))
    for calls in _batches(Call):
        for call in calls:
            changes = _columns_of(call, *models)
            if changes:
                Call.objects.filter(pk=call.pk).update(**changes)


def _columns_of(call, CallTurn, CallEvent, PairingCode) -> dict:
    """What changes on one call: its facts into columns, what is left of its metadata and route."""
    changes = {}
    # Metadata that is not an object is left as it is.
    extras = dict(call.metadata) if isinstance(call.metadata, dict) else {}
    for key, column in TEXT_KEYS.items():
        if key in extras and _fits(call, column, extras[key]):
            changes[column] = extras.pop(key)
    if extras.get("mode") in MODES:
        changes["mode"] = extras.pop("mode")
    elif call.direction == "outbound":
        changes["mode"] = ""  # an outbound call first seen in a webhook: the gateway did not place it
    if _count(extras.get("turnCount")):
        changes["turn_count"] = extras.pop("turnCount")
    pairing = extras.get("pairing")
    if (isinstance(pairing, dict) and set(pairing) <= {"attempts", "digits"}
            and _count(pairing.get("attempts", 0)) and _fits(call, "pairing_digits", pairing.get("digits", ""))):
        changes.update(pairing="waiting", pairing_attempts=pairing.get("attempts", 0), pairing_digits=pairing.get("digits", ""))
        del extras["pairing"]
    code = extras.get("pairedWithCode")
    if isinstance(code, int) and not isinstance(code, bool):
        changes["pairing"] = "paired"
        if PairingCode.objects.filter(pk=code).exists():  # a deleted code's id stays in metadata
            changes["paired_code_id"] = extras.pop("pairedWithCode")
    if changes.get("rejection_reason") == "pairing-failed":
        changes["pairing"] = "failed"
    if any(key in extras for key in LAST_TURN_KEYS) and changes.get("turn_count"):
        latest = _last_turn(CallTurn, call)
        if latest and all(extras.get(key) == value for key, value in latest.items() if key in extras):
            for key in LAST_TURN_KEYS:
                extras.pop(key, None)
    if isinstance(call.route, dict) and "key" in call.route:
        route = dict(call.route)
        key = route.pop("key")
        route_key = changes.get("route_key") or (key if _fits(call, "route_key", key) else "")
        if route_key == key:
            changes.update(route_key=key, route=route)
    if call.state == "error":
        changes["last_error"] = _ending_error(CallEvent, call)
    if isinstance(call.metadata, dict) and extras != call.metadata:
        changes["metadata"] = extras
    return changes


def facts_to_metadata(apps, schema_editor):
    Call = apps.get_model("calls", "Call")
    CallTurn = apps.get_model("calls", "CallTurn")
    for calls in _batches(Call):
        for call in calls:
            facts = {}
            if call.direction == "outbound" and call.mode:
                facts["mode"] = call.mode
            for key, column in TEXT_KEYS.items():
                if getattr(call, column):
                    facts[key] = getattr(call, column)
            if call.pairing == "waiting":
                facts["pairing"] = {"attempts": call.pairing_attempts, "digits": call.pairing_digits}
            if call.paired_code_id is not None:
                facts["pairedWithCode"] = call.paired_code_id
            if call.turn_count:
                facts["turnCount"] = call.turn_count
                facts.update(_last_turn(CallTurn, call))
            changes = {}
            if facts and isinstance(call.metadata, dict):
                changes["metadata"] = {**facts, **call.metadata}
            if isinstance(call.route, dict) and call.route_key:
                changes["route"] = {"key": call.route_key, **call.route}
            if changes:
                Call.objects.filter(pk=call.pk).update(**changes)


class Migration(migrations.Migration):

    dependencies = [
        ("calls", "0007_call_fact_columns"),
        ("routing", "0002_pairing_codes"),
    ]

    operations = [
        migrations.RunPython(facts_to_columns, facts_to_metadata),
    ]

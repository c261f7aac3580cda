"""Fuzzing the JSON-RPC envelope (POST /voice/rpc) through the real ASGI application.

Requests and batches of the real methods with realistic, wrong-typed and nasty values (NaN, 1e400,
lone surrogates, deep nesting), broken JSON and bytes that are not UTF-8. Invariants: never a 5xx,
never an internal error, no ERROR logged, every answer strict JSON (no NaN echoed back), a request
refused as a whole (HTTP 400) changes nothing in the database.
"""
from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from calls.rpc import METHODS
from tests.fuzz import budget
from tests.fuzz.jsontext import mostly, spliced
from voicecall_project.rpc_tokens import parse_rpc_tokens

pytestmark = pytest.mark.django_db(transaction=True)

WRITE = "w" * 8 + "write-token-0001"
READ = "r" * 8 + "read-token-00001"
RESET_EVERY = 100
KNOWN_ERRORS = {-32700, -32600, -32601, -32602, -32000, -32001, -32003}

text = st.text(max_size=16)
scalars = st.none() | st.booleans() | st.integers(-(2**66), 2**66) | st.floats(allow_nan=False, allow_infinity=False) | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=5)
PARAM_VALUES = {
    "to": st.sampled_from(["+15550001111", "+15550002222", "not a number", ""]),
    "message": st.sampled_from(["Hello", "", " "]) | text,
    "mode": st.sampled_from(["notify", "conversation", "shout"]),
    "callId": st.sampled_from(["00000000-0000-4000-8000-000000000000", "nope"]) | text,
    "sid": text, "digits": st.sampled_from(["123", "w#", "x"]), "operationId": text, "dtmfSequence": text,
    "sessionKey": text, "requesterSessionKey": text, "agentId": text, "allowTwimlFallback": st.booleans(),
    "action": st.sampled_from(["status", "end_call", "initiate_call", "speak"]) | text,
}


@st.composite
def requests(draw):
    method = draw(mostly(st.sampled_from(sorted(METHODS)), text))
    message = {"jsonrpc": draw(mostly(st.just("2.0"), st.sampled_from(["1.0", 2.0, None])))}
    message["method"] = method
    declared = METHODS[method].params if method in METHODS and METHODS[method].params else PARAM_VALUES
    shape = draw(st.integers(0, 9))
    if shape <= 6:
        names = draw(st.lists(st.sampled_from(sorted(declared)), unique=True, max_size=4))
        message["params"] = {name: draw(mostly(PARAM_VALUES.get(name, text), values)) for name in names}
    elif shape == 7:
        message["params"] = draw(values)
    if draw(st.integers(0, 5)):
        message["id"] = draw(mostly(st.integers(-(2**70), 2**70) | text | st.floats(allow_nan=False, allow_infinity=False)
                                    | st.none(), values))
    if draw(st.integers(0, 15)) == 0:
        message[draw(text)] = draw(values)
    return message


@st.composite
def bodies(draw) -> bytes:
    shape = draw(st.integers(0, 19))
    if shape <= 13:
        document = draw(requests())
    elif shape <= 17:
        document = draw(st.lists(requests(), max_size=4))
    elif shape == 18:
        document = draw(values)
    else:
        return draw(st.binary(max_size=60))
    return draw(spliced(document)).encode("utf-8")


def refuse_constant(name):
    raise ValueError(f"{name} in an answer")


def row_counts() -> tuple[int, ...]:
    from calls.models import Call, CallEvent, ContinueOperation, TranscriptEntry

    return tuple(model.objects.count() for model in (Call, CallEvent, TranscriptEntry, ContinueOperation))


@pytest.fixture
def rpc(settings, configure, loop, app_errors, outbox):
    from voicecall_project.asgi import application

    settings.VOICECALL_RPC_TOKENS = parse_rpc_tokens(f"write:{WRITE}, read:{READ}")
    configure({"maxConcurrentCalls": 20})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=application, client=("10.0.0.9", 5555)),
                               base_url="http://localhost")
    yield client
    loop.run_until_complete(client.aclose())


@budget.fuzz_settings("rpc")
@given(body=bodies(), token=st.sampled_from([WRITE, WRITE, WRITE, READ]))
def test_rpc_envelope(rpc, loop, app_errors, outbox, body, token):
    from calls.models import Call

    if budget.inputs_sent % RESET_EVERY == 0:
        Call.objects.all().delete()
        outbox.clear()
    before = row_counts()
    budget.sent()
    response = loop.run_until_complete(rpc.post("/voice/rpc", content=body, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"}))
    assert response.status_code in (200, 204, 400), (response.status_code, response.text, body[:300])
    assert not app_errors.take(), body[:300]
    if response.status_code == 204:
        budget.outcome("rpc", 204)
        return
    reply = json.loads(response.content, parse_constant=refuse_constant)
    replies = reply if isinstance(reply, list) else [reply]
    for one in replies:
        assert one["jsonrpc"] == "2.0" and ("result" in one) != ("error" in one), one
        budget.outcome("rpc", "result" if "result" in one else one["error"]["code"])
        if "error" in one:
            assert one["error"]["code"] in KNOWN_ERRORS, one  # -32603: an exception escaped a method
    if response.status_code == 400:
        assert row_counts() == before, (response.text, body[:300])
        if reply["error"]["code"] == -32700:
            assert reply["id"] is None

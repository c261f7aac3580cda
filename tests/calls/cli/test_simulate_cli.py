"""`voicecall simulate`: every carrier, outbound through the gateway's RPC, and its refusals of a bad setup."""
from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from calls import background
from calls.free_ports import free_port
from calls.models import Call, MediaStream, TranscriptEntry
from calls.simulator.telnyx import new_private_key, private_key_text, public_key_text

pytestmark = [pytest.mark.django_db(transaction=True)]

CALLEE, FROM = "+15550100042", "+15550100000"
MESSAGE = "Hello, this is the clinic calling."
TELNYX_KEY = "KEYSIMULATOR0123456789_sim"


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("voicecall", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def run_fail(*args: str) -> str:
    err = io.StringIO()
    with pytest.raises(SystemExit) as exc:
        call_command("voicecall", *args, stdout=io.StringIO(), stderr=err)
    assert exc.value.code == 1
    return err.getvalue()


def telnyx_config(live_gateway: str, public_key: str, base_url: str) -> dict:
    return {
        "provider": "telnyx",
        "telnyx": {"apiKey": TELNYX_KEY, "connectionId": "conn-sim", "publicKey": public_key, "baseUrl": base_url},
        "fromNumber": FROM,
        "toNumber": CALLEE,
        "publicUrl": live_gateway,
        "streaming": {"enabled": True, "provider": "local"},
        "tts": {"provider": "local"},
        "agents": {"main": {"responder": {"type": "scripted", "replies": ["Nine o'clock then."]}}},
    }


@pytest.fixture
def key_file(tmp_path):
    key = new_private_key()
    path = tmp_path / "telnyx.key"
    path.write_text(private_key_text(key) + "\n")
    return key, path


def test_simulate_telnyx_outbound_drives_a_whole_call_through_the_gateway(live_gateway, configure, settings, key_file):
    key, path = key_file
    port = free_port()
    loaded = configure(telnyx_config(live_gateway, public_key_text(key), f"http://127.0.0.1:{port}/v2"))
    assert not loaded.errors, loaded.errors
    background.set_mode("thread")
    settings.VOICECALL_GATEWAY_URL = live_gateway  # the call is placed through the gateway's RPC
    try:
        out = run("simulate", "--carrier", "telnyx", "--outbound", "--telnyx-private-key", str(path),
                  "--gateway", live_gateway, "--message", MESSAGE, "--say", "I would like an appointment please.",
                  "--no-listen", "--max-seconds", "60", "--json")
    finally:
        background.drain(10)
    report = json.loads(out)
    assert report["summary"]["outcomes"] == {"completed": 1}, report["summary"]
    (call,) = Call.objects.filter(direction="outbound")
    assert (call.provider, call.to_number, call.mode) == ("telnyx", CALLEE, "conversation")
    assert call.provider_call_id == report["calls"][0]["call_sid"]
    (stream,) = MediaStream.objects.filter(call=call)
    assert stream.stats["frames_in"] == report["calls"][0]["frames_sent"] > 50
    said = list(TranscriptEntry.objects.filter(call=call, speaker="bot").values_list("text", flat=True))
    assert said[0] == MESSAGE


def test_keygen_prints_a_pair_that_signs_for_the_gateway(configure, live_gateway, tmp_path):
    from calls.simulator.telnyx import load_private_key

    pair = json.loads(run("simulate", "--telnyx-keygen"))
    assert public_key_text(load_private_key(pair["privateKey"])) == pair["publicKey"]
    path = tmp_path / "k"
    path.write_text(pair["privateKey"])
    configure(telnyx_config(live_gateway, pair["publicKey"], "https://api.telnyx.com/v2"))
    # A good key gets past the key checks, to the next one: Telnyx answers only through a local baseUrl.
    err = run_fail("simulate", "--telnyx-private-key", str(path))
    assert "set telnyx.baseUrl to http://127.0.0.1:3390/v2" in err, err


@pytest.mark.parametrize("args,config_change,message", [
    (["--carrier", "plivo"], {}, "the gateway's provider is telnyx"),
    ([], {}, "--telnyx-private-key FILE"),
    (["--telnyx-private-key", "{other}"], {}, "is not the key of telnyx.publicKey"),
    (["--telnyx-private-key", "{missing}"], {}, "cannot read"),
    (["--telnyx-private-key", "{garbage}"], {}, "not an Ed25519 private key"),
    (["--telnyx-private-key", "{key}", "--outbound", "--rest-port", "3391"], {"baseUrl": "http://127.0.0.1:3390/v2"},
     "set telnyx.baseUrl to http://127.0.0.1:3391/v2"),
])
def test_a_bad_setup_is_refused_with_what_to_fix(configure, live_gateway, key_file, tmp_path, args, config_change, message):
    key, path = key_file
    other = tmp_path / "other.key"
    other.write_text(private_key_text(new_private_key()))
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key at all")
    paths = {"{key}": str(path), "{other}": str(other), "{missing}": str(tmp_path / "nope"), "{garbage}": str(garbage)}
    data = telnyx_config(live_gateway, public_key_text(key), "http://127.0.0.1:3390/v2")
    data["telnyx"].update(config_change)
    configure(data)
    err = run_fail("simulate", *[paths.get(arg, arg) for arg in args])
    assert message in err, err
    assert not Call.objects.exists()

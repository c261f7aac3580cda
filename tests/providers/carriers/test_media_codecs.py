"""Media-stream frame codecs of Twilio, Telnyx and Plivo: golden frames in, malformed frames refused, our frames out.

The inbound frames are shaped as each carrier documents them,
with numbers both as strings and as integers, since carriers differ (and drift) on that.
"""
from __future__ import annotations

import base64
import json
import re

import pytest

from providers.carriers.media import (
    FrameError,
    StreamCleared,
    StreamConnected,
    StreamDtmf,
    StreamMark,
    StreamMedia,
    StreamOther,
    StreamStart,
    StreamStop,
)
from providers.carriers.plivo import PlivoCarrier
from providers.carriers.plivo.media import PlivoMediaCodec, extra_headers
from providers.carriers.telnyx import TelnyxCarrier
from providers.carriers.telnyx.media import TelnyxMediaCodec
from providers.carriers.twilio import TwilioCarrier
from providers.carriers.twilio.media import TwilioMediaCodec

# Every byte value once: its base64 has both "+" and "/", so the URL-safe alphabet differs from it.
AUDIO = bytes(range(256))
B64 = base64.b64encode(AUDIO).decode()
B64_URLSAFE = base64.urlsafe_b64encode(AUDIO).decode().rstrip("=")
assert "+" in B64 and "/" in B64 and B64.endswith("=")

TWILIO_STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
TWILIO_CALL = "CA0123456789abcdef0123456789abcdef"
TELNYX_STREAM = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
TELNYX_CALL = "v3:u5OAKGEPT3Dx8SZSSDRWEMdNH2OripQhO0vl1VQw9U6ApQm4_BE2_g"
PLIVO_STREAM = "87654321-4321-4321-4321-cba987654321"
PLIVO_CALL = "12345678-1234-1234-1234-123456789abc"
TOKEN = "q7S-d_0xZk2V9mWb4Yc1Nw"  # the shape of calls.documents.stream_token: URL-safe base64

twilio = TwilioMediaCodec()
telnyx = TelnyxMediaCodec()
plivo = PlivoMediaCodec()
CODECS = {"twilio": twilio, "telnyx": telnyx, "plivo": plivo}


# --- golden frames: Twilio ---------------------------------------------------------------------------


def twilio_start(**start) -> dict:
    return {
        "event": "start", "sequenceNumber": "1", "streamSid": TWILIO_STREAM,
        "start": {
            "accountSid": "AC0123456789abcdef0123456789abcdef", "streamSid": TWILIO_STREAM, "callSid": TWILIO_CALL,
            "tracks": ["inbound"], "customParameters": {"token": TOKEN, "k": "v"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, **start,
        },
    }


def twilio_media(sequence="4", timestamp="5", track="inbound", payload=B64) -> dict:
    return {"event": "media", "sequenceNumber": sequence, "streamSid": TWILIO_STREAM,
            "media": {"track": track, "chunk": "2", "timestamp": timestamp, "payload": payload}}


TWILIO_DTMF = {"event": "dtmf", "streamSid": TWILIO_STREAM, "sequenceNumber": "5", "dtmf": {"track": "inbound_track", "digit": "1"}}
TWILIO_MARK = {"event": "mark", "sequenceNumber": "4", "streamSid": TWILIO_STREAM, "mark": {"name": "my label"}}

TWILIO_GOLDEN = [
    ({"event": "connected", "protocol": "Call", "version": "1.0.0"}, StreamConnected()),
    (twilio_start(), StreamStart(stream_id=TWILIO_STREAM, provider_call_id=TWILIO_CALL, token=TOKEN,
                                 parameters={"token": TOKEN, "k": "v"})),
    (twilio_media(), StreamMedia(AUDIO, sequence=4, timestamp_ms=5)),
    (twilio_media(sequence=4, timestamp=5), StreamMedia(AUDIO, sequence=4, timestamp_ms=5)),
    (twilio_media(payload=B64_URLSAFE), StreamMedia(AUDIO, sequence=4, timestamp_ms=5)),
    (twilio_media(track="outbound"), StreamOther("media", "track 'outbound' ignored")),
    (TWILIO_DTMF, StreamDtmf("1")),
    (TWILIO_MARK, StreamMark("my label")),
    ({"event": "stop", "sequenceNumber": "5", "streamSid": TWILIO_STREAM,
      "stop": {"accountSid": "AC0123456789abcdef0123456789abcdef", "callSid": TWILIO_CALL}}, StreamStop()),
]


# --- golden frames: Telnyx ---------------------------------------------------------------------------


def telnyx_start(**start) -> dict:
    return {
        "event": "start", "sequence_number": "1", "stream_id": TELNYX_STREAM,
        "start": {
            "user_id": "3e6f995f-85f7-4705-9741-53b116d28237", "call_control_id": TELNYX_CALL,
            "call_session_id": "2dc1b3c8-f9e0-11ea-bc5a-02420a0f7768", "from": "+13122010094", "to": "+13122123456",
            "tags": ["TAG1"], "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
            "custom_parameters": {"customer_id": "customer_123"},
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}, **start,
        },
    }


def telnyx_media(sequence="4", timestamp="5", track="inbound", payload=B64) -> dict:
    return {"event": "media", "sequence_number": sequence, "stream_id": TELNYX_STREAM,
            "media": {"track": track, "chunk": "2", "timestamp": timestamp, "payload": payload}}


TELNYX_DTMF = {"event": "dtmf", "stream_id": TELNYX_STREAM, "sequence_number": "6", "dtmf": {"digit": "#"}}
TELNYX_MARK = {"event": "mark", "sequence_number": "7", "stream_id": TELNYX_STREAM, "mark": {"name": "tts-1-end"}}

TELNYX_GOLDEN = [
    ({"event": "connected", "version": "1.0.0"}, StreamConnected()),
    ({"event": "connected", "version": "1.0.0", "x-telnyx-streaming-auth-token": TOKEN}, StreamConnected(TOKEN)),
    ({"event": "connected", "version": "1.0.0", "connected": {"x-telnyx-streaming-auth-token": TOKEN}}, StreamConnected(TOKEN)),
    (telnyx_start(), StreamStart(stream_id=TELNYX_STREAM, provider_call_id=TELNYX_CALL, token=None,
                                 parameters={"customer_id": "customer_123"})),
    (telnyx_start(custom_parameters={"token": TOKEN, "n": 7}),
     StreamStart(stream_id=TELNYX_STREAM, provider_call_id=TELNYX_CALL, token=TOKEN, parameters={"token": TOKEN, "n": "7"})),
    # The list form streaming_start takes them in.
    (telnyx_start(custom_parameters=[{"name": "token", "value": TOKEN}]),
     StreamStart(stream_id=TELNYX_STREAM, provider_call_id=TELNYX_CALL, token=TOKEN, parameters={"token": TOKEN})),
    (telnyx_start(custom_parameters=[]), StreamStart(stream_id=TELNYX_STREAM, provider_call_id=TELNYX_CALL)),
    (telnyx_start(media_format={"encoding": "pcmu", "sample_rate": "8000", "channels": 1}),
     StreamStart(stream_id=TELNYX_STREAM, provider_call_id=TELNYX_CALL, parameters={"customer_id": "customer_123"})),
    (telnyx_media(), StreamMedia(AUDIO, sequence=4, timestamp_ms=5)),
    (telnyx_media(sequence=4, timestamp=5), StreamMedia(AUDIO, sequence=4, timestamp_ms=5)),
    (telnyx_media(track="inbound_track", payload=B64_URLSAFE), StreamMedia(AUDIO, sequence=4, timestamp_ms=5)),
    (telnyx_media(track="outbound"), StreamOther("media", "track 'outbound' ignored")),
    (TELNYX_DTMF, StreamDtmf("#")),
    (TELNYX_MARK, StreamMark("tts-1-end")),
    ({"event": "error", "stream_id": TELNYX_STREAM,
      "payload": {"code": 100002, "title": "Unknown error", "detail": "malformed frame"}},
     StreamOther("error", "100002: Unknown error: malformed frame")),
    ({"event": "error", "stream_id": TELNYX_STREAM}, StreamOther("error", "")),
    ({"event": "stop", "sequence_number": "9", "stream_id": TELNYX_STREAM,
      "stop": {"user_id": "3e6f995f-85f7-4705-9741-53b116d28237", "call_control_id": TELNYX_CALL}}, StreamStop()),
]


# --- golden frames: Plivo ----------------------------------------------------------------------------


def plivo_start(headers="userId=12345;sessionId=abc-xyz", **start) -> dict:
    return {
        "event": "start", "sequenceNumber": 1,
        "start": {
            "callId": PLIVO_CALL, "streamId": PLIVO_STREAM, "accountId": "MAXXXXXXXXXXXXXXXXXX", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}, **start,
        },
        "extra_headers": headers,
    }


def plivo_media(sequence=42, timestamp="1705312200000", track="inbound", payload=B64) -> dict:
    return {"event": "media", "sequenceNumber": sequence, "streamId": PLIVO_STREAM,
            "media": {"track": track, "timestamp": timestamp, "chunk": 41, "payload": payload},
            "extra_headers": "userId=12345;sessionId=abc-xyz"}


HEX_TOKEN = TOKEN.encode().hex()
PLIVO_DTMF = {"event": "dtmf", "sequenceNumber": 50, "streamId": PLIVO_STREAM, "dtmf": {"digit": "5"}}

PLIVO_GOLDEN = [
    (plivo_start(), StreamStart(stream_id=PLIVO_STREAM, provider_call_id=PLIVO_CALL, token=None,
                                parameters={"userId": "12345", "sessionId": "abc-xyz"})),
    (plivo_start(headers=f"token={HEX_TOKEN}"),
     StreamStart(stream_id=PLIVO_STREAM, provider_call_id=PLIVO_CALL, token=TOKEN, parameters={"token": HEX_TOKEN})),
    (plivo_start(headers=f"a=1,token={HEX_TOKEN.upper()};b=2"),
     StreamStart(stream_id=PLIVO_STREAM, provider_call_id=PLIVO_CALL, token=TOKEN,
                 parameters={"a": "1", "token": HEX_TOKEN.upper(), "b": "2"})),
    (plivo_start(headers=None), StreamStart(stream_id=PLIVO_STREAM, provider_call_id=PLIVO_CALL)),
    (plivo_start(mediaFormat={"encoding": "audio/x-mulaw;rate=8000", "sampleRate": "8000"}),
     StreamStart(stream_id=PLIVO_STREAM, provider_call_id=PLIVO_CALL, parameters={"userId": "12345", "sessionId": "abc-xyz"})),
    (plivo_media(), StreamMedia(AUDIO, sequence=42, timestamp_ms=1705312200000)),
    (plivo_media(sequence="42", timestamp=1705312200000), StreamMedia(AUDIO, sequence=42, timestamp_ms=1705312200000)),
    (plivo_media(payload=B64_URLSAFE), StreamMedia(AUDIO, sequence=42, timestamp_ms=1705312200000)),
    (plivo_media(track="outbound"), StreamOther("media", "track 'outbound' ignored")),
    (PLIVO_DTMF, StreamDtmf("5")),
    ({"event": "playedStream", "sequenceNumber": 51, "streamId": PLIVO_STREAM, "name": "tts-3-2"}, StreamMark("tts-3-2")),
    ({"event": "played", "streamId": PLIVO_STREAM, "name": "tts-3-end"}, StreamMark("tts-3-end")),
    ({"event": "clearedAudio", "sequenceNumber": 52, "streamId": PLIVO_STREAM}, StreamCleared()),
    ({"event": "stop", "streamId": PLIVO_STREAM}, StreamStop()),
]


@pytest.mark.parametrize(("codec", "message", "expected"), [
    *[pytest.param(twilio, m, e, id=f"twilio-{i}-{m['event']}") for i, (m, e) in enumerate(TWILIO_GOLDEN)],
    *[pytest.param(telnyx, m, e, id=f"telnyx-{i}-{m['event']}") for i, (m, e) in enumerate(TELNYX_GOLDEN)],
    *[pytest.param(plivo, m, e, id=f"plivo-{i}-{m['event']}") for i, (m, e) in enumerate(PLIVO_GOLDEN)],
])
def test_golden_frames(codec, message, expected):
    # Through JSON, as the consumer receives them.
    assert codec.parse(json.loads(json.dumps(message))) == expected


# --- malformed frames ---------------------------------------------------------------------------------


def without(message: dict, *path: str) -> dict:
    """A deep copy of `message` with the key at `path` removed."""
    copy = json.loads(json.dumps(message))
    target = copy
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return copy


def replaced(message: dict, value, *path: str) -> dict:
    copy = json.loads(json.dumps(message))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def media_cases(media_frame, sequence_key: str) -> list[tuple[dict, str]]:
    return [
        (without(media_frame, "media", "payload"), "media payload must be a base64 string"),
        (replaced(media_frame, None, "media", "payload"), "media payload must be a base64 string"),
        (replaced(media_frame, 12345, "media", "payload"), "media payload must be a base64 string"),
        (replaced(media_frame, "not base64!", "media", "payload"), "media payload is not base64"),
        (replaced(media_frame, "AAAAA", "media", "payload"), "media payload is not base64"),
        (replaced(media_frame, "gAé=", "media", "payload"), "media payload is not base64"),
        (without(media_frame, "media"), "media must be an object"),
        (replaced(media_frame, B64, "media"), "media must be an object"),
        (replaced(media_frame, [B64], "media"), "media must be an object"),
        (replaced(media_frame, "four", sequence_key), f"{sequence_key} must be a number"),
        (replaced(media_frame, True, sequence_key), f"{sequence_key} must be a number"),
        (replaced(media_frame, 4.5, sequence_key), f"{sequence_key} must be a number"),
        (replaced(media_frame, "5ms", "media", "timestamp"), "media.timestamp must be a number"),
        (replaced(media_frame, {"ms": 5}, "media", "timestamp"), "media.timestamp must be a number"),
        # Found by the fuzz job: a 400-digit timestamp overflowed the lag arithmetic.
        (replaced(media_frame, 10**400, "media", "timestamp"), "media.timestamp is out of range"),
        (replaced(media_frame, "9" * 30, "media", "timestamp"), "media.timestamp is out of range"),
        (replaced(media_frame, 2**63, sequence_key), f"{sequence_key} is out of range"),
        # Found by the fuzz job: an unhashable track made the membership test raise TypeError.
        (replaced(media_frame, {}, "media", "track"), "media.track must be a string"),
        (replaced(media_frame, ["inbound"], "media", "track"), "media.track must be a string"),
    ]


def common_cases(start, fmt_key: str, encoding_key: str, rate_key: str, stream_id: tuple[str, ...], call_id: tuple[str, ...],
                 mark: dict, dtmf: dict) -> list[tuple[dict, str]]:
    return [
        (replaced(start, "audio/x-l16", "start", fmt_key, encoding_key), "unsupported stream codec 'audio/x-l16' at 8000 Hz"),
        (replaced(start, "L16", "start", fmt_key, encoding_key), "unsupported stream codec 'L16'"),
        (replaced(start, "PCMA", "start", fmt_key, encoding_key), "unsupported stream codec 'PCMA'"),
        (replaced(start, 16000, "start", fmt_key, rate_key), "at 16000 Hz"),
        (replaced(start, "16000", "start", fmt_key, rate_key), "at 16000 Hz"),
        (replaced(start, "fast", "start", fmt_key, rate_key), "sample rate must be a number"),
        (replaced(start, "audio/x-mulaw", "start", fmt_key), f"start.{fmt_key} must be an object"),
        (replaced(start, "token=x", "start"), "start must be an object"),
        (without(start, "start"), "start must be an object"),
        (without(start, *stream_id), "start without"),
        (replaced(start, "", *stream_id), "start without"),
        (replaced(start, 42, *stream_id), "must be a string"),
        (replaced(start, 42, *call_id), "must be a string"),
        (replaced(mark, {}, "mark"), "mark without a name"),
        (replaced(mark, "", "mark", "name"), "mark without a name"),
        (replaced(mark, 3, "mark", "name"), "mark.name must be a string"),
        (replaced(mark, "tts-1", "mark"), "mark must be an object"),
        (without(dtmf, "dtmf", "digit"), "dtmf without a digit"),
        (replaced(dtmf, "1", "dtmf"), "dtmf must be an object"),
        (replaced(dtmf, 1, "dtmf", "digit"), "dtmf.digit must be a string"),
        ({"event": "clear"}, "unknown event 'clear'"),
        ({"event": "Media", "media": {"payload": B64}}, "unknown event 'Media'"),
        ({"media": {"payload": B64}}, "unknown event None"),
        ({"event": ["media"]}, "unknown event"),
    ]


MALFORMED = {
    "twilio": [
        *media_cases(twilio_media(), "sequenceNumber"),
        *common_cases(without(twilio_start(), "start", "streamSid"), "mediaFormat", "encoding", "sampleRate",
                      ("streamSid",), ("start", "callSid"), TWILIO_MARK, TWILIO_DTMF),
        # streamSid may be given at the top or inside start; a start with neither is refused.
        (without(without(twilio_start(), "streamSid"), "start", "streamSid"), "start without streamSid"),
        (replaced(without(twilio_start(), "streamSid"), "", "start", "streamSid"), "start without streamSid"),
        (replaced(twilio_start(), ["token"], "start", "customParameters"), "start.customParameters must be an object"),
        (replaced(twilio_start(), "token=x", "start", "customParameters"), "start.customParameters must be an object"),
    ],
    "telnyx": [
        *media_cases(telnyx_media(), "sequence_number"),
        *common_cases(telnyx_start(), "media_format", "encoding", "sample_rate", ("stream_id",), ("start", "call_control_id"),
                      TELNYX_MARK, TELNYX_DTMF),
        (replaced(telnyx_start(), "token=x", "start", "custom_parameters"), "start.custom_parameters must be an object"),
        (replaced(telnyx_start(), [{"value": "x"}], "start", "custom_parameters"), "start.custom_parameters must be an object"),
        ({"event": "connected", "x-telnyx-streaming-auth-token": 7}, "x-telnyx-streaming-auth-token must be a string"),
        ({"event": "connected", "connected": "yes"}, "connected must be an object"),
        ({"event": "connected", "connected": {"x-telnyx-streaming-auth-token": ["t"]}},
         "connected.x-telnyx-streaming-auth-token must be a string"),
    ],
    "plivo": [
        *media_cases(plivo_media(), "sequenceNumber"),
        (replaced(plivo_start(), "audio/x-l16;rate=8000", "start", "mediaFormat", "encoding"),
         "unsupported stream codec 'audio/x-l16;rate=8000'"),
        (replaced(plivo_start(), "audio/x-l16;rate=16000", "start", "mediaFormat", "encoding"), "unsupported stream codec"),
        (replaced(plivo_start(), 16000, "start", "mediaFormat", "sampleRate"), "at 16000 Hz"),
        (replaced(plivo_start(), "audio/x-mulaw", "start", "mediaFormat"), "start.mediaFormat must be an object"),
        (replaced(plivo_start(), PLIVO_STREAM, "start"), "start must be an object"),
        (without(plivo_start(), "start", "streamId"), "start without streamId"),
        (replaced(plivo_start(), 7, "start", "streamId"), "start.streamId must be a string"),
        (replaced(plivo_start(), 7, "start", "callId"), "start.callId must be a string"),
        (plivo_start(headers=12345), "extra_headers must be a string"),
        (plivo_start(headers=["token=00"]), "extra_headers must be a string"),
        (plivo_start(headers=f"token={TOKEN}"), "extra_headers token is not hex-encoded text"),
        (plivo_start(headers="token=abc"), "extra_headers token is not hex-encoded text"),
        (plivo_start(headers="token=ff00"), "extra_headers token is not hex-encoded text"),
        ({"event": "playedStream", "streamId": PLIVO_STREAM}, "playedStream without a name"),
        ({"event": "playedStream", "streamId": PLIVO_STREAM, "name": ""}, "playedStream without a name"),
        ({"event": "playedStream", "streamId": PLIVO_STREAM, "name": 3}, "playedStream.name must be a string"),
        ({"event": "played", "streamId": PLIVO_STREAM}, "played without a name"),
        (without(PLIVO_DTMF, "dtmf", "digit"), "dtmf without a digit"),
        (replaced(PLIVO_DTMF, "5", "dtmf"), "dtmf must be an object"),
        # Twilio's and Telnyx's control frames are not Plivo's.
        ({"event": "mark", "mark": {"name": "tts-1"}}, "unknown event 'mark'"),
        ({"event": "connected"}, "unknown event 'connected'"),
        ({"event": "checkpoint", "name": "x"}, "unknown event 'checkpoint'"),
        ({"streamId": PLIVO_STREAM}, "unknown event None"),
    ],
}


@pytest.mark.parametrize(("carrier", "message", "problem"), [
    pytest.param(carrier, message, problem, id=f"{carrier}-{i}-{problem[:40]}")
    for carrier, cases in MALFORMED.items() for i, (message, problem) in enumerate(cases)
])
def test_malformed_frames_raise_frame_error_naming_the_problem(carrier, message, problem):
    with pytest.raises(FrameError) as caught:
        CODECS[carrier].parse(message)
    assert problem in str(caught.value)


def test_plivo_extra_headers_without_equals_or_with_blanks_are_read_leniently():
    start = plivo.parse(plivo_start(headers=" a = 1 ;; flag ,=orphan"))
    assert start.parameters == {"a": "1", "flag": ""}
    assert start.token is None


# --- our frames out -----------------------------------------------------------------------------------


ODD_ID = 'MZ"\\\u00e9\n<id>'
ODD_NAME = 'tts "1" \\ \u00e9'


@pytest.mark.parametrize("stream_id", [TWILIO_STREAM, ODD_ID])
def test_twilio_outbound_frames(stream_id):
    frames = twilio.outbound(stream_id)
    assert json.loads(frames.media(AUDIO)) == {"event": "media", "streamSid": stream_id, "media": {"payload": B64}}
    assert json.loads(frames.media(b"")) == {"event": "media", "streamSid": stream_id, "media": {"payload": ""}}
    assert json.loads(frames.mark(ODD_NAME)) == {"event": "mark", "streamSid": stream_id, "mark": {"name": ODD_NAME}}
    assert json.loads(frames.clear()) == {"event": "clear", "streamSid": stream_id}


@pytest.mark.parametrize("stream_id", [TELNYX_STREAM, ODD_ID])
def test_telnyx_outbound_frames(stream_id):
    frames = telnyx.outbound(stream_id)
    assert frames.stream_id == stream_id
    assert json.loads(frames.media(AUDIO)) == {"event": "media", "media": {"payload": B64}}
    silence = b"\xff" * 160
    assert json.loads(frames.media(silence)) == {"event": "media", "media": {"payload": base64.b64encode(silence).decode()}}
    assert json.loads(frames.mark(ODD_NAME)) == {"event": "mark", "mark": {"name": ODD_NAME}}
    assert json.loads(frames.clear()) == {"event": "clear"}


@pytest.mark.parametrize("stream_id", [PLIVO_STREAM, ODD_ID])
def test_plivo_outbound_frames(stream_id):
    frames = plivo.outbound(stream_id)
    assert json.loads(frames.media(AUDIO)) == {
        "event": "playAudio", "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": B64},
    }
    assert json.loads(frames.mark(ODD_NAME)) == {"event": "checkpoint", "streamId": stream_id, "name": ODD_NAME}
    assert json.loads(frames.clear()) == {"event": "clearAudio", "streamId": stream_id}


@pytest.mark.parametrize("codec", [twilio, telnyx, plivo], ids=["twilio", "telnyx", "plivo"])
def test_outbound_media_is_one_compact_json_line_carrying_the_audio(codec):
    frames = codec.outbound("S-1")
    text = frames.media(AUDIO[:160])
    assert "\n" not in text and ": " not in text and ", " not in text
    message = json.loads(text)
    assert base64.b64decode(message["media"]["payload"], validate=True) == AUDIO[:160]


def test_the_echo_of_a_mark_we_sent_parses_back_to_its_name():
    """What the carrier returns once the audio before our mark played."""
    for codec, stream_id in ((twilio, TWILIO_STREAM), (telnyx, TELNYX_STREAM)):
        sent = json.loads(codec.outbound(stream_id).mark(ODD_NAME))
        assert codec.parse(sent) == StreamMark(ODD_NAME)
    checkpoint = json.loads(plivo.outbound(PLIVO_STREAM).mark(ODD_NAME))
    played = {"event": "playedStream", "streamId": checkpoint["streamId"], "name": checkpoint["name"]}
    assert plivo.parse(played) == StreamMark(ODD_NAME)


# --- what the carriers declare ------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "codec", "header"), [
    (TwilioCarrier, TwilioMediaCodec, None),
    (TelnyxCarrier, TelnyxMediaCodec, "x-telnyx-streaming-auth-token"),
    (PlivoCarrier, PlivoMediaCodec, None),
])
def test_each_carrier_streams_with_its_own_codec(backend, codec, header):
    assert backend.supports_media_streams is True
    assert backend.media_codec is codec
    assert codec.carrier == backend.name
    assert codec.token_header == header


def test_plivo_extra_headers_carry_any_token_in_the_characters_plivo_allows():
    for token in (TOKEN, "-_-_", "a=b,c;d", "\u00e9\u00e8"):
        value = extra_headers(token=token)
        assert re.fullmatch(r"token=[A-Za-z0-9]+", value), value
        assert plivo.parse(plivo_start(headers=value)).token == token

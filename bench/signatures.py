"""Benchmark: webhook signature verification per carrier (the work done before any request is trusted).

Signs a realistic webhook for each carrier, then times the gateway's own verifier on it: the
public-URL rebuild, the HMAC or Ed25519 check and the replay key. Run:
`.venv/bin/python bench/signatures.py [--rounds 20000]`.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import figure, write_summary  # noqa: E402

PUBLIC_URL = "https://gw.example.com/voice/webhook"
FORM = {
    "AccountSid": "AC" + "1" * 32, "ApiVersion": "2010-04-01", "CallSid": "CA" + "2" * 32,
    "CallStatus": "in-progress", "Called": "+15550001111", "Caller": "+15557654321", "Direction": "inbound",
    "From": "+15557654321", "To": "+15550001111", "SpeechResult": "I would like to book a table for two", "Confidence": "0.92",
}


def setup() -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "voicecall_project.settings"
    os.environ.setdefault("VOICECALL_CONFIG", "")
    import django

    django.setup()


def cases():
    from nacl.signing import SigningKey

    from core.config.loader import load_config_data
    from providers.carriers.base import WebhookRequest
    from providers.carriers.plivo.webhook import v3_base
    from providers.carriers.plivo.webhook import verify as plivo_verify
    from core.config.keys import load_public_key
    from providers.carriers.telnyx.webhook import verify as telnyx_verify
    from providers.carriers.twilio.webhook import signature
    from providers.carriers.twilio.webhook import verify as twilio_verify

    config = load_config_data({"provider": "mock", "publicUrl": PUBLIC_URL}).config
    body = urlencode(FORM).encode()
    query = "callId=3f0c9d2e-1111-4222-8333-444455556666&turnToken=abc"
    url = f"{PUBLIC_URL}?{query}"

    twilio_request = WebhookRequest(
        method="POST", path="/voice/webhook", query_string=query, body=body, remote_addr="10.0.0.7",
        headers={"host": "gw.example.com", "x-twilio-signature": signature("token", url, list(FORM.items()))},
    )
    nonce = "05429567804466091622"
    base = v3_base("POST", url, {k: [v] for k, v in FORM.items()})
    plivo_signature = base64.b64encode(hmac.new(b"token", f"{base}.{nonce}".encode(), hashlib.sha256).digest()).decode()
    plivo_request = WebhookRequest(
        method="POST", path="/voice/webhook", query_string=query, body=body, remote_addr="10.0.0.7",
        headers={"host": "gw.example.com", "x-plivo-signature-v3": plivo_signature, "x-plivo-signature-v3-nonce": nonce},
    )
    key = SigningKey.generate()
    json_body = b'{"data":{"event_type":"call.transcription","id":"0ccc7b54","payload":{"call_control_id":"v3:abc","transcription_data":{"transcript":"hello there","is_final":true}}}}'
    timestamp = str(int(time.time()))
    telnyx_request = WebhookRequest(
        method="POST", path="/voice/webhook", query_string="", body=json_body, remote_addr="10.0.0.7",
        headers={"telnyx-timestamp": timestamp,
                 "telnyx-signature-ed25519": base64.b64encode(key.sign(timestamp.encode() + b"|" + json_body).signature).decode()},
    )
    public_key = load_public_key(base64.b64encode(bytes(key.verify_key)).decode())
    return [
        ("twilio (HMAC-SHA1)", lambda: twilio_verify(config, twilio_request, "token")),
        ("plivo (V3 HMAC-SHA256)", lambda: plivo_verify(config, plivo_request, "token")),
        ("telnyx (Ed25519)", lambda: telnyx_verify(telnyx_request, public_key)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--summary", metavar="FILE", help="Write the headline figures for `make bench` to FILE")
    args = parser.parse_args()
    setup()
    print(f"rounds: {args.rounds}")
    print("| carrier | verifications/s | µs each |")
    print("|---|---:|---:|")
    figures = []
    for name, verify in cases():
        assert verify().ok, name
        started = time.perf_counter()
        for _ in range(args.rounds):
            verify()
        elapsed = time.perf_counter() - started
        print(f"| {name} | {args.rounds / elapsed:,.0f} | {elapsed / args.rounds * 1e6:.1f} |")
        figures.append(figure(f"{name}: µs per verification", elapsed / args.rounds * 1e6))
    write_summary(args.summary, figures)


if __name__ == "__main__":
    main()

"""Across processes: a webhook handled by one gateway node shows on a console socket of another within a second (Redis layer, real processes)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.cluster import distributed, make_cluster  # noqa: F401 (a fixture)
from tests.conftest import events_body
from tests.paths import ROOT

pytestmark = [distributed, pytest.mark.timeout(300)]

SESSION = """
import django; django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
user = get_user_model().objects.create_superuser("operator", "operator@example.com", "pw-4417-token")
client = Client()
client.force_login(user)
print(client.cookies["sessionid"].value)
"""


def admin_session(cluster) -> str:
    """A logged-in admin session in the cluster's database (as the login form would make)."""
    done = subprocess.run([sys.executable, "-c", SESSION], cwd=ROOT, env=cluster.env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


async def next_message(ws, kind: str, *, within: float, where=lambda m: True, **match) -> dict:
    """The first message of this kind (and fields) to come within `within` seconds."""
    async with asyncio.timeout(within):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()) and where(message):
                return message


def event(kind: str, key: str, **fields) -> dict:
    return {"type": kind, "callId": "mock-cluster-1", "providerCallId": "mock-cluster-1", "direction": "inbound",
            "from": "+15550145454", "to": "+15550100000", "id": key, **fields}


async def test_a_webhook_on_one_node_reaches_a_console_on_another_within_a_second(make_cluster):
    cluster = make_cluster(config={"provider": "mock", "inboundPolicy": "open"}, nodes=2, workers=1, beat=False)
    cookie = admin_session(cluster)
    watcher, handler = cluster.nodes[1].base, cluster.nodes[0].base
    async with connect(f"ws://{watcher.split('://', 1)[1]}/admin/console/live/socket", origin=watcher,
                       additional_headers={"Cookie": f"sessionid={cookie}"}, open_timeout=10) as ws:
        assert (await next_message(ws, "snapshot", within=10))["calls"] == []
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{handler}/voice/webhook", content=events_body(event("call.answered", "c1-a")))
            assert response.status_code == 200, response.text
            answered = time.monotonic()
            row = (await next_message(ws, "call", within=1.0))["call"]
            assert (row["number"], row["direction"], row["carrier"]) == ("+15550145454", "inbound", "mock")
            assert time.monotonic() - answered < 1.0

            response = await http.post(f"{handler}/voice/webhook", content=events_body(
                event("call.speech", "c1-s", transcript="Is the shop open on Sunday?")))
            assert response.status_code == 200, response.text
            await next_message(ws, "transcript", within=1.0, callId=row["callId"],  # a greeting may come first
                               where=lambda m: "Is the shop open on Sunday?" in [line["text"] for line in m["lines"]])

            response = await http.post(f"{handler}/voice/webhook", content=events_body(
                event("call.ended", "c1-e", reason="completed")))
            assert response.status_code == 200, response.text
            gone = await next_message(ws, "gone", within=1.0, callId=row["callId"])
            assert gone["state"] == "completed"

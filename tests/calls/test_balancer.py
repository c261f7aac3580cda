"""The cluster's TCP load balancer (calls/balancer.py): round robin, dead backends routed around, bytes untouched both ways."""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from calls.balancer import NO_BACKEND, Backend, Balancer, parse_address
from calls.free_ports import free_port
from tests.paths import ROOT


async def named_server(name: bytes):
    """A backend that answers every connection with its name, then echoes until EOF and closes."""

    async def handle(reader, writer):
        writer.write(name + b"\n")
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def balanced():
    """balanced(ports) → the balancer's port; the balancer is closed after the test."""
    balancers = []

    async def start(ports, **options):
        balancer = Balancer([Backend("127.0.0.1", port) for port in ports], **options)
        balancers.append(balancer)
        return await balancer.start("127.0.0.1", 0)

    yield start
    for balancer in balancers:
        await balancer.close()


async def first_line(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_connections_take_turns_over_the_backends(balanced):
    a, port_a = await named_server(b"a")
    b, port_b = await named_server(b"b")
    async with a, b:
        port = await balanced([port_a, port_b])
        assert [await first_line(port) for _ in range(4)] == [b"a\n", b"b\n", b"a\n", b"b\n"]


async def test_a_backend_that_refuses_is_skipped_and_tried_again_when_it_answers(balanced, caplog):
    a, port_a = await named_server(b"a")
    dead = free_port()  # nothing listens there
    async with a:
        port = await balanced([dead, port_a], retry_after=0)  # no pause: tried again on its next turn
        with caplog.at_level(logging.WARNING, logger="calls.balancer"):
            assert [await first_line(port) for _ in range(4)] == [b"a\n"] * 4
        assert f"backend 127.0.0.1:{dead} does not answer (ConnectionRefusedError): skipped" in caplog.text

        revived = await asyncio.start_server(lambda r, w: (w.write(b"back\n"), w.close()), "127.0.0.1", dead)
        async with revived:
            lines = {await first_line(port) for _ in range(4)}
        assert lines == {b"a\n", b"back\n"}
        assert f"backend 127.0.0.1:{dead} answers again" in caplog.text


def test_a_backend_that_just_refused_is_tried_last_until_its_pause_is_over():
    a, b, c = Backend("127.0.0.1", 1), Backend("127.0.0.1", 2), Backend("127.0.0.1", 3)
    balancer = Balancer([a, b, c])
    assert balancer.order() == [a, b, c]
    assert balancer.order() == [b, c, a]
    b.down_until = time.monotonic() + 60
    assert balancer.order() == [c, a, b]
    assert balancer.order() == [a, c, b]
    b.down_until = time.monotonic() - 1
    assert balancer.order() == [b, c, a]


async def test_with_no_backend_answering_the_client_gets_a_502_that_says_so(balanced):
    port = await balanced([free_port(), free_port()])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer == NO_BACKEND
    assert answer.startswith(b"HTTP/1.1 502 ") and b"no backend answered" in answer
    assert len(answer.split(b"\r\n\r\n", 1)[1]) == int(answer.split(b"Content-Length: ")[1].split(b"\r\n")[0])


async def test_bytes_pass_untouched_both_ways_with_back_pressure_and_half_close(balanced):
    a, port_a = await named_server(b"a")
    async with a:
        port = await balanced([port_a])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.readline() == b"a\n"
        payload = os.urandom(8 * 1024 * 1024)  # far above the buffers' high-water marks

        async def send():
            writer.write(payload)
            await writer.drain()
            writer.write_eof()  # half-close: the echo must still come back in full

        sending = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.read(), 30)
        await sending
        writer.close()
        assert echoed == payload


async def test_a_websocket_passes_through_upgrade_and_frames(balanced):
    async def echo(websocket):
        async for message in websocket:
            await websocket.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        port = await balanced([server.sockets[0].getsockname()[1]])
        async with connect(f"ws://127.0.0.1:{port}/media", max_size=None) as websocket:
            for message in ("hello", b"\x00\xff" * 100_000, "bye"):
                await websocket.send(message)
                assert await asyncio.wait_for(websocket.recv(), 10) == message


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("[::1]:3334", ("::1", 3334)),
    ("localhost:0", ("localhost", 0)),
])
def test_addresses_are_parsed(text, expected):
    assert parse_address(text, "--listen") == expected


@pytest.mark.parametrize(("text", "error"), [
    ("3334", "--backend: expected HOST:PORT, got '3334'"),
    (":3334", "--backend: expected HOST:PORT, got ':3334'"),
    ("host:http", "--backend: the port must be a number from 0 to 65535, got 'host:http'"),
    ("host:70000", "--backend: the port must be a number from 0 to 65535, got 'host:70000'"),
    ("::1:80", "--backend: write an IPv6 address in brackets, as [::1]:PORT, got '::1:80'"),
])
def test_a_bad_address_is_refused_naming_the_flag(text, error):
    with pytest.raises(ValueError) as raised:
        parse_address(text, "--backend")
    assert str(raised.value) == error


def test_the_command_says_where_it_listens_and_stops_on_sigterm(tmp_path):
    backend = free_port()
    process = subprocess.Popen([sys.executable, "-m", "calls.balancer", "--listen", "127.0.0.1:0", "--backend",
                                f"127.0.0.1:{backend}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:") and line.endswith(f" -> 127.0.0.1:{backend}\n")
        process.terminate()
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()

    refused = subprocess.run([sys.executable, "-m", "calls.balancer", "--listen", "127.0.0.1:x", "--backend", "b:1"],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "--listen: the port must be a number from 0 to 65535, got '127.0.0.1:x'" in refused.stderr

"""Free ports handed out for servers started later: claimed across processes, below the ephemeral range (calls/free_ports.py)."""
from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time

import pytest

from calls import free_ports
from calls.free_ports import claim, ephemeral_low, free_port
from tests.paths import ROOT


@pytest.fixture
def claims(tmp_path, monkeypatch):
    monkeypatch.setattr(free_ports, "claims_dir", lambda: tmp_path)
    return tmp_path


def test_ports_come_from_below_the_ephemeral_range_and_are_never_handed_out_twice(claims):
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert all(free_ports.FIRST_PORT <= port < ephemeral_low() for port in ports)
    assert sorted(int(path.name) for path in claims.iterdir()) == sorted(ports)


def test_a_fresh_claim_of_another_picker_is_skipped_and_a_stale_one_taken_over(claims):
    (claims / "20000").touch()
    assert claim(claims, 20000) is False
    old = time.time() - free_ports.CLAIM_TTL_S - 1
    os.utime(claims / "20000", (old, old))
    assert claim(claims, 20000) is True
    assert claim(claims, 20000) is False  # now this picker's own, fresh claim
    assert [path.name for path in claims.iterdir()] == ["20000"]


def test_a_port_something_listens_on_is_passed_over(claims, monkeypatch):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        monkeypatch.setattr(free_ports, "ephemeral_low", lambda: 65_000)  # so the held port is in range
        picks = itertools.count(held)  # the held port is tried first
        monkeypatch.setattr(free_ports.random, "randrange", lambda low, high: next(picks))
        port = free_port()
    assert port > held
    assert (claims / str(held)).exists()  # its claim stays: in use now, likely in use a moment later


def test_count_gives_the_first_of_that_many_free_ports_in_a_row(claims):
    first = free_port(count=3)
    assert {int(path.name) for path in claims.iterdir()} == {first, first + 1, first + 2}
    for port in range(first, first + 3):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_count_below_one_is_refused(claims):
    with pytest.raises(ValueError, match="count: at least one port, got 0"):
        free_port(count=0)


def test_processes_picking_at_the_same_moment_never_get_the_same_port(tmp_path):
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from calls.free_ports import free_port; "
              "print(' '.join(str(free_port()) for _ in range(100)))")
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # a claims folder of this test's own
    pickers = [subprocess.Popen([sys.executable, "-c", script, str(ROOT)], env=env, stdout=subprocess.PIPE, text=True)
               for _ in range(4)]
    ports = [int(port) for picker in pickers for port in picker.communicate(timeout=60)[0].split()]
    assert all(picker.returncode == 0 for picker in pickers)
    assert len(ports) == 400 and len(set(ports)) == 400

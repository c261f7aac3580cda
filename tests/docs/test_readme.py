"""The README's shell examples run as written on a fresh clone, in order, against the gateway `make serve` starts.

The repository this test runs from is copied as a clone would have it (git's tracked and new files, as
they are in the checkout: a README being edited is the one tested) into a temporary folder, as a
newcomer's fresh clone: its `var/` is empty. Its
`.venv` links the packages of the virtualenv running the tests, and `make --touch serve` marks them
installed under the Makefile's own stamp names, so `make serve` skips the install and starts in
seconds (the install from scratch is what `.ci/run` proves). Every ```sh block is then run in order
in the clone with `bash -euo pipefail`, in an environment with only PATH, HOME, the locale and the
user's names (no DATABASE_URL or REDIS_URL: the embedded mode a newcomer gets); shell variables a
block sets are carried to the next blocks, as in one terminal. The block that is `make serve` runs
in the background (its own process group, stopped with SIGTERM at the end) and the next block waits
for /healthz.

The one substitution: the README's port 3334 becomes a free port. In the block texts,
`127.0.0.1:3334` is replaced, and the gateway and the CLI learn the port from a config file outside
the clone that holds only `serve.port` (VOICECALL_CONFIG); with no other key it is the README's
default setup, the mock carrier.

A block marked `<!-- not run by the documentation test: <reason> -->` on the line before its fence
is not run; every other sh block must exit 0 within its timeout, or the test fails naming its README
line with its output. Blocks in other languages (json5, …) are not run.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from calls.free_ports import free_port
from tests.docs.readme import Block, shell_blocks
from tests.docs.session import ShellSession, stop
from tests.paths import ROOT
from tests.waiting import wait_until

README_PORT = "127.0.0.1:3334"
BLOCK_TIMEOUT = 60.0
# make serve in a fresh clone migrates a new SQLite database before it serves: seconds, more on a busy machine.
START_TIMEOUT = 90.0
# What a newcomer's shell has; nothing of the test run's own settings (DJANGO_SETTINGS_MODULE,
# VOICECALL_DATA_DIR, DATABASE_URL, REDIS_URL, ...).
KEPT_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR")


def is_gateway(block: Block) -> bool:
    return block.commands == ["make serve"]


def test_every_shell_block_is_run_or_marked_with_a_reason():
    """Static checks, fast: no placeholder that cannot run, one `make serve` run first, no stray 3334 after substitution."""
    blocks = shell_blocks(ROOT / "README.md")
    placeholders = [block.line for block in blocks if "…" in block.text or "3f0c" in block.text]
    assert placeholders == [], f"README sh blocks with placeholders (use a variable such as $CALL_ID): lines {placeholders}"
    run = [block for block in blocks if block.skip_reason is None]
    assert run and is_gateway(run[0]), "the first README sh block that is run must be `make serve`"
    assert [block.line for block in run if is_gateway(block)] == [run[0].line]
    port_left = [block.line for block in run if "3334" in block.text.replace(README_PORT, "")]
    assert port_left == [], f"write the port as {README_PORT} so the test can substitute it: lines {port_left}"


def source_files(root: Path) -> list[str]:
    """What a clone of the checkout has: git's tracked and new (not ignored) files, as they are now.

    As they are now, so that a README being edited is the one tested (in CI the checkout is clean: the
    same as a clone of HEAD). Without git (a checkout exported without its history), the tree minus
    what a clone never has: the virtualenv, the data folder, caches.
    """
    # The checkout may belong to another user than the one running the tests (a CI runner): git refuses
    # to read such a repository unless told it is safe, which only its command line (or global config) can say.
    listed = subprocess.run(["git", "-c", "safe.directory=*", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=root, capture_output=True)
    if listed.returncode == 0:
        names = [name for name in listed.stdout.decode().split("\0") if name]
        return [name for name in names if (root / name).is_file() or (root / name).is_symlink()]  # deleted, not yet committed
    never_cloned = {".git", ".venv", "var", "__pycache__", ".pytest_cache", ".hypothesis"}
    return [str(path.relative_to(root)) for path in root.rglob("*")
            if path.is_file() and not never_cloned.intersection(path.relative_to(root).parts)]


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh clone of the checkout (see `source_files`), with the test run's virtualenv linked in and marked installed."""
    if sys.prefix == sys.base_prefix:
        pytest.fail("the documentation test runs from the project's virtualenv (make test), to link it into the clone")
    target = tmp_path / "clone"
    for relative in source_files(ROOT):
        source, copy = ROOT / relative, target / relative
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, copy, follow_symlinks=False)
    # A folder of links rather than a link to the folder: the stamps go into the clone's .venv, not the shared one.
    venv = target / ".venv"
    venv.mkdir()
    for entry in Path(sys.prefix).iterdir():
        if not entry.name.startswith("."):
            (venv / entry.name).symlink_to(entry)
    touched = subprocess.run(["make", "--touch", "serve"], cwd=target, capture_output=True, text=True, check=True)
    assert ".venv/.runtime-" in touched.stdout, touched.stdout
    return target


@pytest.mark.timeout(240)  # about 20 s alone; several Django processes start one after another on a busy machine
def test_readme_shell_blocks_run_as_written_on_a_fresh_clone(clone: Path, tmp_path: Path):
    port = free_port()
    config = tmp_path / "port.json5"
    config.write_text(json.dumps({"serve": {"port": port}}))
    env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
    env["VOICECALL_CONFIG"] = str(config)
    workdir = tmp_path / "shell"
    workdir.mkdir()
    session = ShellSession(clone, env, workdir)
    log = tmp_path / "make-serve.log"
    gateway: subprocess.Popen | None = None
    outputs: dict[int, str] = {}
    try:
        for block in shell_blocks(clone / "README.md"):
            if block.skip_reason is not None:
                continue
            text = block.text.replace(README_PORT, f"127.0.0.1:{port}")
            if is_gateway(block):
                gateway = session.start(text, log)
                wait_serving(gateway, port, log)
                continue
            ran = session.run(text, timeout=BLOCK_TIMEOUT)
            assert ran.returncode == 0, (
                f"README line {block.line}: the block exited {ran.returncode}\n--- block ---\n{text}"
                f"--- stdout ---\n{ran.stdout}\n--- stderr ---\n{ran.stderr}\n--- make serve ---\n{tail(log)}")
            outputs[block.line] = ran.stdout

        call_id = session.value("CALL_ID")
        assert uuid.UUID(call_id), "the first-call blocks keep the call's id in CALL_ID"
        # What the first call's blocks did: the call, answered, the caller's line from the webhook, ended by `end`.
        state, answered, ended, reason = rows(clone, "SELECT state, answered_at, ended_at, end_reason FROM calls_call "
                                              "WHERE id = ?", uuid.UUID(call_id).hex)[0]
        assert answered and ended and (state, reason) == ("hangup-bot", "hangup-bot")
        assert ("user", "Hi, who is this?") in rows(
            clone, "SELECT speaker, text FROM calls_transcriptentry WHERE call_id = ?", uuid.UUID(call_id).hex)
        # The RPC example placed a call of its own with the token from var/rpc_token.
        rpc_answer = next(out for line, out in outputs.items() if '"voicecall.start"' in _block_at(clone, line))
        placed = json.loads(rpc_answer)["result"]
        assert placed["initiated"] is True and placed["callId"] != call_id
        assert rows(clone, "SELECT to_number FROM calls_call WHERE id = ?", uuid.UUID(placed["callId"]).hex) == [
            ("+15550001111",)]
    finally:
        if gateway is not None:
            stop(gateway)


def wait_serving(gateway: subprocess.Popen, port: int, log: Path) -> None:
    def serving() -> bool:
        if gateway.poll() is not None:
            raise AssertionError(f"make serve exited with {gateway.returncode} before serving:\n{tail(log)}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(serving, f"make serve to answer /healthz on port {port}", timeout=START_TIMEOUT, interval=0.1)


def rows(clone: Path, sql: str, *params) -> list[tuple]:
    """A read query on the clone's own database (var/voicecall.sqlite3, where a fresh clone keeps it)."""
    database = clone / "var" / "voicecall.sqlite3"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=20)) as db:
        return db.execute(sql, params).fetchall()


def _block_at(clone: Path, line: int) -> str:
    return next(block.text for block in shell_blocks(clone / "README.md") if block.line == line)


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no output)"


def test_a_checkout_without_git_is_copied_without_what_a_clone_never_has(tmp_path: Path):
    for name in ("manage.py", "calls/models.py", "var/voicecall.sqlite3", ".venv/bin/python", "calls/__pycache__/x.pyc"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert sorted(source_files(tmp_path)) == ["calls/models.py", "manage.py"]

"""`make serve` and `make test` say what each step does, show pip's output, and skip the installs on a re-run.

The Makefile runs in a copy of its folder with a stand-in interpreter: `PYTHON=<fake>` makes a
`.venv` whose `bin/python` records each call and succeeds, so the steps and their order are checked
in a fraction of a second, with no install.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.paths import ROOT

RECORDER = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../calls.log"
"""
FAKE_PYTHON = """#!/bin/sh
# Stands in for python3: `-m venv DIR` makes DIR/bin/python, a recorder.
[ "$1" = -m ] && [ "$2" = venv ] || exit 2
mkdir -p "$3/bin" && cp "{recorder}" "$3/bin/python" && chmod +x "$3/bin/python"
"""

CREATE = "== creating the virtualenv in .venv"
RUNTIME = "== installing the runtime packages into .venv"
BOTH = "== installing the runtime and test packages into .venv"
MIGRATE = "== applying the database migrations =="
START = "== starting the gateway (Ctrl-C stops it) =="
TESTS = "== running the test suite"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    for name in ("Makefile", "requirements.txt", "requirements-test.txt"):
        shutil.copy(ROOT / name, folder / name)
    recorder = tmp_path / "recorder"
    recorder.write_text(RECORDER)
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON.format(recorder=recorder))
    for script in (recorder, fake):
        script.chmod(0o755)
    return folder


def make(project: Path, target: str, python: str | None = None) -> list[str]:
    """Run `make target`; return the step lines it printed (`== ... ==`)."""
    python = python or str(project.parent / "python3")
    done = subprocess.run(["make", "--no-print-directory", target, f"PYTHON={python}", "TEST_WORKERS=2"],
                          cwd=project, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("== ")]


def calls(project: Path) -> list[str]:
    log = project / ".venv" / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def starts_with(lines: list[str], prefixes: list[str]) -> bool:
    return len(lines) == len(prefixes) and all(line.startswith(prefix) for line, prefix in zip(lines, prefixes))


def test_first_serve_announces_each_step_and_shows_pips_output(project):
    steps = make(project, "serve")
    assert starts_with(steps, [CREATE, RUNTIME, MIGRATE, START]), steps
    assert "(about 3 min on the first run)" in steps[1]
    assert calls(project) == ["-m pip install --disable-pip-version-check -r requirements.txt",
                              "manage.py migrate --noinput", "manage.py gateway"]


def test_a_rerun_skips_the_install_and_goes_straight_to_migrating_and_starting(project):
    make(project, "serve")
    calls(project)
    assert make(project, "serve") == [MIGRATE, START]
    assert calls(project) == ["manage.py migrate --noinput", "manage.py gateway"]


def test_make_test_installs_the_test_packages_once_and_then_serve_installs_nothing(project):
    steps = make(project, "test")
    assert starts_with(steps, [CREATE, BOTH, TESTS]), steps
    assert calls(project)[0] == "-m pip install --disable-pip-version-check -r requirements-test.txt"
    assert starts_with(make(project, "test"), [TESTS])
    assert make(project, "serve") == [MIGRATE, START]


def test_changed_requirements_are_installed_again(project):
    make(project, "serve")
    with (project / "requirements.txt").open("a") as file:
        file.write("# a new pin\n")
    calls(project)
    assert starts_with(make(project, "serve"), [RUNTIME, MIGRATE, START])


def test_a_python_that_cannot_make_a_virtualenv_is_named_with_what_to_install(project):
    done = subprocess.run(["make", "serve", "PYTHON=false"], cwd=project, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "could not create .venv with false" in done.stderr and "python3-venv" in done.stderr
    assert not (project / ".venv").exists()

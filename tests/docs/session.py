"""README shell blocks run one after another as in one terminal: each in `bash -euo pipefail`, with the earlier blocks' variables."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Shell variables a block sets are carried to the next blocks (CALL_ID=$(...) in one, "$CALL_ID" in the
# next), as they would be in the reader's terminal. Bash's own variables are not.
_CARRY_EPILOGUE = """
__doc_new=$(LC_ALL=C comm -13 <(printf '%s\\n' "$__doc_baseline" | LC_ALL=C sort) <(compgen -v | LC_ALL=C sort) \\
  | grep -v -E '^(__doc_.*|BASH.*|_|PIPESTATUS|FUNCNAME|COMP.*|COLUMNS|LINES|OLDPWD|PWD)$' || true)
if [ -n "$__doc_new" ]; then declare -p $__doc_new > {next}; else : > {next}; fi
"""


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


class ShellSession:
    """Runs block texts in `cwd` with `env`; `workdir` holds the scripts and the carried variables."""

    def __init__(self, cwd: Path, env: dict[str, str], workdir: Path) -> None:
        self.cwd, self.env, self.workdir = cwd, env, workdir
        self.state = workdir / "variables.sh"
        self.state.write_text("")
        self._scripts = 0

    def _script(self, text: str, *, carry: bool) -> Path:
        self._scripts += 1
        script = self.workdir / f"block-{self._scripts}.sh"
        prologue = f'__doc_baseline=$(compgen -v)\nsource {shlex.quote(str(self.state))}\n'
        epilogue = _CARRY_EPILOGUE.format(next=shlex.quote(str(self.state) + ".next")) if carry else ""
        script.write_text(prologue + text + epilogue)
        return script

    def _bash(self, script: Path, **kwargs) -> subprocess.Popen:
        # Own process group: a timeout or the end of the test stops the block's children too.
        return subprocess.Popen(["bash", "-euo", "pipefail", str(script)], cwd=self.cwd, env=self.env,
                                stdin=subprocess.DEVNULL, start_new_session=True, text=True, **kwargs)

    def run(self, text: str, *, timeout: float) -> Ran:
        """Run `text` to its end; a block still running after `timeout` is killed and reported as such."""
        process = self._bash(self._script(text, carry=True), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(process, signal.SIGKILL)
            stdout, stderr = process.communicate()
            return Ran(-1, stdout, stderr + f"\n(killed: still running after {timeout:g} s)")
        if process.returncode == 0:
            Path(str(self.state) + ".next").replace(self.state)
        return Ran(process.returncode, stdout, stderr)

    def start(self, text: str, log: Path) -> subprocess.Popen:
        """Start `text` in the background (a long-running command such as `make serve`), output to `log`."""
        with log.open("w") as output:
            return self._bash(self._script(text, carry=False), stdout=output, stderr=subprocess.STDOUT)

    def value(self, name: str) -> str:
        """A variable as the next block would see it."""
        script = self.workdir / "value.sh"
        script.write_text(f"source {shlex.quote(str(self.state))}\nprintf '%s' \"${{{name}:-}}\"\n")
        return subprocess.run(["bash", str(script)], env=self.env, capture_output=True, text=True, check=True).stdout


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Signal the process's whole group (as Ctrl-C reaches a terminal's job) and wait; SIGKILL if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # Stragglers of the group (a child that outlived its parent) go too.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

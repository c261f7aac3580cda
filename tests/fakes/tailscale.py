"""A fake `tailscale` executable (the CLI of Tailscale 1.52+) for tests: put first on PATH, it records and answers.

It keeps the serve config in a JSON file, as tailscaled would, so handlers added with --bg outlive
the command and `serve status --json` shows them; `status --json` prints a canned device. Each run
appends its arguments to calls.jsonl. Behaviour knobs (files in its directory, so a test can change
them while a gateway runs): `fail` holds "<words>\\t<message>" lines (a command containing those words
exits 1 printing the message), `hang` makes every command sleep (to hit the caller's timeout),
`logged_out` makes status name no device.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

DNS_NAME = "gw-test.tail1234.ts.net"

SCRIPT = r'''#!{python}
import json, os, sys, time
from pathlib import Path

HERE = Path({directory!r})
DNS = {dns!r}
args = sys.argv[1:]
with open(HERE / "calls.jsonl", "a") as log:
    log.write(json.dumps(args) + "\n")
if (HERE / "hang").exists():
    time.sleep(30)
for line in (HERE / "fail").read_text().splitlines() if (HERE / "fail").exists() else []:
    words, _, message = line.partition("\t")
    if words and all(word in args for word in words.split()):
        print(message, file=sys.stderr)
        sys.exit(1)
state_file = HERE / "serve.json"
config = json.loads(state_file.read_text()) if state_file.exists() else {{}}


def save():
    state_file.write_text(json.dumps(config))


if args[:2] == ["status", "--json"]:
    if (HERE / "logged_out").exists():
        print(json.dumps({{"BackendState": "NeedsLogin", "Self": {{"DNSName": "", "ID": ""}}}}))
    else:
        print(json.dumps({{"BackendState": "Running", "Self": {{"DNSName": DNS + ".", "ID": "nFAKE1"}}}}))
    sys.exit(0)
if args and args[0] in ("serve", "funnel"):
    mode, rest = args[0], args[1:]
    if rest[:2] == ["status", "--json"]:
        print(json.dumps(config))
        sys.exit(0)
    if rest and rest[0] == "off":
        print("Error: the CLI for serve and funnel has changed.", file=sys.stderr)
        sys.exit(1)
    flags, positional = {{}}, []
    for arg in rest:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            flags[name] = value or "true"
        else:
            positional.append(arg)
    port = int(flags.get("https", "443"))
    path = flags.get("set-path", "/") or "/"
    if mode == "funnel" and port not in (443, 8443, 10000):
        print(f"error: port {{port}} is not allowed for funnel", file=sys.stderr)
        sys.exit(1)
    host = f"{{DNS}}:{{port}}"
    web = config.setdefault("Web", {{}})
    if positional == ["off"]:
        handlers = web.get(host, {{}}).get("Handlers", {{}})
        if path not in handlers:
            print(f"error: handler does not exist", file=sys.stderr)
            sys.exit(1)
        del handlers[path]
        if not handlers:
            web.pop(host, None)
            config.get("TCP", {{}}).pop(str(port), None)
            config.get("AllowFunnel", {{}}).pop(host, None)
        save()
        sys.exit(0)
    if len(positional) != 1 or flags.get("bg") != "true":
        print("error: this fake runs only `--bg` with one target", file=sys.stderr)
        sys.exit(2)
    config.setdefault("TCP", {{}})[str(port)] = {{"HTTPS": True}}
    web.setdefault(host, {{"Handlers": {{}}}})["Handlers"][path] = {{"Proxy": positional[0]}}
    if mode == "funnel":
        config.setdefault("AllowFunnel", {{}})[host] = True
    save()
    print(f"Available on the {{'internet' if mode == 'funnel' else 'tailnet'}}:\nhttps://{{DNS}}{{path}}")
    sys.exit(0)
print("fake tailscale: unknown command " + " ".join(args), file=sys.stderr)
sys.exit(2)
'''


class FakeTailscale:
    """The fake executable in `directory`/bin; `calls()` lists every run's arguments."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.bin = self.directory / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        executable = self.bin / "tailscale"
        executable.write_text(SCRIPT.format(python=sys.executable, directory=str(self.directory), dns=DNS_NAME))
        executable.chmod(executable.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.dns_name = DNS_NAME

    def path_with_it(self, path: str | None = None) -> str:
        """PATH with the fake first."""
        return os.pathsep.join([str(self.bin), path if path is not None else os.environ.get("PATH", "")])

    def calls(self) -> list[list[str]]:
        log = self.directory / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def changes(self) -> list[list[str]]:
        """The runs that add or remove a handler (not the status reads)."""
        return [args for args in self.calls() if args[0] in ("serve", "funnel") and args[1:3] != ["status", "--json"]]

    def serve_config(self) -> dict[str, Any]:
        state = self.directory / "serve.json"
        return json.loads(state.read_text()) if state.exists() else {}

    def handlers(self, port: int = 443) -> dict[str, str]:
        host = self.serve_config().get("Web", {}).get(f"{self.dns_name}:{port}", {})
        return {path: handler["Proxy"] for path, handler in host.get("Handlers", {}).items()}

    def fail(self, words: str, message: str) -> None:
        with open(self.directory / "fail", "a") as handle:
            handle.write(f"{words}\t{message}\n")

    def hang(self) -> None:
        (self.directory / "hang").touch()

    def log_out(self) -> None:
        (self.directory / "logged_out").touch()

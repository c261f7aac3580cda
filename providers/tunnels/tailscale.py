"""Tailscale serve (tailnet only) and funnel (the internet) driven through the `tailscale` CLI.

Targets the CLI of Tailscale 1.52 and later (the serve/funnel syntax changed then):
  tailscale serve|funnel --bg --yes --https=<port> --set-path=<path> <local URL>   (add a handler)
  tailscale serve|funnel --https=<port> --set-path=<path> off                      (remove it)
  tailscale serve status --json                                                    (the handlers in force)
  tailscale status --json                                                          (Self.DNSName)
With --bg the handler stays in tailscaled after the command exits, so whoever adds it must remove it.
Every command has a timeout: tailscaled that hangs never holds the caller for long.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from .base import TunnelError

FUNNEL_PORTS = (443, 8443, 10000)
STATUS_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
MODES = ("serve", "funnel")


@dataclass(frozen=True)
class Mount:
    """One handler: requests to https://<device>:<port><path> go to <target>."""

    path: str
    target: str


class TailscaleCli:
    """The `tailscale` executable found on PATH (`binary` names another)."""

    def __init__(self, binary: str = "tailscale") -> None:
        self.binary = binary

    def path(self) -> str:
        """The executable's full path; TunnelError when there is none."""
        found = shutil.which(self.binary)
        if not found:
            raise TunnelError(f"no {self.binary} binary on PATH: install Tailscale (1.52 or later) and run `tailscale up`")
        return found

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def run(self, args: list[str], *, timeout: float = COMMAND_TIMEOUT_S) -> str:
        """Run one command; its stdout, or TunnelError naming the command and what it said."""
        command = [self.path(), *args]
        shown = " ".join([self.binary, *args])
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise TunnelError(f"`{shown}` did not finish within {timeout:g} s (is tailscaled running?)") from None
        except OSError as exc:
            raise TunnelError(f"`{shown}` could not run: {exc}") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            detail = f": {said[0][:300]}" if said else ""
            raise TunnelError(f"`{shown}` failed with exit code {done.returncode}{detail}")
        return done.stdout

    def run_json(self, args: list[str]) -> Any:
        text = self.run(args, timeout=STATUS_TIMEOUT_S)
        try:
            return json.loads(text or "null")
        except ValueError:
            raise TunnelError(f"`{self.binary} {' '.join(args)}` did not print JSON") from None

    def dns_name(self) -> str:
        """This device's MagicDNS name without the trailing dot (tailscale status --json, Self.DNSName)."""
        status = self.run_json(["status", "--json"])
        self_info = status.get("Self") if isinstance(status, dict) else None
        name = (self_info or {}).get("DNSName") if isinstance(self_info, dict) else None
        if not isinstance(name, str) or not name.rstrip("."):
            state = status.get("BackendState") if isinstance(status, dict) else None
            hint = f" (backend state {state})" if state else ""
            raise TunnelError(f"tailscale status names no DNS name for this device{hint}: is it logged in (`tailscale up`)?")
        return name.rstrip(".")

    def add(self, mode: str, port: int, mount: Mount) -> None:
        _check_mode(mode, port)
        self.run([mode, "--bg", "--yes", f"--https={port}", f"--set-path={mount.path}", mount.target])

    def remove(self, mode: str, port: int, path: str) -> None:
        _check_mode(mode, port)
        self.run([mode, f"--https={port}", f"--set-path={path}", "off"])

    def handlers(self, dns_name: str, port: int) -> dict[str, str]:
        """The handlers in force on https://<dns_name>:<port>, path -> proxy target."""
        config = self.run_json(["serve", "status", "--json"]) or {}
        web = config.get("Web") if isinstance(config, dict) else None
        host = (web or {}).get(f"{dns_name}:{port}") if isinstance(web, dict) else None
        found = (host or {}).get("Handlers") if isinstance(host, dict) else None
        if not isinstance(found, dict):
            return {}
        return {path: str(handler.get("Proxy", "")) for path, handler in found.items() if isinstance(handler, dict)}

    def funnel_on(self, dns_name: str, port: int) -> bool:
        config = self.run_json(["serve", "status", "--json"]) or {}
        allowed = config.get("AllowFunnel") if isinstance(config, dict) else None
        return bool(isinstance(allowed, dict) and allowed.get(f"{dns_name}:{port}"))


def public_url(dns_name: str, port: int, path: str) -> str:
    """https://<device>[:port]<path>, the port left out when it is 443."""
    location = dns_name if port == 443 else f"{dns_name}:{port}"
    return f"https://{location}{path}"


def _check_mode(mode: str, port: int) -> None:
    if mode not in MODES:
        raise TunnelError(f"tailscale mode must be serve or funnel, not {mode!r}")
    if mode == "funnel" and port not in FUNNEL_PORTS:
        raise TunnelError(f"tailscale funnel serves only on ports {', '.join(map(str, FUNNEL_PORTS))}, not {port}")

"""Where the gateway listens, checked before it serves: the config's serve block, --bind/--port, and the address itself."""
from __future__ import annotations

import argparse
import errno
import json
import socket
from pathlib import Path

from core.config import LoadedConfig
from core.config.loader import ENTRY_PATH, WRAPPER_PREFIX

from .port_holder import listener_of

WRAPPER_PATH = tuple(part for part in WRAPPER_PREFIX.split(".") if part)


class CannotServe(Exception):
    """The gateway must not start: the message says what is wrong and how to fix it."""


class ListenFailed(Exception):
    """The server could not listen on the address (taken after the gateway checked it)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def port_arg(text: str) -> int:
    """argparse type of --port: a whole number 1-65535."""
    try:
        port = int(text, 10)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return port


def bind_arg(text: str) -> str:
    """argparse type of --bind: an address or host name, without a port."""
    value = text.strip()
    if not value:
        raise argparse.ArgumentTypeError("expected an address to listen on (127.0.0.1, 0.0.0.0, ::1), got an empty value")
    host, colon, port = value.rpartition(":")
    if colon and port.isdigit() and host and (host.count(":") == 0 or host.endswith("]")):  # 127.0.0.1:8000, [::1]:8000
        raise argparse.ArgumentTypeError(f"expected an address without its port, got {text!r}: "
                                         f"give --bind {host.strip('[]')} --port {port}")
    return value


def serving_errors(loaded: LoadedConfig, *, bind_given: bool = False, port_given: bool = False) -> list[str]:
    """The config errors that change how this process would serve, one line each with the value found.

    An unreadable file (or a wrapper that hides the block) leaves every serve key at its default, and
    an invalid serve key falls back to its default: either way the gateway would listen somewhere the
    file does not say. Other errors (missing credentials, a bad responder) leave it serving as
    configured, with the call runtime off and /readyz and the setup page naming them.
    """
    found = []
    for error in loaded.errors:
        key = _block_path(tuple(getattr(error, "path", ())))
        if key == ():
            found.append(str(error))
        elif key[0] == "serve":
            if (key == ("serve", "port") and port_given) or (key == ("serve", "bind") and bind_given):
                continue  # the flag decides; the file's value is not used
            found.append(str(error) + _found_value(loaded.path, getattr(error, "path", ())))
    return found


def config_refusal(loaded: LoadedConfig, errors: list[str]) -> str:
    where = f"the config file {loaded.path}" if loaded.path else "the config"
    lines = [f"The gateway did not start: {where} does not say how to serve:"]
    lines += [f"  {error}" for error in errors]
    lines.append("Fix the file (`python manage.py voicecall setup` lists every problem); --port and --bind override "
                 "serve.port and serve.bind for one run.")
    return "\n".join(lines)


def _block_path(path: tuple) -> tuple:
    """An error's key path inside the voice-call block; () for the file or the wrapper as a whole."""
    if path[: len(WRAPPER_PATH)] == WRAPPER_PATH:
        return path[len(WRAPPER_PATH):]
    if path[: len(ENTRY_PATH)] == ENTRY_PATH:
        return ()
    return path


def _found_value(config_path: str | None, path: tuple) -> str:
    """", got <value>" as the file has it, so the line shows what to change; "" when it cannot tell."""
    if not config_path:
        return ""
    try:
        import json5

        node = json5.loads(Path(config_path).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return ""
    return f", got {json.dumps(node)}"


def url(bind: str, port: int) -> str:
    host = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
    return f"http://{host}:{port}"


def bind_problem(bind: str, port: int) -> tuple[str, str] | None:
    """Why `bind`:`port` cannot be listened on now, as (the key at fault: "bind" or "port", the reason); None when it can."""
    try:
        infos = socket.getaddrinfo(bind.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return "bind", f"{bind!r} is not an address or a host name that resolves ({exc.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As the servers do: a port whose last connections linger in TIME_WAIT can be bound again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return reason_of(exc, bind, port)
    return None


def reason_of(exc: OSError, bind: str, port: int) -> tuple[str, str]:
    if exc.errno == errno.EADDRINUSE:
        holder = listener_of(port)
        return "port", "the port is already in use" + (f" by {holder}" if holder else "")
    if exc.errno == errno.EADDRNOTAVAIL:
        return "bind", f"{bind} is not an address of this machine"
    if exc.errno == errno.EACCES:
        return "port", "ports below 1024 need administrator rights"
    return "port", exc.strerror or str(exc)


class Sources:
    """What named the address: a flag, the config file's key, or the default."""

    def __init__(self, loaded: LoadedConfig, *, bind_given: bool, port_given: bool) -> None:
        where = f" in {loaded.path}" if loaded.path else " (the default)"
        self.bind = "--bind" if bind_given else "serve.bind" + where
        self.port = "--port" if port_given else "serve.port" + where

    def refusal(self, bind: str, port: int, key: str, reason: str) -> str:
        if key == "bind":
            fix = "Listen on an address of this machine (127.0.0.1, or 0.0.0.0 for all of them): set serve.bind, or give --bind"
            return f"Cannot listen on {url(bind, port)} ({self.bind}): {reason}. {fix}."
        fix = "Stop that process, or choose another port: set serve.port, or give --port"
        return f"Cannot listen on {url(bind, port)} ({self.port}): {reason}. {fix}."

"""Public exposure: the tunnel (ngrok, or Tailscale serve/funnel) the gateway runs while it serves, and what every process knows of it.

Which tunnel: none when publicUrl is set (it wins, as in the reference); else tunnel.provider, else
tailscale.mode. The tunnel forwards to serve.port on this host: the gateway's listener, or in a local
cluster the balancer's.

Who runs it: one process per host. The first serving gateway to take the lock file
DATA_DIR/exposure.lock owns the tunnel; the other gateways of a cluster (they share DATA_DIR) wait and
take over when the owner exits. The owner opens the tunnel on a thread of its own (never on the event
loop), retries a failed start, closes it when the gateway stops, and writes what it did to
DATA_DIR/exposure.json (provider, state, public URL, error, pid). Every other process on the host
(other nodes, Celery workers, the CLI) reads that file, so the URL given to carriers is the tunnel's
wherever a dial or a TwiML document is built. Processes on other hosts do not see it: a deployment
across hosts sets publicUrl.

An ngrok tunnel lives inside its owner's process (the SDK's session), so it is up only while that
process runs. A Tailscale handler lives in tailscaled (added with --bg), so `voicecall expose` can
add or remove it without a gateway, and setup asks tailscale itself whether it is still there.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from django.conf import settings

from core.redact import redact
from providers.tunnels.base import TunnelError
from providers.tunnels.ngrok import NgrokTunnel, SdkNgrok
from providers.tunnels.tailscale import Mount, TailscaleCli, public_url

if TYPE_CHECKING:
    from core.config import VoiceCallConfig

log = logging.getLogger(__name__)

STATE_FILE = "exposure.json"
LOCK_FILE = "exposure.lock"
# A gateway that does not own the tunnel tries for the lock this often (the owner may exit).
OWNER_RETRY_S = 5.0
# After a failed start (the network not up yet, tailscaled restarting) the next try comes this late.
RETRY_S = 30.0
STOP_WAIT_S = 15.0

STARTING, UP, FAILED, STOPPED, DOWN, OFF = "starting", "up", "failed", "stopped", "down", "off"
TAILSCALE = ("tailscale-serve", "tailscale-funnel")


# --- what the config asks for ------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """The tunnel the config asks for, resolved: provider None when there is none to start."""

    provider: str | None
    host: str = "127.0.0.1"
    port: int = 0
    # Tailscale: the HTTPS port, the public path of the webhook, and every handler to add.
    tailscale_port: int = 443
    path: str = "/"
    mounts: tuple[Mount, ...] = ()
    domain: str | None = None
    # Why it cannot start at all (no ngrok authtoken): named, never retried.
    problem: str | None = None
    authtoken: str | None = field(default=None, repr=False)

    @property
    def mode(self) -> str:
        return self.provider.removeprefix("tailscale-") if self.provider else ""


def configured_provider(config: VoiceCallConfig) -> str | None:
    """ngrok, tailscale-serve or tailscale-funnel; None with publicUrl set (it wins) or nothing configured."""
    if config.public_url:
        return None
    if config.tunnel.provider != "none":
        return config.tunnel.provider
    if config.tailscale.mode != "off":
        return f"tailscale-{config.tailscale.mode}"
    return None


def exposure_plan(config: VoiceCallConfig, provider: str | None = None) -> Plan:
    """What starting `provider` (default: the configured one) means for this config."""
    from core.config.schema import normalize_path

    provider = provider or configured_provider(config)
    host = config.serve.bind if config.serve.bind not in ("", "0.0.0.0", "::") else "127.0.0.1"
    port = config.serve.port
    if provider is None:
        return Plan(None, host, port)
    if provider == "ngrok":
        token, problem = None, None
        secret = config.tunnel.ngrok_auth_token
        try:
            token = secret.reveal() if secret is not None else None
        except Exception as exc:  # an env or file reference that does not resolve
            problem = f"the ngrok authtoken cannot be read: {exc}"
        if not token and problem is None:
            problem = "no ngrok authtoken: set tunnel.ngrokAuthToken or the environment variable NGROK_AUTHTOKEN"
        return Plan(provider, host, port, domain=config.tunnel.ngrok_domain, problem=problem, authtoken=token)
    local = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    path = normalize_path(config.tailscale.path)
    mounts = [Mount(path, local + config.webhook_path())]
    # Media and realtime streams are opened at their own paths on the same public host.
    streams = []
    if config.streaming.enabled:
        streams.append(normalize_path(config.streaming.stream_path))
    if config.realtime.enabled:
        streams.append(normalize_path(config.realtime_stream_path()))
    mounts += [Mount(stream, local + stream) for stream in streams if stream != path]
    return Plan(provider, host, port, tailscale_port=config.tailscale.port, path=path, mounts=tuple(mounts))


# --- what is running, as written to the state file ---------------------------------------------

@dataclass
class ExposureState:
    provider: str
    state: str  # starting | up | failed | stopped
    public_url: str | None = None
    error: str | None = None
    pid: int = 0
    host: str = ""
    # "gateway" (the tunnel runs with it) or "cli" (`voicecall expose` added a Tailscale handler).
    started_by: str = "gateway"
    path: str = ""  # Tailscale: the webhook's public path
    tailscale_port: int = 0
    mounts: list[str] = field(default_factory=list)  # Tailscale: every path it added
    updated_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider, "state": self.state, "publicUrl": self.public_url, "error": self.error,
            "pid": self.pid, "host": self.host, "startedBy": self.started_by, "updatedAt": self.updated_at,
        }

    def owner_alive(self) -> bool:
        """The process that wrote it still runs (only knowable on the same host; another host's is trusted)."""
        if self.host != socket.gethostname():
            return True
        return pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def state_path() -> Path:
    return Path(settings.DATA_DIR) / STATE_FILE


def write_state(state: ExposureState) -> None:
    """Replace the state file in one step: a reader sees the old state or the new, never half of one."""
    state.pid = state.pid or os.getpid()
    state.host = state.host or socket.gethostname()
    state.updated_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    temporary.write_text(json.dumps(asdict(state), indent=2))
    os.replace(temporary, path)


def read_state() -> ExposureState | None:
    """The state file, or None when there is none or it cannot be read."""
    try:
        data = json.loads(state_path().read_text())
        return ExposureState(**{key: data[key] for key in ExposureState.__dataclass_fields__ if key in data})
    except (OSError, ValueError, TypeError):
        return None


class StateReader:
    """read_state() for the URL builders: read again only when the file changed (one stat per call)."""

    def __init__(self) -> None:
        self._key: tuple[str, int, int] | None = None
        self._state: ExposureState | None = None
        self._lock = threading.Lock()

    def get(self) -> ExposureState | None:
        path = state_path()
        try:
            info = path.stat()
        except OSError:
            return None
        key = (str(path), info.st_mtime_ns, info.st_size)
        with self._lock:
            if key != self._key:
                self._state, self._key = read_state(), key
            return self._state


def usable(state: ExposureState | None, config: VoiceCallConfig, *, owner: bool = False) -> bool:
    """Whether carriers can be given this state's URL for this config now."""
    if state is None or state.state != UP or not state.public_url:
        return False
    wanted = configured_provider(config)
    if wanted is not None and state.provider != wanted:
        return False  # the config asks for another tunnel now
    if wanted is None and state.provider not in TAILSCALE:
        return False  # only a handler `voicecall expose` added outlives its process
    return owner or state.provider in TAILSCALE or state.owner_alive()


# --- the owner: the gateway's tunnel -----------------------------------------------------------

class Exposure:
    """This process's side: owns the tunnel when it holds the lock, reads the state file otherwise.

    `ngrok_factory` and `tailscale` are the drivers (tests put stand-ins there).
    """

    def __init__(self) -> None:
        self.ngrok_factory: Callable[[], NgrokTunnel] = SdkNgrok
        self.tailscale = TailscaleCli()
        self.state: ExposureState | None = None  # what this process published as owner
        self.reader = StateReader()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock_file: IO[str] | None = None
        self._ngrok: NgrokTunnel | None = None
        self._changed = threading.Condition()

    @property
    def owner(self) -> bool:
        return self._lock_file is not None

    def public_url(self, config: VoiceCallConfig) -> str | None:
        """The tunnel's public URL for `config` while it is up, else None (the URL source of core.urls)."""
        state = self.state if self.owner else self.reader.get()
        return state.public_url if usable(state, config, owner=self.owner) else None

    def start(self, config: VoiceCallConfig) -> bool:
        """Start the tunnel the config asks for on a thread of its own; False when there is none to start."""
        plan = exposure_plan(config)
        if plan.provider is None or (self._thread is not None and self._thread.is_alive()):
            return False
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, args=(plan,), name="voicecall-exposure", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Close the tunnel (if this process owns it) and release the lock; waits up to `timeout`."""
        thread, self._thread = self._thread, None
        self._stopping.set()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the exposure thread did not finish within %g s; the tunnel closes when the process exits",
                            timeout)

    def wait(self, predicate: Callable[[ExposureState | None], bool], timeout: float) -> bool:
        """Block until `predicate(self.state)` holds, at most `timeout` s (tests wait on the tunnel this way)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.state), timeout)

    # the thread

    def _run(self, plan: Plan) -> None:
        waited = False
        while not self._take_lock():
            if not waited:
                log.info("another gateway process on this host owns the %s tunnel (%s); this one takes over if it exits",
                         plan.provider, state_path())
                waited = True
            if self._stopping.wait(OWNER_RETRY_S):
                return
        try:
            while not self._stopping.is_set():
                if self._open(plan):
                    self._stopping.wait()
                    self._close(plan)
                    return
                if plan.problem or self._stopping.wait(RETRY_S):
                    self._stopping.wait()  # a config problem: nothing to retry until the gateway stops
                    self._publish(ExposureState(plan.provider, STOPPED, error=self.state.error if self.state else None))
                    return
        except Exception:
            log.exception("the %s tunnel thread failed", plan.provider)
            self._publish(ExposureState(plan.provider, FAILED, error="the tunnel thread failed (see the gateway log)"))
        finally:
            self._release_lock()

    def _open(self, plan: Plan) -> bool:
        self._publish(ExposureState(plan.provider, STARTING))
        if plan.problem:
            log.error("the %s tunnel cannot start: %s", plan.provider, plan.problem)
            self._publish(ExposureState(plan.provider, FAILED, error=plan.problem))
            return False
        try:
            if plan.provider == "ngrok":
                driver = self.ngrok_factory()
                url = driver.start(plan.port, plan.authtoken or "", plan.domain, host=plan.host)
                self._ngrok = driver
                state = ExposureState(plan.provider, UP, public_url=url.rstrip("/"))
            else:
                url = tailscale_up(self.tailscale, plan)
                state = ExposureState(plan.provider, UP, public_url=url, path=plan.path,
                                      tailscale_port=plan.tailscale_port, mounts=[m.path for m in plan.mounts])
        except TunnelError as exc:
            log.error("the %s tunnel did not start (next try in %g s): %s", plan.provider, RETRY_S, exc)
            self._publish(ExposureState(plan.provider, FAILED, error=str(exc)))
            return False
        log.info("webhooks exposed through %s at %s", plan.provider, state.public_url)
        self._publish(state)
        return True

    def _close(self, plan: Plan) -> None:
        error = None
        if plan.provider == "ngrok":
            driver, self._ngrok = self._ngrok, None
            if driver is not None:
                driver.stop()
        else:
            error = tailscale_down(self.tailscale, plan.mode, plan.tailscale_port, [m.path for m in plan.mounts])
        self._publish(ExposureState(plan.provider, STOPPED, error=error))
        log.info("the %s tunnel is closed", plan.provider)

    def _publish(self, state: ExposureState) -> None:
        if state.error:
            state.error = redact(state.error)  # what ngrok or tailscale said may echo a credential
        try:
            write_state(state)
        except OSError as exc:
            log.warning("could not write %s (other processes will not see the tunnel's URL): %s", state_path(), exc)
            state.pid, state.host = os.getpid(), socket.gethostname()
        with self._changed:
            self.state = state
            self._changed.notify_all()

    def _take_lock(self) -> bool:
        handle = take_lock()
        if handle is None:
            return False
        self._lock_file = handle
        return True

    def _release_lock(self) -> None:
        handle, self._lock_file = self._lock_file, None
        if handle is not None:
            handle.close()  # closing the descriptor drops the flock


def take_lock() -> IO[str] | None:
    """The exposure lock of this host's DATA_DIR, held while the returned file stays open; None when taken."""
    path = Path(settings.DATA_DIR) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115  (kept open while the lock is held)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


# --- Tailscale, shared by the gateway and `voicecall expose` -----------------------------------

def tailscale_up(cli: TailscaleCli, plan: Plan) -> str:
    """Add every handler of `plan`; the webhook's public URL. Raises TunnelError (no binary, not logged in, ...)."""
    cli.path()
    dns_name = cli.dns_name()
    added: list[str] = []
    try:
        for mount in plan.mounts:
            cli.add(plan.mode, plan.tailscale_port, mount)  # tailscale replaces a handler already at the path
            added.append(mount.path)
    except TunnelError:
        # Half an exposure (the webhook without its stream path) is none: take back what was added.
        tailscale_down(cli, plan.mode, plan.tailscale_port, added)
        raise
    return public_url(dns_name, plan.tailscale_port, plan.path)


def tailscale_down(cli: TailscaleCli, mode: str, port: int, paths: list[str]) -> str | None:
    """Remove the handlers at `paths`; the first error met (each is tried), or None."""
    first = None
    for path in paths:
        try:
            cli.remove(mode, port, path)
        except TunnelError as exc:
            log.warning("removing the tailscale %s handler at %s failed: %s", mode, path, exc)
            first = first or str(exc)
    return first


# --- what setup, /readyz and `voicecall expose` report -----------------------------------------

def exposure_status(config: VoiceCallConfig, exposure: Exposure | None = None, *, check_tunnel: bool = False) -> dict[str, Any]:
    """What is configured, whether it is up, its public URL, and the problem when it is not up.

    `check_tunnel` asks tailscale itself whether the handler is still there (setup, `voicecall expose`);
    /readyz trusts what the owner wrote.
    """
    from core.urls import webhook_url

    provider = configured_provider(config)
    result: dict[str, Any] = {"configured": provider or ("publicUrl" if config.public_url else "none")}
    if config.public_url:
        return {**result, "state": UP, "publicUrl": config.public_url, "webhookUrl": webhook_url(config)}
    owner = exposure is not None and exposure.owner
    state = exposure.state if owner else read_state()
    # With nothing configured, only a handler `voicecall expose` added and left up counts.
    relevant = state is not None and (state.provider == provider if provider is not None
                                      else state.provider in TAILSCALE and state.state == UP)
    plan = exposure_plan(config, provider)
    if not relevant:
        if provider is None:
            return {**result, "state": OFF, "webhookUrl": webhook_url(config)}
        return {**result, "state": DOWN, "error": plan.problem or not_started(provider, check_tunnel and TailscaleCli()),
                "webhookUrl": webhook_url(config)}
    assert state is not None
    current = state.state
    error = state.error
    if current == UP and not (owner or state.provider in TAILSCALE or state.owner_alive()):
        current, error = DOWN, f"the gateway process that ran it (pid {state.pid}) is gone; start the gateway again"
    if current == UP and check_tunnel and state.provider in TAILSCALE:
        current, error = tailscale_check(exposure.tailscale if exposure else TailscaleCli(), state)
    if provider == "ngrok" and plan.problem and current != UP:
        error = plan.problem
    body = {**result, "state": current, "provider": state.provider, "publicUrl": state.public_url if current == UP else None,
            "startedBy": state.started_by, "pid": state.pid, "updatedAt": state.updated_at}
    if error and current != UP:
        body["error"] = error
    body["webhookUrl"] = webhook_url(config)
    return body


def exposure_problem(config: VoiceCallConfig) -> str | None:
    """Why carriers cannot be given a public URL now: a configured tunnel that is not up (None otherwise, and
    for the mock carrier, which calls nothing)."""
    from core.urls import public_base

    provider = configured_provider(config)
    if provider is None or config.provider == "mock" or public_base(config):
        return None
    from .gateway import get_gateway

    status = exposure_status(config, get_gateway().exposure)
    detail = f": {status['error']}" if status.get("error") else ""
    return f"webhooks are not exposed ({provider} is {status['state']}{detail})"


def not_started(provider: str, cli: TailscaleCli | None) -> str:
    if provider == "ngrok":
        return ("not running: the ngrok tunnel lives inside the gateway process; start the gateway "
                "(manage.py gateway) and it opens the tunnel")
    if cli is not None and not cli.available():
        return f"no {cli.binary} binary on PATH: install Tailscale (1.52 or later) and run `tailscale up`"
    return f"not running: start the gateway, or run `manage.py voicecall expose --mode {provider.removeprefix('tailscale-')}`"


def tailscale_check(cli: TailscaleCli, state: ExposureState) -> tuple[str, str | None]:
    """(state, problem) from tailscale itself: is the webhook's handler still in force?"""
    try:
        dns_name = cli.dns_name()
        handlers = cli.handlers(dns_name, state.tailscale_port or 443)
        if state.path not in handlers:
            return DOWN, f"tailscale no longer serves {state.path} on port {state.tailscale_port} (removed outside the gateway?)"
        if state.provider == "tailscale-funnel" and not cli.funnel_on(dns_name, state.tailscale_port or 443):
            return DOWN, f"tailscale serves {state.path} but funnel is off for port {state.tailscale_port}"
    except TunnelError as exc:
        return FAILED, str(exc)
    return UP, None

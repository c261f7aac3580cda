"""`voicecall expose`: show the public exposure, or add/remove a Tailscale handler directly (ngrok lives with the gateway).

Tailscale handlers live in tailscaled, so this command adds or removes them itself, as the reference
does, and records them in the exposure state file for the gateway and the other processes. An ngrok
tunnel lives inside the gateway process: this command can only say whether the gateway's is up.
While a gateway on this host owns the exposure (it holds the lock), this command changes nothing.
"""
from __future__ import annotations

from typing import Any

from core.errors import VoiceCallError

MODES = ("serve", "funnel", "ngrok", "off")


class ExposeError(VoiceCallError):
    """The exposure could not be changed as asked (exit code 1); the message says why and what to do."""


def expose_show(config) -> dict[str, Any]:
    """What is configured, whether it is up (tailscale itself is asked), the public URL and the problem."""
    from calls.exposure import exposure_status
    from calls.gateway import get_gateway

    status = exposure_status(config, get_gateway().exposure, check_tunnel=True)
    status["ok"] = status["state"] in ("up", "off")
    return status


def expose_mode(config, mode: str) -> dict[str, Any]:
    """Start (serve, funnel) or stop (off) the Tailscale exposure here; ngrok: the gateway's tunnel's status."""
    if mode == "ngrok":
        return _ngrok(config)
    from calls import exposure

    if config.public_url:
        raise ExposeError(f"publicUrl is set ({config.public_url}): carriers are given it and no tunnel is used; "
                          "remove publicUrl from the config first")
    configured = exposure.configured_provider(config)
    if mode != "off" and configured not in (None, f"tailscale-{mode}"):
        raise ExposeError(f"the config asks for {configured}: set tailscale.mode {mode} (and tunnel.provider none) "
                          "instead, and the gateway starts it")
    lock = exposure.take_lock()
    if lock is None:
        state = exposure.read_state()
        owner = f" ({state.provider}, {state.state}, pid {state.pid})" if state else ""
        raise ExposeError(f"a running gateway on this host owns the exposure{owner}; it changes only with the gateway: "
                          "change tunnel/tailscale in the config and restart the gateway, or stop it first")
    try:
        if mode == "off":
            return _off(config, exposure)
        return _tailscale(config, mode, exposure)
    finally:
        lock.close()


def _tailscale(config, mode: str, exposure) -> dict[str, Any]:
    from providers.tunnels.base import TunnelError

    provider = f"tailscale-{mode}"
    plan = exposure.exposure_plan(config, provider)
    cli = exposure.TailscaleCli()
    try:
        url = exposure.tailscale_up(cli, plan)
    except TunnelError as exc:
        exposure.write_state(exposure.ExposureState(provider, exposure.FAILED, error=str(exc), started_by="cli"))
        raise ExposeError(f"tailscale {mode} failed: {exc}") from None
    exposure.write_state(exposure.ExposureState(
        provider, exposure.UP, public_url=url, started_by="cli", path=plan.path,
        tailscale_port=plan.tailscale_port, mounts=[mount.path for mount in plan.mounts]))
    return expose_show(config)


def _off(config, exposure) -> dict[str, Any]:
    state = exposure.read_state()
    configured = exposure.configured_provider(config)
    if state is not None and state.provider in exposure.TAILSCALE and state.mounts:
        mode, port, paths = state.provider.removeprefix("tailscale-"), state.tailscale_port, state.mounts
    elif configured in exposure.TAILSCALE:
        plan = exposure.exposure_plan(config, configured)
        mode, port, paths = plan.mode, plan.tailscale_port, [mount.path for mount in plan.mounts]
    else:
        mode, port, paths = "", 0, []  # nothing of ours in tailscaled (an ngrok tunnel ended with its gateway)
    if paths:
        cli = exposure.TailscaleCli()
        if not cli.available():
            raise ExposeError("no tailscale binary on PATH: cannot remove the handlers it serves")
        error = exposure.tailscale_down(cli, mode, port, paths)
        if error:
            raise ExposeError(f"tailscale did not remove every handler: {error}")
    provider = state.provider if state is not None else (configured or "tailscale-serve")
    exposure.write_state(exposure.ExposureState(provider, exposure.STOPPED, started_by="cli"))
    return expose_show(config)


def _ngrok(config) -> dict[str, Any]:
    status = expose_show(config)
    if status.get("configured") == "ngrok" and status["state"] == "up":
        return status
    problem = status.get("error") if status.get("configured") == "ngrok" else None
    raise ExposeError(
        "the ngrok tunnel lives with the gateway process: set tunnel.provider ngrok (with tunnel.ngrokAuthToken or "
        "NGROK_AUTHTOKEN) and start the gateway (manage.py gateway); it opens the tunnel and closes it when it exits"
        + (f". Now: {problem}" if problem else ""))


def expose_text(status: dict[str, Any]) -> str:
    lines = [f"Exposure: {status['configured']} ({status['state']})"]
    if status.get("provider") and status.get("provider") != status["configured"]:
        lines.append(f"Running: {status['provider']}" + (" (added by voicecall expose)" if status.get("startedBy") == "cli" else ""))
    if status.get("publicUrl"):
        lines.append(f"Public URL: {status['publicUrl']}")
    lines.append(f"Carriers are given: {status['webhookUrl']}")
    if status.get("error"):
        lines.append(f"Problem: {status['error']}")
    return "\n".join(lines)

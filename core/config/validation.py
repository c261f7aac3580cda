"""Cross-field rules of the call config (docs/compatibility.md, Provider validation), all reported together."""
from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import ConfigError
from .models import KNOWN_PROVIDERS, model_problem
from .schema import VoiceCallConfig

STREAMING_CARRIERS = ("twilio", "telnyx", "plivo")
REALTIME_CARRIERS = ("twilio", "telnyx", "plivo", "mock")
FUNNEL_PORTS = (443, 8443, 10000)
LOOPBACK_BINDS = ("127.0.0.1", "::1", "localhost")
UNSAFE_SKIP_ENV = "VOICECALL_UNSAFE_ALLOW_SKIP_SIGNATURE_VERIFICATION"


def cross_field_errors(cfg: VoiceCallConfig, environ: Mapping[str, str] | None = None) -> list[ConfigError]:
    """Every rule the config breaks, as "<path>: <message>" lines (empty when disabled)."""
    if not cfg.enabled:
        return []
    errors: list[ConfigError] = []
    provider = cfg.provider
    if not provider:
        errors.append(ConfigError(("provider",), "required when enabled (telnyx, twilio, plivo or mock)"))
    if not cfg.from_number and provider != "mock":
        hint = " (or set TWILIO_FROM_NUMBER)" if provider == "twilio" else ""
        errors.append(ConfigError(("fromNumber",), f"required{hint}"))

    required = {
        "telnyx": [("apiKey", "TELNYX_API_KEY"), ("connectionId", "TELNYX_CONNECTION_ID")],
        "twilio": [("accountSid", "TWILIO_ACCOUNT_SID"), ("authToken", "TWILIO_AUTH_TOKEN")],
        "plivo": [("authId", "PLIVO_AUTH_ID"), ("authToken", "PLIVO_AUTH_TOKEN")],
    }
    if provider == "telnyx" and not cfg.skip_signature_verification:
        required["telnyx"].append(("publicKey", "TELNYX_PUBLIC_KEY"))
    block = getattr(cfg, provider, None) if provider in required else None
    for key, env_name in required.get(provider or "", []):
        if block is None or _get_camel(block, key) is None:
            errors.append(ConfigError((provider, key), f"required (or set {env_name})"))

    if cfg.realtime.enabled:
        if cfg.inbound_policy == "disabled":
            errors.append(ConfigError(("realtime", "enabled"), 'requires an inboundPolicy other than "disabled"'))
        if cfg.streaming.enabled:
            errors.append(ConfigError(("realtime", "enabled"), "cannot be used together with streaming.enabled"))
        if provider and provider not in REALTIME_CARRIERS:
            errors.append(ConfigError(("realtime", "enabled"), f"requires provider {_or(REALTIME_CARRIERS)}"))
    if cfg.streaming.enabled and provider and provider not in STREAMING_CARRIERS:
        errors.append(ConfigError(("streaming", "enabled"), f"requires provider {_or(STREAMING_CARRIERS)}"))
    funnel = cfg.tailscale.mode == "funnel" or cfg.tunnel.provider == "tailscale-funnel"
    if funnel and cfg.tailscale.port not in FUNNEL_PORTS:
        errors.append(ConfigError(("tailscale", "port"), f"funnel accepts only {_or(tuple(map(str, FUNNEL_PORTS)))}"))
    errors.extend(_conversation_errors(cfg))
    if cfg.skip_signature_verification and not _skip_allowed(cfg, os.environ if environ is None else environ):
        errors.append(ConfigError(
            ("skipSignatureVerification",),
            "only allowed with a loopback serve.bind and no "
            f"publicUrl, tunnel or tailscale (or set {UNSAFE_SKIP_ENV}=1)",
        ))
    return errors


def _conversation_errors(cfg: VoiceCallConfig) -> list[ConfigError]:
    """Agents, responders and models must name things that exist."""
    errors: list[ConfigError] = []
    agents = sorted(cfg.agents)
    if cfg.agent_id is None and len(agents) > 1:
        errors.append(ConfigError(("agentId",), f"required when several agents are configured ({', '.join(agents)})"))
    owners = [(("agentId",), cfg.agent_id)] + [(("numbers", key, "agentId"), route.agent_id) for key, route in cfg.numbers.items()]
    for path, agent_id in owners:
        if agents and agent_id and agent_id not in cfg.agents:
            errors.append(ConfigError(path, f"no agent {agent_id!r} in agents ({', '.join(agents)})"))
    models = [(("responseModel",), cfg.response_model)]
    models += [(("numbers", key, "responseModel"), route.response_model) for key, route in cfg.numbers.items()]
    for agent_id, agent in cfg.agents.items():
        responder = agent.responder
        if responder is None:
            continue
        path = ("agents", agent_id, "responder")
        models.append(((*path, "model"), responder.model))
        if responder.type == "webhook":
            if not responder.url:
                errors.append(ConfigError((*path, "url"), "required for a webhook responder"))
            if responder.secret is None:
                errors.append(ConfigError((*path, "secret"), "required for a webhook responder (its requests are signed with it)"))
        if responder.type == "scripted" and not responder.replies:
            errors.append(ConfigError((*path, "replies"), "a scripted responder needs at least one reply"))
    for path, value in models:
        problem = model_problem(value, cfg.models.providers) if value else None
        if problem:
            errors.append(ConfigError(path, problem))
    for provider_id, block in cfg.models.providers.items():
        if not block.base_url and provider_id not in KNOWN_PROVIDERS:
            errors.append(ConfigError(("models", "providers", provider_id, "baseUrl"), f"required (no default for {provider_id!r})"))
    return errors


def _skip_allowed(cfg: VoiceCallConfig, environ: Mapping[str, str]) -> bool:
    if environ.get(UNSAFE_SKIP_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return (
        cfg.serve.bind in LOOPBACK_BINDS
        and not cfg.public_url
        and cfg.tunnel.provider == "none"
        and cfg.tailscale.mode == "off"
    )


def _get_camel(block, camel_key: str):
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel_key)
    return getattr(block, snake)


def _or(items: tuple[str, ...]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1]

"""Config for conversations: agentId resolution, responder blocks, model names and providers."""
from __future__ import annotations

import pytest

from core.config.loader import load_config_data
from core.config.models import ModelError, resolve_model

MOCK = {"provider": "mock"}


def load(data, env=None):
    return load_config_data({**MOCK, **data}, environ=env or {})


def errors_of(data):
    return load(data).errors


def config_of(data, env=None):
    loaded = load(data, env)
    assert loaded.errors == [], loaded.errors
    return loaded.config


SCRIPTED = {"responder": {"type": "scripted", "replies": ["hi"]}}


@pytest.mark.parametrize(("data", "expected"), [
    ({}, "main"),
    ({"agents": {"sales": SCRIPTED}}, "sales"),
    ({"agentId": "support", "agents": {"sales": SCRIPTED, "support": SCRIPTED}}, "support"),
    ({"agentId": "custom"}, "custom"),  # no agents block: any id, the default responder
], ids=["none-configured", "the-only-agent", "explicit", "explicit-without-agents"])
def test_agent_id_resolution(data, expected):
    assert config_of(data).resolved_agent_id() == expected


def test_several_agents_need_an_explicit_agent_id():
    assert errors_of({"agents": {"sales": SCRIPTED, "support": SCRIPTED}}) == [
        "agentId: required when several agents are configured (sales, support)"
    ]


def test_agent_ids_must_name_configured_agents():
    errors = errors_of({
        "agentId": "ghost",
        "agents": {"sales": SCRIPTED},
        "numbers": {"+15550001111": {"agentId": "phantom"}},
    })
    assert errors == [
        "agentId: no agent 'ghost' in agents (sales)",
        "numbers.+15550001111.agentId: no agent 'phantom' in agents (sales)",
    ]


def test_webhook_responder_needs_url_and_secret():
    errors = errors_of({"agents": {"main": {"responder": {"type": "webhook"}}}})
    assert errors == [
        "agents.main.responder.url: required for a webhook responder",
        "agents.main.responder.secret: required for a webhook responder (its requests are signed with it)",
    ]


def test_webhook_secret_accepts_a_secret_ref_and_never_shows_it():
    config = config_of({"agents": {"main": {"responder": {
        "type": "webhook", "url": "https://agent.example.com/turn", "secret": "${VC_AGENT_SECRET}"}}}},
        env={"VC_AGENT_SECRET": "s3cret"})
    secret = config.agents["main"].responder.secret
    assert secret.describe() == "env:VC_AGENT_SECRET"
    assert secret.reveal() == "s3cret"
    assert "s3cret" not in repr(config) and "s3cret" not in config.model_dump_json()


def test_scripted_responder_needs_replies():
    assert errors_of({"agents": {"main": {"responder": {"type": "scripted"}}}}) == [
        "agents.main.responder.replies: a scripted responder needs at least one reply"
    ]


@pytest.mark.parametrize(("data", "path"), [
    ({"agents": {"main": {"responder": {"type": "llm", "temperature": 3}}}}, "agents.main.responder.temperature"),
    ({"agents": {"main": {"responder": {"type": "llm", "maxTokens": 0}}}}, "agents.main.responder.maxTokens"),
    ({"agents": {"main": {"responder": {"type": "telepathy"}}}}, "agents.main.responder.type"),
    ({"agents": {"main": {"responder": {"type": "llm", "colour": "red"}}}}, "agents.main.responder.colour"),
    ({"agents": {"main": {"responder": {"type": "webhook", "url": "ftp://x", "secret": "s"}}}}, "agents.main.responder.url"),
    ({"models": {"providers": {"local": {"baseUrl": "not a url"}}}}, "models.providers.local.baseUrl"),
], ids=["temperature", "max-tokens", "type", "unknown-key", "url", "base-url"])
def test_bad_responder_and_model_values_name_their_path(data, path):
    errors = errors_of(data)
    assert errors and all(error.startswith(path + ":") for error in errors), errors


@pytest.mark.parametrize(("data", "expected"), [
    ({"responseModel": "acme/large"}, "responseModel: unknown model provider 'acme'"),
    ({"numbers": {"+15550001111": {"responseModel": "acme/large"}}}, "numbers.+15550001111.responseModel: unknown model provider 'acme'"),
    ({"agents": {"main": {"responder": {"model": "acme/large"}}}}, "agents.main.responder.model: unknown model provider 'acme'"),
    ({"responseModel": "openai/"}, "responseModel: must be provider/model"),
    ({"models": {"providers": {"acme": {}}}}, "models.providers.acme.baseUrl: required (no default for 'acme')"),
], ids=["top", "route", "agent", "no-model", "unknown-provider-without-base-url"])
def test_model_names_must_resolve(data, expected):
    errors = errors_of(data)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_known_and_configured_model_providers_are_accepted():
    config = config_of({
        "responseModel": "ollama/llama3.2",
        "models": {"providers": {"vllm": {"baseUrl": "http://127.0.0.1:8000/v1", "apiKey": "${VC_VLLM_KEY}"}}},
        "numbers": {"+15550001111": {"responseModel": "vllm/qwen"}},
    }, env={"VC_VLLM_KEY": "k"})
    assert config.response_model == "ollama/llama3.2"


def test_resolve_model_reads_the_provider_block_then_the_known_table():
    config = config_of({"models": {"providers": {
        "vllm": {"baseUrl": "http://127.0.0.1:8000/v1/", "apiKey": "${VC_VLLM_KEY}"},
        "openai": {"baseUrl": "http://127.0.0.1:9999/v1"},
    }}}, env={"VC_VLLM_KEY": "vk"})
    providers = config.models.providers
    resolved = resolve_model("vllm/qwen", providers, environ={})
    assert (resolved.provider, resolved.model, resolved.base_url, resolved.api_key) == (
        "vllm", "qwen", "http://127.0.0.1:8000/v1", "vk")
    # The openai block overrides the URL; its key still falls back to OPENAI_API_KEY.
    resolved = resolve_model("gpt-4o-mini", providers, environ={"OPENAI_API_KEY": "sk-env"})
    assert (resolved.provider, resolved.base_url, resolved.api_key) == ("openai", "http://127.0.0.1:9999/v1", "sk-env")
    resolved = resolve_model("xai/grok-3", {}, environ={"XAI_API_KEY": "xk"})
    assert (resolved.base_url, resolved.api_key) == ("https://api.x.ai/v1", "xk")
    assert resolve_model("ollama/llama3.2", {}, environ={}).api_key is None
    assert "sk-env" not in repr(resolve_model("gpt-4o-mini", {}, environ={"OPENAI_API_KEY": "sk-env"}))


def test_resolve_model_refuses_unknown_providers():
    with pytest.raises(ModelError, match="unknown model provider 'acme'"):
        resolve_model("acme/large", {}, environ={})


@pytest.mark.django_db
def test_tts_credentials_survive_the_route_merge():
    """A route's tts merged over the global one still carries usable keys (not a dump of the Secret)."""
    from calls.speech import tts_chain
    from routing.routes import effective_tts, match_route

    config = config_of({
        "tts": {"provider": "openai", "providers": {"openai": {"apiKey": "sk-global", "voice": "alloy"}}},
        "numbers": {"+15550001111": {"tts": {"providers": {"elevenlabs": {"apiKey": "${VC_XI_KEY}", "voiceId": "v1"}}}}},
    }, env={"VC_XI_KEY": "xi-route"})
    _, route = match_route(config, "+15550001111")
    merged = effective_tts(config, route)
    chain = tts_chain(merged)
    keys = {provider.name: provider.api_key() for provider in chain.providers if provider.name in ("openai", "elevenlabs")}
    assert keys == {"openai": "sk-global", "elevenlabs": "xi-route"}
    assert "sk-global" not in config.model_dump_json() and "xi-route" not in config.model_dump_json()

"""Keys that are accepted but have no effect yet are named in the config's warnings, once per reason."""
from __future__ import annotations

from core.config.unbuilt import set_paths, unbuilt_settings
from core.config.loader import load_config_data
from core.config.schema import VoiceCallConfig

PREFIX = "plugins.entries.voice-call.config."


def unbuilt(data):
    loaded = load_config_data(data, environ={})
    assert loaded.errors == []
    return [w for w in loaded.warnings if "no effect yet" in w]


def test_defaults_warn_about_nothing():
    assert unbuilt({}) == []
    assert unbuilt_settings(VoiceCallConfig()) == []


def test_keys_set_to_their_default_value_are_not_named():
    assert unbuilt({
        "realtime": {"enabled": False, "toolPolicy": "safe-read-only", "fastContext": {"enabled": False}},
        "silenceTimeoutMs": 800,
        "tunnel": {"provider": "none"},
        "tailscale": {"mode": "off", "port": 443},
    }) == []


def test_keys_that_work_are_not_named():
    assert unbuilt({
        "provider": "twilio", "fromNumber": "+15550001234", "twilio": {"accountSid": "AC1", "authToken": "tok"},
        "streaming": {"enabled": True, "provider": "local", "providers": {"local": {"silenceDurationMs": 600}}},
        "tts": {"provider": "local", "timeoutMs": 5000},
        "agents": {"main": {"name": "Ada", "identity": {"name": "Ada"}, "responder": {"type": "scripted", "replies": ["Hi"]}}},
        "maxDurationSeconds": 60,
        "webhookSecurity": {"trustForwardingHeaders": True},
    }) == []


def test_realtime_keys_that_work_are_not_named():
    assert unbuilt({"inboundPolicy": "open", "realtime": {
        "enabled": True, "provider": "openai", "instructions": "Be brief.", "toolPolicy": "none",
        "consultPolicy": "always", "streamPath": "/rt", "providers": {"openai": {"voice": "alloy"}},
        "fastContext": {"enabled": True, "timeoutMs": 300}, "agentContext": {"enabled": True, "maxChars": 900},
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    }}) == []


def test_consult_thinking_level_and_fast_mode_are_named():
    (line,) = unbuilt({"realtime": {"consultThinkingLevel": "low", "consultFastMode": True}})
    assert line == ("realtime.consultThinkingLevel, realtime.consultFastMode are accepted but have no effect yet: "
                    "agent consults run the agent's responder, which has no thinking level or fast mode")


def test_identity_fields_count_when_the_realtime_agent_context_includes_them():
    agents = {"main": {"identity": {"name": "Ada", "emoji": "🙂", "vibe": "calm"}}}
    assert unbuilt({"inboundPolicy": "open", "agents": agents,
                    "realtime": {"enabled": True, "agentContext": {"enabled": True}}}) == []
    (line,) = unbuilt({"inboundPolicy": "open", "agents": agents,
                       "realtime": {"enabled": True, "agentContext": {"enabled": True, "includeIdentity": False}}})
    assert line.startswith("agents.main.identity.emoji, agents.main.identity.vibe are accepted but have no effect yet")


def test_each_reason_gets_its_own_line_in_rule_order():
    lines = unbuilt({
        "store": "~/calls",
        "silenceTimeoutMs": 500,
        "tunnel": {"provider": "ngrok", "ngrokDomain": "x.ngrok.app"},
        "tailscale": {"mode": "funnel"},
        "publicUrl": "https://voice.example.com/voice/webhook",
    })
    # tunnel and tailscale are built (calls/exposure.py): not named.
    assert [line.split(" ", 1)[0] for line in lines] == ["silenceTimeoutMs", "store"]
    assert lines[1] == ("store is accepted but has no effect yet: calls are kept in the database "
                        "(DATABASE_URL), not in a store directory")


def test_paths_inside_routes_and_agents_name_the_number_and_the_agent():
    lines = unbuilt({
        "tts": {"provider": "local", "auto": "always"},
        "numbers": {"+15550001111": {"tts": {"modelOverrides": {"allowVoice": True}}}},
        "agents": {"main": {"identity": {"name": "Ada", "emoji": "🙂"}}},
    })
    assert lines == [
        "numbers.+15550001111.tts.modelOverrides.allowVoice, tts.auto are accepted but have no effect yet: "
        "phone calls speak through tts.provider and tts.providers only",
        "agents.main.identity.emoji is accepted but has no effect yet: "
        "only identity.name (the agent's name in its prompt) is used",
    ]


def test_the_wrapper_prefix_is_kept_as_in_errors():
    data = {"plugins": {"entries": {"voice-call": {"config": {"silenceTimeoutMs": 500}}}}}
    (line,) = unbuilt(data)
    assert line.startswith(PREFIX + "silenceTimeoutMs is accepted")


def test_set_paths_lists_only_non_default_leaves():
    config = VoiceCallConfig.model_validate({"serve": {"port": 4000}, "realtime": {"tools": [
        {"type": "function", "name": "lookup", "parameters": {"type": "object"}}]}})
    assert sorted(set_paths(config)) == ["realtime.tools", "serve.port"]


def test_the_gateway_logs_them_at_startup(caplog):
    from calls.gateway import report_config

    loaded = load_config_data({"store": "~/calls"}, environ={})
    with caplog.at_level("WARNING"):
        report_config(loaded)
    assert any(r.getMessage().startswith("store is accepted but has no effect yet") for r in caplog.records)


def test_tunnel_and_tailscale_settings_are_built_and_never_named():
    assert unbuilt({"tunnel": {"provider": "ngrok", "ngrokAuthToken": "2fAkE0123456789abcdef", "ngrokDomain": "x.ngrok.app"}}) == []
    assert unbuilt({"tunnel": {"provider": "tailscale-serve"}, "tailscale": {"mode": "funnel", "port": 8443, "path": "/hook"}}) == []


def test_a_tts_language_is_named():
    (line,) = unbuilt({"tts": {"provider": "openai", "providers": {"openai": {"language": "de"}}}})
    assert line.startswith("tts.providers.openai.language is accepted but has no effect yet")

"""The call config schema: the reference plugin's keys (camelCase), strict, with its defaults."""
from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializationInfo,
    Strict,
)
from pydantic.alias_generators import to_camel

from core.phone import E164 as E164_PATTERN
from core.phone import E164_MESSAGE

from .secrets import Secret, parse_secret

def _e164(value: str) -> str:
    if not E164_PATTERN.fullmatch(value):
        raise ValueError(E164_MESSAGE)
    return value


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _between(low: float, high: float):
    def check(value: float) -> float:
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return AfterValidator(check)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host, e.g. https://voice.example.com")
    return value


def _secret(value: Any) -> Secret:
    return parse_secret(value)


E164 = Annotated[str, Strict(), AfterValidator(_e164)]
PositiveInt = Annotated[int, Strict(), AfterValidator(_positive)]
NonNegativeInt = Annotated[int, Strict(), AfterValidator(_non_negative)]
Port = Annotated[int, Strict(), _between(1, 65535)]
NonEmptyStr = Annotated[str, Strict(), AfterValidator(_non_empty)]
Unit = Annotated[float, Strict(), _between(0, 1)]
Flag = Annotated[bool, Strict()]
HttpUrl = Annotated[str, Strict(), AfterValidator(_http_url)]
def _dump_secret(secret: Secret, info: SerializationInfo) -> Any:
    # JSON output (admin, RPC, setup) shows only where it comes from; a Python dump (e.g. a
    # route's tts merged over the global one) keeps the Secret itself, never a dict of its fields.
    return secret.describe() if info.mode == "json" else secret


# A credential: plain string, "${ENV}" or {source, id}. Serialized only as its description.
Credential = Annotated[
    Secret,
    BeforeValidator(_secret),
    PlainSerializer(_dump_secret, when_used="always"),
]


class Section(BaseModel):
    """Base for config objects: camelCase keys, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        arbitrary_types_allowed=True,
        validate_default=False,
    )


class OpenSection(Section):
    """Provider blocks: known keys are checked, provider-specific extras pass through."""

    model_config = ConfigDict(extra="allow")


class TelnyxConfig(Section):
    api_key: Credential | None = None
    connection_id: NonEmptyStr | None = None
    public_key: Credential | None = None
    base_url: HttpUrl | None = None


class TwilioConfig(Section):
    account_sid: NonEmptyStr | None = None
    auth_token: Credential | None = None
    region: Literal["us1", "ie1", "au1"] = "us1"
    base_url: HttpUrl | None = None


class PlivoConfig(Section):
    auth_id: NonEmptyStr | None = None
    auth_token: Credential | None = None
    base_url: HttpUrl | None = None


class OutboundConfig(Section):
    default_mode: Literal["notify", "conversation"] = "notify"
    notify_hangup_delay_sec: NonNegativeInt = 3


class ServeConfig(Section):
    port: Port = 3334
    bind: NonEmptyStr = "127.0.0.1"
    path: NonEmptyStr = "/voice/webhook"


class TailscaleConfig(Section):
    mode: Literal["off", "serve", "funnel"] = "off"
    path: NonEmptyStr = "/voice/webhook"
    port: Port = 443


class TunnelConfig(Section):
    provider: Literal["none", "ngrok", "tailscale-serve", "tailscale-funnel"] = "none"
    ngrok_auth_token: Credential | None = None
    ngrok_domain: NonEmptyStr | None = None
    allow_ngrok_free_tier_loopback_bypass: Flag = False


class WebhookSecurityConfig(Section):
    allowed_hosts: list[NonEmptyStr] = Field(default_factory=list)
    trust_forwarding_headers: Flag = False
    trusted_proxy_ips: list[NonEmptyStr] = Field(default_factory=list, alias="trustedProxyIPs")


class StreamingProviderConfig(OpenSection):
    api_key: Credential | None = None
    model: NonEmptyStr | None = None
    language: NonEmptyStr | None = None
    base_url: HttpUrl | None = None
    endpoint: NonEmptyStr | None = None
    silence_duration_ms: PositiveInt | None = None
    vad_threshold: Unit | None = None
    encoding: NonEmptyStr | None = None
    sample_rate: PositiveInt | None = None
    endpointing_ms: PositiveInt | None = None
    interim_results: Flag | None = None


class StreamingConfig(Section):
    enabled: Flag = False
    provider: NonEmptyStr | None = None
    stream_path: NonEmptyStr = "/voice/stream"
    providers: dict[str, StreamingProviderConfig] = Field(default_factory=dict)
    pre_start_timeout_ms: PositiveInt = 5000
    max_pending_connections: PositiveInt = 32
    max_pending_connections_per_ip: PositiveInt = 4
    max_connections: PositiveInt = 128


class ToolParameters(Section):
    model_config = ConfigDict(alias_generator=None)

    type: Literal["object"]
    properties: dict[str, Any] = Field(default_factory=dict)
    required: list[str] | None = None


class RealtimeTool(Section):
    type: Literal["function"]
    name: NonEmptyStr
    description: str | None = None
    parameters: ToolParameters


class FastContextConfig(Section):
    enabled: Flag = False
    timeout_ms: PositiveInt = 800
    max_results: PositiveInt = 3
    sources: Annotated[
        list[Literal["memory", "sessions"]], Field(min_length=1)
    ] = Field(default_factory=lambda: ["memory", "sessions"])
    fallback_to_consult: Flag = False


class AgentContextConfig(Section):
    enabled: Flag = False
    max_chars: PositiveInt = 6000
    include_identity: Flag = True
    include_workspace_files: Flag = True
    files: list[NonEmptyStr] = Field(default_factory=lambda: ["SOUL.md", "IDENTITY.md", "USER.md"])


class RealtimeProviderConfig(OpenSection):
    api_key: Credential | None = None
    model: NonEmptyStr | None = None
    voice: NonEmptyStr | None = None
    base_url: HttpUrl | None = None
    silence_duration_ms: PositiveInt | None = None
    start_sensitivity: NonEmptyStr | None = None
    end_sensitivity: NonEmptyStr | None = None


ThinkingLevel = Literal[
    "off", "minimal", "low", "medium", "high", "xhigh", "adaptive", "max", "ultra"
]


class RealtimeConfig(Section):
    enabled: Flag = False
    provider: NonEmptyStr | None = None
    stream_path: NonEmptyStr | None = None
    instructions: str | None = None
    tool_policy: Literal["safe-read-only", "owner", "none"] = "safe-read-only"
    consult_policy: Literal["auto", "substantive", "always"] = "auto"
    consult_thinking_level: ThinkingLevel | None = None
    consult_fast_mode: Flag | None = None
    tools: list[RealtimeTool] = Field(default_factory=list)
    fast_context: FastContextConfig = Field(default_factory=FastContextConfig)
    agent_context: AgentContextConfig = Field(default_factory=AgentContextConfig)
    providers: dict[str, RealtimeProviderConfig] = Field(default_factory=dict)


class TtsProviderConfig(OpenSection):
    api_key: Credential | None = None
    model: NonEmptyStr | None = None
    model_id: NonEmptyStr | None = None
    voice: NonEmptyStr | None = None
    voice_id: NonEmptyStr | None = None
    speaker_voice: NonEmptyStr | None = None
    speaker_voice_id: NonEmptyStr | None = None
    base_url: HttpUrl | None = None
    language: NonEmptyStr | None = None


class TtsModelOverrides(Section):
    enabled: Flag | None = None
    allow_text: Flag | None = None
    allow_provider: Flag | None = None
    allow_voice: Flag | None = None
    allow_model_id: Flag | None = None
    allow_voice_settings: Flag | None = None
    allow_normalization: Flag | None = None
    allow_seed: Flag | None = None


TtsTimeout = Annotated[int, Strict(), _between(1000, 120000)]


class TtsConfig(Section):
    provider: Literal["openai", "elevenlabs", "microsoft", "local"] | None = None
    providers: dict[str, TtsProviderConfig] = Field(default_factory=dict)
    timeout_ms: TtsTimeout | None = None
    auto: Literal["off", "always", "inbound", "tagged"] | None = None
    enabled: Flag | None = None
    mode: Literal["final", "all"] | None = None
    summary_model: str | None = None
    model_overrides: TtsModelOverrides | None = None
    prefs_path: str | None = None
    max_text_length: PositiveInt | None = None


class NumberRoute(Section):
    """Overrides for calls dialed to one of our numbers (inbound only)."""

    inbound_greeting: str | None = None
    tts: TtsConfig | None = None
    agent_id: NonEmptyStr | None = None
    response_model: NonEmptyStr | None = None
    response_system_prompt: str | None = None
    response_timeout_ms: PositiveInt | None = None


class AgentIdentity(OpenSection):
    name: str | None = None
    emoji: str | None = None
    vibe: str | None = None
    theme: str | None = None
    creature: str | None = None


class ResponderConfig(Section):
    """agents.<id>.responder: how the agent's replies are made (SPEC §8)."""

    type: Literal["llm", "webhook", "scripted"] = "llm"
    # llm: the agent's own `provider/model`, used when neither the route nor responseModel names one.
    model: NonEmptyStr | None = None
    temperature: Annotated[float, _between(0, 2)] | None = None
    max_tokens: PositiveInt | None = None
    # webhook: the agent service's URL and the shared secret its requests are signed with.
    url: HttpUrl | None = None
    secret: Credential | None = None
    # scripted: said in order, then the last one repeats; "{transcript}" is the caller's words.
    replies: list[str] = Field(default_factory=list)
    # What the caller hears when no reply can be made (unset: a short apology; "": silence).
    fallback_text: str | None = None
    # How many earlier messages of the session go with each turn.
    history_messages: NonNegativeInt = 20


class AgentConfig(Section):
    name: str | None = None
    identity: AgentIdentity | None = None
    workspace: str | None = None
    responder: ResponderConfig | None = None


class ModelProviderConfig(Section):
    """models.providers.<id>: an OpenAI-compatible endpoint (base URL optional for well-known ids)."""

    base_url: HttpUrl | None = None
    api_key: Credential | None = None


class ModelsConfig(Section):
    providers: dict[str, ModelProviderConfig] = Field(default_factory=dict)


CarrierName = Literal["telnyx", "twilio", "plivo", "mock"]


class VoiceCallConfig(Section):
    """The whole `voice-call` config block (SPEC §3, behaviour.md §1)."""

    enabled: Flag = True
    provider: CarrierName | None = None
    telnyx: TelnyxConfig | None = None
    twilio: TwilioConfig | None = None
    plivo: PlivoConfig | None = None
    from_number: E164 | None = None
    to_number: E164 | None = None
    session_scope: Literal["per-phone", "per-call", "main"] = "per-phone"
    numbers: dict[E164, NumberRoute] = Field(default_factory=dict)
    inbound_policy: Literal["disabled", "allowlist", "pairing", "open"] = "disabled"
    allow_from: list[E164] = Field(default_factory=list)
    inbound_greeting: str | None = None
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    max_duration_seconds: PositiveInt = 300
    stale_call_reaper_seconds: NonNegativeInt = 120
    silence_timeout_ms: PositiveInt = 800
    transcript_timeout_ms: PositiveInt = 180000
    ring_timeout_ms: PositiveInt = 30000
    max_concurrent_calls: PositiveInt = 1
    serve: ServeConfig = Field(default_factory=ServeConfig)
    tailscale: TailscaleConfig = Field(default_factory=TailscaleConfig)
    tunnel: TunnelConfig = Field(default_factory=TunnelConfig)
    webhook_security: WebhookSecurityConfig = Field(default_factory=WebhookSecurityConfig)
    public_url: HttpUrl | None = None
    skip_signature_verification: Flag = False
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)
    tts: TtsConfig | None = None
    store: str | None = None
    # Unset: the only configured agent, or "main" when none is (resolved_agent_id()).
    agent_id: NonEmptyStr | None = None
    response_model: NonEmptyStr | None = None
    response_system_prompt: str | None = None
    response_timeout_ms: PositiveInt = 30000
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    models: ModelsConfig = Field(default_factory=ModelsConfig)

    def resolved_agent_id(self) -> str:
        """agentId, else the sole configured agent, else "main" (several agents need an explicit one)."""
        if self.agent_id:
            return self.agent_id
        if len(self.agents) == 1:
            return next(iter(self.agents))
        return "main"

    def realtime_stream_path(self) -> str:
        """realtime.streamPath, or the path derived from serve.path as the reference does."""
        if self.realtime.stream_path:
            return self.realtime.stream_path
        path = self.serve.path
        if path.endswith("/webhook"):
            return path[: -len("/webhook")] + "/stream/realtime"
        if path == "/":
            return "/voice/stream/realtime"
        return path.rstrip("/") + "/stream/realtime"

    def effective_from_number(self) -> str | None:
        """The caller id for outbound calls; the mock carrier has a stand-in number."""
        if self.from_number:
            return self.from_number
        return "+15550000000" if self.provider == "mock" else None

    def webhook_path(self) -> str:
        """serve.path normalized: leading slash, no trailing slash (match ignores both)."""
        return normalize_path(self.serve.path)


def normalize_path(path: str) -> str:
    path = "/" + path.strip().strip("/")
    return path

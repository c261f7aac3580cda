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
from core.phone import E164_MESSAGE, transfer_target

from .secrets import Secret, parse_secret

def _e164(value: str) -> str:
    if not E164_PATTERN.fullmatch(value):
        raise ValueError(E164_MESSAGE)
    return value


def _transfer_target(value: str) -> str:
    return transfer_target(value)


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive_number(value: float) -> float:
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a number above 0")
    return value


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _at_most(value: float, high: float) -> float:
    if value > high:
        raise ValueError(f"must be at most {high:g}")
    return value


def _between(low: float, high: float):
    def check(value: float) -> float:
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return AfterValidator(check)


def _sensitivity(value: str) -> str:
    if value.strip().lower() not in ("high", "low"):
        raise ValueError("must be high or low")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host, e.g. https://voice.example.com")
    return value


def _secret(value: Any) -> Secret:
    return parse_secret(value)


E164 = Annotated[str, Strict(), AfterValidator(_e164)]
PositiveInt = Annotated[int, Strict(), AfterValidator(_positive)]
PositiveNumber = Annotated[float, Strict(), AfterValidator(_positive_number)]
NonNegativeInt = Annotated[int, Strict(), AfterValidator(_non_negative)]
Port = Annotated[int, Strict(), _between(1, 65535)]
NonEmptyStr = Annotated[str, Strict(), AfterValidator(_non_empty)]
Unit = Annotated[float, Strict(), _between(0, 1)]
Flag = Annotated[bool, Strict()]
# An E.164 number or a SIP URI (sip:user@host), where a call may be handed off to.
TransferTarget = Annotated[str, Strict(), AfterValidator(_transfer_target)]
Temperature = Annotated[float, Strict(), _between(0, 2)]
Sensitivity = Annotated[str, Strict(), AfterValidator(_sensitivity)]
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
        # The docstring under each field is its description in docs/configuration.md; the page's
        # generator reads them from this file (pydantic's use_attribute_docstrings would search
        # the source for every class at each import of this module).
        # Validators are built when a model first validates, not at import: the CLI and the admin
        # import this module without always reading a config, and one build of the whole config
        # (nested models inline) costs less than one per class.
        defer_build=True,
    )


class OpenSection(Section):
    """Provider blocks: known keys are checked, provider-specific extras pass through."""

    model_config = ConfigDict(extra="allow")


class TelnyxConfig(Section):
    api_key: Credential | None = None
    """Telnyx API v2 key for Call Control requests. Env fallback: TELNYX_API_KEY."""
    connection_id: NonEmptyStr | None = None
    """Call Control application (connection) id that outbound calls are placed on, digits (another shape is a
    setup warning). Env fallback: TELNYX_CONNECTION_ID."""
    public_key: Credential | None = None
    """The account's Ed25519 public key (base64, base64url, PEM or DER) that webhook signatures are checked
    against; required unless skipSignatureVerification. Env fallback: TELNYX_PUBLIC_KEY."""
    base_url: HttpUrl | None = None
    """REST base URL (default https://api.telnyx.com/v2); tests point it at a local fake."""
    calls_per_second: PositiveNumber = 1.0
    """Outbound dials per second on this connection, shared by every gateway process and worker (through Redis
    in the distributed mode). Telnyx publishes no account-wide rate for Call Control dials; 1 is a cautious
    start, raise it to what your account allows."""


class TwilioConfig(Section):
    account_sid: NonEmptyStr | None = None
    """Account SID: AC and 32 hex digits (another shape is a setup warning). Env fallback: TWILIO_ACCOUNT_SID."""
    auth_token: Credential | None = None
    """Auth token: authenticates REST requests and signs webhooks (HMAC-SHA1). Env fallback:
    TWILIO_AUTH_TOKEN."""
    region: Literal["us1", "ie1", "au1"] = "us1"
    """Twilio region whose REST host is used: us1 (api.twilio.com), ie1 or au1."""
    base_url: HttpUrl | None = None
    """REST host, e.g. https://api.twilio.com (overrides region); tests point it at a local fake."""
    calls_per_second: PositiveNumber = 1.0
    """Outbound dials per second on this account, shared by every gateway process and worker (through Redis in
    the distributed mode). 1 is Twilio's default CPS for an account; set what your account's Voice settings say."""


class PlivoConfig(Section):
    auth_id: NonEmptyStr | None = None
    """Auth ID: MA or SA and 18 uppercase letters or digits (another shape is a setup warning). Env fallback:
    PLIVO_AUTH_ID."""
    auth_token: Credential | None = None
    """Auth token: authenticates REST requests and signs webhooks (V3, V2). Env fallback: PLIVO_AUTH_TOKEN."""
    base_url: HttpUrl | None = None
    """REST base URL (default https://api.plivo.com/v1); tests point it at a local fake."""
    calls_per_second: PositiveNumber = 2.0
    """Outbound dials per second on this account, shared by every gateway process and worker (through Redis in
    the distributed mode). 2 is Plivo's default outbound CPS."""


class MockConfig(Section):
    calls_per_second: PositiveNumber | None = None
    """Dials per second of the mock carrier (tests and rehearsals of a dial list); unset: no limit."""


class OutboundConfig(Section):
    default_mode: Literal["notify", "conversation"] = "notify"
    """Mode of an outbound call whose request names none (or an unknown one): notify says the message and
    hangs up; conversation says it and keeps the call open."""
    notify_hangup_delay_sec: NonNegativeInt = 3
    """Seconds between the end of a notify call's message and the hang-up."""


class ServeConfig(Section):
    port: Port = 3334
    """Port the gateway listens on (`manage.py gateway`, `make serve`); also the default port of
    VOICECALL_GATEWAY_URL."""
    bind: NonEmptyStr = "127.0.0.1"
    """Address the gateway listens on. The CLI reaches a gateway bound to 0.0.0.0 or :: at 127.0.0.1."""
    path: NonEmptyStr = "/voice/webhook"
    """Path of the carrier webhook; a trailing or missing leading slash is ignored. publicUrl without a
    path uses it."""
    max_in_flight_per_ip: Annotated[int, Strict(), _between(1, 100_000)] = 256
    """Webhook requests one client address may have in progress at once; more are answered 429 Too Many
    Requests. Carriers send from a few addresses, so a burst of calls arrives from one: keep it well
    above the calls you expect to start at once."""
    max_connections_per_ip: Annotated[int, Strict(), _between(1, 100_000)] = 512
    """Open HTTP connections one client address may hold (idle, sending or waiting for an answer); more are
    closed as soon as they are accepted. Media and realtime WebSockets do not count (they have their own
    caps). Behind a proxy every connection comes from the proxy's address: raise it there."""


class TailscaleConfig(Section):
    mode: Literal["off", "serve", "funnel"] = "off"
    """Tailscale exposure as in the OpenClaw plugin (off, serve, funnel): the gateway runs `tailscale serve`
    (your tailnet only) or `tailscale funnel` (the internet) through the tailscale CLI (1.52 or later) when
    it starts, and removes the handlers when it stops. Ignored when publicUrl or tunnel.provider is set."""
    path: NonEmptyStr = "/voice/webhook"
    """Public path tailscale serves the webhook at (proxied to serve.path); media and realtime stream
    paths are served at their own paths."""
    port: Port = 443
    """HTTPS port tailscale serves on (left out of the public URL when 443); with mode funnel it must be
    443, 8443 or 10000."""


class TunnelConfig(Section):
    provider: Literal["none", "ngrok", "tailscale-serve", "tailscale-funnel"] = "none"
    """Tunnel as in the OpenClaw plugin (none, ngrok, tailscale-serve, tailscale-funnel), started by the
    gateway to serve.port and closed when it stops; carriers are given its URL while it is up. Ignored
    when publicUrl is set. ngrok uses the ngrok Python SDK (no agent binary); tailscale-* as tailscale.mode."""
    ngrok_auth_token: Credential | None = None
    """ngrok auth token (required for ngrok). Env fallback: NGROK_AUTHTOKEN."""
    ngrok_domain: NonEmptyStr | None = None
    """ngrok domain to use (a reserved or custom one); unset: ngrok assigns one. Env fallback:
    NGROK_DOMAIN."""
    allow_ngrok_free_tier_loopback_bypass: Flag = False
    """With tunnel.provider ngrok and a loopback serve.bind, trust forwarded headers from a loopback peer
    when rebuilding the signed URL. Never skips the signature check."""


class WebhookSecurityConfig(Section):
    allowed_hosts: list[NonEmptyStr] = Field(default_factory=list)
    """Hosts a forwarded Host header may name; setting it (or trustForwardingHeaders) lets forwarded
    headers from trustedProxyIPs count."""
    trust_forwarding_headers: Flag = False
    """Let forwarded headers (X-Forwarded-Proto, X-Forwarded-Host, …) from trustedProxyIPs count without an
    allowedHosts list."""
    trusted_proxy_ips: list[NonEmptyStr] = Field(default_factory=list, alias="trustedProxyIPs")
    """Proxy addresses or CIDR ranges whose forwarded headers count when rebuilding the URL the carrier
    signed."""


class StreamingProviderConfig(OpenSection):
    api_key: Credential | None = None
    """The provider's API key; unset: its usual environment variable (OPENAI_API_KEY, DEEPGRAM_API_KEY,
    ELEVENLABS_API_KEY, MISTRAL_API_KEY, XAI_API_KEY). local needs none."""
    model: NonEmptyStr | None = None
    """Recognition model (openai gpt-4o-transcribe, deepgram nova-3, elevenlabs scribe_v2_realtime, mistral
    voxtral-mini-transcribe-realtime-2602 by default)."""
    language: NonEmptyStr | None = None
    """Language hint passed to the recognizer."""
    base_url: HttpUrl | None = None
    """The provider's origin (http(s) is turned into ws(s); a trailing /v1, as HTTP clients take it, is accepted); tests point it at a local fake."""
    endpoint: NonEmptyStr | None = None
    """xai: the full WebSocket URL (default wss://api.x.ai/v1/stt)."""
    silence_duration_ms: PositiveInt | None = None
    """Silence that ends an utterance (default 800); deepgram uses it when endpointingMs is unset."""
    vad_threshold: Unit | None = None
    """openai: server VAD threshold, 0 to 1 (default 0.5)."""
    encoding: NonEmptyStr | None = None
    """xai: audio encoding sent (default mulaw)."""
    sample_rate: PositiveInt | None = None
    """xai: sample rate; must be 8000, the phone line's rate."""
    endpointing_ms: PositiveInt | None = None
    """deepgram, xai: end-of-utterance silence in ms (default 800)."""
    interim_results: Flag | None = None
    """xai: ask for partial transcripts (default true)."""


class StreamingConfig(Section):
    enabled: Flag = False
    """Give inbound calls and conversation-mode outbound calls a bidirectional media stream: the caller is
    transcribed live and replies are played as paced 20 ms μ-law frames."""
    provider: NonEmptyStr | None = None
    """Transcription provider id (openai, deepgram, elevenlabs, mistral, xai, local). Unset: the first
    cloud provider with a key, else local."""
    stream_path: NonEmptyStr = "/voice/stream"
    """Path of the media WebSocket the carrier connects to."""
    providers: dict[str, StreamingProviderConfig] = Field(default_factory=dict)
    """Settings per transcription provider id; keys beyond those listed pass through to the provider (e.g.
    local: maxDecoders, energyThreshold)."""
    pre_start_timeout_ms: PositiveInt = 5000
    """A socket that sends no start frame within this time is closed."""
    max_pending_connections: PositiveInt = 32
    """Sockets allowed to wait for their start frame at once, in one process."""
    max_pending_connections_per_ip: PositiveInt = 4
    """Sockets allowed to wait for their start frame at once from one address."""
    max_connections: PositiveInt = 128
    """Media sockets open at once in one process; more are refused at the handshake (HTTP 403)."""


class ToolParameters(Section):
    model_config = ConfigDict(alias_generator=None)

    type: Literal["object"]
    """Always "object"."""
    properties: dict[str, Any] = Field(default_factory=dict)
    """JSON Schema of each argument."""
    required: list[str] | None = None
    """Names of the required arguments."""


class RealtimeTool(Section):
    type: Literal["function"]
    """Always "function"."""
    name: NonEmptyStr
    """Tool name the model calls."""
    description: str | None = None
    """What the tool does, for the model."""
    parameters: ToolParameters
    """The tool's arguments as a JSON Schema object."""


class FastContextConfig(Section):
    enabled: Flag = False
    """Answer a consult from stored transcripts and session memory first (words of the question matched)."""
    timeout_ms: PositiveInt = 800
    """Time budget of a fast-context search; a search that takes longer finds nothing."""
    max_results: PositiveInt = 3
    """Snippets a fast-context search returns at most."""
    sources: Annotated[
        list[Literal["memory", "sessions"]], Field(min_length=1)
    ] = Field(default_factory=lambda: ["memory", "sessions"])
    """Where fast context searches: memory (the session's conversation memory), sessions (the transcripts
    of the caller's earlier calls)."""
    fallback_to_consult: Flag = False
    """Consult the agent when fast context finds nothing (else the model is told nothing was found)."""


class AgentContextConfig(Section):
    enabled: Flag = False
    """Put the agent's identity and workspace files into the realtime instructions, once per session."""
    max_chars: PositiveInt = 6000
    """Cap on the agent context's length; longer is cut and marked [truncated]."""
    include_identity: Flag = True
    """Include the agent's identity fields (name, emoji, vibe, theme, creature)."""
    include_workspace_files: Flag = True
    """Include the files below from the agent's workspace folder."""
    files: list[NonEmptyStr] = Field(default_factory=lambda: ["SOUL.md", "IDENTITY.md", "USER.md"])
    """Workspace-relative files to include; missing files are skipped, paths leaving the workspace refused."""


class RealtimeProviderConfig(OpenSection):
    api_key: Credential | None = None
    """The realtime provider's API key; unset: OPENAI_API_KEY (openai) or GEMINI_API_KEY / GOOGLE_API_KEY
    (google)."""
    model: NonEmptyStr | None = None
    """Realtime model; unset: gpt-realtime (openai), gemini-3.1-flash-live-preview (google)."""
    voice: NonEmptyStr | None = None
    """Realtime voice; unset: marin (openai), Kore (google)."""
    language: NonEmptyStr | None = None
    """The call's language, e.g. en-US: openai's input transcription gets its first part (en), google's
    speechConfig.languageCode gets it as written. Unset: not sent."""
    base_url: HttpUrl | None = None
    """The provider's origin (http(s) is turned into ws(s); a trailing /v1 is accepted); unset: wss://api.openai.com (openai),
    wss://generativelanguage.googleapis.com (google). Tests point it at a local fake."""
    silence_duration_ms: PositiveInt | None = None
    """Silence that ends the caller's turn (the provider's voice detection); unset: 500 (openai), the
    service's default (google)."""
    prefix_padding_ms: NonNegativeInt | None = None
    """Audio kept from before the caller's speech was detected; unset: 300 (openai), the service's default
    (google)."""
    vad_threshold: Unit | None = None
    """openai: server VAD threshold, 0 to 1 (default 0.5)."""
    idle_timeout_ms: PositiveInt | None = None
    """openai: server VAD idle_timeout_ms (the model prompts a silent caller after this long); unset: not
    sent. Hanging up on silence is realtime.idleHangupMs."""
    transcription_model: NonEmptyStr | None = None
    """openai: the model transcribing the caller (default gpt-4o-mini-transcribe)."""
    noise_reduction: Literal["near_field", "far_field"] | None = None
    """openai: input noise reduction for a handset (near_field) or a speakerphone (far_field); unset: not
    sent."""
    temperature: Temperature | None = None
    """google: the model's sampling temperature, 0 to 2; unset: not sent."""
    start_sensitivity: Sensitivity | None = None
    """google: how readily speech start is detected, high or low; unset: the service's default."""
    end_sensitivity: Sensitivity | None = None
    """google: how readily speech end is detected, high or low; unset: the service's default."""
    session_resumption: Flag | None = None
    """google: ask for session resumption handles and resume a dropped or goAway'd connection with the newest
    (default true)."""
    context_window_compression: Flag | None = None
    """google: sliding-window context compression, so long calls do not hit the session's context limit
    (default true)."""


ThinkingLevel = Literal[
    "off", "minimal", "low", "medium", "high", "xhigh", "adaptive", "max", "ultra"
]


class RealtimeConfig(Section):
    enabled: Flag = False
    """Bridge call audio full-duplex to a realtime voice model, which greets, answers and may consult the
    agent. Needs inboundPolicy other than disabled, streaming off, carrier twilio, telnyx, plivo or mock, and a
    ready realtime provider (setup names the missing key)."""
    provider: NonEmptyStr | None = None
    """Realtime provider id (openai, google); unset: the first one with a key. An unregistered id is a setup
    problem: realtime media is skipped."""
    stream_path: NonEmptyStr | None = None
    """Path of the realtime WebSocket; unset: derived from serve.path (/voice/webhook gives
    /voice/stream/realtime)."""
    instructions: str | None = None
    """System instructions of the realtime model; unset: a built-in short prompt (brief replies, consult
    for deeper questions, final words before hanging up)."""
    tool_policy: Literal["safe-read-only", "owner", "none"] = "safe-read-only"
    """safe-read-only or owner: the model gets the openclaw_agent_consult tool; none: no consult tool (the
    end-call tool and realtime.tools remain)."""
    consult_policy: Literal["auto", "substantive", "always"] = "auto"
    """When the realtime model consults the agent: auto (its own judgement), substantive (for the seven
    consult reasons), always (before every substantive answer; the host consults when the model did not)."""
    consult_thinking_level: ThinkingLevel | None = None
    """Thinking level of agent consults. Accepted, no effect yet: consults run the agent's responder."""
    consult_fast_mode: Flag | None = None
    """Fast mode for agent consults. Accepted, no effect yet: consults run the agent's responder."""
    tools: list[RealtimeTool] = Field(default_factory=list)
    """Extra function tools offered to the realtime model, run by the agent's webhook service (built-in
    names cannot be replaced; duplicates are dropped)."""
    fast_context: FastContextConfig = Field(default_factory=FastContextConfig)
    """Fast answers to consults from stored transcripts and memory."""
    agent_context: AgentContextConfig = Field(default_factory=AgentContextConfig)
    """Agent identity and workspace files in the instructions."""
    providers: dict[str, RealtimeProviderConfig] = Field(default_factory=dict)
    """Settings per realtime provider id (apiKey, model, voice, baseUrl, ...)."""
    idle_hangup_ms: PositiveInt | None = None
    """End a realtime call after this many milliseconds in which neither the caller nor the model spoke
    (paused while the agent is consulted); unset: never."""


class TtsProviderConfig(OpenSection):
    api_key: Credential | None = None
    """The provider's API key; unset: OPENAI_API_KEY or ELEVENLABS_API_KEY. local and microsoft need none."""
    model: NonEmptyStr | None = None
    """Synthesis model (openai, elevenlabs) or, for local, a Piper voice model file."""
    model_id: NonEmptyStr | None = None
    """elevenlabs: model id (used when model is unset)."""
    voice: NonEmptyStr | None = None
    """Voice name or id; with speakerVoice, speakerVoiceId and voiceId, the first one set is also the voice
    the carrier's own speech uses."""
    voice_id: NonEmptyStr | None = None
    """Voice id (elevenlabs)."""
    speaker_voice: NonEmptyStr | None = None
    """Preferred voice for the call, checked first."""
    speaker_voice_id: NonEmptyStr | None = None
    """Preferred voice id for the call, checked second."""
    base_url: HttpUrl | None = None
    """The provider's HTTP origin; tests point it at a local fake."""
    language: NonEmptyStr | None = None
    """Language of the voice. Accepted, no effect yet (elevenlabs takes languageCode)."""


class TtsModelOverrides(Section):
    enabled: Flag | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    allow_text: Flag | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    allow_provider: Flag | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    allow_voice: Flag | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    allow_model_id: Flag | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    allow_voice_settings: Flag | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    allow_normalization: Flag | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    allow_seed: Flag | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""


TtsTimeout = Annotated[int, Strict(), _between(1000, 120000)]
# A call's length: a day at most, so the deadline arithmetic on event times stays in range.
CallSeconds = Annotated[PositiveInt, AfterValidator(lambda value: _at_most(value, 86400))]


class TtsConfig(Section):
    provider: Literal["openai", "elevenlabs", "microsoft", "local"] | None = None
    """TTS provider tried first on media streams (openai, elevenlabs, microsoft, local); the others with a
    block follow, then any usable one, the offline local voice last. microsoft has no phone audio and is
    skipped."""
    providers: dict[str, TtsProviderConfig] = Field(default_factory=dict)
    """Settings per TTS provider id; keys beyond those listed pass through to the provider (e.g. elevenlabs
    voiceSettings, local lengthScale)."""
    timeout_ms: TtsTimeout | None = None
    """Time allowed for one synthesis before the next provider is tried (and, once audio flows, for each gap in it); a speak waits for its first audio as long as every provider in the chain may take; unset: 8000."""
    auto: Literal["off", "always", "inbound", "tagged"] | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    enabled: Flag | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    mode: Literal["final", "all"] | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    summary_model: str | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    model_overrides: TtsModelOverrides | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    prefs_path: str | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""
    max_text_length: PositiveInt | None = None
    """Core TTS setting of the host app. Accepted, no effect yet."""


class RecordingConfig(Section):
    """recording: keeping calls' audio (carrier-side, and a local WAV of streamed calls)."""

    carrier: Flag = False
    """Ask the carrier to record every call from its answer (Twilio, Telnyx, Plivo); the recording's URL and
    duration arrive on a signed callback and are stored with the call."""
    fetch: Flag = False
    """Download each carrier recording once it is ready and keep the file under directory (else only its URL
    is kept, and the file stays at the carrier)."""
    local: Flag = False
    """Write a two-channel WAV (left: the caller, right: the gateway) of every streamed call, without the
    carrier."""
    consent_message: str | None = None
    """Said first on every recorded call, before the greeting or the message (e.g. "This call is recorded.").
    Unset: nothing is announced."""
    directory: NonEmptyStr | None = None
    """Where recording files are kept (~ expanded); unset: recordings/ in the data directory
    (VOICECALL_DATA_DIR)."""
    retention_days: NonNegativeInt = 0
    """Days a recording file is kept; the sweep deletes older files (the record stays, marked deleted). 0: kept
    forever."""


class RouteRecording(Section):
    """numbers.<number>.recording: this number's recording choices over the global recording."""

    carrier: Flag | None = None
    """Carrier recording for calls to this number; unset: recording.carrier."""
    local: Flag | None = None
    """Local WAV recording for calls to this number; unset: recording.local."""


class NumberRoute(Section):
    """Overrides for calls dialed to one of our numbers (inbound only)."""

    inbound_greeting: str | None = None
    """Greeting for calls to this number (else the global inboundGreeting)."""
    tts: TtsConfig | None = None
    """TTS settings for calls to this number, deep-merged over the global tts."""
    agent_id: NonEmptyStr | None = None
    """Agent that answers calls to this number; must be a configured agent."""
    response_model: NonEmptyStr | None = None
    """provider/model for replies on this number."""
    response_system_prompt: str | None = None
    """System prompt for replies on this number."""
    response_timeout_ms: PositiveInt | None = None
    """Reply timeout on this number."""
    transfer_to: TransferTarget | None = None
    """Where calls to this number may be handed off (an E.164 number or a SIP URI): offered to the realtime
    model as a transfer tool, and the default target of a transfer that names none. Unset: the agent's."""
    recording: RouteRecording | None = None
    """Recording choices for calls to this number, over the global recording."""


class AgentIdentity(OpenSection):
    name: str | None = None
    """The agent's name, used in its prompt when agents.<id>.name is unset."""
    emoji: str | None = None
    """Used only in the realtime agent context (realtime.agentContext)."""
    vibe: str | None = None
    """Used only in the realtime agent context (realtime.agentContext)."""
    theme: str | None = None
    """Used only in the realtime agent context (realtime.agentContext)."""
    creature: str | None = None
    """Used only in the realtime agent context (realtime.agentContext)."""


class ResponderConfig(Section):
    """agents.<id>.responder: how the agent's replies are made."""

    type: Literal["llm", "webhook", "scripted"] = "llm"
    """How replies are made: llm (an OpenAI-compatible Chat Completions endpoint), webhook (POST each turn
    to your agent service) or scripted (fixed replies, offline)."""
    model: NonEmptyStr | None = None
    """llm: the agent's own provider/model, used when neither the route nor responseModel names one."""
    temperature: Annotated[float, _between(0, 2)] | None = None
    """llm: sampling temperature, 0 to 2."""
    max_tokens: PositiveInt | None = None
    """llm: max_tokens of each completion."""
    url: HttpUrl | None = None
    """webhook: the agent service's URL."""
    secret: Credential | None = None
    """webhook: shared secret each request is signed with (X-Voicecall-Signature, HMAC-SHA256)."""
    replies: list[str] = Field(default_factory=list)
    """scripted: said in order, then the last one repeats; "{transcript}" is the caller's words."""
    fallback_text: str | None = None
    """What the caller hears when no reply can be made; unset: a short apology; "": silence."""
    history_messages: NonNegativeInt = 20
    """How many earlier messages of the session go with each turn."""


class AgentConfig(Section):
    name: str | None = None
    """Display name, used in the agent's prompt."""
    identity: AgentIdentity | None = None
    """Identity fields as in the host app; name is used in prompts, the rest only in the realtime agent context."""
    workspace: str | None = None
    """Folder whose IDENTITY.md, SOUL.md and USER.md go into the agent's prompt (~ expanded)."""
    responder: ResponderConfig | None = None
    """How this agent's replies are made. Unset: an llm responder when responseModel (or the route's) is set,
    else calls only listen and whoever drives them with continue does the talking."""
    transfer_to: TransferTarget | None = None
    """Where this agent's calls may be handed off (an E.164 number or a SIP URI), unless the number route
    names one: offered to the realtime model as a transfer tool, and the default target of a transfer."""


class ModelProviderConfig(Section):
    """models.providers.<id>: an OpenAI-compatible endpoint (base URL optional for well-known ids)."""

    base_url: HttpUrl | None = None
    """The endpoint's base URL (…/v1); optional for openai, xai, mistral, google and ollama."""
    api_key: Credential | None = None
    """The endpoint's API key."""


class ModelsConfig(Section):
    providers: dict[str, ModelProviderConfig] = Field(default_factory=dict)
    """OpenAI-compatible model endpoints by provider id, the part before the slash in responseModel."""


CarrierName = Literal["telnyx", "twilio", "plivo", "mock"]


class VoiceCallConfig(Section):
    """The whole `voice-call` config block (reference: docs/configuration.md)."""

    enabled: Flag = True
    """Voice calls on or off. The plugins wrapper's enabled: false also turns them off."""
    provider: CarrierName | None = None
    """The carrier: twilio, telnyx, plivo or mock (no network). Unset while enabled: mock. Legacy "log"
    means mock."""
    telnyx: TelnyxConfig | None = None
    """Telnyx Call Control v2 credentials."""
    twilio: TwilioConfig | None = None
    """Twilio Programmable Voice credentials."""
    plivo: PlivoConfig | None = None
    """Plivo Voice API credentials."""
    mock: MockConfig | None = None
    """The mock carrier's settings."""
    from_number: E164 | None = None
    """Caller id of outbound calls; required unless provider is mock (which uses +15550000000). Twilio env
    fallback: TWILIO_FROM_NUMBER."""
    to_number: E164 | None = None
    """Default number to call when a command, RPC call or tool call names none."""
    session_scope: Literal["per-phone", "per-call", "main"] = "per-phone"
    """Which conversation memory a call joins: per-phone (agent:<id>:voice:<digits>), per-call, or main
    (the agent's main session)."""
    numbers: dict[E164, NumberRoute] = Field(default_factory=dict)
    """Per dialed number (inbound calls only): greeting, tts, agent and reply settings. Admin routes for
    the same number win."""
    inbound_policy: Literal["disabled", "allowlist", "pairing", "open"] = "disabled"
    """Who may call in: disabled (reject all), allowlist, pairing (unknown callers must give an admin-made
    one-time code), open."""
    allow_from: list[E164] = Field(default_factory=list)
    """Numbers allowed to call in (with the admin's allowlist), compared digits-only."""
    inbound_greeting: str | None = None
    """What inbound calls hear first; unset: "Hello! How can I help you today?"."""
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    """Outbound call defaults."""
    max_duration_seconds: CallSeconds = 300
    """Hard cap on a call's length from its answer; the call is then ended with reason timeout."""
    stale_call_reaper_seconds: NonNegativeInt = 120
    """End calls that were never answered this many seconds after they started; 0 disables."""
    silence_timeout_ms: PositiveInt = 800
    """Declared by the OpenClaw plugin but read nowhere there either. Accepted, no effect yet: end of speech
    is set per transcription provider (streaming.providers.<id>.silenceDurationMs)."""
    transcript_timeout_ms: PositiveInt = 180000
    """How long a continue turn waits for the caller's answer ("Timed out waiting for transcript after
    <ms>ms")."""
    ring_timeout_ms: PositiveInt = 30000
    """Plivo: ring time before giving up (hangup_on_ring, in whole seconds). Also sets the CLI's wait when
    it places a call through the gateway. Twilio and Telnyx dial with a fixed 30 s."""
    amd: Literal["off", "detect", "voicemail"] = "off"
    """Answering-machine detection on outbound calls (a call's request may choose its own): off; detect (a
    machine is hung up on, and a conversation is never started against one); voicemail (wait for the beep,
    leave the call's message, hang up)."""
    amd_timeout_ms: Annotated[int, Strict(), _between(2000, 60000)] = 30000
    """How long the carrier may listen before giving its verdict (Twilio MachineDetectionTimeout, Telnyx
    answering_machine_detection_config.total_analysis_time_millis, Plivo machine_detection_time, at most
    10 s). The gateway holds a call's start at most this long (+5 s) after the answer, then goes on as
    with a person."""
    recording: RecordingConfig = Field(default_factory=RecordingConfig)
    """Carrier and local recording of calls, consent announcement and retention."""
    max_concurrent_calls: PositiveInt = 1
    """Outbound admission limit (live calls); Twilio also puts inbound streamed calls on hold when other
    calls' streams fill it."""
    serve: ServeConfig = Field(default_factory=ServeConfig)
    """Where the gateway listens and the webhook path."""
    tailscale: TailscaleConfig = Field(default_factory=TailscaleConfig)
    """Tailscale serve or funnel, run by the gateway (docs/telephony.md, Public exposure)."""
    tunnel: TunnelConfig = Field(default_factory=TunnelConfig)
    """The tunnel the gateway starts (ngrok, or Tailscale) when no publicUrl is set."""
    webhook_security: WebhookSecurityConfig = Field(default_factory=WebhookSecurityConfig)
    """Which forwarded headers count when rebuilding the URL the carrier signed."""
    public_url: HttpUrl | None = None
    """The public URL carriers call and sign (its path, or serve.path when it has none). Behind a proxy,
    set it. Set, it wins over tunnel and tailscale (no tunnel is started)."""
    skip_signature_verification: Flag = False
    """Accept webhooks without checking signatures; local testing only. Logs a security warning, and is
    refused with a public URL unless VOICECALL_UNSAFE_ALLOW_SKIP_SIGNATURE_VERIFICATION=1."""
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    """Media streams and live transcription."""
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)
    """Realtime voice: the call's audio bridged full-duplex to a speech-to-speech model (openai, google)."""
    tts: TtsConfig | None = None
    """Text-to-speech for media streams; a top-level tts outside the plugins entry is the base it
    deep-merges over."""
    store: str | None = None
    """The OpenClaw plugin's store directory. Accepted, no effect yet: calls are kept in the database."""
    agent_id: NonEmptyStr | None = None
    """Agent that owns calls and their sessions; unset: the only configured agent, else main (several
    agents need an explicit one)."""
    response_model: NonEmptyStr | None = None
    """provider/model for automatic replies; a bare name means openai/<name>. Unset: the agent responder's
    model."""
    response_system_prompt: str | None = None
    """System prompt for automatic replies; unset: generated from the agent's name and workspace files."""
    response_timeout_ms: PositiveInt = 30000
    """Time allowed for one reply before the fallback line is said."""
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    """Agents by id: name, identity, workspace folder and responder."""
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    """Model endpoints for responseModel and llm responders."""

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

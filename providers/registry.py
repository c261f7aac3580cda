"""Name → backend class registries, like Django's email backends: config names a provider, we import it."""
from __future__ import annotations

from django.utils.module_loading import import_string

CARRIERS: dict[str, str] = {
    "mock": "providers.carriers.mock.MockCarrier",
    "twilio": "providers.carriers.twilio.TwilioCarrier",
    "telnyx": "providers.carriers.telnyx.TelnyxCarrier",
    "plivo": "providers.carriers.plivo.PlivoCarrier",
}


def register_carrier(name: str, dotted_path: str) -> None:
    """Add or replace a carrier backend (tests and plugins)."""
    CARRIERS[name] = dotted_path


def carrier_class(name: str):
    """The backend class for a carrier name; KeyError names the unknown carrier."""
    try:
        return import_string(CARRIERS[name])
    except KeyError:
        raise KeyError(f"no carrier backend registered for {name!r} (known: {', '.join(sorted(CARRIERS))})") from None


# Streaming transcription, in the order used to pick one when `streaming.provider` is unset:
# the first configured cloud provider, else the offline one.
TRANSCRIPTION: dict[str, str] = {
    "openai": "providers.transcription.openai.OpenAITranscription",
    "deepgram": "providers.transcription.deepgram.DeepgramTranscription",
    "elevenlabs": "providers.transcription.elevenlabs.ElevenLabsTranscription",
    "mistral": "providers.transcription.mistral.MistralTranscription",
    "xai": "providers.transcription.xai.XaiTranscription",
    "local": "providers.transcription.local.LocalTranscription",
}

# Telephony TTS, in fallback order after the configured provider.
TTS: dict[str, str] = {
    "openai": "providers.tts.openai.OpenAITts",
    "elevenlabs": "providers.tts.elevenlabs.ElevenLabsTts",
    "microsoft": "providers.tts.microsoft.MicrosoftTts",
    "local": "providers.tts.local.LocalTts",
}


def transcription_class(name: str):
    try:
        return import_string(TRANSCRIPTION[name])
    except KeyError:
        raise KeyError(f"no transcription provider registered for {name!r} (known: {', '.join(TRANSCRIPTION)})") from None


def tts_class(name: str):
    try:
        return import_string(TTS[name])
    except KeyError:
        raise KeyError(f"no TTS provider registered for {name!r} (known: {', '.join(TTS)})") from None


# Realtime voice (speech-to-speech) models.
REALTIME: dict[str, str] = {
    "openai": "providers.realtime.openai.OpenAIRealtime",
    "google": "providers.realtime.google.GoogleRealtime",
}


def register_realtime(name: str, dotted_path: str) -> None:
    """Add or replace a realtime provider (tests and plugins)."""
    REALTIME[name] = dotted_path


def realtime_class(name: str):
    try:
        return import_string(REALTIME[name])
    except KeyError:
        raise KeyError(f"no realtime provider registered for {name!r} (known: {', '.join(REALTIME)})") from None

"""TwiML documents the gateway answers with or pushes into live calls (docs/compatibility.md, Carrier requests)."""
from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

# OpenAI voice names → Amazon Polly voices Twilio's <Say> knows.
POLLY_VOICES = {
    "alloy": "Polly.Joanna",
    "echo": "Polly.Matthew",
    "fable": "Polly.Amy",
    "onyx": "Polly.Brian",
    "nova": "Polly.Salli",
    "shimmer": "Polly.Kimberly",
}
DEFAULT_VOICE = "Polly.Joanna"
DEFAULT_LANGUAGE = "en-US"
KEEPALIVE_PAUSE_SECONDS = 30
EMPTY = "<Response></Response>"


def say_voice(voice: str | None) -> str:
    """The <Say> voice for a configured TTS voice: Polly/Google names pass through."""
    if voice and voice.startswith(("Polly.", "Google.")):
        return voice
    return POLLY_VOICES.get((voice or "").lower(), DEFAULT_VOICE)


def _attrs(**attributes: str | int | None) -> str:
    return "".join(f" {name}={quoteattr(str(value))}" for name, value in attributes.items() if value is not None)


def response(*verbs: str) -> str:
    return "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>" + "".join(verbs) + "</Response>"


def say(text: str, *, voice: str | None, language: str | None) -> str:
    return f"<Say{_attrs(voice=say_voice(voice), language=language or DEFAULT_LANGUAGE)}>{escape(text)}</Say>"


def redirect(url: str) -> str:
    return f"<Redirect{_attrs(method='POST')}>{escape(url)}</Redirect>"


def gather(action: str, *, language: str | None, inner: str = "") -> str:
    # Speech and key presses both end the gather, so a caller's DTMF reaches the gateway too.
    attributes = _attrs(input="speech dtmf", speechTimeout="auto", language=language or DEFAULT_LANGUAGE, action=action, method="POST")
    return f"<Gather{attributes}>{inner}</Gather>"


def keepalive(url: str) -> str:
    """Hold the line quietly; the redirect brings Twilio back so the call never runs out of TwiML."""
    return response(f"<Pause{_attrs(length=KEEPALIVE_PAUSE_SECONDS)}/>", redirect(url))


def speak(text: str, *, voice: str | None, language: str | None, reply_action: str, keepalive_url: str) -> str:
    """Say text, then keep listening (a reply arrives as SpeechResult), then keep the line."""
    return response(say(text, voice=voice, language=language), gather(reply_action, language=language), redirect(keepalive_url))


def listen(action: str, *, language: str | None, relisten_url: str, prompt: str | None = None,
           voice: str | None = None, prompt_language: str | None = None) -> str:
    """Listen for one answer (optionally after a prompt); silence leads to relisten_url."""
    inner = say(prompt, voice=voice, language=prompt_language) if prompt else ""
    return response(gather(action, language=language, inner=inner), redirect(relisten_url))


def notify(text: str, *, voice: str | None, language: str | None, hangup_delay_sec: int) -> str:
    """A notify call's whole script: say the message, wait the configured delay, hang up."""
    pause = f"<Pause{_attrs(length=hangup_delay_sec)}/>" if hangup_delay_sec > 0 else ""
    return response(say(text, voice=voice, language=language), pause, "<Hangup/>")


def play_digits(digits: str, *, then: str) -> str:
    return response(f"<Play{_attrs(digits=digits)}/>", redirect(then))


def stream(url: str, *, token: str) -> str:
    # Twilio drops query strings from stream URLs, so the token travels as a <Parameter>.
    return response(f"<Connect><Stream{_attrs(url=url)}><Parameter{_attrs(name='token', value=token)}/></Stream></Connect>")


def hold(hold_music_url: str) -> str:
    return response(
        f"<Say{_attrs(voice='alice')}>Please hold while we connect you.</Say>",
        f"<Enqueue{_attrs(waitUrl=hold_music_url)}>hold-queue</Enqueue>",
    )


def hold_music() -> str:
    return response(
        f"<Say{_attrs(voice='alice')}>All agents are currently busy. Please hold.</Say>",
        f"<Play{_attrs(loop=0)}>https://com.twilio.music.classical.s3.amazonaws.com/BusyStrings.mp3</Play>",
    )


def reject() -> str:
    return response(f"<Reject{_attrs(reason='rejected')}/>")


def hangup() -> str:
    return response("<Hangup/>")


# --- transfers -------------------------------------------------------------------------------
TRANSFER_DIAL_TIMEOUT_SECONDS = 30
TRANSFER_FAILED_TEXT = "Sorry, the call could not be transferred. Goodbye."


def _dial_noun(target: str, **attributes: str | None) -> str:
    """<Sip> for a SIP URI, <Number> for an E.164 number."""
    noun = "Sip" if target.startswith(("sip:", "sips:")) else "Number"
    return f"<{noun}{_attrs(**attributes)}>{escape(target)}</{noun}>"


def dial(target: str, *, action: str, status_callback: str) -> str:
    """Cold transfer: connect the caller to `target`; its answer is reported to status_callback, and the
    dial's end (DialCallStatus) to action."""
    attributes = _attrs(action=action, method="POST", timeout=TRANSFER_DIAL_TIMEOUT_SECONDS)
    noun = _dial_noun(target, statusCallbackEvent="answered", statusCallback=status_callback, statusCallbackMethod="POST")
    return response(f"<Dial{attributes}>{noun}</Dial>")


def conference_wait(room: str, *, wait_url: str) -> str:
    """Warm transfer, the caller's side: hold (music) in the room until the target joins; their leaving ends it."""
    conference = f"<Conference{_attrs(waitUrl=wait_url, waitMethod='GET', startConferenceOnEnter='false', endConferenceOnExit='true', beep='false')}>{escape(room)}</Conference>"
    return response(f"<Say{_attrs(voice='alice')}>Please hold while we connect you.</Say>", f"<Dial>{conference}</Dial>")


def conference_brief(room: str, *, summary: str, voice: str | None) -> str:
    """Warm transfer, the target's side: hear the summary first, then join the caller (the room starts)."""
    conference = f"<Conference{_attrs(startConferenceOnEnter='true', endConferenceOnExit='true', beep='false')}>{escape(room)}</Conference>"
    return response(say(summary, voice=voice, language=None), f"<Dial>{conference}</Dial>")


def transfer_failed() -> str:
    """The answer to a dial that did not reach the target: the caller hears why, then the call ends."""
    return response(say(TRANSFER_FAILED_TEXT, voice=None, language=None), "<Hangup/>")

"""Plivo XML documents the gateway answers with or transfers a live call to (docs/compatibility.md, Carrier requests)."""
from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from .media import extra_headers

DEFAULT_LANGUAGE = "en-US"
KEEPALIVE_WAIT_SECONDS = 300
LISTEN_TIMEOUT_SECONDS = 30


def _attrs(**attributes: str | int | None) -> str:
    return "".join(f" {name}={quoteattr(str(value))}" for name, value in attributes.items() if value is not None)


def response(*elements: str) -> str:
    return "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>" + "".join(elements) + "</Response>"


def speak_element(text: str, *, language: str | None, voice: str | None = None) -> str:
    # Only Plivo's own voices (WOMAN/MAN) and Polly voices are valid; others fall back to the default.
    valid_voice = voice if voice and (voice in ("WOMAN", "MAN") or voice.startswith("Polly.")) else None
    return f"<Speak{_attrs(voice=valid_voice, language=language or DEFAULT_LANGUAGE)}>{escape(text)}</Speak>"


def redirect(url: str) -> str:
    return f"<Redirect{_attrs(method='POST')}>{escape(url)}</Redirect>"


def speak(text: str, *, language: str | None, voice: str | None, then: str) -> str:
    """Say text, then fetch `then` so the call never runs out of XML."""
    return response(speak_element(text, language=language, voice=voice), redirect(then))


def listen(action: str, *, language: str | None, relisten_url: str, prompt: str | None = None,
           voice: str | None = None, prompt_language: str | None = None) -> str:
    """Listen for speech or keys (optionally after a prompt); with no input, fetch relisten_url."""
    inner = speak_element(prompt, language=prompt_language, voice=voice) if prompt else ""
    attributes = _attrs(
        inputType="dtmf speech", method="POST", action=action, language=language or DEFAULT_LANGUAGE,
        executionTimeout=LISTEN_TIMEOUT_SECONDS, speechEndTimeout="auto", redirect="true",
    )
    return response(f"<GetInput{attributes}>{inner}</GetInput>", redirect(relisten_url))


def keepalive(url: str) -> str:
    return response(f"<Wait{_attrs(length=KEEPALIVE_WAIT_SECONDS)}/>", redirect(url))


def notify(text: str, *, language: str | None, voice: str | None, hangup_delay_sec: int) -> str:
    wait = f"<Wait{_attrs(length=hangup_delay_sec)}/>" if hangup_delay_sec > 0 else ""
    return response(speak_element(text, language=language, voice=voice), wait, "<Hangup/>")


def voicemail(text: str, *, language: str | None, voice: str | None, beep_wait_sec: int, hangup_delay_sec: int) -> str:
    """A message for an answering machine: wait for its beep (at most beep_wait_sec; 0: none), say it, hang up."""
    beep = f"<Wait{_attrs(length=beep_wait_sec, beep='true')}/>" if beep_wait_sec > 0 else ""
    wait = f"<Wait{_attrs(length=hangup_delay_sec)}/>" if hangup_delay_sec > 0 else ""
    return response(beep, speak_element(text, language=language, voice=voice), wait, "<Hangup/>")


def stream(url: str, *, token: str) -> str:
    """Hand the call to a two-way μ-law media stream; the call stays up until the socket closes.

    Plivo streams L16 unless told otherwise. The token rides in extraHeaders, which Plivo echoes in
    the stream's start frame (hex-encoded: the attribute allows only letters and digits).
    """
    attributes = _attrs(bidirectional="true", keepCallAlive="true", contentType="audio/x-mulaw;rate=8000",
                        extraHeaders=extra_headers(token=token))
    return response(f"<Stream{attributes}>{escape(url)}</Stream>")


def reject() -> str:
    return response(f"<Hangup{_attrs(reason='rejected')}/>")


def hangup() -> str:
    return response("<Hangup/>")


TRANSFER_DIAL_TIMEOUT_SECONDS = 30
TRANSFER_FAILED_TEXT = "Sorry, the call could not be transferred. Goodbye."


def dial(target: str, *, action: str, callback_url: str, caller_id: str | None) -> str:
    """Transfer: connect the caller to `target` (<User> for a SIP URI, <Number> for a number).

    callbackUrl hears the target answer (DialAction=answer); action hears how the dial ended (DialStatus).
    """
    noun = f"<User>{escape(target)}</User>" if target.startswith(("sip:", "sips:")) else f"<Number>{escape(target.lstrip('+'))}</Number>"
    attributes = _attrs(action=action, method="POST", callbackUrl=callback_url, callbackMethod="POST",
                        timeout=TRANSFER_DIAL_TIMEOUT_SECONDS, redirect="true", callerId=caller_id)
    return response(f"<Dial{attributes}>{noun}</Dial>")


def transfer_failed() -> str:
    return response(speak_element(TRANSFER_FAILED_TEXT, language=None), "<Hangup/>")


def conference_wait(room: str) -> str:
    """Warm transfer, the caller's side: hold (Plivo's music) in the room until the target joins; leaving ends it."""
    attributes = _attrs(startConferenceOnEnter="false", endConferenceOnExit="true", stayAlone="true")
    return response(speak_element("Please hold while we connect you.", language=None),
                    f"<Conference{attributes}>{escape(room)}</Conference>")


def conference_brief(room: str, *, summary: str) -> str:
    """Warm transfer, the target's side: hear the summary first, then join the caller (the room starts)."""
    attributes = _attrs(startConferenceOnEnter="true", endConferenceOnExit="true")
    return response(speak_element(summary, language=None), f"<Conference{attributes}>{escape(room)}</Conference>")

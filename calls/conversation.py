"""Automatic replies (docs/compatibility.md, Barge-in and automatic replies; Spoken-output contract): the caller's words → the agent's responder → speech.

A final transcript that no `continue` turn is waiting for becomes a ReplyTurn (and a line of
session memory) and a `calls.auto_reply` job. Newer caller speech supersedes older replies: a
superseded reply stops being generated and never speaks another sentence. On a media stream the
reply is spoken sentence by sentence as the responder streams it; on the carrier's speech-gather
path the whole reply goes in one request (a second request would cut the first off).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from core.call_context import bind_call_id
from core.config.models import DEFAULT_MODEL, ModelError, ResolvedModel, resolve_model
from core.errors import VoiceCallError
from providers.responders import responder_for
from providers.responders.base import Hangup, Responder, ResponderError, Turn
from providers.responders.spoken import SpokenStream, default_base_prompt, system_prompt, turn_prompt
from routing.routes import call_route

from . import background
from .clock import from_ms, now, to_ms
from .metrics import recorders as metrics
from .models import Call, ReplyStatus, ReplyTurn
from .runtime import get_runtime
from .selectors import (
    call_transcript_lines,
    call_uses_stream,
    call_voice,
    replies_before_count,
    reply_find,
    reply_is_current,
    session_history,
)
from .services import (
    ReplyHeard,
    call_end_or_retry,
    call_reply_say,
    reply_settle,
    reply_speaking_begin,
)
from .streams.commands import PlaybackRefused, StreamUnavailable, stream_enqueue, stream_outcome

log = logging.getLogger(__name__)

FALLBACK_TEXT = "Sorry, I'm having trouble answering right now."
DEFAULT_HISTORY_MESSAGES = 20
# Sentences queued on the stream ahead of the one playing (the playback queue holds 8).
MAX_QUEUED_SENTENCES = 6
SUPERSEDED_CHECK_SECONDS = 0.2
# Workspace files that describe the agent, read into its prompt (small, trusted, the owner's own).
WORKSPACE_FILES = ("IDENTITY.md", "SOUL.md", "USER.md")
WORKSPACE_FILE_LIMIT = 8000


# --- the job -------------------------------------------------------------------------------


@dataclass
class ReplyPlan:
    responder: Responder
    turn: Turn
    fallback: str


@background.job("calls.auto_reply")
def auto_reply(*, reply_id: int) -> None:
    reply = reply_find(reply_id=reply_id)
    if reply is None or reply.status != ReplyStatus.PENDING:
        return
    call = reply.call
    bind_call_id(call.pk)  # within the job's call scope: the reply's lines name its call
    if call.is_terminal:
        _settle(reply, ReplyStatus.SUPERSEDED, error="the call ended")
        return
    try:
        plan = plan_reply(call, reply)
    except (ModelError, ResponderError, ValueError) as exc:
        log.warning("call %s: cannot make a reply: %s", call.pk, exc)
        _speak_fallback(call, reply, FALLBACK_TEXT, str(exc))
        return
    _run_reply(call, reply, plan)


@dataclass(frozen=True)
class AgentPlan:
    """Who answers a call and how: the same for automatic replies and realtime consults."""

    agent_id: str
    agent_name: str | None
    responder: Responder
    model: ResolvedModel | None
    base_prompt: str  # the route's or config's system prompt (or the default), after the workspace files
    timeout_ms: int
    history_limit: int
    fallback: str


def agent_plan(call: Call, config=None) -> AgentPlan:
    """The call's agent, responder, model, base prompt and deadline (route → config → agent)."""
    config = config or get_runtime().config
    route = call_route(config, call)
    agent_id = call.agent_id or config.resolved_agent_id()
    agent = config.agents.get(agent_id)
    settings = agent.responder if agent else None
    responder = _responder(settings)
    model = None
    if responder.type == "llm":
        name = ((route.response_model if route else None) or config.response_model
                or (settings.model if settings else None) or DEFAULT_MODEL)
        model = resolve_model(name, config.models.providers)
    base = route.response_system_prompt if route and route.response_system_prompt is not None else None
    if base is None:
        base = config.response_system_prompt
    agent_name = _agent_name(agent)
    if base is None:
        base = default_base_prompt(agent_name, call.from_number)
    workspace = _workspace_context(agent.workspace if agent else None)
    return AgentPlan(
        agent_id=agent_id, agent_name=agent_name, responder=responder, model=model,
        base_prompt="\n\n".join(part for part in (workspace, base) if part),
        timeout_ms=(route.response_timeout_ms if route else None) or config.response_timeout_ms,
        history_limit=settings.history_messages if settings else DEFAULT_HISTORY_MESSAGES,
        fallback=settings.fallback_text if settings and settings.fallback_text is not None else FALLBACK_TEXT,
    )


def plan_reply(call: Call, reply: ReplyTurn) -> ReplyPlan:
    """Who answers, with which prompt, model, history and deadline (route → config → agent)."""
    plan = agent_plan(call)
    spoken = call_transcript_lines(call=call)
    turn = Turn(
        call_id=str(call.pk), agent_id=plan.agent_id, session_key=call.session_key, direction=call.direction,
        from_number=call.from_number, to_number=call.to_number, transcript=reply.transcript,
        history=session_history(call=call, before=reply.user_message, limit=plan.history_limit),
        system_prompt=system_prompt(plan.base_prompt),
        user_message=turn_prompt(spoken, reply.transcript), model=plan.model,
        deadline=time.monotonic() + plan.timeout_ms / 1000,
        # Every earlier caller utterance counts, superseded or not: the n-th utterance gets the
        # n-th scripted reply however the replies' races went.
        replies_so_far=replies_before_count(reply=reply),
        agent_name=plan.agent_name,
    )
    return ReplyPlan(responder=plan.responder, turn=turn, fallback=plan.fallback)


_responders: dict[int, tuple[object, Responder]] = {}
_responders_lock = threading.Lock()
MAX_CACHED_RESPONDERS = 32


def _responder(settings) -> Responder:
    """One responder per responder block, so its HTTP connections are reused from turn to turn."""
    key = id(settings)
    with _responders_lock:
        cached = _responders.get(key)
        if cached is not None and cached[0] is settings:
            return cached[1]
        if len(_responders) >= MAX_CACHED_RESPONDERS:
            # Config reloads leave old blocks behind. Not closed here: a turn may still be using one.
            _responders.clear()
        responder = responder_for(settings)
        _responders[key] = (settings, responder)
        return responder


def _agent_name(agent) -> str | None:
    if agent is None:
        return None
    return agent.name or (agent.identity.name if agent.identity else None)


def _workspace_context(folder: str | None) -> str:
    """The agent's own description files from its workspace folder, each under its name."""
    if not folder:
        return ""
    root = Path(folder).expanduser()
    sections = []
    for name in WORKSPACE_FILES:
        path = root / name
        try:
            if not path.is_file():
                continue
            text = path.read_text(encoding="utf-8", errors="replace")[:WORKSPACE_FILE_LIMIT].strip()
        except OSError as exc:
            log.info("workspace file %s unreadable: %s", path, exc)
            continue
        if text:
            sections.append(f"### {name}\n{text}")
    return "\n\n".join(sections)


def _run_reply(call: Call, reply: ReplyTurn, plan: ReplyPlan) -> None:
    voice = _voice_for(call, reply)
    stream = SpokenStream(follows_contract=plan.responder.follows_contract)
    heard_ms = to_ms(reply.heard_at)
    first_text_ms = None
    hangup: Hangup | None = None
    next_check = time.monotonic() + SUPERSEDED_CHECK_SECONDS
    pieces = plan.responder.respond(plan.turn)
    try:
        for piece in pieces:
            if isinstance(piece, Hangup):
                hangup = piece
                continue
            if first_text_ms is None and piece:
                first_text_ms = _since(heard_ms)
            sentences = stream.feed(piece)
            # Checked before speaking and every so often while generating: a superseded reply's
            # generation is stopped, not read to its end. A voice about to say its first words
            # checks in the same statement that starts speaking.
            if sentences or time.monotonic() >= next_check:
                if not (sentences and voice.checks_on_start) and not reply_is_current(reply_id=reply.pk):
                    return _discard(voice, reply, first_text_ms)
                next_check = time.monotonic() + SUPERSEDED_CHECK_SECONDS
            for sentence in sentences:
                voice.say(sentence)
        rest = stream.finish()
    except ReplySuperseded:
        return _discard(voice, reply, first_text_ms)
    except ResponderError as exc:
        log.warning("call %s: %s", call.pk, exc)
        if voice.started:
            # Part of the reply was said already; an apology on top would only confuse.
            _finish(voice, reply, ReplyStatus.FAILED, first_text_ms, error=str(exc))
            return
        return _speak_fallback(call, reply, plan.fallback, str(exc), first_text_ms=first_text_ms)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # a discarded reply's HTTP stream is closed, not read to the end
    if not (rest and voice.checks_on_start) and not reply_is_current(reply_id=reply.pk):
        return _discard(voice, reply, first_text_ms)
    try:
        for sentence in rest:
            voice.say(sentence)
    except ReplySuperseded:
        return _discard(voice, reply, first_text_ms)
    status = _finish(voice, reply, ReplyStatus.SPOKEN if voice.started else ReplyStatus.SILENT, first_text_ms)
    if hangup is not None and status in (ReplyStatus.SPOKEN, ReplyStatus.SILENT):
        try:
            call_end_or_retry(call_id=str(call.pk), reason=hangup.reason)
        except VoiceCallError as exc:
            log.warning("call %s: hanging up after the reply failed: %s", call.pk, exc)


def _since(start_ms: int | None) -> int | None:
    return None if start_ms is None else max(0, int(time.time() * 1000) - start_ms)


def _discard(voice: Voice, reply: ReplyTurn, first_text_ms: int | None) -> None:
    """Superseded: nothing more is said; what was already heard still counts."""
    heard = voice.abandon()
    _settle(reply, ReplyStatus.SUPERSEDED, voice, text=heard, first_text_ms=first_text_ms, force=True,
            heard=voice.record_of(heard, session_id=_session_of(reply)))
    log.info("call %s: reply %s superseded by newer caller speech", reply.call_id, reply.pk)


def _finish(voice: Voice, reply: ReplyTurn, status: str, first_text_ms: int | None, *, error: str = "") -> str:
    heard, outcome = voice.finish()
    if outcome in ("interrupted", "skipped"):
        status = ReplyStatus.INTERRUPTED
    elif outcome == "failed":
        status, error = ReplyStatus.FAILED, error or voice.error
    return _settle(reply, status, voice, text=heard, error=error, first_text_ms=first_text_ms,
                   heard=voice.record_of(heard, session_id=_session_of(reply)))


def _session_of(reply: ReplyTurn) -> int | None:
    """The session memory the caller's words went to (read with the reply), so heard words join it."""
    return reply.user_message.session_id if reply.user_message is not None else None


def _speak_fallback(call: Call, reply: ReplyTurn, fallback: str, error: str, *, first_text_ms: int | None = None) -> None:
    """The responder failed: the caller hears the fallback line (or nothing), the call goes on."""
    voice = _voice_for(call, reply)
    heard = None
    if fallback and (voice.checks_on_start or reply_is_current(reply_id=reply.pk)):
        try:
            voice.say(fallback)
        except ReplySuperseded:
            pass
        # Said, not remembered: the apology is no part of the conversation.
        heard = voice.record_of(voice.finish()[0], memory=False)
    _settle(reply, ReplyStatus.FAILED, voice, error=error, first_text_ms=first_text_ms, heard=heard)


def _settle(reply: ReplyTurn, status: str, voice: Voice | None = None, *, text: str = "", error: str = "",
            first_text_ms: int | None = None, force: bool = False, heard: ReplyHeard | None = None) -> str:
    """Write the reply's outcome, with what the caller heard; a reply superseded meanwhile keeps that status.

    Returns the status.
    """
    first_audio_at = voice.first_audio_at if voice else None
    first_audio_ms = _ms_between(reply.heard_at, first_audio_at)
    settled = reply_settle(
        reply_id=reply.pk, status=status, reply=text, error=error, first_text_ms=first_text_ms,
        first_audio_ms=first_audio_ms, total_ms=_since(to_ms(reply.heard_at)), force=force,
        heard=heard,
    )
    if first_audio_ms is not None:  # the caller heard it: the turn's latency is to its first audio
        metrics.turn_completed("reply", first_audio_ms / 1000)
    return settled


def _ms_between(start: datetime, end: datetime | None) -> int | None:
    if end is None:
        return None
    return max(0, int((end - start) / timedelta(milliseconds=1)))


def _voice_for(call: Call, reply: ReplyTurn) -> Voice:
    return StreamVoice(call, reply_id=reply.pk) if call_uses_stream(call=call) else CarrierVoice(call)


# --- saying it -------------------------------------------------------------------------------


class ReplySuperseded(Exception):
    """Raised by `say`: the reply was superseded before its first words, which were not said."""


class Voice:
    """Where a reply's sentences go. `say` each in order, then `finish` (or `abandon`)."""

    # Whether the next `say` checks that the reply is still wanted (before the first words; ReplySuperseded).
    checks_on_start = False

    def __init__(self, call: Call) -> None:
        self.call = call
        self.call_id = str(call.pk)
        self.first_audio_at: datetime | None = None  # when the first words went to the line
        self.error = ""
        self.started = False

    def _mark_first_audio(self) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = now()

    def say(self, sentence: str) -> None:
        raise NotImplementedError

    def finish(self) -> tuple[str, str]:
        """What the caller heard, and the overall outcome (played, interrupted, skipped, failed)."""
        raise NotImplementedError

    def record_of(self, text: str, *, memory: bool = True, session_id: int | None = None) -> ReplyHeard:
        """What to record of `text`, the words the caller heard, with the reply's outcome."""
        # In whole milliseconds, as the caller's words are timed: words the caller says next, in
        # the same millisecond, still come after these in the session memory.
        at = from_ms(to_ms(self.first_audio_at or now()))
        return ReplyHeard(
            call=self.call, text=text, at=at, transcript_line=False, memory=memory,
            speaking_over=False, session_id=session_id,
        )

    def abandon(self) -> str:
        return self.finish()[0]


class StreamVoice(Voice):
    """Sentences go to the media stream as soon as they are ready and play back to back."""

    @property
    def checks_on_start(self) -> bool:
        return not self.started and not self.stopped

    def __init__(self, call: Call, *, reply_id: int) -> None:
        super().__init__(call)
        self.reply_id = reply_id
        self.group = f"reply-{reply_id}"  # a barge-in on one sentence skips the reply's later ones
        self.pending: deque[tuple[str, str]] = deque()
        self.heard: list[str] = []
        self.outcome = "played"
        self.stopped = False
        self.voice = call_voice(call=call)

    def say(self, sentence: str) -> None:
        while len(self.pending) >= MAX_QUEUED_SENTENCES and not self.stopped:
            self._settle_next()
        if self.stopped:
            return
        if not self.started:
            try:
                current = reply_speaking_begin(call_id=self.call_id, reply_id=self.reply_id)
            except VoiceCallError as exc:
                self._stop("failed", str(exc))
                return
            if not current:
                raise ReplySuperseded()
        try:
            reply_channel = stream_enqueue(self.call_id, sentence, self.voice, group=self.group)
        except (StreamUnavailable, PlaybackRefused) as exc:
            self._stop("failed", str(exc))
            return
        if not self.started:
            self.started = True
            self._mark_first_audio()
        self.pending.append((sentence, reply_channel))

    def _settle_next(self) -> None:
        sentence, reply_channel = self.pending.popleft()
        budget = 10 + max(5.0, len(sentence) / 8) * 2
        result = stream_outcome(reply_channel, timeout=budget)
        outcome = result.get("outcome", "failed")
        if outcome == "played":
            self.heard.append(sentence)
        elif outcome == "interrupted":
            if result.get("heard"):
                self.heard.append(result["heard"])
            self._stop("interrupted")
        elif outcome == "skipped":
            self._stop("skipped")
        else:
            self._stop("failed", result.get("error") or "playback failed")

    def _stop(self, outcome: str, error: str = "") -> None:
        if not self.stopped:
            self.stopped = True
            self.outcome = outcome
            self.error = error

    def finish(self) -> tuple[str, str]:
        """Waits for the queued sentences; what was heard is written with the reply's outcome (`record_of`)."""
        while self.pending:
            self._settle_next()
        return " ".join(self.heard), self.outcome

    def record_of(self, text: str, *, memory: bool = True, session_id: int | None = None) -> ReplyHeard:
        # The bot's transcript line is written here, and the call goes back to listening once it spoke.
        return replace(super().record_of(text, memory=memory, session_id=session_id), transcript_line=True,
                       speaking_over=self.started)


class CarrierVoice(Voice):
    """The whole reply in one carrier request once it is complete (a second one would cut the first)."""

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.sentences: list[str] = []

    def say(self, sentence: str) -> None:
        self.sentences.append(sentence)
        self.started = True

    def abandon(self) -> str:
        return ""  # nothing was sent yet

    def finish(self) -> tuple[str, str]:
        text = " ".join(self.sentences)
        if not text:
            return "", "played"
        try:
            outcome = call_reply_say(call_id=self.call_id, text=text)
        except VoiceCallError as exc:
            self.error = exc.message if hasattr(exc, "message") else str(exc)
            log.warning("call %s: saying the reply failed: %s", self.call_id, self.error)
            return "", "failed"
        self._mark_first_audio()
        return text, outcome


"""Agent consults for the realtime model: fast context from stored calls and memory, else the call's agent responder."""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q

from core.config.models import ModelError
from providers.responders.base import Responder, ResponderError, Turn
from providers.responders.spoken import extract_spoken, normalize, system_prompt

from ..conversation import agent_plan
from ..models import Call, CallEvent, SessionMessage, TranscriptEntry
from ..runtime import get_runtime
from ..selectors import call_transcript_lines, session_history
from ..services import call_event_record
from .tools import ConsultRequest

log = logging.getLogger(__name__)

TRANSCRIPT_LINES = 12
SNIPPET_CHARS = 300
NOT_IN_TIME = "the agent did not answer in time"
NOTHING_FOUND = "Nothing about that was found in earlier calls or conversation memory."
CONSULT_EVENT = "realtime.consult"
DEADLINE_SLACK_S = 0.05

CONSULT_SYSTEM_PROMPT = (
    "You are answering for a live phone call: a realtime voice model is talking with the caller and asks "
    "you when it needs the agent. Act on the caller's behalf. Prefer one or two bounded, read-only checks "
    "over long work. Never reveal or print secrets such as keys, tokens or passwords. Answer briefly, in "
    "plain sentences the voice model can say aloud."
)

# Words too common to say what a question is about.
_STOPWORDS = frozenset(
    "the and for are was were you your yours what when where which who whom why how does did do can could "
    "would should will shall have has had this that these those with from about into onto than then them "
    "they their there here our ours his her hers its not but any all some just tell me please know".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)

# Consults wait on HTTP; a few threads so one slow agent does not hold up another call's consult.
_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="realtime-consult")
_clock = time.monotonic  # tests replace it to run out a budget without waiting


def consult(*, call_id: str, request: ConsultRequest, partial: str = "", forced: bool = False) -> dict[str, Any]:
    """Answer a consult: {"answer": ...} (and "source"), or {"error": ...} the model can speak around.

    Fast context first when enabled; the agent responder otherwise, or when fast context found
    nothing and fallbackToConsult is on. Stored as a realtime.consult call event.
    """
    started, begun = _clock(), time.monotonic()
    call = Call.objects.filter(pk=call_id).first()
    if call is None:
        return {"error": "the call has ended"}
    config = get_runtime().config
    fast = config.realtime.fast_context
    output: dict[str, Any] | None = None
    if fast.enabled:
        found = fast_context(call=call, question=request.question, sources=fast.sources,
                             max_results=fast.max_results, timeout_ms=fast.timeout_ms)
        if found.snippets:
            output = {"answer": " ".join(found.snippets), "source": "fastContext"}
        elif not fast.fallback_to_consult:
            output = {"answer": NOTHING_FOUND, "source": "fastContext"}
            if found.timed_out:
                output["note"] = f"the search stopped after {fast.timeout_ms} ms"
    if output is None:
        # One budget for the whole consult: a fast-context search before it uses part of it.
        output = agent_consult(call=call, request=request, partial=partial, config=config, started=begun)
        if "error" not in output:
            output["source"] = "agent"
    payload: dict[str, Any] = {"question": request.question, "reason": request.reason,
                               "durationMs": round((_clock() - started) * 1000)}
    if forced:
        payload["forced"] = True
    payload.update({key: output[key] for key in ("answer", "error", "source") if key in output})
    try:
        call_event_record(call_id=call_id, type=CONSULT_EVENT, payload=payload)
    except Exception:  # the record is for the timeline; the answer still goes to the model
        log.exception("call %s: storing the consult failed", call_id)
    return output


# --- fast context ------------------------------------------------------------------------------


@dataclass
class FastContextResult:
    snippets: list[str] = field(default_factory=list)
    timed_out: bool = False


def question_words(question: str) -> list[str]:
    """The words of a question worth searching for (three letters or more, not filler), in order, once each."""
    words: list[str] = []
    for word in _WORD.findall(question.lower()):
        if len(word) >= 3 and word not in _STOPWORDS and word not in words:
            words.append(word)
    return words


def fast_context(*, call: Call, question: str, sources: Sequence[str], max_results: int,
                 timeout_ms: int) -> FastContextResult:
    """Lines of session memory ("memory") and of the caller's earlier calls ("sessions") that share the question's words.

    Best matches first (most shared words, then newest). A source that finishes after the budget
    does not count: the result is then marked timed out.
    """
    deadline = _clock() + timeout_ms / 1000
    words = question_words(question)
    result = FastContextResult()
    if not words:
        return result
    scored: list[tuple[int, float, str]] = []
    searches = {"memory": _search_memory, "sessions": _search_sessions}
    for source in sources:
        search = searches.get(source)
        if search is None:
            continue
        if _clock() >= deadline:
            result.timed_out = True
            break
        rows = search(call, words, max_results * 4)
        if _clock() > deadline:
            result.timed_out = True
            break
        for text, at in rows:
            lowered = text.lower()
            score = sum(1 for word in words if word in lowered)
            if score:
                scored.append((score, at.timestamp(), text))
    scored.sort(key=lambda row: (-row[0], -row[1]))
    seen: set[str] = set()
    for _, _, text in scored:
        snippet = normalize(text)
        if len(snippet) > SNIPPET_CHARS:
            snippet = snippet[:SNIPPET_CHARS].rstrip() + "…"
        if snippet.lower() in seen:
            continue
        seen.add(snippet.lower())
        result.snippets.append(snippet)
        if len(result.snippets) >= max_results:
            break
    if result.timed_out:
        log.info("call %s: fast context ran out of its %d ms", call.pk, timeout_ms)
    return result


def _matching(words: list[str]) -> Q:
    query = Q()
    for word in words:
        query |= Q(text__icontains=word)
    return query


def _search_memory(call: Call, words: list[str], limit: int) -> list[tuple[str, Any]]:
    if not call.session_key:
        return []
    rows = (SessionMessage.objects.filter(session__key=call.session_key).filter(_matching(words))
            .order_by("-spoken_at", "-id").values_list("text", "spoken_at")[:limit])
    return list(rows)


def _search_sessions(call: Call, words: list[str], limit: int) -> list[tuple[str, Any]]:
    """The caller's earlier calls (same number, either direction, or the same session), not this one."""
    caller = call.from_number if call.direction == "inbound" else call.to_number
    earlier = Q(direction="inbound", from_number=caller) | Q(direction="outbound", to_number=caller)
    if call.session_key:
        earlier |= Q(session_key=call.session_key)
    calls = Call.objects.filter(earlier).exclude(pk=call.pk).values("pk")
    rows = (TranscriptEntry.objects.filter(call__in=calls).filter(_matching(words))
            .order_by("-timestamp", "-id").values_list("text", "timestamp")[:limit])
    return list(rows)


# --- the full consult ----------------------------------------------------------------------------


def consult_prompt(*, question: str, transcript: Sequence[tuple[str, str]], partial: str = "", context: str = "",
                   response_style: str = "", reason: str = "") -> str:
    """The consult's user message: the question, the hints, the call's last lines, and how to answer."""
    parts = [f"The caller needs: {question}"]
    if reason:
        parts.append(f"Why the voice model is asking: {reason.replace('_', ' ')}")
    if context:
        parts.append(f"Context from the voice model: {context}")
    lines = [f"{'Caller' if speaker == 'user' else 'You'}: {text}" for speaker, text in transcript[-TRANSCRIPT_LINES:]]
    if partial.strip():
        lines.append(f"Caller (still speaking): {partial.strip()}")
    if lines:
        parts.append("Call transcript so far (newest last):\n" + "\n".join(lines))
    if response_style:
        parts.append(f"Answer style: {response_style}")
    parts.append("Return only the concise result to speak to the caller: no markdown, no tool logs, no private reasoning.")
    return "\n\n".join(parts)


def agent_consult(*, call: Call, request: ConsultRequest, partial: str = "", config=None,
                  started: float | None = None) -> dict[str, Any]:
    """Run the call's agent responder on the consult, within responseTimeoutMs of `started` (monotonic; default now).

    Returns {"answer": ...} or {"error": ...}.
    """
    try:
        plan = agent_plan(call, config)
    except (ModelError, ResponderError, ValueError) as exc:
        log.warning("call %s: cannot consult the agent: %s", call.pk, exc)
        return {"error": f"the agent cannot be asked: {exc}"}
    turn = Turn(
        call_id=str(call.pk), agent_id=plan.agent_id, session_key=call.session_key, direction=call.direction,
        from_number=call.from_number, to_number=call.to_number, transcript=request.question,
        history=session_history(call=call, before=None, limit=plan.history_limit),
        system_prompt=system_prompt("\n\n".join(part for part in (plan.base_prompt, CONSULT_SYSTEM_PROMPT) if part)),
        user_message=consult_prompt(
            question=request.question, transcript=call_transcript_lines(call=call), partial=partial,
            context=request.context, response_style=request.response_style, reason=request.reason),
        model=plan.model, deadline=(time.monotonic() if started is None else started) + plan.timeout_ms / 1000,
        # The n-th consult of a call gets a scripted agent's n-th reply.
        replies_so_far=CallEvent.objects.filter(call=call, type=CONSULT_EVENT, payload__source="agent").count(),
        agent_name=plan.agent_name,
        extra={"consult": {"question": request.question, "reason": request.reason, "context": request.context,
                           "responseStyle": request.response_style, "confirmationId": request.confirmation_id,
                           "partial": partial.strip()}},
    )
    future = _pool.submit(_answer, plan.responder, turn)
    try:
        answer = future.result(timeout=turn.remaining())
    except FutureTimeout:
        log.warning("call %s: the agent did not answer the consult within %d ms", call.pk, plan.timeout_ms)
        return {"error": NOT_IN_TIME}
    except ResponderError as exc:
        log.warning("call %s: consult failed: %s", call.pk, exc)
        if time.monotonic() >= turn.deadline - DEADLINE_SLACK_S:  # the responder gave up at the deadline
            return {"error": NOT_IN_TIME}
        return {"error": f"the agent could not answer: {exc}"}
    return {"answer": answer}


def _answer(responder: Responder, turn: Turn) -> str:
    """The spoken words of the responder's reply (the spoken-output contract applied when it follows it)."""
    pieces = responder.respond(turn)
    texts: list[str] = []
    try:
        for piece in pieces:
            if isinstance(piece, str):  # a Hangup is the realtime model's call to make (openclaw_end_call)
                texts.append(piece)
            if time.monotonic() > turn.deadline:
                raise ResponderError(f"{responder.type} responder: did not answer within the deadline")
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    raw = "".join(texts)
    if responder.follows_contract:
        return extract_spoken([raw]) or ""
    return normalize(raw)


# --- custom tools ----------------------------------------------------------------------------------


def custom_tool_run(*, call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A configured realtime tool, run by the agent's webhook service; an error result without one."""
    call = Call.objects.filter(pk=call_id).first()
    if call is None:
        return {"error": "the call has ended"}
    try:
        plan = agent_plan(call)
    except (ModelError, ResponderError, ValueError) as exc:
        return {"error": f"no agent webhook is configured to run tool {name} ({exc})"}
    if plan.responder.type != "webhook":
        return {"error": f"no agent webhook is configured to run tool {name}"}
    deadline = time.monotonic() + plan.timeout_ms / 1000
    future = _pool.submit(plan.responder.tool_call, call_id=str(call.pk), agent_id=plan.agent_id,
                          session_key=call.session_key, name=name, arguments=arguments, deadline=deadline)
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        return {"error": f"the agent did not run tool {name} in time"}
    except ResponderError as exc:
        log.warning("call %s: tool %s: %s", call_id, name, exc)
        return {"error": str(exc)}


def forced_consult_answer(*, call_id: str, text: str) -> str | None:
    """consultPolicy always: consult on the caller's words for the model; the answer to inject, or None."""
    from .forced import forced_answer_text

    output = consult(call_id=call_id, request=ConsultRequest(question=text, reason="forced"), forced=True)
    answer = output.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        return None
    return forced_answer_text(answer)

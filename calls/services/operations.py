"""Continue operations: a `continue` that outlives one RPC request, polled by id from any process.

`continue_operation_start` checks the request, stores a pending row and runs the turn on its own
thread in this process (a turn can wait minutes for speech: it must not hold a shared job worker).
The row is the only state, so `.continue.result` answers the same from every gateway process; a
pending row past its deadline (its process died) reads as failed.
"""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connections, transaction

from core.errors import VoiceCallError
from routing.routes import effective_tts

from ..clock import now
from ..models import ContinueOperation, OperationStatus
from ..runtime import get_runtime
from . import call_requests

log = logging.getLogger(__name__)

BUFFER_MS = 30_000
# Timers in the reference are clamped to a signed 32-bit millisecond count.
MAX_TIMER_MS = 2**31 - 1

_threads: set[threading.Thread] = set()


class OperationNotFound(call_requests.InputRejected):
    def __init__(self) -> None:
        super().__init__("operation not found")


@dataclass(frozen=True)
class ContinueOperationState:
    """Where a continue operation is: pending (with the poll window), failed, or completed."""

    operation_id: str
    status: str
    poll_timeout_ms: int | None = None
    error: str = ""
    transcript: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.status == OperationStatus.PENDING:
            return {"operationId": self.operation_id, "status": "pending", "pollTimeoutMs": self.poll_timeout_ms}
        if self.status == OperationStatus.FAILED:
            return {"operationId": self.operation_id, "status": "failed", "error": self.error}
        result: dict[str, Any] = {"success": True}
        if self.transcript is not None:
            result["transcript"] = self.transcript
        return {"operationId": self.operation_id, "status": "completed", "result": result}


def _poll_timeout_ms() -> int:
    """How long a caller should keep polling: transcript timeout + TTS timeout + 30 s."""
    # Imported here: the TTS module brings the audio code (NumPy), which placing a call does not need.
    from providers.tts.base import DEFAULT_TIMEOUT_MS as TTS_DEFAULT_TIMEOUT_MS

    config = get_runtime().config
    tts_ms = effective_tts(config, None).get("timeoutMs") or TTS_DEFAULT_TIMEOUT_MS
    return min(config.transcript_timeout_ms + tts_ms + BUFFER_MS, MAX_TIMER_MS)


def continue_operation_start(*, call_id: str | None, message: str | None) -> ContinueOperationState:
    """Check the request like `continue`, then start it and answer at once with the operation id."""
    resolved = call_requests.call_active_id(call_id=call_id, message=message)
    timeout_ms = _poll_timeout_ms()
    started = now()
    operation = ContinueOperation.objects.create(
        call_id=resolved, message=message, poll_timeout_ms=timeout_ms, created_at=started,
        deadline=started + timedelta(milliseconds=timeout_ms),
    )
    transaction.on_commit(lambda: _start_thread(operation.pk))
    return ContinueOperationState(operation_id=str(operation.pk), status=OperationStatus.PENDING, poll_timeout_ms=timeout_ms)


def _start_thread(operation_id) -> None:
    thread = threading.Thread(target=_run, args=(operation_id,), name=f"voicecall-continue-{operation_id}", daemon=True)
    _threads.add(thread)
    thread.start()


def _run(operation_id) -> None:
    try:
        operation = ContinueOperation.objects.get(pk=operation_id)
        try:
            heard = call_requests.call_continue_request(call_id=str(operation.call_id), message=operation.message)
        except Exception as exc:  # every failure is the operation's result, never lost
            if not isinstance(exc, VoiceCallError):
                log.exception("continue operation %s failed", operation_id)
            _finish(operation_id, error=call_requests.failure_message(exc, "continue failed"))
        else:
            _finish(operation_id, transcript=heard.transcript)
    finally:
        connections.close_all()
        _threads.discard(threading.current_thread())


def _finish(operation_id, *, transcript: str | None = None, error: str = "") -> None:
    status = OperationStatus.FAILED if error else OperationStatus.COMPLETED
    ContinueOperation.objects.filter(pk=operation_id, status=OperationStatus.PENDING).update(
        status=status, transcript=transcript, error=error, completed_at=now()
    )


def continue_operation_result(*, operation_id: str | None) -> ContinueOperationState:
    """The operation's state; a pending one past its deadline (its process died) is failed now."""
    call_requests.input_required(operation_id, message="operationId required")
    try:
        operation = ContinueOperation.objects.filter(pk=uuid.UUID(operation_id)).first()
    except ValueError:  # not a UUID: no such operation
        operation = None
    if operation is None:
        raise OperationNotFound()
    if operation.status == OperationStatus.PENDING and now() > operation.deadline:
        _finish(operation.pk, error=f"continue operation did not finish within {operation.poll_timeout_ms}ms")
        operation.refresh_from_db()
    return ContinueOperationState(
        operation_id=str(operation.pk), status=operation.status, poll_timeout_ms=operation.poll_timeout_ms,
        error=operation.error, transcript=operation.transcript,
    )


def continue_operations_wait(*, timeout: float = 10.0) -> None:
    """Join running operation threads (tests, shutdown)."""
    for thread in list(_threads):
        thread.join(timeout)

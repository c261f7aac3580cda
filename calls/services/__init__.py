"""The one write API every surface calls (CLI, RPC, agent tool, admin, webhooks, media streams, Celery).

Import from this package, not from its modules: the modules split the work by concern.
"""
from .call_requests import (
    ActionResult,
    CallPlaced,
    InputRejected,
    TurnHeard,
    call_continue_request,
    call_end_request,
    call_initiate_request,
    call_send_dtmf_request,
    call_speak_request,
    call_transfer_request,
    failure_message,
    input_required,
    runtime_ready,
)
from .common import transcript_add
from .dial_queue import CallScheduled, call_schedule, dial_cancel, dial_list_cancel, dial_list_create, dials_advance
from .dialing import MODES, call_initiate
from .amd import amd_overdue
from .dtmf import DTMF_MESSAGE, DTMF_PATTERN, call_send_dtmf
from .ending import call_end, call_end_or_retry
from .events import EventOutcome, call_event_record, event_process
from .greeting import GreetingDecision, greeting_decision, initial_message_delivered, initial_message_speak
from .local_recording import local_recording_finish, local_recording_start, local_recordings_reap
from .memory import session_message_add
from .nodes import dead_nodes_sweep, node_heartbeat, node_register, node_stop, nodes_gone, orphaned_streams_close
from .operations import (
    ContinueOperationState,
    OperationNotFound,
    continue_operation_result,
    continue_operation_start,
    continue_operations_wait,
)
from .operator import ACTION_EXTRA_FIELDS, ACTION_FIELDS, OPERATOR_ACTIONS, CallAlreadyEnded, operator_action
from .realtime import (
    RealtimeCall,
    realtime_event,
    realtime_stream_open,
    realtime_token_consume,
    realtime_token_issue,
    realtime_tokens_purge,
    realtime_transcript,
)
from .recordings import recording_event_apply, recording_fetch, recording_start, recordings_expire, recordings_fetch_resume
from .replies import ReplyHeard, reply_settle
from .resume import lost_jobs_resume
from .speech import call_reply_say, call_speak, reply_speaking_begin, speaking_begin, speaking_end
from .stream_failed import stream_failed
from .streams import (
    StreamCall,
    StreamRefused,
    stream_closed,
    stream_dtmf,
    stream_open,
    stream_ready,
    stream_speech_started,
    stream_transcript,
)
from .sweeps import (
    REAP_INTERVAL_SECONDS,
    RestoreReport,
    calls_restore,
    deadlines_sweep,
    next_deadline,
    processed_webhooks_purge,
    stale_calls_reap,
)
from .transfer import TRANSFER_MODES, CallNotTransferable, TransferResult, call_transfer, transfer_default_target
from .turns import call_continue
from .webhooks import WebhookReply, webhook_process

__all__ = [
    "ACTION_EXTRA_FIELDS",
    "ACTION_FIELDS",
    "DTMF_MESSAGE",
    "DTMF_PATTERN",
    "MODES",
    "OPERATOR_ACTIONS",
    "REAP_INTERVAL_SECONDS",
    "ActionResult",
    "CallAlreadyEnded",
    "CallPlaced",
    "CallScheduled",
    "ContinueOperationState",
    "EventOutcome",
    "GreetingDecision",
    "InputRejected",
    "OperationNotFound",
    "RealtimeCall",
    "ReplyHeard",
    "RestoreReport",
    "StreamCall",
    "StreamRefused",
    "TurnHeard",
    "WebhookReply",
    "amd_overdue",
    "realtime_event",
    "realtime_stream_open",
    "realtime_token_consume",
    "realtime_token_issue",
    "realtime_tokens_purge",
    "realtime_transcript",
    "call_continue",
    "call_continue_request",
    "call_end",
    "call_end_or_retry",
    "call_event_record",
    "call_end_request",
    "call_initiate",
    "call_initiate_request",
    "call_reply_say",
    "call_schedule",
    "call_send_dtmf",
    "call_send_dtmf_request",
    "call_speak",
    "call_speak_request",
    "call_transfer",
    "call_transfer_request",
    "CallNotTransferable",
    "TRANSFER_MODES",
    "TransferResult",
    "transfer_default_target",
    "calls_restore",
    "continue_operation_result",
    "continue_operation_start",
    "continue_operations_wait",
    "dead_nodes_sweep",
    "deadlines_sweep",
    "dial_cancel",
    "dial_list_cancel",
    "dial_list_create",
    "dials_advance",
    "event_process",
    "failure_message",
    "greeting_decision",
    "initial_message_delivered",
    "initial_message_speak",
    "input_required",
    "local_recording_finish",
    "local_recording_start",
    "local_recordings_reap",
    "lost_jobs_resume",
    "next_deadline",
    "node_heartbeat",
    "node_register",
    "node_stop",
    "operator_action",
    "nodes_gone",
    "orphaned_streams_close",
    "processed_webhooks_purge",
    "recording_event_apply",
    "recording_fetch",
    "recording_start",
    "recordings_expire",
    "recordings_fetch_resume",
    "reply_settle",
    "reply_speaking_begin",
    "runtime_ready",
    "session_message_add",
    "speaking_begin",
    "speaking_end",
    "stale_calls_reap",
    "stream_closed",
    "stream_failed",
    "stream_dtmf",
    "stream_open",
    "stream_ready",
    "stream_speech_started",
    "stream_transcript",
    "transcript_add",
    "webhook_process",
]

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
    failure_message,
    input_required,
    runtime_ready,
)
from .common import transcript_add
from .dial_queue import CallScheduled, call_schedule, dial_cancel, dial_list_cancel, dial_list_create, dials_advance
from .dialing import MODES, call_initiate
from .dtmf import DTMF_MESSAGE, DTMF_PATTERN, call_send_dtmf
from .ending import call_end, call_end_or_retry
from .events import EventOutcome, call_event_record, event_process
from .greeting import GreetingDecision, greeting_decision, initial_message_delivered, initial_message_speak
from .memory import session_message_add
from .nodes import dead_nodes_sweep, node_heartbeat, node_register, node_stop, nodes_gone, orphaned_streams_close
from .operations import (
    ContinueOperationState,
    OperationNotFound,
    continue_operation_result,
    continue_operation_start,
    continue_operations_wait,
)
from .realtime import (
    RealtimeCall,
    realtime_event,
    realtime_stream_open,
    realtime_token_consume,
    realtime_token_issue,
    realtime_tokens_purge,
    realtime_transcript,
)
from .replies import ReplyHeard, reply_settle
from .resume import lost_jobs_resume
from .speech import call_reply_say, call_speak, reply_speaking_begin, speaking_begin, speaking_end
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
from .turns import call_continue
from .webhooks import WebhookReply, webhook_process

__all__ = [
    "DTMF_MESSAGE",
    "DTMF_PATTERN",
    "MODES",
    "REAP_INTERVAL_SECONDS",
    "ActionResult",
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
    "lost_jobs_resume",
    "next_deadline",
    "node_heartbeat",
    "node_register",
    "node_stop",
    "nodes_gone",
    "orphaned_streams_close",
    "processed_webhooks_purge",
    "reply_settle",
    "reply_speaking_begin",
    "runtime_ready",
    "session_message_add",
    "speaking_begin",
    "speaking_end",
    "stale_calls_reap",
    "stream_closed",
    "stream_dtmf",
    "stream_open",
    "stream_ready",
    "stream_speech_started",
    "stream_transcript",
    "transcript_add",
    "webhook_process",
]

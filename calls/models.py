"""Call records and everything that happens on a call: events, transcript, turns, replay keys."""
from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from core.states import END_REASONS, FORWARD_ORDER, TERMINAL_STATES, CallState

from .console.pokes import changed

STATE_CHOICES = [(state.value, state.value) for state in (*FORWARD_ORDER, *sorted(TERMINAL_STATES))]
END_REASON_CHOICES = [(reason.value, reason.value) for reason in sorted(END_REASONS)]


class Direction(models.TextChoices):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


class Speaker(models.TextChoices):
    BOT = "bot"
    USER = "user"


class CallMode(models.TextChoices):
    """How an outbound call was placed."""

    NOTIFY = "notify"  # say the message, then hang up
    CONVERSATION = "conversation"  # greet, then listen and answer


class PairingStatus(models.TextChoices):
    """Where an unknown caller is in pairing (inboundPolicy "pairing", calls/services/pairing.py)."""

    NONE = "", "not pairing"
    WAITING = "waiting", "waiting for the code"
    PAIRED = "paired"
    FAILED = "failed"


class PokingQuerySet(models.QuerySet):
    """Rows written through this queryset poke the live console once committed (calls/console/pokes.py).

    With the models' `save`, these are the ways the gateway writes calls, their transcript and their
    streams, so the console hears of every change from here rather than from each service.
    """

    def update(self, **kwargs) -> int:
        rows = super().update(**kwargs)
        if rows:
            changed()
        return rows

    def bulk_create(self, objs, *args, **kwargs):
        created = super().bulk_create(objs, *args, **kwargs)
        if created:
            changed()
        return created


class PokingModel(models.Model):
    """A saved row pokes the live console once committed (see PokingQuerySet)."""

    class Meta:
        abstract = True

    def save(self, *args, **kwargs) -> None:
        super().save(*args, **kwargs)
        changed()


class CallQuerySet(PokingQuerySet):
    def live(self) -> CallQuerySet:
        """Calls not yet in a terminal state (they count against maxConcurrentCalls)."""
        return self.exclude(state__in=[s.value for s in TERMINAL_STATES])


class Call(PokingModel):
    """One phone call. Written before the carrier is contacted; never deleted by the gateway."""

    id = models.UUIDField("call id", primary_key=True, default=uuid.uuid4, editable=False)
    provider = models.CharField("carrier", max_length=16)
    provider_call_id = models.CharField("carrier call id", max_length=128, null=True, blank=True)
    direction = models.CharField(max_length=8, choices=Direction.choices)
    state = models.CharField(max_length=16, choices=STATE_CHOICES, default=CallState.INITIATED.value)
    from_number = models.CharField("from", max_length=64)
    to_number = models.CharField("to", max_length=64)
    session_key = models.CharField(max_length=255, blank=True, default="")
    agent_id = models.CharField(max_length=128, blank=True, default="")
    started_at = models.DateTimeField(default=timezone.now)
    answered_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=16, choices=END_REASON_CHOICES, blank=True, default="")
    # What the call is for. The status record shows these facts under the reference's metadata
    # keys (calls/selectors.py, call_metadata).
    mode = models.CharField(
        max_length=12, choices=CallMode.choices, blank=True, default=CallMode.CONVERSATION,
        help_text="Inbound calls converse; empty for an outbound call the gateway did not place.",
    )
    initial_message = models.TextField(blank=True, default="", help_text="Said once the call is answered; cleared when said.")
    pending_dtmf = models.TextField(
        "pending DTMF", blank=True, default="",
        help_text="Digits sent once the call is answered (carriers that cannot dial with them); cleared when sent.",
    )
    requester_session_key = models.CharField(max_length=255, blank=True, default="", help_text="The session that asked for the call.")
    # The number route this inbound call matched and its overrides, resolved once at creation and
    # used all call long.
    route_key = models.CharField("number route", max_length=16, blank=True, default="")
    route = models.JSONField(null=True, blank=True)

    # What happened on it.
    answered_by = models.CharField(max_length=64, blank=True, default="", help_text="The latest answering-machine verdict.")
    answered_by_first = models.CharField(max_length=64, blank=True, default="", help_text="The first verdict; later ones refine it.")
    turn_count = models.PositiveIntegerField("continue turns", default=0)
    # Answering-machine detection asked for this call (off, detect: hang up on a machine, voicemail:
    # leave the message after the beep), resolved from the request and the config when it is created.
    amd_mode = models.CharField("answering-machine detection", max_length=10, blank=True, default="")
    # Recordings asked for this call, resolved from the request, its route and the config at creation.
    record_carrier = models.BooleanField("carrier recording", default=False)
    record_local = models.BooleanField("local recording", default=False, help_text="A two-channel WAV of the media stream, written by the gateway.")
    hangup_reason = models.CharField(
        max_length=16, choices=END_REASON_CHOICES, blank=True, default="",
        help_text="The reason of our own hang-up request, kept if the carrier's end arrives first.",
    )
    rejection_reason = models.CharField(max_length=32, blank=True, default="", help_text="Why the inbound policy refused the call.")
    last_error = models.TextField(blank=True, default="", help_text="The carrier or dial error that ended the call.")
    pairing = models.CharField(max_length=8, choices=PairingStatus.choices, blank=True, default=PairingStatus.NONE)
    pairing_attempts = models.PositiveSmallIntegerField(default=0, help_text="Wrong codes so far.")
    pairing_digits = models.CharField(max_length=16, blank=True, default="", help_text="Keys pressed toward the next code.")
    paired_code = models.ForeignKey(
        "routing.PairingCode", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The code the caller paired with.",
    )
    # Anything else a carrier or a user attached to the call.
    metadata = models.JSONField(default=dict, blank=True)

    # Deadlines live on the row so any process's sweep can enforce them.
    max_duration_deadline = models.DateTimeField(null=True, blank=True)
    notify_hangup_at = models.DateTimeField(null=True, blank=True)
    # Set when the call's media stream dropped; a reconnect clears it, otherwise the call ends.
    stream_grace_deadline = models.DateTimeField(null=True, blank=True)
    # In-flight claims: one greeting playback and one hang-up at a time, across processes.
    greeting_claimed_at = models.DateTimeField(null=True, blank=True)
    hangup_claimed_at = models.DateTimeField(null=True, blank=True)
    # Hang-ups the carrier failed: how many so far, and when the next try is due (the sweeper
    # retries it; calls/services/hangup_retry.py). Kept on ended calls too: the line may still be up.
    end_attempts = models.PositiveSmallIntegerField("failed hang-up attempts", default=0)
    end_retry_at = models.DateTimeField("next hang-up attempt", null=True, blank=True)
    # The outbound dial, a queued job (calls/services/dial_job.py). The key a client sent makes a
    # repeated request return this call instead of placing another.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    # When its dial job was queued (last queued again by resume): a call without it was never queued.
    dial_queued_at = models.DateTimeField(null=True, blank=True)
    # The dial job's claim (a lease renewed while it runs) and the token that says whose it is.
    dial_claimed_at = models.DateTimeField(null=True, blank=True)
    dial_claim_token = models.UUIDField(null=True, blank=True)
    # Set just before each request to the carrier, cleared when the carrier's answer shows nothing
    # was placed: a claim abandoned while this is set may have a call at the carrier, so it is never dialed again.
    dial_requested_at = models.DateTimeField("dial request sent", null=True, blank=True)
    dial_attempts = models.PositiveSmallIntegerField("dial requests sent", default=0)
    dial_dtmf = models.TextField(
        "DTMF sent with the dial", blank=True, default="",
        help_text="Digits the dial request carries (carriers that dial with them); see pending DTMF for the others.",
    )
    dialed_at = models.DateTimeField("carrier accepted the dial", null=True, blank=True)

    updated_at = models.DateTimeField(auto_now=True)

    objects = CallQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        # The operator console's own permissions (beyond view_call, which its read-only pages need).
        permissions = [
            ("act_on_call", "Can speak on, send DTMF to, transfer and end live calls from the console"),
            ("view_setup", "Can view the setup checks and the loaded config (secrets shown only by their source)"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "provider_call_id"],
                condition=Q(provider_call_id__isnull=False),
                name="call_unique_provider_call_id",
            ),
        ]
        indexes = [
            models.Index(fields=["provider_call_id"], name="call_provider_call_id"),
            models.Index(fields=["state", "started_at"], name="call_state_started"),
            models.Index(fields=["max_duration_deadline"], name="call_max_duration_deadline"),
            models.Index(fields=["notify_hangup_at"], name="call_notify_hangup_at"),
            models.Index(fields=["end_retry_at"], name="call_end_retry_at"),
            models.Index(fields=["updated_at"], name="call_updated_at"),
            # Recent failed pairings lock pairing (calls/services/pairing.py).
            models.Index(fields=["rejection_reason", "started_at"], name="call_rejection_started"),
            models.Index(fields=["started_at"], name="call_started_at"),  # a time window's calls (dashboard, CSV)
        ]

    def __str__(self) -> str:
        return f"{self.direction} {self.from_number} → {self.to_number} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class CallEvent(models.Model):
    """A normalized event applied to a call. The unique dedupe key makes replays no-ops."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=32)
    dedupe_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    payload = models.JSONField(default=dict)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        # The latency dashboard reads one type's events of a time window (realtime turns).
        indexes = [models.Index(fields=["type", "occurred_at"], name="event_type_occurred")]

    def __str__(self) -> str:
        return f"{self.type} @ {self.occurred_at:%H:%M:%S}"


class TranscriptEntry(PokingModel):
    """One thing said on the call: by the bot (after it was played) or by the caller (final text)."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="transcript_entries")
    timestamp = models.DateTimeField(default=timezone.now)
    speaker = models.CharField(max_length=4, choices=Speaker.choices)
    text = models.TextField()
    is_final = models.BooleanField(default=True)

    objects = PokingQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "transcript entries"

    def __str__(self) -> str:
        return f"{self.speaker}: {self.text[:60]}"


class TurnStatus(models.TextChoices):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"


class CallTurn(models.Model):
    """One `continue` turn: speak a prompt, listen, wait for the caller's final transcript."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="turns")
    token = models.CharField(max_length=64)
    prompt = models.TextField(blank=True, default="")
    status = models.CharField(max_length=10, choices=TurnStatus.choices, default=TurnStatus.PENDING)
    started_at = models.DateTimeField(default=timezone.now)
    listen_started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    deadline = models.DateTimeField(null=True, blank=True)
    transcript = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    turn_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    listen_wait_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["call"],
                condition=Q(status="pending"),
                name="turn_one_pending_per_call",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "deadline"], name="turn_status_deadline"),
            models.Index(fields=["completed_at"], name="turn_completed_at"),
        ]

    def __str__(self) -> str:
        return f"turn {self.pk} ({self.status})"


class ProcessedWebhook(models.Model):
    """A verified webhook request already handled: its key, the first answer, and when to forget it."""

    key = models.CharField(max_length=255, primary_key=True)
    provider = models.CharField(max_length=16)
    # The call the request was about, so the keys kept per call can be capped.
    call = models.ForeignKey(Call, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status_code = models.PositiveSmallIntegerField(default=200)
    content_type = models.CharField(max_length=100, default="text/plain")
    body = models.TextField(blank=True, default="")
    headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["expires_at"], name="webhook_expires_at"),
            models.Index(fields=["call", "created_at"], name="webhook_call_created"),
        ]

    def __str__(self) -> str:
        return self.key


class CarrierDocument(models.Model):
    """A document a carrier fetches later by token (e.g. the Plivo XML that speaks on a live call)."""

    token = models.CharField(max_length=64, primary_key=True)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="carrier_documents")
    body = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="document_created_at")]

    def __str__(self) -> str:
        return f"document {self.token[:8]} for {self.call_id}"


class GatewayLock(models.Model):
    """Named rows locked with SELECT ... FOR UPDATE to serialize work across processes."""

    name = models.CharField(max_length=64, primary_key=True)

    def __str__(self) -> str:
        return self.name


class GatewayNode(models.Model):
    """One serving gateway process: registered at start, heartbeating while it runs, then stopped or declared dead.

    Media streams record the node whose process holds their socket, so the streams of a process
    that died are found and closed by another (calls/services/nodes.py).
    """

    id = models.UUIDField("node id", primary_key=True, default=uuid.uuid4, editable=False)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField("process id")
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField("last heartbeat", default=timezone.now)
    # Set by a sweep that found the heartbeat stale; a heartbeat clears it, a later sweep confirms it.
    suspected_at = models.DateTimeField(null=True, blank=True)
    # Set once: by the process itself when it stops cleanly, or by a sweep that declared it dead.
    stopped_at = models.DateTimeField(null=True, blank=True)
    stop_reason = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["stopped_at", "heartbeat_at"], name="gateway_node_live")]

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}"


class MediaStreamQuerySet(PokingQuerySet):
    def open(self):
        return self.filter(closed_at__isnull=True)


class MediaStream(PokingModel):
    """One media WebSocket of a call: registered on `start`, closed on `stop` or disconnect."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="media_streams")
    stream_id = models.CharField("carrier stream id", max_length=128)
    carrier = models.CharField(max_length=16)
    opened_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)
    close_reason = models.CharField(max_length=64, blank=True, default="")
    # Counters kept by the stream: frames in/out, drops by cause, playback marks.
    stats = models.JSONField(default=dict, blank=True)
    node = models.ForeignKey(
        GatewayNode, null=True, blank=True, on_delete=models.SET_NULL, related_name="media_streams",
        help_text="The gateway process holding the stream's socket (empty when it was opened outside a serving gateway).",
    )

    objects = MediaStreamQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["call", "closed_at"], name="media_stream_open"),
            models.Index(fields=["node", "closed_at"], name="media_stream_node_open"),
        ]

    def __str__(self) -> str:
        return f"stream {self.stream_id} of {self.call_id}"


class TransferKind(models.TextChoices):
    COLD = "cold"
    WARM = "warm"


class TransferStatus(models.TextChoices):
    REQUESTED = "requested"  # stored, the carrier not asked yet
    DIALING = "dialing"  # the carrier accepted; the target's phone rings
    CONNECTED = "connected"  # the caller is with the target
    FAILED = "failed"  # see error


class Transfer(models.Model):
    """A hand-off of a call to another number or SIP address, and how it went."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="transfers")
    target = models.CharField(max_length=255, help_text="E.164 number or SIP URI.")
    kind = models.CharField(max_length=4, choices=TransferKind.choices, default=TransferKind.COLD)
    status = models.CharField(max_length=10, choices=TransferStatus.choices, default=TransferStatus.REQUESTED)
    requested_by = models.CharField(max_length=150, blank=True, default="", help_text="rpc, tool, cli, realtime, or the staff user.")
    summary = models.TextField(blank=True, default="", help_text="Warm: what the agent said to the person answering first.")
    provider_ref = models.CharField("carrier reference", max_length=128, blank=True, default="", help_text="The carrier's id of the new leg or conference.")
    error = models.TextField(blank=True, default="")
    requested_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["requested_at"]

    def __str__(self) -> str:
        return f"{self.kind} transfer of {self.call_id} to {self.target}"


class RecordingSource(models.TextChoices):
    CARRIER = "carrier"  # recorded by the carrier; its URL (and the fetched file, when configured)
    LOCAL = "local"  # a two-channel WAV the gateway wrote from the media stream


class RecordingStatus(models.TextChoices):
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETED = "deleted"  # its file removed by the retention sweep (the row is kept)


class Recording(models.Model):
    """One recording of a call: where it is, how long, and when it expires."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="recordings")
    source = models.CharField(max_length=8, choices=RecordingSource.choices)
    provider_recording_id = models.CharField("carrier recording id", max_length=128, blank=True, default="")
    status = models.CharField(max_length=12, choices=RecordingStatus.choices, default=RecordingStatus.IN_PROGRESS)
    url = models.URLField("carrier URL", max_length=1024, blank=True, default="")
    file = models.CharField(max_length=1024, blank=True, default="", help_text="The stored file, relative to the recordings directory.")
    content_type = models.CharField(max_length=64, blank=True, default="")
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    channels = models.PositiveSmallIntegerField(default=1)
    started_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="When the retention sweep deletes its file (empty: kept).")
    deleted_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["call", "provider_recording_id"], condition=~models.Q(provider_recording_id=""),
                name="recording_carrier_id_once",
            ),
        ]
        indexes = [models.Index(fields=["expires_at"], name="recording_expiry")]

    def __str__(self) -> str:
        return f"{self.source} recording of {self.call_id}"


class ConversationSession(models.Model):
    """An agent's memory of one conversation, by session key (per phone, per call or main)."""

    key = models.CharField(max_length=255, unique=True)
    agent_id = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.key


class MessageRole(models.TextChoices):
    USER = "user"
    ASSISTANT = "assistant"


class SessionMessage(models.Model):
    """One line of a session's memory: what the caller said, or what the caller heard back."""

    session = models.ForeignKey(ConversationSession, on_delete=models.CASCADE, related_name="messages")
    call = models.ForeignKey(Call, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    text = models.TextField()
    # When it was said: history is in speaking order, whichever job wrote its row first.
    spoken_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["spoken_at", "id"]
        indexes = [models.Index(fields=["session", "spoken_at"])]


class ReplyStatus(models.TextChoices):
    PENDING = "pending"  # being made or spoken
    SPOKEN = "spoken"
    INTERRUPTED = "interrupted"  # the caller talked over it; only the heard part counts
    SUPERSEDED = "superseded"  # newer caller speech came first: discarded, never spoken further
    SILENT = "silent"  # nothing to say (empty spoken value, or a silent fallback)
    FAILED = "failed"  # the responder failed; the fallback line (if any) was said


class ReplyTurn(models.Model):
    """One automatic reply to the caller: their words, what was said back, and how long it took."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="replies")
    transcript = models.TextField()
    user_message = models.ForeignKey(SessionMessage, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    status = models.CharField(max_length=16, choices=ReplyStatus.choices, default=ReplyStatus.PENDING)
    responder = models.CharField(max_length=16, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    reply = models.TextField(blank=True, default="")  # what the caller heard
    error = models.TextField(blank=True, default="")
    heard_at = models.DateTimeField()  # when the caller's final transcript arrived
    completed_at = models.DateTimeField(null=True, blank=True)
    # Milliseconds from heard_at: first text from the responder, first words sent to the line, all done.
    first_text_ms = models.PositiveIntegerField(null=True, blank=True)
    first_audio_ms = models.PositiveIntegerField(null=True, blank=True)
    total_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["heard_at", "id"]
        indexes = [
            models.Index(fields=["call", "status"]),
            models.Index(fields=["heard_at"], name="reply_heard_at"),  # the latency dashboard's window
        ]

    def __str__(self) -> str:
        return f"reply {self.pk} on {self.call_id}: {self.status}"


class OperationStatus(models.TextChoices):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


class ContinueOperation(models.Model):
    """One `voicecall.continue.start`: stored so any gateway process can answer `.continue.result`."""

    id = models.UUIDField("operation id", primary_key=True, default=uuid.uuid4, editable=False)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="continue_operations")
    message = models.TextField()
    status = models.CharField(max_length=16, choices=OperationStatus.choices, default=OperationStatus.PENDING)
    transcript = models.TextField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    poll_timeout_ms = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    # A pending operation past this time is reported failed (its process may have died).
    deadline = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "completed_at"]), models.Index(fields=["deadline"])]

    def __str__(self) -> str:
        return f"continue {self.pk} ({self.status})"


class RealtimeStreamToken(models.Model):
    """A one-time token in the URL a carrier opens a realtime stream on: valid 30 s, used once."""

    token = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="realtime_tokens")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="realtime_token_expires")]

    def __str__(self) -> str:
        return f"realtime token of {self.call_id} ({'used' if self.used_at else 'unused'})"


class AdminLoginFailure(models.Model):
    """One failed admin login: enough of them from one address for one username lock it (calls/admin_login.py)."""

    username = models.CharField(max_length=150)
    ip_address = models.CharField("client address", max_length=45)
    failed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["username", "ip_address", "failed_at"], name="admin_login_failure_key"),
            models.Index(fields=["failed_at"], name="admin_login_failure_at"),
        ]

    def __str__(self) -> str:
        return f"{self.username} from {self.ip_address} at {self.failed_at:%Y-%m-%d %H:%M:%S}"


class DialList(models.Model):
    """A CSV of numbers and messages to call: each valid row becomes a PendingDial, each bad one is kept with its error."""

    id = models.UUIDField("dial list id", primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255, help_text="The file it came from.")
    created_at = models.DateTimeField(default=timezone.now)
    rows_total = models.PositiveIntegerField("rows", default=0, help_text="Data rows in the file (the header not counted).")
    rows_rejected = models.PositiveIntegerField("rows refused", default=0, help_text="Rows reported as bad and skipped.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.created_at:%Y-%m-%d %H:%M})"


class PendingDialStatus(models.TextChoices):
    PENDING = "pending", "waiting for its time or a free line"
    ADMITTED = "admitted", "call written (its outcome is the call's)"
    CANCELLED = "cancelled"
    FAILED = "failed", "refused when its turn came"
    REJECTED = "rejected", "bad row, skipped"


class PendingDialQuerySet(models.QuerySet):
    def due(self, at) -> PendingDialQuerySet:
        """Dials whose time has come, in the order they are placed."""
        return self.filter(status=PendingDialStatus.PENDING, due_at__lte=at).order_by("due_at", "created_at", "row")


class PendingDial(models.Model):
    """A dial that is not a call yet: a scheduled call or a dial-list row.

    Its id is the id the call gets when it is admitted, so the caller can follow it from the start.
    """

    id = models.UUIDField("call id", primary_key=True, default=uuid.uuid4, editable=False)
    dial_list = models.ForeignKey(DialList, null=True, blank=True, on_delete=models.CASCADE, related_name="dials")
    row = models.PositiveIntegerField(null=True, blank=True, help_text="Its row in the file (the header is row 1).")
    # Admission passes it on to the call: a second admission of the same dial places nothing.
    idempotency_key = models.CharField(max_length=255, unique=True)
    status = models.CharField(max_length=10, choices=PendingDialStatus.choices, default=PendingDialStatus.PENDING)
    due_at = models.DateTimeField(null=True, blank=True, help_text="Not dialed before this time.")
    to_number = models.CharField("to", max_length=64, blank=True, default="")
    message = models.TextField(blank=True, default="")
    mode = models.CharField(max_length=12, blank=True, default="", help_text="Empty: the configured default.")
    dtmf_sequence = models.CharField("DTMF sequence", max_length=64, blank=True, default="")
    session_key = models.CharField(max_length=255, blank=True, default="")
    requester_session_key = models.CharField(max_length=255, blank=True, default="")
    agent_id = models.CharField(max_length=128, blank=True, default="")
    error = models.TextField(blank=True, default="", help_text="Why the row was refused, or why admission failed.")
    created_at = models.DateTimeField(default=timezone.now)
    admitted_at = models.DateTimeField(null=True, blank=True)

    objects = PendingDialQuerySet.as_manager()

    class Meta:
        ordering = ["due_at", "created_at", "row"]
        indexes = [
            models.Index(fields=["status", "due_at"], name="pending_dial_status_due"),
            models.Index(fields=["dial_list", "row"], name="pending_dial_list_row"),
        ]

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "scheduled call"
        return f"{where} to {self.to_number} ({self.status})"

"""Media WebSocket admission in this process (docs/compatibility.md, Media streams): total, pending, and pending per IP."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

TOO_MANY_CONNECTIONS = "Too many media stream connections"
TOO_MANY_PENDING = "Too many pending media stream connections"


@dataclass
class StreamLimits:
    """Counts live sockets; a socket is pending from connect until a valid start."""

    total: int = 0
    pending: Counter[str] = field(default_factory=Counter)

    @property
    def pending_total(self) -> int:
        return sum(self.pending.values())

    def admit(self, ip: str, *, max_connections: int, max_pending: int, max_pending_per_ip: int) -> str | None:
        """Count a new socket in; returns the refusal reason instead when a cap is reached."""
        if self.total >= max_connections:
            return TOO_MANY_CONNECTIONS
        if self.pending_total >= max_pending or self.pending[ip] >= max_pending_per_ip:
            return TOO_MANY_PENDING
        self.total += 1
        self.pending[ip] += 1
        return None

    def started(self, ip: str) -> None:
        self._unpend(ip)

    def closed(self, ip: str, *, was_pending: bool) -> None:
        self.total = max(0, self.total - 1)
        if was_pending:
            self._unpend(ip)

    def _unpend(self, ip: str) -> None:
        if self.pending[ip] <= 1:
            self.pending.pop(ip, None)
        else:
            self.pending[ip] -= 1


# One per process: the consumers of this process share it (they all run on one event loop).
limits = StreamLimits()

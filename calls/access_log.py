"""Daphne's access lines through logging: redacted like every other line, and JSON lines with LOG_FORMAT=json."""
from __future__ import annotations

import logging

from daphne.access import AccessLogGenerator

log = logging.getLogger("calls.access")


class LoggedAccess(AccessLogGenerator):
    """Daphne writes its NCSA-style lines straight to stdout; a query string may carry a token."""

    def __init__(self) -> None:
        super().__init__(stream=None)

    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None) -> None:
        log.info('%s "%s" %s %s', host or "-", request, status or "-", length or "-")


def with_logged_access(server_class: type) -> type:
    """Daphne's Server class, its access lines (when it would write any) going to the `calls.access` logger."""

    class Server(server_class):
        def __init__(self, *args, action_logger=None, **kwargs) -> None:
            super().__init__(*args, action_logger=LoggedAccess() if action_logger is not None else None, **kwargs)

    return Server
